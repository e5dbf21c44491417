"""FID feature extraction speed: brainkit.metrics.inception_features in slices/s, by feature block and batch size.

Writes `bench/results/fid.json`. Run: `.venv/bin/python bench/bench_fid.py [--quick]` (or `make bench`).

- The network is pytorch-fid's InceptionV3, with random weights made locally (`random_fid_weights`): the speed
  does not depend on the weights' values, and this machine cannot download the reference file.
- Input: 96x96 slices in [-1, 1] (the network resizes them to 299x299 itself), batch sizes 1, 8 and 32.
- A deeper block costs more: 64 dims stops after the first pooling, 2048 runs the whole network.
- Also timed: the Frechet distance (scipy's sqrtm) at 64 and 2048 dims, which at 2048 costs seconds on a CPU.
- Target: batching must not be slower per slice than one slice at a time (batch 32 >= 0.95x batch 1's rate);
  at 64 dims it is (see bench/README.md), which is why the CPU default batch is 8.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault('BRAINKIT_TORCHVISION_PLACEHOLDER', '1')   # this machine's torchvision wheel: see brainkit.metrics
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import torch
from _common import check, format_checks, write_result  # noqa: E402

from brainkit.metrics import fid_inception, frechet_distance, inception_features, random_fid_weights  # noqa: E402


def rate(net, n:int, batch:int, rounds:int) -> dict:
    "Slices per second of `inception_features` on `n` slices at `batch`, best and all of `rounds`."
    x = torch.rand(n, 1, 96, 96) * 2 - 1
    inception_features(net, x[:batch], batch, progress=False)                   # warm-up
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter(); inception_features(net, x, batch, progress=False); rates.append(n / (time.perf_counter() - t0))
    return {'slices_per_s': max(rates), 'rounds': rates, 'n': n, 'batch': batch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer slices and rounds (a smoke test)')
    a = ap.parse_args(argv)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    weights = random_fid_weights()
    n, rounds = (16, 1) if a.quick else (64, 3)
    results, checks = {}, []
    for dims in (64, 192, 768, 2048):
        net = fid_inception(dims, weights, device=device)
        results[dims] = {b: rate(net, n, b, rounds) for b in (1, 8, 32)}
        print(dims, {b: round(r['slices_per_s'], 1) for b, r in results[dims].items()}, 'slices/s', flush=True)
    fd = {}
    for d in (64, 2048):
        f = np.random.default_rng(0).normal(size=(2 * d + 10, d))
        t0 = time.perf_counter(); frechet_distance(f[: d + 5], f[d + 5:]); fd[d] = time.perf_counter() - t0
    print('frechet_distance seconds', fd)
    for dims in (64, 2048):
        r1, r32 = results[dims][1]['slices_per_s'], results[dims][32]['slices_per_s']
        checks.append(check(f'FID features {dims}-dim: batch 32 vs batch 1 slices/s', r32 / r1, 0.95, 'x', higher_is_better=True))
    write_result('fid', {'device': device, 'quick': a.quick, 'slice_size': 96, 'features': results,
                         'frechet_seconds': fd, 'checks': checks})
    print(format_checks(checks))
    return 0


if __name__ == '__main__':
    sys.exit(main())
