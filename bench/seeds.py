#!/usr/bin/env python
"""Do the notebooks' checks on trained outcomes survive a change of seed?

A GAN's or a small network's outcome is chaotic: the same seed on another CPU's floating-point kernels is another
sample of the training. So every check that a notebook asserts about a trained result must hold as a property that
survives a change of seed. This script proves it, notebook by notebook:

1. For each notebook of `SPECS` (or those of `--only`), execute it once per seed (`--seeds`, default 0 1 2 3 4), the
   seed injected as a papermill parameter (`papermill.parameterize.parameterize_notebook`), with nbclient and
   `allow_errors=True` (a failing check does not stop the run), in a kernel of this interpreter
   (`brainkit.cli.this_python_kernel`), with OMP_NUM_THREADS=1, at most `--workers` (default 2) notebooks at a time.
   An experiment notebook (one whose `parameters` cell has `out_dir`) gets a temporary `out_dir` per run.
2. After the last cell, evaluate the spec's named check expressions in the same kernel, and record each value (or the
   error if it cannot be evaluated), with the threshold that the notebook asserts.
3. Write `bench/results/seeds.json` (per notebook, per check: threshold, value per seed, min, max, whether it passes on
   every seed; the cells that raised, per seed; machine, CPU and torch version) and `bench/results/seeds.md` (the
   table), and print the table. Notebooks not run this time keep their previous entries in both files.

  .venv/bin/python bench/seeds.py                                   # every notebook of SPECS, seeds 0-4
  .venv/bin/python bench/seeds.py --only 08_gan --seeds 0 1 2 3 4 5 6 7 8 9
  .venv/bin/python bench/seeds.py --only 07_unet --workers 1

Not part of `make test` or `make bench` (`run_all.py` runs only `bench_*.py`): a run takes minutes per notebook.
Exit status 1 if a check fails on some seed, cannot be evaluated, or no longer matches the notebook's asserts.

How to add a notebook: see the comment above `SPECS`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import operator
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR/'results'/'seeds.json'
sys.path.insert(0, str(BENCH_DIR))
from _common import machine_info  # noqa: E402

log = logging.getLogger('seeds')


class Check(NamedTuple):
    "One asserted property of a trained outcome."
    name: str  # short and unique within the notebook
    expr: str  # a Python expression over the notebook's variables, evaluated after its last cell
    op: str|None  # '>', '>=', '<', '<=', '==' (value op threshold), or None: only reported, not asserted
    threshold: float|str|None = None  # a number, or an expression over the notebook's variables (evaluated per seed)
    asserted: str|None = None  # a fragment of the notebook's assert line (whitespace-insensitive): guards against drift


# How to add a notebook (09_pix2pix, 10_cyclegan, 11_translate, 12_metrics, 15_table1, ...):
#   1. Give its `parameters` cell a seed (`seed = 0`), and make everything it trains derive from it.
#   2. Add an entry below: SPECS['NN_name'] = {'path': 'nbs/NN_name.ipynb', 'seed': '<the parameter's name>',
#      'checks': [Check(...), ...]}, optionally 'params': {...} (other parameters for every run) and 'timeout'
#      (seconds per cell, default 1800). An `out_dir` parameter is detected and set to a temporary folder per run.
#   3. One Check per asserted comparison about a trained result. Split chained or compound asserts into their parts
#      (`assert 0.3 < a < b < 0.7` is three checks: a > 0.3, b - a > 0, b < 0.7); a `test_close(a, b, eps=e)` is
#      Check(name, 'abs(a - b)', '<', e). `asserted` is a fragment of the notebook's assert, copied from its source:
#      when the notebook's assert changes and the fragment is no longer found, the script warns and exits 1, so that
#      a spec cannot silently measure something the notebook no longer asserts. Checks with op None are quantities
#      worth watching (reported, never failing).
#   4. Run `bench/seeds.py --only NN_name` and commit bench/results/seeds.json and seeds.md.
#   A spec with 'diagnostic': True (a setting the notebook no longer uses, kept as evidence) is reported, but its
#   failures do not make the run fail.
SPECS: dict[str, dict] = {
    '07_unet': {
        'path': 'nbs/07_unet.ipynb', 'seed': 'seed',
        'checks': [
            Check('WT Dice > max(0.5, 5 x chance)', "wt", '>', 'max(0.5, 5 * chance)', 'assert wt > max(0.5, 5 * chance)'),
            Check('chance (tumour fraction of the brain)', 'chance', None),
            Check('TC Dice', "metrics['val_dice']['TC']", None),
            Check('ET Dice', "metrics['val_dice']['ET']", None),
            Check('threshold floor WT Dice > 2 x chance', "table['threshold floor']['WT']", '>', '2 * chance',
                  "assert table['threshold floor']['WT'] > 2 * chance"),
            Check('WT Dice minus threshold floor', "metrics['val_dice']['WT'] - table['threshold floor']['WT']", '>', 0,
                  "assert metrics['val_dice']['WT'] > table['threshold floor']['WT']"),
            Check('TC Dice minus threshold floor', "metrics['val_dice']['TC'] - table['threshold floor']['TC']", None),
            Check('ET Dice minus threshold floor', "metrics['val_dice']['ET'] - table['threshold floor']['ET']", None),
        ]},
    '08_gan': {
        'path': 'nbs/08_gan.ipynb', 'seed': 'SEED',
        'checks': [
            Check('ring samples: |quality - (1 - exp(-4.5))|', 'abs(quality - (1 - math.exp(-4.5)))', '<', 0.005,
                  'test_close(quality, 1 - math.exp(-4.5), eps=0.005)'),
            Check('1D: max gap of the trained D to D*', 'err', '<', 0.1, 'assert err < 0.1'),
            Check('vanilla x3: min D(fake)', 'van_d_fake.min()', '>', 0.3, 'van_d_fake.min() > 0.3'),
            Check('vanilla x3: max D(real)', 'van_d_real.max()', '<', 0.7, 'van_d_real.max() < 0.7'),
            Check('vanilla x3: mean D(real) - D(fake)', '(van_d_real - van_d_fake).mean()', '>', 0,
                  '(van_d_real - van_d_fake).mean() > 0'),
            Check('vanilla x3: min D(real) - D(fake)', '(van_d_real - van_d_fake).min()', None),
            Check("vanilla x3: |mean D tail loss - 2 log 2|", 'abs(van_tail_d.mean() - 2 * math.log(2))', '<', 0.35,
                  'test_close(van_tail_d.mean(), 2 * math.log(2), eps=0.35)'),
            Check("vanilla x3: max D tail loss - 2 log 2", 'van_tail_d.max() - 2 * math.log(2)', None),
            Check('slow D: max modes from step 100', "max(after(h_slow, 'modes'))", '<=', 2,
                  "max(after(h_slow, 'modes')) <= 2"),
            Check('slow D: min largest share from step 100', "min(after(h_slow, 'share'))", '>', 0.4,
                  "min(after(h_slow, 'share')) > 0.4"),
            Check('balanced (vanilla x3): mean final modes', 'bal_modes.mean()', '>=', 5, 'bal_modes.mean() >= 5'),
            Check('balanced (vanilla x3): max final largest share', 'bal_share.max()', '<', 0.3, 'bal_share.max() < 0.3'),
            *[c for mode in ('vanilla', 'lsgan', 'wgangp') for c in (
                Check(f'{mode} x3: mean final modes', f"ends['{mode}']['modes'].mean()", '>=', 5, "e['modes'].mean() >= 5"),
                Check(f'{mode} x3: mean final quality', f"ends['{mode}']['quality'].mean()", '>', 0.4,
                      "e['quality'].mean() > 0.4"),
                Check(f'{mode} x3: best final quality', f"ends['{mode}']['quality'].max()", '>', 0.6,
                      "e['quality'].max() > 0.6"),
                Check(f'{mode} x3: worst final quality', f"ends['{mode}']['quality'].min()", None),
                Check(f'{mode} x3: fewest final modes', f"ends['{mode}']['modes'].min()", None))],
            Check('cGAN, D sees (x, k): on target', "hits['D sees (x, k)']", '>', 0.9, "hits['D sees (x, k)'] > 0.9"),
            Check('cGAN, D sees x only: on target', "hits['D sees x only']", '<', 0.3, "hits['D sees x only'] < 0.3"),
        ]},
}

# the diagnosis behind 07_unet's base = 16 (its prose): the same quick run with 8 filters at the first level
SPECS['07_unet:base8'] = {**SPECS['07_unet'], 'params': {'base': 8}, 'diagnostic': True}   # expected to fail on some seeds

SPECS['09_pix2pix'] = {'path': 'nbs/09_pix2pix.ipynb', 'seed': 'seed', 'checks': [
    Check('one step: |D_real - log 2|', "abs(losses['D_real'] - np.log(2))", '<', 0.25,
          "test_close(losses['D_real'], np.log(2), eps=0.25)"),
    Check('held out: min MAE gain over doing nothing', "min(base[s]['mae'] - model[s]['mae'] for s in model)", '>', 0,
          "model[sid]['mae'] < base[sid]['mae']"),
    Check('held out: min SSIM gain over doing nothing', "min(model[s]['ssim'] - base[s]['ssim'] for s in model)", '>', 0,
          "model[sid]['ssim'] > base[sid]['ssim']"),
    Check('held out: min PSNR gain over doing nothing', "min(model[s]['psnr'] - base[s]['psnr'] for s in model)", '>', 0,
          "model[sid]['psnr'] > base[sid]['psnr']"),
    Check('protocol: pix2pix minus none, SSIM', "protocol['pix2pix']['ssim'] - protocol['none']['ssim']", '>', 0,
          "assert protocol['pix2pix']['ssim'] > protocol['none']['ssim']"),
    Check('protocol: none minus pix2pix, MAE', "protocol['none']['mae'] - protocol['pix2pix']['mae']", '>', 0,
          "protocol['pix2pix']['mae'] < protocol['none']['mae']"),
    Check('protocol: pix2pix minus lookup, SSIM', "protocol['pix2pix']['ssim'] - protocol['lookup']['ssim']", None),
    Check('protocol: lookup minus pix2pix, MAE', "protocol['lookup']['mae'] - protocol['pix2pix']['mae']", None),
    Check('held out: mean SSIM', "metrics['val']['ssim']", None),
    Check('held out: mean MAE', "metrics['val']['mae']", None)]}

SPECS['10_cyclegan'] = {'path': 'nbs/10_cyclegan.ipynb', 'seed': 'seed', 'checks': [
    Check('one step: identity loss on', "losses['idt_A']", '>', 0, "assert losses['idt_A'] > 0"),
    *[Check(f'{p}: oracle {k} minus doing nothing', f"(runs['{p}']['oracle']['{k}'] - baseline['{k}'])", None)
      for p in ('random', 'position_range') for k in ('ssim', 'mae')],
    Check('position_range minus random: oracle SSIM', "runs['position_range']['oracle']['ssim'] - runs['random']['oracle']['ssim']", None),
    Check('position_range minus random: oracle MAE', "runs['position_range']['oracle']['mae'] - runs['random']['oracle']['mae']", None),
    *[Check(f'{p}: oracle psnr minus doing nothing', f"(runs['{p}']['oracle']['psnr'] - baseline['psnr'])", None)
      for p in ('random', 'position_range')],
    *[Check(f'{p}: epoch of the lowest oracle MAE', f"best_epoch['{p}']", None) for p in ('random', 'position_range')],
    *[Check(f'protocol: cyclegan {p} minus {b}, {k}', f"protocol['cyclegan, {p}']['{k}'] - protocol['{b}']['{k}']", None)
      for p in ('random', 'position_range') for b in ('none', 'histmatch') for k in ('ssim', 'mae')]]}

# Another CPU's kernels, or another thread count, round differently: the same seed is then another sample of a GAN's
# game. The same notebook on two threads shows how far a verdict survives that (run it with --workers 1).
SPECS['10_cyclegan@2threads'] = {**SPECS['10_cyclegan'], 'threads': 2}

SPECS['12_metrics'] = {'path': 'nbs/12_metrics.ipynb', 'seed': 'seed', 'checks': [
    Check('paired: min SSIM', "min(s['ssim'] for s in paired.values())", '>', 0, "0 < s['ssim'] < 1"),
    Check('paired: max SSIM', "max(s['ssim'] for s in paired.values())", '<', 1, "0 < s['ssim'] < 1"),
    Check('paired: min PSNR', "min(s['psnr'] for s in paired.values())", '>', 5, "s['psnr'] > 5"),
    Check('paired: max tumour SSIM minus min healthy SSIM', "max(s['ssim_tumour'] for s in paired.values()) - min(s['ssim_healthy'] for s in paired.values())", None),
    *[Check(f'FID {d}: halves', f"halves['fid_{d}']", '>', 0, "halves[f'fid_{d}'] > 0") for d in (64, 192)],
    # the assert compares two shares of the synthetic row's value; their quotient shows the margin (KID's share can be <= 0)
    *[Check(f'FID {d}: FID share of the halves over KID share', f"(halves['fid_{d}'] / scores['fid_{d}']) / max(halves['kid_{d}'] / scores['kid_{d}'], 1e-12)",
            '>', 1, "halves[f'kid_{d}'] / scores[f'kid_{d}'] < halves[f'fid_{d}'] / scores[f'fid_{d}']") for d in (64, 192)],
    *[Check(f'FID {d}: share of the halves in FID (reported)', f"halves['fid_{d}'] / scores['fid_{d}']", None) for d in (64, 192)],
    *[Check(f'FID {d}: share of the halves in KID (reported)', f"halves['kid_{d}'] / scores['kid_{d}']", None) for d in (64, 192)],
    Check('planes: min axial minus sagittal SSIM over HCP subjects', "min(planes[h]['axial']['ssim'] - planes[h]['sagittal']['ssim'] for h in hcp)",
          '>', 0, "assert planes[hid]['axial']['ssim'] > planes[hid]['sagittal']['ssim']"),
    Check('roughness: min difference energy over the truth\'s (any axis, HCP subjects)', "min(min(r.values()) for r in rough.values())",
          '>', 1.5, "assert min(rough[hid].values()) > 1.5"),
    Check('consistency: axial excess, min over HCP subjects', "min(c['axial']['excess'] for c in cons.values())", None),
    Check('consistency: axial excess, max over HCP subjects', "max(c['axial']['excess'] for c in cons.values())", None),
    Check('consistency: sagittal excess, min over HCP subjects', "min(c['sagittal']['excess'] for c in cons.values())", None),
    Check('consistency: sagittal excess, max over HCP subjects', "max(c['sagittal']['excess'] for c in cons.values())", None)]}

for _strategy in ('hybrid', 'unpaired', 'paired'):   # the main job's learned rows (15_table1, t2; the classical ones have no seed)
    SPECS[f'15_table1:{_strategy}'] = {'path': 'nbs/15_table1.ipynb', 'seed': 'seed',
                                       'params': {'strategy': _strategy, 'fid_weights': 'none', 'write_dataset': False},
                                       'checks': [Check(f't2 oracle {k} (mean over held-out)', f"scores['t2']['oracle']['{k}']", None)
                                                  for k in ('ssim', 'psnr', 'mae')]
                                       + [Check('t2 consistency excess (mean)', "scores['t2']['consistency_excess']", None),
                                          Check('t2 tissue W1, mean', "scores['t2']['tissue_w1']['mean']", None)]}

# A test that asserts a trained outcome is measured the same way: a spec with `script` names a function of SCRIPTS
# that trains what the test trains, with the test's own settings and the given seed, and returns the variables its
# checks read. (None at present: the last one, test_metrics' tiny stacked Pix2Pix, went with the block-mean score.)
SCRIPTS: dict = {}

OPS = {'>': operator.gt, '>=': operator.ge, '<': operator.lt, '<=': operator.le, '==': operator.eq}
MARK = '@@bench-seeds@@'
ENV = {  # as the Makefile sets them for `make test`
    'OMP_NUM_THREADS': '1', 'PYTHONDONTWRITEBYTECODE': '1', 'BRAINKIT_TORCHVISION_PLACEHOLDER': '1',
    'BRAINKIT_CACHE': str(REPO_DIR/'runs'/'cache'), 'JUPYTER_RUNTIME_DIR': str(REPO_DIR/'.venv'/'jupyter-runtime'),
    'IPYTHONDIR': str(REPO_DIR/'.venv'/'ipython')}


def _squash(s:str) -> str: return re.sub(r'\s+', '', s)


def _code(spec:dict) -> str:
    "The code of a spec's notebook (its code cells) or test file."
    path = REPO_DIR/spec['path']
    if path.suffix == '.py': return path.read_text()
    nb = json.loads(path.read_text())
    return '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code')


def code_hash(spec:dict) -> str:
    "sha256 of the notebook's code cells (what the results were measured on; outputs and prose do not count)."
    return hashlib.sha256(_code(spec).encode()).hexdigest()


def drift(spec:dict) -> list[str]:
    "The checks of `spec` whose `asserted` fragment is no longer in the notebook's code (whitespace ignored)."
    code = _squash(_code(spec))
    return [c.name for c in spec['checks'] if c.asserted and _squash(c.asserted) not in code]


def _probe_source(checks:list[Check]) -> str:
    "A code cell that evaluates every check's value (and expression threshold) in the notebook's namespace."
    items = [(c.name, c.expr, c.threshold if isinstance(c.threshold, str) else None) for c in checks]
    return f"""
