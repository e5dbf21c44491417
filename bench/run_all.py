"""Run every `bench/bench_*.py` in its own subprocess and print a summary of their targets.

Usage: `.venv/bin/python bench/run_all.py [-k SUBSTRING] [--strict] [--timeout S]` (or `make bench`).
Each `bench_<name>.py` writes `bench/results/<name>.json`; the summary reads its `checks` list.
Exit status: 1 if a benchmark script failed (or, with --strict, if a target was missed), else 0.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR/'results'


def run_one(script:Path, timeout:float) -> dict:
    "Run one benchmark script (its output streams through) and read the results it wrote."
    name = script.stem.removeprefix('bench_')
    res_path = RESULTS_DIR/f'{name}.json'
    print(f"\n=== {script.name} ===", flush=True)
    t0 = time.time()
    try: rc = subprocess.run([sys.executable, str(script)], cwd=REPO_DIR, timeout=timeout).returncode
    except subprocess.TimeoutExpired: rc = 'timeout'
    wall = time.time() - t0
    checks, note = [], ''
    if res_path.is_file() and res_path.stat().st_mtime >= t0 - 1:
        try: checks = json.loads(res_path.read_text()).get('checks', [])
        except (OSError, ValueError) as e: note = f'unreadable results ({e})'
    else: note = f'wrote no fresh {res_path.relative_to(REPO_DIR)}'
    return {'script': script.name, 'rc': rc, 'wall_s': wall, 'checks': checks, 'note': note, 'results': res_path}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('-k', default='', help='run only scripts whose name contains this')
    ap.add_argument('--strict', action='store_true', help='exit 1 when any target is missed')
    ap.add_argument('--timeout', type=float, default=900, help='seconds allowed per script')
    a = ap.parse_args(argv)
    scripts = sorted(p for p in BENCH_DIR.glob('bench_*.py') if a.k in p.name)
    if not scripts:
        print(f"no bench/bench_*.py matches {a.k!r}"); return 1
    RESULTS_DIR.mkdir(exist_ok=True)
    runs = [run_one(s, a.timeout) for s in scripts]

    print("\n" + "=" * 72 + "\nbenchmark summary\n" + "=" * 72)
    failed = missed = 0
    for r in runs:
        ok_run = r['rc'] == 0 and not r['note']
        failed += not ok_run
        n_met = sum(c['met'] for c in r['checks'])
        status = 'ran' if ok_run else f"FAILED (exit {r['rc']}{'; ' + r['note'] if r['note'] else ''})"
        print(f"{r['script']:<24} {status}, {r['wall_s']:.1f} s, {n_met}/{len(r['checks'])} targets met"
              + (f"  -> {r['results'].relative_to(REPO_DIR)}" if ok_run else ''))
        for c in r['checks']:
            missed += not c['met']
            unit = f" {c['unit']}" if c.get('unit') else ''
            print(f"  [{'OK' if c['met'] else 'MISSED'}] {c['name']}: {c['value']:g}{unit} (target {c['target']})")
    print(f"\n{len(runs)} benchmark(s), {failed} failed, {missed} target(s) missed")
    return 1 if failed or (a.strict and missed) else 0


if __name__ == '__main__':
    sys.exit(main())
