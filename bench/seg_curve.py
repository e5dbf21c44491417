"""Learning curve of chapter 07's 2D U-Net: held-out Dice per region against training time, beside the threshold floor.

Writes `bench/results/seg_curve.json` and `bench/results/seg_curve.png`. Run:
`.venv/bin/python bench/seg_curve.py [--epochs 16] [--seeds 0] [--set KEY=VALUE ...]`.

One run per seed of `brainkit.segment.train_segmentation` with chapter 07's quick settings (size 96, base 16,
depth 4, batch 16, lr 3e-3, half of each epoch's slices drawn from those with tumour core, the 0.75/0.25 split with
`split_seed=0`) at a constant learning rate (`epochs_decay=0`) for
`--epochs` epochs. The library validates after every epoch (BraTS's Dice per region on the held-out volumes, as
`segment predict` writes them), so one run gives the whole curve: the Dice of each epoch against the training time
spent so far. Time is the history's per-epoch training seconds (wall, torch on 2 threads; on a shared machine it
grows with the load; validation and data preparation not counted); the whole run's process CPU time / 2 is recorded beside it.

The floors, on the same held-out subjects: chance for the whole tumour (its share of the brain), and chapter 07's
threshold floor (FLAIR for WT, T1ce for ET/TC, fitted on the run's training subjects). `checks` in the JSON say, per
region, at which epoch (and minute) the U-Net first beats the floor, if it does.
"""
from __future__ import annotations

import os
os.environ.setdefault('OMP_NUM_THREADS', '2')
os.environ.setdefault('MKL_NUM_THREADS', '2')
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info  # noqa: E402
from curves import _manifest_digest, parse_sets, write_json  # noqa: E402

from brainkit.io import open_dataset, samples_dir  # noqa: E402
from brainkit.train import load_checkpoint, prepare_out_dir  # noqa: E402
from brainkit.segment import REGION_NAMES, fit_threshold_floor, floor_dice, train_segmentation  # noqa: E402

THREADS = 2
QUICK = dict(dims=2, size=96, base=16, depth=4, batch_size=16, lr=3e-3, tumour_share=0.5)   # chapter 07's quick settings


def floors(metrics:dict, run:Path) -> dict:
    "Chance (WT) and the threshold floor on the run's held-out subjects, fitted on its training subjects."
    brats = open_dataset(samples_dir('brats'))
    val_ids = {r['subject'] for r in metrics['val_subjects']}
    train_ids = set(load_checkpoint(run, 'segment')['meta']['split']['train'])     # the split the run recorded
    val = [s for s in brats if s.id in val_ids]
    train = [s for s in brats if s.id in train_ids]
    floor = fit_threshold_floor(train)
    chance = float(np.mean([(s['seg'].data > 0).sum() / (s['flair'].data > 0).sum() for s in val]))
    return {'chance': {'WT': round(chance, 4)},
            'threshold floor': {r: round(v, 4) for r, v in floor_dice(floor, val).items()},
            'thresholds': {'flair': floor.flair, 't1ce': floor.t1ce}}


def outputs(run:Path, val_ids:set) -> dict:
    """Where the final network's probabilities sit, per region: the median over held-out subjects of the median
    probability inside the region, and in the brain outside the whole tumour (0.5 is the label map's threshold)."""
    from brainkit.data import Slicing, VolumeSet
    from brainkit.io import label_regions
    from brainkit.preprocess import Normalizer
    from brainkit.segment import SegConfig, inside_brain, load_segmenter, predict_regions
    model, meta = load_segmenter(run, device='cpu')
    cfg = SegConfig.from_dict(load_checkpoint(run, 'segment')['config'])
    norms = {m: Normalizer.from_dict(d) for m, d in meta['normalizers'].items()}
    val = [s for s in open_dataset(samples_dir('brats')) if s.id in val_ids]
    vs = VolumeSet(val, cfg.modalities, 'seg', Slicing.of(cfg.slicing(norms), size=None), progress=False)
    inside, outside = {r: [] for r in REGION_NAMES}, {r: [] for r in REGION_NAMES}
    for k in range(len(vs)):
        v = vs[k]; image = v['image'].numpy()
        p, r = predict_regions(model, image, 16), label_regions(v['label'].numpy().astype(np.uint8))
        brain = inside_brain(image) & ~r[0]
        for c, name in enumerate(REGION_NAMES):
            if r[c].any(): inside[name].append(float(np.median(p[c][r[c]])))
            outside[name].append(float(np.median(p[c][brain])))
    return {name: {'median p inside': round(float(np.median(inside[name])), 4) if inside[name] else None,
                   'range inside': [round(min(inside[name]), 4), round(max(inside[name]), 4)] if inside[name] else None,
                   'median p outside the tumour': round(float(np.median(outside[name])), 4)} for name in REGION_NAMES}


