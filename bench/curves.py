"""Learning curves of brainkit's translation models: held-out scores against the compute spent training (issue 14, s. 3).

Writes `bench/results/curves.json` and `bench/results/curves.png`. Run:
`.venv/bin/python bench/curves.py [--models pix2pix cyclegan_t1 cyclegan_t2] [--budgets 1 2 5 10] [--set KEY=VALUE ...]`.

Each model is trained once, with a constant learning rate (`epochs_decay=0`), one epoch at a time, through the
library's own harness (`brainkit.gan.prepared`, `brainkit.train.fit`, the model's `step`; checkpoints as usual). When the
training compute reaches the next budget, the run's checkpoint is scored by THE protocol of chapter 08
(`brainkit.baselines.oracle_scores` on `brainkit.translate.translate_volume`: whole volumes in the input's space,
BraSyn's percentile clip, 3D SSIM / PSNR / MAE inside the input's brain), and the classical baselines of the same task
(`fit_baseline` on the model's own training subjects) are scored the same way.

Compute is the **CPU time of the process normalized to 2 cores** (`time.process_time() / 2`, torch on 2 threads), so that
a curve holds when other processes share the machine; wall time is recorded beside it. `OMP_WAIT_POLICY=PASSIVE` is set
(before torch loads): with OpenMP's default spin-waiting, two threads on two shared cores burn 3-5x the CPU time of the
work itself (measured here: 1.5 CPU-s against 0.32 CPU-s per Pix2Pix iteration), which would count as compute. Preparing the data (slicing,
the slice cache) is recorded as `setup`; evaluation is never counted. The budgets are reached at an epoch's end, so a
point lies at the epoch end nearest its budget (its exact compute is recorded).

Models and tasks (held-out subjects: the models' own validation split, `split_seed=0`):
- `pix2pix`: Pix2Pix BraTS-like t1 -> t2. Scored in-domain on the held-out BraTS-like subjects (truth: their own t2) and
  on the held-out HCP-like subjects (`CycleGANConfig().split`, seed 0) against the oracle t2 (the same brains rendered
  with the BraTS-like protocol). Baselines: none, lookup (and histmatch+lookup on HCP).
- `cyclegan_t1`: CycleGAN HCP-like t1 -> BraTS-like t1, against the oracle t1. Baselines: none, histmatch.
- `cyclegan_t2`: CycleGAN HCP-like t1 -> BraTS-like t2, against the oracle t2. Baselines: none, lookup,
  histmatch+lookup (these use paired BraTS t1/t2, which CycleGAN never sees).

Targets (issue 14): Pix2Pix in-domain beats `lookup` on SSIM and MAE; CycleGAN t1 beats `none` and `histmatch` on
SSIM and MAE. `checks` in the JSON say, per target, whether and at which budget it was met.

Options: `--set KEY=VALUE` overrides a config field of every model, `--set MODEL.KEY=VALUE` of one (values are parsed
as JSON where they can be, e.g. `--set spacing=2.4 pix2pix.ngf=32 cyclegan_t1.lambda_identity=0`); `--seed`;
`--runs DIR` (the runs' folders, default runs/curves); `--out` (the JSON; the figure goes beside it, .png);
`--residual` makes every generator output clamp(x + G(x)) (ProvoGAN's residual stages; brainkit has no such option yet,
so this patches the built and the loaded generators' forward: an experiment, see the README); `--bn-train` also scores Pix2Pix with its batch norm in train mode (batch 1, as the reference's test.py).
"""
from __future__ import annotations

import os
os.environ.setdefault('OMP_NUM_THREADS', '2')
os.environ.setdefault('MKL_NUM_THREADS', '2')
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # idle OpenMP threads sleep: on a shared machine spinning ones burn CPU time

import argparse
import json
import logging
import secrets
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info  # noqa: E402

from brainkit.baselines import fit_baseline, oracle_scores  # noqa: E402
from brainkit.cyclegan import CycleGAN  # noqa: E402
from brainkit.data import make_loader, split_subjects  # noqa: E402
from brainkit.gan import prepared, seed_process, start_run  # noqa: E402
from brainkit.io import open_dataset, samples_dir  # noqa: E402
from brainkit.metrics import mean_scores  # noqa: E402
from brainkit.pix2pix import Pix2Pix  # noqa: E402
from brainkit.train import Run, distributed_sampler, fit, linear_decay, prepare_out_dir  # noqa: E402
from brainkit.translate import load_translator, translate_volume  # noqa: E402

