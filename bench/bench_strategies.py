"""Benchmark the main job (issue 15): the quick strategies sweep with 1 and 2 workers, where its time goes, and what
sharing the models saves.

Writes `bench/results/strategies.json`. Run: `.venv/bin/python bench/bench_strategies.py [--quick] [--workers 2 1] [--keep DIR]`
(not run by `run_all.py` or `make bench`: about 25 minutes on 2 cores; `--quick`, one target and one seed, about 6).

1. Wall time: `nbs/sweeps/strategies.yaml` run with `run_sweep` into a fresh folder with a fresh models folder, once per
   worker count (2 workers: one math thread per kernel; 1 worker: all cores), one after the other.
2. Where the time goes, from every run's `metrics.json` (`seconds`): `train` (the models a run had to train, or wait
   for), `score` (translating the held-out subjects and scoring them), `write` (translating every subject into the
   strategy's dataset), and the rest of each run's time (`other`: kernel start, imports, opening the datasets, figures).
3. Model reuse: each model's training time (`trained.json`, written by `ensure_models`) summed once per model (what
   the sweep trains, sharing models between strategies), against summed once per run that uses it (what training
   every strategy's models separately would cost: strategy 1 and 3 each their own Pix2Pix models, strategy 1 its own
   CycleGAN t1 -> t1 for each target... as the report's setting would without a shared models folder).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_DIR, check, format_checks, write_result  # noqa: E402

from brainkit.experiments import load_sweep, run_sweep  # noqa: E402
from brainkit.strategies import TRAINED, ModelSpec, model_config, model_key  # noqa: E402

SWEEP = REPO_DIR/'nbs'/'sweeps'/'strategies.yaml'


def one(workers:int, quick:bool, tmp:Path) -> dict:
    "Run the main job's sweep with `workers` into fresh folders under `tmp`; its wall time and the runs' own times."
    sw = load_sweep(SWEEP)
    models = tmp/f'models-{workers}'
    params = {**sw.params, 'models_dir': str(models)}
    runs = sw.runs
    if quick:
        params['targets'] = ['t2']
        runs = [r for r in runs if r.get('seed', 0) == 0]
    sw = replace(sw, params=params, runs=runs)
    t0 = time.perf_counter()
    res = run_sweep(sw, workers=workers, out=tmp/f'sweep-{workers}', progress=False)
    wall = time.perf_counter() - t0
    rows = []
    for r in res.rows:
        m = json.loads((res.folder/r['run']/'out'/'metrics.json').read_text()) if r['status'] == 'done' else {}
        rows.append({'run': r['run'], 'status': r['status'], 'seconds': r['seconds'], **(m.get('seconds') or {}),
                     'models': list(m.get('models', {}))})
    trained = {p.parent.name: json.loads(p.read_text())['seconds'] for p in sorted(models.glob(f'*/{TRAINED}'))}   # per model folder (seed and settings in its name)
    return {'workers': workers, 'wall_s': round(wall, 1), 'runs': rows, 'failed': [r['run'] for r in rows if r['status'] != 'done'],
            'model_train_s': trained, 'models_dir': str(models)}


def shares(m:dict) -> dict:
    "Sums of the runs' train / score / write / other seconds, and each one's share of the runs' total."
    tot = {k: sum(r.get(k, 0) or 0 for r in m['runs']) for k in ('seconds', 'train', 'score', 'write')}
    tot['other'] = tot['seconds'] - tot['train'] - tot['score'] - tot['write']
    return {'run_seconds_total': round(tot['seconds'], 1),
            **{f'{k}_s': round(tot[k], 1) for k in ('train', 'score', 'write', 'other')},
            **{f'{k}_share': round(tot[k] / tot['seconds'], 3) for k in ('train', 'score', 'write', 'other')}}


def reuse(m:dict) -> dict:
    "Training time with the models shared (each trained once) against every run training its own."
    per_model = m['model_train_s']
    used = [name for r in m['runs'] for name in r['models']]      # 'pix2pix t1->t2', ... once per run that uses it
    seeds = {r['run']: r['run'].split(',')[0] for r in m['runs']} # run folder names start with 'seed=N,'
    once = sum(per_model.values())                                # (trained.json per model folder: each model once)
    separate = 0.0
    for r in m['runs']:
        for name in r['models']:
            separate += _model_seconds(m, name, seeds[r['run']])
    return {'shared_train_s': round(once, 1), 'separate_train_s': round(separate, 1), 'models_trained': len(per_model),
            'model_uses': len(used), 'saving': round(1 - once / separate, 3) if separate else None}


def _model_seconds(m:dict, name:str, seed_part:str) -> float:
    "The training time of model `name` ('pix2pix t1->t2') for the run's seed (from the models folder's trained.json)."
    kind, mods = name.split(' ')
    source, target = mods.split('->')
    spec = ModelSpec(kind, source, target)
    seed = int(seed_part.split('=')[1]) if seed_part.startswith('seed=') else 0
    cfg = model_config(spec, seed)
    p = Path(m['models_dir'])/model_key(spec, cfg)/TRAINED
    return json.loads(p.read_text())['seconds'] if p.is_file() else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='one target (t2) and seed 0 only')
    ap.add_argument('--workers', nargs='+', type=int, default=[2, 1])
    ap.add_argument('--keep', type=Path, default=None, help='write the sweeps here and keep them (e.g. runs/bench-strategies), for their tables')
    ap.add_argument('--recompute', type=Path, default=None, metavar='KEPT',
                    help='recompute the model-reuse figures of results/strategies.json from the models folders kept in KEPT (no sweep is run)')
    a = ap.parse_args(argv)
    out = {}
    if a.recompute is not None:
        prev = json.loads((REPO_DIR/'bench'/'results'/'strategies.json').read_text())
        for w, m in prev['by_workers'].items():
            models = a.recompute.resolve()/f'models-{w}'
            m['model_train_s'] = {p.parent.name: json.loads(p.read_text())['seconds'] for p in sorted(models.glob(f'*/{TRAINED}'))}
            m['reuse'] = reuse({**m, 'models_dir': str(models)})
            print(w, json.dumps(m['reuse']))
        out, a.quick = {int(w): m for w, m in prev['by_workers'].items()}, prev['quick']
    if a.keep is not None and a.keep.exists() and any(a.keep.iterdir()):
        sys.exit(f"{a.keep} is not empty: the benchmark needs fresh sweep and models folders; remove it or give another --keep")
    with tempfile.TemporaryDirectory(prefix='bench-strategies-') as tmp:
        tmp = a.keep.resolve() if a.keep is not None else Path(tmp)
        for w in ([] if a.recompute is not None else a.workers):
            print(f"sweep with {w} worker(s) ...", flush=True)
            m = one(w, a.quick, tmp)
            out[w] = {**{k: v for k, v in m.items() if k != 'models_dir'}, **shares(m), 'reuse': reuse(m)}
            print(json.dumps({k: out[w][k] for k in ('wall_s', 'train_share', 'score_share', 'write_share', 'other_share', 'reuse')}), flush=True)
    checks = []
    if 2 in out:
        checks.append(check('main job sweep, 2 workers', out[2]['wall_s'] / 60, 4.0 if a.quick else 12.0, 'min'))
        checks.append(check('model reuse: share of the training time saved (2 workers)', out[2]['reuse']['saving'] or 0, 0.3, '', True))
    if 1 in out and 2 in out:
        checks.append(check('speedup of 2 workers over 1', out[1]['wall_s'] / out[2]['wall_s'], 1.1, 'x', True))
    write_result('strategies', {'quick': a.quick, **({'reuse_recomputed_from': str(a.recompute)} if a.recompute else {}), 'sweep': str(SWEEP.relative_to(REPO_DIR)), 'by_workers': out, 'checks': checks})
    print(format_checks(checks))


if __name__ == '__main__':
    main()