def run_seed(seed:int, epochs:int, sets:dict, runs:Path) -> dict:
    cfg = {**QUICK, **sets, 'epochs': epochs, 'epochs_decay': 0, 'seed': seed, 'split_seed': 0, 'device': 'cpu',
           'sample_every': 0}
    c0, w0 = time.process_time(), time.perf_counter()
    run = prepare_out_dir(runs/f'unet_seed{seed}', True, 'bench/seg_curve.py')   # (a rerun starts afresh)
    m = train_segmentation(cfg, run, resume=False, progress=False)
    cpu, wall = (time.process_time() - c0) / THREADS, time.perf_counter() - w0
    elapsed, points = 0.0, []
    for h in m['history']:
        elapsed += h['seconds']
        points.append({'epoch': h['epoch'], 'train_min': round(elapsed / 60, 3), 'loss': round(h['loss'], 4),
                       **{r: round(h[f'val_{r}'], 4) for r in REGION_NAMES}})
    return {'seed': seed, 'config': m['config'], 'train_subjects': m['train_subjects'], 'train_slices': m['train_items'],
            'held_out': [r['subject'] for r in m['val_subjects']], 'run_cpu_min': round(cpu / 60, 3),
            'run_wall_min': round(wall / 60, 3), 'points': points, 'floors': floors(m, run),
            'outputs_at_end': outputs(run, {r['subject'] for r in m['val_subjects']})}


def checks_of(curves:list[dict]) -> list[dict]:
    "Per seed and region: the first epoch at which the U-Net's held-out Dice beats the threshold floor."
    out = []
    for c in curves:
        for r in REGION_NAMES:
            bar = c['floors']['threshold floor'][r]
            first = next((p for p in c['points'] if p[r] > bar), None)
            best = max(c['points'], key=lambda p: p[r])
            out.append({'name': f"U-Net seed {c['seed']}: {r} Dice beats the threshold floor", 'target': f'> {bar:.4f}',
                        'met': first is not None, 'first_epoch': first and first['epoch'],
                        'first_train_min': first and first['train_min'], 'best': {'epoch': best['epoch'], r: best[r]}})
    return out


def figure(doc:dict, path:Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, r in zip(axes, REGION_NAMES):
        for i, c in enumerate(doc['curves']):
            ax.plot([p['train_min'] for p in c['points']], [p[r] for p in c['points']], 'o-', ms=3, color=f'C{i}',
                    label=f"U-Net seed {c['seed']}")
            ax.axhline(c['floors']['threshold floor'][r], color=f'C{i}', ls='--', lw=1,
                       label='threshold floor' if i == 0 else None)
            if r in c['floors']['chance']:
                ax.axhline(c['floors']['chance'][r], color='gray', ls=':', lw=1, label='chance' if i == 0 else None)
        ax.set_ylim(0, 1); ax.set_xlabel('training minutes (2 cores)'); ax.set_title(f'held-out {r} Dice', fontsize=9)
    axes[0].legend(fontsize=7)
    share = doc['curves'][0]['config'].get('tumour_share', 0) if doc['curves'] else 0
    fig.suptitle(f"chapter 07's 2D U-Net (constant learning rate, tumour_share {share}) vs the threshold floor", fontsize=10)
    fig.tight_layout(); fig.savefig(path, dpi=90); plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--epochs', type=int, default=16)
    ap.add_argument('--seeds', nargs='+', type=int, default=[0])
    ap.add_argument('--set', nargs='*', default=[], dest='sets', metavar='KEY=VALUE', help='SegConfig overrides (JSON values)')
    ap.add_argument('--runs', type=Path, default=Path('runs/seg_curve'))
    ap.add_argument('--out', type=Path, default=RESULTS_DIR/'seg_curve.json')
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s', datefmt='%H:%M:%S')
    logging.getLogger('brainkit').setLevel(logging.WARNING)
    torch.set_num_threads(THREADS)
    sets = parse_sets(a.sets).get('*', {})
    doc = {'benchmark': 'seg_curve', 'machine': machine_info(), 'argv': sys.argv[1:],   # (of the latest invocation)
           'time': 'history seconds of each training epoch (wall, 2 threads, validation not counted)',
           'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'), 'samples_manifest': _manifest_digest(), 'curves': []}
    if a.out.exists():                                   # keep the other seeds' curves of an earlier invocation
        want = {**QUICK, **sets}                         # ... measured with the same settings (any number of epochs)
        try: doc['curves'] = [c for c in json.loads(a.out.read_text())['curves'] if c['seed'] not in a.seeds
                              and all(c['config'].get(k) == v for k, v in want.items())]
        except (OSError, json.JSONDecodeError, KeyError): pass
    for seed in a.seeds:
        doc['curves'] = sorted([*doc['curves'], run_seed(seed, a.epochs, sets, a.runs)], key=lambda c: c['seed'])
        doc['checks'] = checks_of(doc['curves'])
        doc['timestamp_utc'] = datetime.now(timezone.utc).isoformat(timespec='seconds')
        write_json(a.out, doc); figure(doc, a.out.with_suffix('.png'))
        c = next(c for c in doc['curves'] if c['seed'] == seed)
        print(f"seed {seed}: floors {c['floors']['threshold floor']}, run {c['run_cpu_min']} CPU-min")
        for p in c['points']: print('  ', p)
    for c in doc['checks']:
        print(f"[{'OK' if c['met'] else 'MISSED'}] {c['name']} {c['target']}: first at epoch {c['first_epoch']} "
              f"({c['first_train_min']} min); best {c['best']}")


if __name__ == '__main__':
    main()