log = logging.getLogger('curves')
THREADS = 2
BIG = 100_000                    # epochs of the constant-rate schedule: the run is stopped by its budget, not by this

# The settings the curves train with (issue 14 s. 3: chosen from short runs; see bench/README.md, "Learning curves").
MODELS = {
    'pix2pix': dict(cls=Pix2Pix, cfg=dict(size=96, spacing=2.4, netG='unet_32', ngf=32, ndf=32, lr=1e-3, batch_size=4)),
    'cyclegan_t1': dict(cls=CycleGAN, cfg=dict(b_modality='t1', size=64, spacing=3.6, netG='unet_32', ngf=16, ndf=16, lr=5e-4,
                                               batch_size=4, pool_size=50, pairing='position_range', lambda_identity=2.0)),
    'cyclegan_t2': dict(cls=CycleGAN, cfg=dict(b_modality='t2', size=64, spacing=3.6, netG='unet_32', ngf=16, ndf=16, lr=5e-4,
                                               batch_size=4, pool_size=50, pairing='position_range', lambda_identity=0.0)),
}
TARGETS = {  # (model, task) -> baselines to beat on SSIM (higher) and MAE (lower)
    ('pix2pix', 'BraTS t1 -> t2 (in-domain)'): ('lookup',),
    ('cyclegan_t1', 'HCP t1 -> BraTS t1 (oracle)'): ('none', 'histmatch'),
}


# --- data: held-out subjects, truths and baselines of each task ----------------------------------------------------

def held_out_hcp() -> list:
    "The HCP-like subjects CycleGAN holds out (its default split, seed 0): the oracle-scored ones."
    from brainkit.cyclegan import CycleGANConfig
    hcp = open_dataset(samples_dir('hcp'))
    val = split_subjects([s.id for s in hcp], CycleGANConfig().split, 0)['val']
    return [s for s in hcp if s.id in val]


def tasks_of(name:str, meta:dict) -> list[dict]:
    "The scored tasks of model `name`: held-out subjects, truth, target, and the baselines fitted on its training subjects."
    brats = open_dataset(samples_dir('brats'))
    oracle = samples_dir('oracle')
    if name == 'pix2pix':
        split = meta['split']
        train_b = [s for s in brats if s.id in split['train']]
        val_b = [s for s in brats if s.id in split['val']]
        fitted = {b: fit_baseline(b, train_b, 't1', 't2') for b in ('none', 'lookup', 'histmatch+lookup')}
        return [dict(task='BraTS t1 -> t2 (in-domain)', subjects=val_b, truth=lambda s: s['t2'], target='t2',
                     baselines={b: fitted[b] for b in ('none', 'lookup')}),
                dict(task='HCP t1 -> t2 (oracle)', subjects=held_out_hcp(), truth=oracle, target='t2', baselines=fitted)]
    b_mod = 't1' if name == 'cyclegan_t1' else 't2'
    train_b = [s for s in brats if s.id in meta['split']['B']['train']]
    names = ('none', 'histmatch') if b_mod == 't1' else ('none', 'lookup', 'histmatch+lookup')
    fitted = {b: fit_baseline(b, train_b, 't1', b_mod) for b in names}
    a_val = [s for s in open_dataset(samples_dir('hcp')) if s.id in meta['split']['A']['val']]
    return [dict(task=f'HCP t1 -> BraTS {b_mod} (oracle)', subjects=a_val, truth=oracle, target=b_mod, baselines=fitted)]


