"""Benchmark progressive volumetrization (issue 16): the translation time of one volume through 1, 2 and 3 stages,
and the memory of the 3D baseline against a 2D stage.

Writes `bench/results/progressive.json`. Run: `.venv/bin/python bench/bench_progressive.py [--models DIR]` (part of
`run_all.py` and `make bench`; about a minute when the models exist, plus about 4 minutes to train them on 2 cores).

The models are chapter 16's quick ones (`train_stages('paired', ['t2'], 'ASC', 3)`, seed 0), taken from `--models`
(default `runs/strategies/models`, the main job's and the progressive sweep's folder) or trained there. One held-out
HCP-like t1 goes through the paired Pix2Pix (stage 1), then the sagittal stage, then the coronal one, each count of
stages timed in turn (interleaved, the order reversed every round), with the same code the runs use
(`translate_volume`, `refine`). Target (the issue's): 3 stages cost at most 3.3x one stage. Each later stage reads two
channels where stage 1 reads one, and slices along another plane, with as many slices as that plane has.

Memory: the peak resident memory while one process translates the same volume once, with the 3D baseline
(`ensure_volume3d`, chapter 16's default `Volume3DConfig`) or with the sagittal stage, and while it takes one
training step of each on a BraTS-like volume (the 3D model on the whole padded volume, the 2D stage on a batch of 4
slices, its quick setting), each in a fresh subprocess with only its own model loaded, over that process's memory
just before (sampled every 0.5 ms by a thread reading /proc/self/statm).
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_DIR, check, format_checks, stats, time_interleaved, write_result  # noqa: E402

import torch  # noqa: E402

from brainkit.io import open_dataset, samples_dir, save_volume  # noqa: E402
from brainkit.progressive import held_out, refine, train_stages  # noqa: E402
from brainkit.strategies import ModelSpec  # noqa: E402
from brainkit.translate import load_translator, translate_volume  # noqa: E402


def _rss_mb() -> float:
    "This process's resident memory now, MB (Linux: /proc/self/statm)."
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_growth_mb(fn) -> float:
    "The peak of resident memory while `fn` runs, over the memory just before, MB (sampled every 0.5 ms by a thread)."
    import threading
    import time
    gc.collect()
    base, peak, done = _rss_mb(), [0.0], threading.Event()
    def watch():
        while not done.is_set(): peak[0] = max(peak[0], _rss_mb()); time.sleep(0.0005)
    t = threading.Thread(target=watch); t.start()
    try: fn()
    finally: done.set(); t.join()
    return max(peak[0], _rss_mb()) - base


def memory_child(kind:str, models:str, estimate:str) -> dict:
    "In a fresh process: peak RSS growth (MB) of one inference or one training step of the 3D baseline or the 2D stage (only its own model loaded)."
    import numpy as np
    import torch.nn.functional as F
    from brainkit.io import load_volume
    from brainkit.preprocess import resample
    from brainkit.progressive import ensure_volume3d, load_volume3d, pad_volume, translate_volume3d
    torch.set_num_threads(1)
    hcp = open_dataset(samples_dir('hcp')); t1 = hcp[held_out(hcp)[0]].load(['t1'])['t1']
    if kind.startswith('3d'): G, info = load_volume3d(ensure_volume3d('t1', 't2', models, device='cpu', progress=False), 'cpu')
    else: G, info = load_translator(train_stages('paired', ['t2'], 'ASC', 2, models_dir=models, device='cpu', progress=False)[1]['t2'][0], device='cpu')
    if kind.endswith('step'):
        b = open_dataset(samples_dir('brats'))[0].load(['t1', 't2'])              # a BraTS-like t1 and t2 at 2.4 mm
        x = torch.from_numpy(np.stack([np.moveaxis(resample(b[m], 2.4).data, 2, 0) for m in ('t1', 't2')]))
        if kind.startswith('3d'): x = pad_volume(x, 2 ** info['net']['depth'])[0][None]   # the whole padded volume
        else: x = x.permute(1, 0, 2, 3)[:4, :, :96, :96].contiguous()         # the 2D quick batch: 4 slices, 2 channels
    est = load_volume(estimate) if kind == '2d infer' else None
    def run():
        if kind == '3d infer': translate_volume3d(G, info, {'t1': t1})
        elif kind == '2d infer': refine([(G, info)], t1, est)
        else:
            G.train(); F.l1_loss(G(x[:, :1]) if kind.startswith('3d') else G(x), x[:, 1:]).backward()
    before = _rss_mb()
    return {'kind': kind, 'peak_growth_mb': round(peak_growth_mb(run), 1), 'before_mb': round(before, 1), 'weights': sum(p.numel() for p in G.parameters())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--models', default=str(REPO_DIR/'runs'/'strategies'/'models'))
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--memory-child', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--estimate', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_child: print(json.dumps(memory_child(a.memory_child, a.models, a.estimate))); return 0
    torch.set_num_threads(1)
    chain, later = train_stages('paired', ['t2'], 'ASC', 3, models_dir=a.models, device='cpu', progress=False)
    G1, info1 = chain.translator(ModelSpec('pix2pix', 't1', 't2'))
    nets = [load_translator(f, device='cpu') for f in later['t2']]
    hcp = open_dataset(samples_dir('hcp'))
    s = hcp[held_out(hcp)[0]]
    t1 = s.load(['t1'])['t1']
    def stages(n):
        def run():
            y = translate_volume(G1, info1, {'t1': t1})
            return refine(nets[:n - 1], t1, y) if n > 1 else y
        return run
    times = time_interleaved({f'{n} stage{"s" if n > 1 else ""}': stages(n) for n in (1, 2, 3)}, repeats=a.repeats)
    st = {k: stats(v) for k, v in times.items()}
    one = st['1 stage']['median_ms']
    ratios = {k: round(v['median_ms'] / one, 3) for k, v in st.items()}
    checks = [check('3 stages / 1 stage, translation time per volume', ratios['3 stages'], 3.3, 'x')]
    memory, est = {}, Path(tempfile.mkdtemp())/'estimate.nii.gz'
    save_volume(stages(1)(), est)                                  # stage 1's output, the 2D stage's estimate
    for kind in ('3d infer', '2d infer', '3d step', '2d step'):
        r = subprocess.run([sys.executable, __file__, '--models', a.models, '--memory-child', kind, '--estimate', str(est)],
                           capture_output=True, text=True, check=True)
        memory[kind] = json.loads(r.stdout.strip().splitlines()[-1])
    memory['3d / 2d, inference'] = round(memory['3d infer']['peak_growth_mb'] / max(memory['2d infer']['peak_growth_mb'], 1e-3), 2)
    memory['3d / 2d, training step'] = round(memory['3d step']['peak_growth_mb'] / max(memory['2d step']['peak_growth_mb'], 1e-3), 2)
    write_result('progressive', {
        'volume': {'subject': s.id, 'shape': list(t1.shape), 'spacing_mm': [round(float(x), 3) for x in t1.spacing],
                   'model_spacing_mm': info1['spacing'], 'planes': [info1['plane'], *(i['plane'] for _, i in nets)]},
        'threads': 1, 'timings': st, 'ratios_to_one_stage': ratios, 'memory': memory, 'checks': checks})
    print({k: v['median_ms'] for k, v in st.items()}, ratios)
    print(json.dumps(memory, indent=1))
    print(format_checks(checks))
    return 0


if __name__ == '__main__': sys.exit(main())