def _bench_seeds_eval(e):
    if e is None: return None
    try: return {{'value': float(eval(e))}}
    except Exception as x: return {{'error': f'{{type(x).__name__}}: {{x}}'}}
import json as _bench_seeds_json
print({MARK!r} + _bench_seeds_json.dumps({{n: {{'value': _bench_seeds_eval(e), 'threshold': _bench_seeds_eval(t)}}
                                          for n, e, t in {items!r}}}))
"""


def _errors(nb) -> list[dict]:
    "The cells of executed notebook `nb` that raised (indices of the notebook without papermill's injected cell)."
    out, i = [], -1
    for cell in nb.cells:
        if 'injected-parameters' in cell.get('metadata', {}).get('tags', []): continue
        i += 1
        for o in cell.get('outputs', []):
            if o.get('output_type') == 'error':
                out.append({'cell': i, 'id': cell.get('id'), 'first_line': cell.source.splitlines()[0] if cell.source else '',
                            'error': f"{o.get('ename')}: {str(o.get('evalue')).strip()[:300]}"})
    return out


def run_one(name:str, seed:int, attempts:int=3) -> dict:
    "Execute notebook `name` of SPECS with `seed`, then its checks, in a fresh kernel of this interpreter."
    import nbformat
    from brainkit.experiments import notebook_parameters
    from nbclient import NotebookClient
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from brainkit.cli import this_python_kernel
    os.environ.update(ENV)
    spec = SPECS[name]
    os.environ['OMP_NUM_THREADS'] = str(spec.get('threads', 1))       # a spec may run its notebook on more threads
    if 'script' in spec: return _run_script(spec, seed)
    path = REPO_DIR/spec['path']
    have = notebook_parameters(path)
    if spec['seed'] not in have:
        return {'run_error': f"its parameters cell has no {spec['seed']!r} (it has {sorted(have)})"}
    params = {**spec.get('params', {}), spec['seed']: seed}
    tmp = Path(tempfile.mkdtemp(prefix=f'bench-seeds-{name}-{seed}-'))
    if 'out_dir' in have: params['out_dir'] = str(tmp/'out')
    try:
        for attempt in range(attempts):
            nb = parameterize_notebook(load_notebook_node(str(path)), params)   # (papermill's loader adds the tags it reads)
            executed = 0
            try:
                with this_python_kernel() as kernel:
                    client = NotebookClient(nb, kernel_name=kernel, allow_errors=True, timeout=spec.get('timeout', 1800),
                                            resources={'metadata': {'path': str(path.parent)}})
                    with client.setup_kernel():
                        t0 = time.monotonic()
                        for i, cell in enumerate(nb.cells):
                            if cell.cell_type == 'code': client.execute_cell(cell, i); executed += 1
                        seconds = time.monotonic() - t0
                        probe = nbformat.v4.new_code_cell(_probe_source(spec['checks']))
                        nb.cells.append(probe)                  # (nbclient writes the executed cell back by index)
                        client.execute_cell(probe, len(nb.cells) - 1)
                        nb.cells.pop()
                break
            except Exception as e:                     # kernels started at once can race on ports: retry the start
                if executed or attempt == attempts - 1:
                    return {'run_error': f"{type(e).__name__}: {e}", 'traceback': traceback.format_exc().splitlines()[-15:]}
                log.warning("%s seed %d: kernel start failed (%s), retrying", name, seed, e)
                time.sleep(2 * 2 ** attempt)
        text = ''.join(o.get('text', '') for o in probe.outputs if o.get('output_type') == 'stream')
        line = next((l for l in text.splitlines() if l.startswith(MARK)), None)
        if line is None:
            err = next((f"{o.ename}: {o.evalue}" for o in probe.outputs if o.output_type == 'error'), text[-300:])
            return {'seconds': round(seconds, 1), 'errors': _errors(nb), 'run_error': f"the checks could not be evaluated: {err}"}
        return {'seconds': round(seconds, 1), 'errors': _errors(nb), 'checks': json.loads(line[len(MARK):])}
    finally: shutil.rmtree(tmp, ignore_errors=True)


def _run_script(spec:dict, seed:int) -> dict:
    "A test's outcome with `seed` (SCRIPTS), its checks evaluated on the variables the script returns."
    import torch
    torch.set_num_threads(1)
    t0 = time.monotonic()
    try: ns = SCRIPTS[spec['script']](seed)
    except Exception as e: return {'run_error': f"{type(e).__name__}: {e}", 'traceback': traceback.format_exc().splitlines()[-15:]}
    def ev(e):
        if e is None: return None
        try: return {'value': float(eval(e, {}, ns))}
        except Exception as x: return {'error': f'{type(x).__name__}: {x}'}
    return {'seconds': round(time.monotonic() - t0, 1), 'errors': [],
            'checks': {c.name: {'value': ev(c.expr), 'threshold': ev(c.threshold if isinstance(c.threshold, str) else None)}
                       for c in spec['checks']}}


def summarize(name:str, seeds:list[int], runs:dict[int, dict], code:str) -> dict:
    "The entry of notebook `name` in seeds.json (`code`: its code hash when run): per check, values per seed, min, max, passes."
    spec, missing = SPECS[name], set(drift(SPECS[name]))
    checks = {}
    for c in spec['checks']:
        values, thresholds, passes, errors = {}, {}, {}, {}
        for s in seeds:
            got = runs[s].get('checks', {}).get(c.name)
            if got is None: errors[str(s)] = runs[s].get('run_error', 'not evaluated'); continue
            v, t = got['value'], got['threshold'] if isinstance(c.threshold, str) else {'value': c.threshold}
            if 'error' in v: errors[str(s)] = v['error']; continue
            values[str(s)] = v['value']
            if c.op is None: continue
            if t is None or 'error' in t: errors[str(s)] = f"threshold: {(t or {}).get('error')}"; continue
            thresholds[str(s)] = t['value']
            passes[str(s)] = bool(OPS[c.op](v['value'], t['value']))
        vals = list(values.values())
        checks[c.name] = {
            'expr': c.expr, 'op': c.op, 'threshold': c.threshold,
            **({'threshold_per_seed': thresholds} if isinstance(c.threshold, str) else {}),
            'asserted': c.asserted, 'found_in_notebook': c.name not in missing,
            'values': values, 'errors': errors,
            'min': min(vals) if vals else None, 'max': max(vals) if vals else None,
            'passes': passes,
            'all_pass': None if c.op is None else (len(passes) == len(seeds) and all(passes.values()))}
    import torch
    return {'notebook': spec['path'], 'code_sha256': code, 'seed_parameter': spec['seed'], 'seeds': seeds,
            'params': spec.get('params', {}),
            'timestamp_utc': datetime.now(timezone.utc).isoformat(timespec='seconds'),
            'machine': {**machine_info(), 'torch': torch.__version__, 'omp_num_threads': str(spec.get('threads', 1))},
            'seconds': {str(s): runs[s].get('seconds') for s in seeds},
            'errored_cells': {str(s): runs[s].get('errors', []) for s in seeds},
            'run_errors': {str(s): runs[s]['run_error'] for s in seeds if 'run_error' in runs[s]},
            'checks': checks}


def _num(v) -> str:
    if v is None: return '—'
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.4f}" if abs(v) < 0.01 else f"{v:.3f}"


def _range(vals:list, fmt=_num) -> str:
    if not vals: return '—'
    lo, hi = fmt(min(vals)), fmt(max(vals))
    return lo if lo == hi else f"{lo}–{hi}"


def _threshold(c:dict) -> str:
    if c['op'] is None: return '(reported)'
    if isinstance(c['threshold'], str):
        return f"{c['op']} {c['threshold']} = {_range(list(c['threshold_per_seed'].values()))}"
    return f"{c['op']} {_num(c['threshold'])}"


def table(results:dict) -> str:
    "The markdown table of every notebook's checks in `results`."
    rows = ['| notebook | check | threshold | min | max | all seeds pass? |', '|---|---|---|---|---|---|']
    for name, r in results.items():
        for cname, c in r['checks'].items():
            n_pass, n = sum(c['passes'].values()), len(r['seeds'])
            ok = '—' if c['op'] is None else f"{'yes' if c['all_pass'] else '**NO**'} ({n_pass}/{n})"
            if c['errors']: ok += f", {len(c['errors'])} not evaluated"
            if not c['found_in_notebook']: ok += ', **not asserted in the notebook any more**'
            cells = (name, cname, _threshold(c), _num(c['min']), _num(c['max']), ok)
            rows.append('| ' + ' | '.join(x.replace('|', '\\|') for x in cells) + ' |')
    return '\n'.join(rows)


def markdown(results:dict) -> str:
    "seeds.md: how the table was made, the table, and per notebook its seeds, run times and the cells that raised."
    out = ['# Checks on trained outcomes across seeds', '',
           'Written by `bench/seeds.py` (see its docstring): each notebook executed once per seed, the seed injected as a',
           'papermill parameter, with OMP_NUM_THREADS=1; every check is what the notebook asserts, evaluated after its',
           'last cell. min and max are over the seeds.', '', table(results), '']
    for name, r in results.items():
        m = r['machine']
        secs = [v for v in r['seconds'].values() if v is not None]
        run_time = _range(secs, lambda v: f"{v:.0f}")
        out += [f"## {name}", '',
                f"- seeds ({r['seed_parameter']}): {', '.join(map(str, r['seeds']))}; {r['timestamp_utc']}; "
                f"{m.get('cpu_model')}, {m.get('cpu_count')} CPUs, torch {m.get('torch')}; "
                f"code cells' sha256 {r.get('code_sha256', '?')[:12]}",
                f"- run time of the notebook's cells: {run_time} s per seed"]
        errs = [f"seed {s}: cell {e['cell']} (`{e['first_line'][:60]}`) {e['error'][:120]}"
                for s, es in r['errored_cells'].items() for e in es]
        errs += [f"seed {s}: {e}" for s, e in r['run_errors'].items()]
        out += ['- cells that raised: ' + ('none' if not errs else ''), *[f"  - {e}" for e in errs], '']
    return '\n'.join(out)


def _write(path:Path, text:str):
    tmp = path.with_name(f'.{path.name}.{secrets.token_hex(4)}.tmp')
    try: tmp.write_text(text); os.replace(tmp, path)
    finally: tmp.unlink(missing_ok=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', nargs='+', metavar='NOTEBOOK', help=f"notebooks of SPECS to run ({', '.join(SPECS)})")
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2, 3, 4])
    p.add_argument('--workers', type=int, default=2, help='notebooks executed at a time (one thread each)')
    p.add_argument('--out', type=Path, default=RESULTS, help='the JSON to write (the .md goes beside it)')
    p.add_argument('--md-only', action='store_true', help='only rewrite the .md (and print the table) from the JSON')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.md_only:
        results = json.loads(args.out.read_text())
        _write(args.out.with_suffix('.md'), markdown(results)); print(table(results))
        return 0
    def chosen(n, o):   # a spec's own name picks only that spec; otherwise a prefix of names, or a notebook's path
        return n == o if o in SPECS else (n.startswith(o) or SPECS[n]['path'].endswith(o))
    names = [n for n in SPECS if not args.only or any(chosen(n, o) for o in args.only)]
    if not names: p.error(f"no notebook of SPECS matches {args.only}: they are {', '.join(SPECS)}")
    for n in names:
        for c in drift(SPECS[n]):
            log.warning("WARNING %s: check %r: %r is no longer asserted in %s: update the spec", n, c,
                        next(x.asserted for x in SPECS[n]['checks'] if x.name == c), SPECS[n]['path'])
    runs, codes = {n: {} for n in names}, {n: code_hash(SPECS[n]) for n in names}
    t0 = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context('spawn')) as pool:
        futs = {pool.submit(run_one, n, s): (n, s) for n in names for s in args.seeds}
        for f in as_completed(futs):
            n, s = futs[f]
            try: runs[n][s] = f.result()
            except Exception as e: runs[n][s] = {'run_error': f"{type(e).__name__}: {e}", 'traceback': traceback.format_exc().splitlines()[-15:]}
            r = runs[n][s]
            bad = [e['cell'] for e in r.get('errors', [])]
            log.info("%s seed %d: %s s%s%s  [%.0f s]", n, s, r.get('seconds'), f", cells raised: {bad}" if bad else '',
                     f", {r['run_error']}" if 'run_error' in r else '', time.monotonic() - t0)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update({n: summarize(n, args.seeds, runs[n], codes[n]) for n in names})
    for n in names:
        if code_hash(SPECS[n]) != codes[n]: log.warning("WARNING %s changed while it ran: its results mix two versions", n)
    results = {n: results[n] for n in sorted(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _write(args.out, json.dumps(results, indent=1) + '\n')
    _write(args.out.with_suffix('.md'), markdown(results))
    print(table({n: results[n] for n in names}))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    failed = [(n, c) for n in names if not SPECS[n].get('diagnostic') for c, v in results[n]['checks'].items()
              if v['all_pass'] is False or v['errors'] or not v['found_in_notebook']]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