def score(translate, task:dict) -> dict:
    "THE protocol (chapter 08's `oracle_scores`): mean and per-subject SSIM / PSNR / MAE."
    rows = oracle_scores(translate, task['subjects'], task['truth'], task['target'], 't1')
    return {'mean': {k: round(v, 4) for k, v in mean_scores(rows).items()},
            'subjects': [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}


class TrainModeG(torch.nn.Module):
    "A generator that stays in train mode (batch-norm batch statistics) when `translate_batch` asks it into eval mode."
    def __init__(self, G): super().__init__(); self.G = G
    def train(self, mode:bool=True): self.training = mode; self.G.train(True); return self
    def forward(self, x): return self.G(x)


def make_residual(G:torch.nn.Module) -> torch.nn.Module:
    "Patch generator `G` (in place, weights untouched) to output clamp(x + G(x)): it starts as the identity (a proposal)."
    plain = G.forward
    G.forward = lambda x: torch.clamp(x[:, :1] + plain(x), -1, 1)
    return G


# --- training in budgets -------------------------------------------------------------------------------------------

class Clock:
    "Training compute: process CPU seconds / THREADS and wall seconds, accumulated over the timed sections only."
    def __init__(self): self.cpu = self.wall = 0.0
    def __enter__(self): self._c, self._w = time.process_time(), time.perf_counter(); return self
    def __exit__(self, *exc):
        self.cpu += (time.process_time() - self._c) / THREADS; self.wall += time.perf_counter() - self._w

    @property
    def minutes(self) -> dict: return {'cpu_min': round(self.cpu / 60, 3), 'wall_min': round(self.wall / 60, 3)}


def config_of(name:str, sets:dict, seed:int) -> dict:
    "Model `name`'s config: the curves' settings, the overrides, a constant rate, no sample grids."
    cfg = {**MODELS[name]['cfg'], **sets.get('*', {}), **sets.get(name, {})}
    schedule = {'epochs': BIG, 'epochs_decay': 0} if 'epochs_decay' not in cfg else {}   # a set schedule: trained as set
    return {**cfg, **schedule, 'seed': seed, 'split_seed': 0, 'device': 'cpu', 'sample_every': 0, 'save_every': 1, 'workers': 0}


def curve(name:str, budgets:list[float], sets:dict, seed:int, runs:Path, bn_train:bool, on_point, residual:bool=False) -> dict:
    "Train model `name` up to each budget (CPU minutes, 2 cores) and score it there; returns its curve."
    cls = MODELS[name]['cls']
    cfg_d = config_of(name, sets, seed)
    out = prepare_out_dir(runs/f'{name}_seed{seed}', True, 'bench/curves.py')
    setup, clock = Clock(), Clock()
    with setup:
        cfg, d, device = start_run(cfg_d, cls.Config)
        data = prepared(cls, cfg, d, None, False, out, False)
        loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, workers=0, device=device,
                             sampler=distributed_sampler(data.train, d, cfg.seed))
        m = cls(cfg, device, d)
        if residual:
            for k in ('G', 'G_A', 'G_B'):
                if hasattr(m, k): make_residual(getattr(m, k))
        seed_process(cfg.seed, d)
        run = Run(out, cls.name, asdict(cfg), m.nets, m.optims,
                  {k: linear_decay(o, cfg.epochs, cfg.epochs_decay) for k, o in m.optims.items()}, m.extras, data.meta)
    tasks = tasks_of(name, data.meta)
    res = {'model': name, 'kind': cls.name, 'config': asdict(cfg), 'residual': residual, 'setup': setup.minutes,
           'samples_manifest': _manifest_digest(),
           'train_slices': len(data.train), 'iterations_per_epoch': len(loader), **{'info': data.info},
           'baselines': {t['task']: {b: score(bl, t) for b, bl in t['baselines'].items()} for t in tasks}, 'points': []}
    for t in tasks:
        log.info('%s | %s baselines: %s', name, t['task'],
                 {b: (r['mean']['ssim'], r['mean']['mae']) for b, r in res['baselines'][t['task']].items()})
    epoch, last, history = 0, None, []
    for budget in sorted(budgets):
        # train whole epochs until the epoch end nearest the budget (at least one epoch, and past the previous point)
        # (a set schedule, `--set epochs=N epochs_decay=M`, also ends there: its rate is 0 after N + M epochs)
        while (epoch == 0 or clock.cpu + 0.5 * clock.cpu / epoch < budget * 60 or epoch == last) and epoch < cfg.epochs + cfg.epochs_decay:
            with clock: history = fit(run, loader, m.step, epoch + 1, save_every=1, seed=cfg.seed, resume=epoch > 0,
                                      progress=False, dist=d)
            epoch += 1
        last = epoch
        G, info = load_translator(out, device='cpu')
        if residual: make_residual(G)
        point = {'budget_cpu_min': budget, **clock.minutes, 'epochs': epoch, 'iterations': run.iteration,
                 'losses': {k: round(v, 4) for k, v in history[-1].items() if k not in ('epoch', 'lr', 'seconds')},
                 'scores': {t['task']: score(lambda s: translate_volume(G, info, s), t) for t in tasks}}
        if bn_train and cfg.norm == 'batch':
            Gt = TrainModeG(G)
            point['scores_bn_train'] = {t['task']: score(lambda s: translate_volume(Gt, info, s, batch_size=1), t)['mean']
                                        for t in tasks}
        point['samples_manifest'] = _manifest_digest()         # (the samples must not change during a curve)
        res['points'].append(point)
        log.info('%s | %.2f cpu-min (%.2f wall), epoch %d: %s', name, clock.cpu / 60, clock.wall / 60, epoch,
                 {t: (s['mean']['ssim'], s['mean']['psnr'], s['mean']['mae']) for t, s in point['scores'].items()})
        on_point(res)
    return res


