"""Small helpers shared by the `bench/bench_*.py` scripts: timing with repeats, machine info, JSON results.

Conventions (read by `bench/run_all.py`):
- `bench/bench_<name>.py` writes `bench/results/<name>.json` through `write_result(name, ...)`.
- That JSON has a top-level `checks` list; each check is `{"name", "value", "unit", "target", "met"}`,
  where `met` is a bool. `run_all.py` prints those checks as its summary.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR/'results'


def _version(dist:str) -> str|None:
    try: return metadata.version(dist)
    except metadata.PackageNotFoundError: return None


def machine_info() -> dict:
    "Where the numbers were measured: platform, Python, library versions, CPUs, thread settings."
    try: usable = len(os.sched_getaffinity(0))
    except AttributeError: usable = os.cpu_count()
    info = {
        'platform': platform.platform(),
        'machine': platform.machine(),
        'processor': platform.processor() or None,
        'python': sys.version.split()[0],
        'python_impl': platform.python_implementation(),
        'cpu_count': os.cpu_count(),
        'cpu_usable': usable,
        'versions': {d: _version(d) for d in ('brainkit', 'numpy', 'nibabel', 'torch')},
        'threads_env': {k: os.environ[k] for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')
                        if k in os.environ},
    }
    try:
        with open('/proc/cpuinfo') as f:
            info['cpu_model'] = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), None)
    except OSError: pass
    return info


def _one(fn:Callable[[], object]) -> float:
    "Seconds for one call of `fn` (garbage collected before, the result dropped outside the timed region)."
    gc.collect()
    t0 = time.perf_counter()
    res = fn()
    dt = time.perf_counter() - t0
    del res
    return dt


def time_fn(fn:Callable[[], object], repeats:int=5, warmup:int=1) -> list[float]:
    "Wall times of `repeats` calls of `fn` in ms, after `warmup` untimed calls."
    for _ in range(warmup): _one(fn)
    return [_one(fn)*1e3 for _ in range(repeats)]


def time_interleaved(fns:Mapping[str, Callable[[], object]], repeats:int=7, warmup:int=1) -> dict[str, list[float]]:
    "Wall times in ms of several functions called in turn (order reversed every round, so none is favoured)."
    names = list(fns)
    for _ in range(warmup):
        for n in names: _one(fns[n])
    out = {n: [] for n in names}
    for i in range(repeats):
        for n in (names if i % 2 == 0 else names[::-1]): out[n].append(_one(fns[n])*1e3)
    return out


def stats(times_ms:list[float]) -> dict:
    "Median, min, max and every repeat of a list of timings in ms."
    return {'median_ms': round(statistics.median(times_ms), 3), 'min_ms': round(min(times_ms), 3),
            'max_ms': round(max(times_ms), 3), 'repeats': len(times_ms), 'times_ms': [round(t, 3) for t in times_ms]}


def check(name:str, value:float, target:float, unit:str='', higher_is_better:bool=False) -> dict:
    "One target: `value` must be <= `target` (or >= with `higher_is_better`)."
    met = value >= target if higher_is_better else value <= target
    return {'name': name, 'value': round(float(value), 4), 'unit': unit,
            'target': ('>= ' if higher_is_better else '<= ') + f"{target:g}{(' ' + unit) if unit else ''}",
            'met': bool(met)}


def write_result(name:str, payload:dict) -> Path:
    "Write `bench/results/<name>.json` (atomically) with machine info and a UTC timestamp added."
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {'benchmark': name, 'timestamp_utc': datetime.now(timezone.utc).isoformat(timespec='seconds'),
           'machine': machine_info(), **payload}
    path = RESULTS_DIR/f'{name}.json'
    tmp = RESULTS_DIR/f'.{name}.json.{secrets.token_hex(4)}.tmp'
    try:
        tmp.write_text(json.dumps(doc, indent=2) + '\n')
        os.replace(tmp, path)
    finally: tmp.unlink(missing_ok=True)
    return path


def format_checks(checks:list[dict]) -> str:
    "One line per target: OK/MISSED, name, value and target."
    return '\n'.join(f"  [{'OK' if c['met'] else 'MISSED'}] {c['name']}: {c['value']:g}"
                     f"{(' ' + c['unit']) if c.get('unit') else ''} (target {c['target']})" for c in checks)
