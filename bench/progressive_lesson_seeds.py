#!/usr/bin/env python
"""The seeds behind chapter 16's live run: `run_progressive('paired', ['t2'], 'ASC', 2)` at chapter 14's lesson settings
(`LESSON`), for seeds 0, 1 and 2, every stage score of `STAGE_SCORES` after stages 1 and 2.

The chapter runs seed 0 and asserts the sagittal stage's gain in volume and sagittal-slice SSIM with a margin taken from
these seeds; its prose quotes their ranges. Writes `bench/results/progressive_lesson_seeds.json`.

    .venv/bin/python bench/progressive_lesson_seeds.py [--models-dir DIR] [--seeds 0 1 2]

Not part of `make bench` (`run_all.py` runs only `bench_*.py`): it trains a Pix2Pix and a stage per seed (about 2 min
each on one core), or reuses them from `--models-dir`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from _common import machine_info  # noqa: E402

LESSON = {'pix2pix': dict(size=64, spacing=3.6), 'cyclegan': dict(ngf=8, ndf=8)}   # chapter 14's, as chapter 16's live run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models-dir', default=None, help='trained models to reuse (default: a temporary folder)')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    a = ap.parse_args()
    from brainkit.progressive import STAGE_SCORES, run_progressive, stage_value
    models = a.models_dir or tempfile.mkdtemp()
    out = {'benchmark': 'progressive_lesson_seeds', 'timestamp_utc': datetime.now(timezone.utc).isoformat(timespec='seconds'),
           'machine': machine_info(), 'call': "run_progressive('paired', ['t2'], 'ASC', 2, seed=s, settings=LESSON)",
           'settings': LESSON, 'seeds': {}}
    for s in a.seeds:
        t = time.perf_counter()
        res = run_progressive('paired', ['t2'], 'ASC', 2, seed=s, settings=LESSON, models_dir=models, out_dir=tempfile.mkdtemp(),
                              write_datasets=False, figures=False, progress=False)
        out['seeds'][str(s)] = {'scores': {sc: [stage_value(res, k, 't2', sc) for k in (1, 2)] for sc in STAGE_SCORES},
                                'trained_seconds': res['trained_seconds'], 'seconds': round(time.perf_counter() - t, 1)}
        print(s, {sc: [round(v, 3) for v in vs] for sc, vs in out['seeds'][str(s)]['scores'].items()}, flush=True)
    gains = {sc: [v['scores'][sc][1] - v['scores'][sc][0] for v in out['seeds'].values()] for sc in STAGE_SCORES}
    out['stage2_minus_stage1'] = {sc: {'min': min(g), 'max': max(g)} for sc, g in gains.items()}
    path = BENCH_DIR/'results'/'progressive_lesson_seeds.json'
    path.write_text(json.dumps(out, indent=1) + '\n')
    print('wrote', path)


if __name__ == '__main__': main()