# --- checks, results, figure ----------------------------------------------------------------------------------------

def checks_of(curves:dict) -> list[dict]:
    "Each target of issue 14: the first budget at which the model beats every named baseline on SSIM and MAE."
    out = []
    for (name, task), rivals in TARGETS.items():
        c = curves.get(name)
        if not c or not c['points']: continue
        base = c['baselines'][task]
        ssim_bar = max(base[b]['mean']['ssim'] for b in rivals); mae_bar = min(base[b]['mean']['mae'] for b in rivals)
        first = next((p for p in c['points'] if p['scores'][task]['mean']['ssim'] > ssim_bar
                      and p['scores'][task]['mean']['mae'] < mae_bar), None)
        best = max(c['points'], key=lambda p: p['scores'][task]['mean']['ssim'])
        out.append({'name': f"{name}: {task} beats {' and '.join(rivals)} on SSIM and MAE",
                    'value': best['scores'][task]['mean']['ssim'], 'unit': 'SSIM (best point)',
                    'target': f"SSIM > {ssim_bar:.4f} and MAE < {mae_bar:.4f}", 'met': first is not None,
                    'first_budget_cpu_min': first['budget_cpu_min'] if first else None,
                    'best_point': {'cpu_min': best['cpu_min'], **best['scores'][task]['mean']}})
    return out


