"""Benchmark brainkit.experiments: what running a notebook as a papermill experiment costs per run, and the wall time of a
sweep with 1 and 2 workers.

Writes `bench/results/sweep.json`. Run: `.venv/bin/python bench/bench_sweep.py [--quick]` (or `make bench`; `--quick` or
BENCH_QUICK=1 for a smoke test under a minute).

1. Overhead per run. The experiment is a notebook (written to a temporary folder) whose work is fixed CPU work: `reps`
   float32 matmuls of `n`x`n` torch tensors, then `out_dir/metrics.json`. It runs
   (a) with `run_notebook`: a fresh kernel through papermill, the run folder, params.json, run.json, kernel.log;
   (b) as its code cells `exec`'d in this process with the same parameters (torch already imported: warm);
   and (c) an empty experiment (its parameters cell and a metrics.json write) with `run_notebook`: the cost of a run
   that does nothing (kernel start and shutdown, papermill, brainkit's bookkeeping). (a) and (b) alternate, both with
   the same number of torch threads (the usable cores). `overhead_s` = median (a) - median (b): kernel start,
   papermill, bookkeeping, and the kernel's own `import torch` (a fresh process imports it again).
2. Sweep wall time: the same notebook swept over 4 seeds with `run_sweep`, 1 worker (OMP_NUM_THREADS = cores) against
   2 workers (cores / 2 each), into fresh folders, alternating. `speedup` = wall(1 worker) / wall(2 workers).

The machine may be shared. Before each measurement the script waits (up to 20 s) for other processes to go quiet, and
it records the share of the CPUs that other processes used during the measurement (`other_cpu`: busy ticks of the
whole machine minus those of this process and its reaped kernels, over the ticks available). Medians use the quiet
measurements (`other_cpu` <= 0.1) when there are any (`from_quiet`), else all.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check, format_checks, write_result  # noqa: E402
from bench_networks import _ticks, wait_quiet  # noqa: E402

from brainkit.experiments import run_notebook, run_status, run_sweep, sweep_from_dict  # noqa: E402

OVERHEAD_TARGET = 3.0      # s per run: an empty experiment with run_notebook
SPEEDUP_TARGET = 1.1       # 2 workers against 1, on 2 cores
SWEEP_RUNS = 4

WORK = ["import json, pathlib, time\nimport torch\ntorch.manual_seed(seed)\nt0 = time.perf_counter()",
        "a = torch.randn(n, n)\nfor _ in range(reps): b = a @ a",
        "out = pathlib.Path(out_dir); out.mkdir(parents=True, exist_ok=True)\n"
        "json.dump({'work_s': time.perf_counter() - t0, 'threads': torch.get_num_threads()}, open(out/'metrics.json', 'w'))"]
EMPTY = ["import json, pathlib\nout = pathlib.Path(out_dir); out.mkdir(parents=True, exist_ok=True)\n"
         "json.dump({'ok': 1}, open(out/'metrics.json', 'w'))"]


def make_notebook(path:Path, cells:list[str], params:str) -> Path:
    nb = new_notebook(cells=[new_code_cell(params, metadata={'tags': ['parameters']}), *map(new_code_cell, cells)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


QUIET = 0.1               # a measurement is quiet if other processes used at most this share of the CPUs


def _mine() -> float:
    "CPU ticks of this process and of its children that have ended (the kernels, once shut down)."
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system) * os.sysconf('SC_CLK_TCK')


def measure(fn, cores:int) -> dict:
    "Seconds for `fn()` (after waiting up to 20 s for quiet), and the share of the CPUs other processes used meanwhile."
    wait_quiet(20)
    a, m0, t0 = _ticks(), _mine(), time.perf_counter()
    fn()
    dt, b, m1 = time.perf_counter() - t0, _ticks(), _mine()
    other = None if a is None or b is None else max(0.0, (b[0] - a[0]) - (m1 - m0)) / (dt * os.sysconf('SC_CLK_TCK') * cores)
    return {'s': round(dt, 3), 'other_cpu': None if other is None else round(other, 3)}


def median_of(ms:list[dict]) -> dict:
    "Median seconds over the quiet measurements (all of them if none was quiet)."
    q = [m for m in ms if m['other_cpu'] is None or m['other_cpu'] <= QUIET]
    return {'median_s': round(statistics.median(m['s'] for m in (q or ms)), 3), 'from_quiet': bool(q), 'quiet': len(q), 'all': ms}


def exec_cells(cells:list[str], params:dict):
    "Run `cells` in this process, in a namespace holding `params`."
    ns = dict(params)
    for c in cells: exec(compile(c, '<cell>', 'exec'), ns)


def notebook_run(nb:Path, params:dict, runs:Path, threads:int):
    assert run_status(run_notebook(nb, params, runs, threads=threads))['status'] == 'done'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', default=os.environ.get('BENCH_QUICK') == '1', help='one round, less work (under a minute)')
    a = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    n, reps, rounds, sweep_rounds = (1024, 40, 1, 1) if a.quick else (1024, 400, 3, 2)
    os.environ.setdefault('JUPYTER_RUNTIME_DIR', str(Path(tempfile.gettempdir())/'brainkit-bench-jupyter'))
    tmp = Path(tempfile.mkdtemp(prefix='bench-sweep-'))
    try:
        work = make_notebook(tmp/'work.ipynb', WORK, f"n = {n}\nreps = {reps}\nseed = 0\nout_dir = 'out'")
        empty = make_notebook(tmp/'empty.ipynb', EMPTY, "seed = 0\nout_dir = 'out'")
        import torch
        torch.set_num_threads(cores)
        load0 = os.getloadavg()

        # 1. per run: run_notebook (a) against exec in this process (b), alternating; and an empty experiment (c)
        exec_cells(WORK[:1], {'seed': 0})                                 # warm: torch imported
        a_s, b_s, c_s = [], [], []
        for i in range(rounds + 1):                                       # round 0 warms the kernel path (disk caches)
            run_a = lambda: measure(lambda: notebook_run(work, {'seed': i}, tmp/'runs', cores), cores)
            run_b = lambda: measure(lambda: exec_cells(WORK, {'n': n, 'reps': reps, 'seed': i, 'out_dir': str(tmp/'exec'/str(i))}), cores)
            if i % 2 == 0: ta = run_a(); tb = run_b()
            else: tb = run_b(); ta = run_a()
            tc = measure(lambda: notebook_run(empty, {'seed': i}, tmp/'runs-empty', cores), cores)
            if i: a_s.append(ta); b_s.append(tb); c_s.append(tc)
            print(f"round {i}: papermill {ta}, exec {tb}, empty experiment {tc}", flush=True)
        per_run = {'papermill': median_of(a_s), 'exec': median_of(b_s), 'empty_experiment': median_of(c_s)}
        per_run['overhead_s'] = round(per_run['papermill']['median_s'] - per_run['exec']['median_s'], 3)

        # 2. a 4-run sweep with 1 and 2 workers, alternating
        walls, sweep = {1: [], 2: []}, sweep_from_dict({'notebook': 'work.ipynb', 'grid': {'seed': list(range(SWEEP_RUNS))}}, tmp)
        for r in range(sweep_rounds):
            for w in ((1, 2) if r % 2 == 0 else (2, 1)):
                out = tmp/f'sweep-{w}'
                shutil.rmtree(out, ignore_errors=True)
                res = {}
                walls[w].append(measure(lambda: res.update(r=run_sweep(sweep, workers=w, out=out, progress=False)), cores))
                assert [x['status'] for x in res['r'].rows] == ['done'] * SWEEP_RUNS
                print(f"sweep of {SWEEP_RUNS} runs, {w} worker(s): {walls[w][-1]}", flush=True)
        work_s = {w: [json.loads((tmp/f'sweep-{w}'/f'seed={s}'/'out'/'metrics.json').read_text())['work_s'] for s in range(SWEEP_RUNS)]
                  for w in walls}
        wall = {f'{w}_worker{"s" if w > 1 else ""}': median_of(v) for w, v in walls.items()}
        sweep_res = {'runs': SWEEP_RUNS, 'wall': wall, 'speedup_2_workers': round(wall['1_worker']['median_s'] / wall['2_workers']['median_s'], 3),
                     'matmul_s_per_run_last_round': {str(w): [round(t, 2) for t in v] for w, v in work_s.items()},
                     'kernel_threads': {str(w): max(1, cores // w) for w in walls}}
    finally: shutil.rmtree(tmp, ignore_errors=True)

    checks = [check('empty_experiment_per_run', per_run['empty_experiment']['median_s'], OVERHEAD_TARGET, 's'),
              check('speedup_2_workers_vs_1', sweep_res['speedup_2_workers'], SPEEDUP_TARGET, 'x', higher_is_better=True)]
    path = write_result('sweep', {
        'settings': {'mode': 'quick' if a.quick else 'full', 'n': n, 'reps': reps, 'rounds': rounds, 'sweep_rounds': sweep_rounds, 'cores': cores,
                     'loadavg_before': [round(x, 2) for x in load0], 'loadavg_after': [round(x, 2) for x in os.getloadavg()]},
        'per_run': per_run, 'sweep': sweep_res, 'checks': checks, 'all_targets_met': all(c['met'] for c in checks)})
    print(format_checks(checks)); print('wrote', path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