def write_json(path:Path, doc:dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent/f'.{path.name}.{secrets.token_hex(4)}.tmp'
    try: tmp.write_text(json.dumps(doc, indent=1) + '\n'); os.replace(tmp, path)
    finally: tmp.unlink(missing_ok=True)


def figure(doc:dict, path:Path):
    "Score against CPU minutes, one panel per (model, task) x metric; baselines as horizontal lines."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [(name, task) for name, c in doc['curves'].items() for task in c['baselines']]
    metrics = [('ssim', 'SSIM (higher is better)'), ('psnr', 'PSNR, dB (higher)'), ('mae', 'MAE (lower)')]
    fig, axes = plt.subplots(len(panels), 3, figsize=(12, 2.7 * len(panels)), squeeze=False)
    for row, (name, task) in zip(axes, panels):
        c = doc['curves'][name]
        x = [p['cpu_min'] for p in c['points']]
        for ax, (k, label) in zip(row, metrics):
            for i, (b, r) in enumerate(c['baselines'][task].items()):
                ax.axhline(r['mean'][k], color=f'C{i + 1}', ls='--', lw=1, label=b)
            if x:
                ax.plot(x, [p['scores'][task]['mean'][k] for p in c['points']], 'o-', color='C0', label=c['kind'])
                if any('scores_bn_train' in p for p in c['points']):
                    ax.plot(x, [p['scores_bn_train'][task][k] for p in c['points']], 'x:', color='C0', alpha=0.6,
                            label=f"{c['kind']}, BN train mode")
            ax.set_xscale('log')
            ticks = [t for t in (0.5, 1, 2, 5, 10, 30, 60) if x and min(x) / 1.5 <= t <= max(x) * 1.5]
            ax.set_xticks(ticks, [f'{t:g}' for t in ticks]); ax.minorticks_off()
            ax.set_xlabel('training CPU minutes (2 cores)'); ax.set_title(f'{task}: {label}', fontsize=8)
        row[0].set_ylabel(name, fontsize=9); row[0].legend(fontsize=6, loc='best')
    fig.suptitle('brainkit learning curves: held-out scores (chapter 08 protocol) vs training compute', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(doc:dict) -> str:
    "The curves as a markdown table: each (model, task)'s baselines, then its points."
    lines = ['| model | task | row | CPU min | wall min | epochs | SSIM | PSNR | MAE |', '|---|---|---|---|---|---|---|---|---|']
    for name, c in doc['curves'].items():
        for task, base in c['baselines'].items():
            for b, r in base.items():
                m = r['mean']; lines.append(f"| {name} | {task} | `{b}` | | | | {m['ssim']:.3f} | {m['psnr']:.2f} | {m['mae']:.3f} |")
            for p in c['points']:
                m = p['scores'][task]['mean']
                lines.append(f"| {name} | {task} | {c['kind']} | {p['cpu_min']:.2f} | {p['wall_min']:.2f} | {p['epochs']} | "
                             f"{m['ssim']:.3f} | {m['psnr']:.2f} | {m['mae']:.3f} |")
    return '\n'.join(lines)


def parse_sets(items:list[str]) -> dict:
    "`KEY=VALUE` (every model) and `MODEL.KEY=VALUE` (one model) overrides; values as JSON where they parse."
    out = {}
    for it in items:
        key, _, val = it.partition('=')
        if not _: raise SystemExit(f"--set {it!r}: write KEY=VALUE or MODEL.KEY=VALUE")
        model, _, field = key.rpartition('.')
        if model and model not in MODELS: raise SystemExit(f"--set {it!r}: no model {model!r} (models: {', '.join(MODELS)})")
        try: v = json.loads(val)
        except json.JSONDecodeError: v = val
        if isinstance(v, list): v = tuple(v)
        out.setdefault(model or '*', {})[field] = v
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    ap.add_argument('--budgets', nargs='+', type=float, default=[1, 2, 5, 10], help='CPU minutes (2 cores)')
    ap.add_argument('--set', nargs='*', default=[], dest='sets', metavar='KEY=VALUE')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--runs', type=Path, default=Path('runs/curves'))
    ap.add_argument('--out', type=Path, default=RESULTS_DIR/'curves.json')
    ap.add_argument('--bn-train', action='store_true', help='also score batch-norm models in train mode (batch 1)')
    ap.add_argument('--residual', action='store_true', help='generators output clamp(x + G(x)) (not in brainkit yet: an experiment)')
    ap.add_argument('--no-figure', action='store_true')
    ap.add_argument('--table', action='store_true', help='print the markdown table of --out (and its figure) and exit')
    a = ap.parse_args(argv)
    if a.table:
        doc = json.loads(a.out.read_text()); print(table(doc))
        if not a.no_figure: figure(doc, a.out.with_suffix('.png'))
        return
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s', datefmt='%H:%M:%S')
    logging.getLogger('brainkit').setLevel(logging.WARNING)
    torch.set_num_threads(THREADS)
    sets = parse_sets(a.sets)
    doc = {'benchmark': 'curves', 'timestamp_utc': None, 'machine': machine_info(), 'argv': sys.argv[1:],
           'compute': f'process CPU time / {THREADS} (torch threads {THREADS}); wall time beside it; data setup and '
                      'evaluation not counted', 'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'), 'protocol': 'brainkit.baselines.oracle_scores on translate_volume '
                      '(whole volumes, input space, BraSyn clip, 3D SSIM/PSNR/MAE in the input brain)',
           'samples_manifest': _manifest_digest(), 'curves': {}, 'checks': []}
    if a.out.exists():                                   # keep the other models' curves of an earlier invocation
        try:
            old = json.loads(a.out.read_text())
            doc['curves'] = {k: v for k, v in old.get('curves', {}).items() if k not in a.models}
        except (OSError, json.JSONDecodeError): pass

    def save(res=None):
        if res is not None: doc['curves'][res['model']] = res
        doc['timestamp_utc'] = datetime.now(timezone.utc).isoformat(timespec='seconds')
        doc['checks'] = checks_of(doc['curves'])
        write_json(a.out, doc)
        if not a.no_figure: figure(doc, a.out.with_suffix('.png'))

    for name in a.models:
        curve(name, a.budgets, sets, a.seed, a.runs, a.bn_train, save, a.residual)
    save()
    for c in doc['checks']:
        print(f"[{'OK' if c['met'] else 'MISSED'}] {c['name']}: best {c['best_point']} (target {c['target']}; "
              f"first met at {c['first_budget_cpu_min']} CPU-min)")


def _manifest_digest() -> str|None:
    "A short hash of data_samples/MANIFEST.json: which samples the curves were measured on."
    import hashlib
    p = samples_dir('hcp').parent/'MANIFEST.json'
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


if __name__ == '__main__':
    main()
