"""Benchmark `brainkit.io`: volume load time against plain nibabel, and dataset discovery time.

Writes `bench/results/io.json`. Run: `.venv/bin/python bench/bench_io.py` (or `make bench` for all benchmarks).

1. `load_volume` vs `nib.load(p).get_fdata(dtype=np.float32)` on the same file, interleaved, median of 7 after
   1 warm-up. Target: brainkit/nibabel <= 1.2. Files: a BraTS-sized synthetic volume (240x240x155 int16, LPS)
   as .nii.gz and as .nii, and the bundled sample BraTS2021_90000_t1.nii.gz.
2. `open_dataset` on 1000 BraTS 2021 subjects of empty files, auto-detected and with dataset='brats2021',
   median of 5 after 1 warm-up. Target: < 1 s, and all 1000 subjects found.
When a load target is missed (or with --profile), a per-step breakdown and a cProfile of `load_volume` are added.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check, format_checks, stats, time_fn, time_interleaved, write_result  # noqa: E402

import brainkit.io as bio  # noqa: E402

LOAD_TARGET = 1.2     # brainkit / nibabel load time
DISCOVERY_TARGET_MS = 1000.0
SHAPE = (240, 240, 155)  # BraTS
LPS_AFFINE = np.array([[-1., 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])  # BraTS' own header
MODS = ('t1', 't1ce', 't2', 'flair', 'seg')


def synthetic_brain(shape=SHAPE, seed:int=0) -> np.ndarray:
    "A BraTS-like int16 volume: a smooth ellipsoid 'brain' with tissue-like structure and noise, zeros outside."
    rng = np.random.default_rng(seed)
    c = [(s - 1)/2 for s in shape]
    x, y, z = [((np.arange(s, dtype=np.float32) - ci)/ri).reshape([-1 if a == i else 1 for a in range(3)])
               for i, (s, ci, ri) in enumerate(zip(shape, c, (72., 95., 66.)))]
    r = np.sqrt(x*x + y*y + z*z)  # 1 at the brain's surface
    inside = r < 1
    # smooth "tissue" field: a bright rim (cortex-like), darker centre (ventricle-like), slow bias, folds
    field = 420 + 260*np.exp(-((r - 0.85)/0.08)**2) - 220*np.exp(-(r/0.25)**2)
    field = field + 60*np.cos(6*x)*np.cos(5*y) + 40*np.sin(7*z + 3*x) + 50*y
    vol = np.where(inside, field + rng.normal(0, 25, shape).astype(np.float32), 0)
    return np.clip(np.rint(vol), 0, 32767).astype(np.int16)


def write_synthetic(folder:Path) -> dict[str, Path]:
    "The synthetic volume written as .nii.gz and .nii (int16 on disk, LPS header), like a BraTS file."
    img = nib.Nifti1Image(synthetic_brain(), LPS_AFFINE)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units('mm', 'sec')
    img.set_qform(LPS_AFFINE, code=1); img.set_sform(LPS_AFFINE, code=1)
    out = {}
    for kind, name in (('nii.gz', 'synthetic_brats.nii.gz'), ('nii', 'synthetic_brats.nii')):
        out[kind] = folder/name
        nib.save(img, out[kind])
    return out


def nib_load(p:Path) -> np.ndarray: return nib.load(p).get_fdata(dtype=np.float32)
def bk_load(p:Path) -> np.ndarray: return bio.load_volume(p).data


def same_voxels(p:Path) -> bool:
    "Whether brainkit's volume is nibabel's array reoriented to RAS (a sanity check that both read the same data)."
    ref = nib.load(p)
    want, _ = bio.canonical(ref.get_fdata(dtype=np.float32), ref.affine)
    return bool(np.array_equal(bk_load(p), want))


def step_breakdown(p:Path, repeats:int=5) -> dict:
    "Median ms of each step `load_volume` performs, redone here with public nibabel/numpy/brainkit calls."
    steps = {}
    def t(name, fn):
        ts = time_fn(fn, repeats=repeats, warmup=1)
        steps[name] = stats(ts)['median_ms']
    img = nib.load(p)
    raw = np.asanyarray(img.dataobj.get_unscaled())
    view, _ = bio.canonical(raw, img.affine)
    def flip_convert():
        out = np.empty(view.shape, np.float32, order='F'); out[...] = view
    t('nib.load (header only)', lambda: nib.load(p))
    t('read raw voxels (dataobj.get_unscaled)', lambda: np.asanyarray(nib.load(p).dataobj.get_unscaled()))
    t('checks on raw (isfinite if float; middle-slice any)', lambda: bio._check_values(raw, p))
    t('canonical() view (flips/transposes)', lambda: bio.canonical(raw, img.affine))
    t('flip + convert to float32 in one pass', flip_convert)
    t('same cast without flips (contiguous astype)', lambda: raw.astype(np.float32, order='F'))
    t('load_volume total', lambda: bio.load_volume(p))
    t('nibabel baseline (get_fdata float32)', lambda: nib_load(p))
    return steps


def cprofile_load(p:Path, calls:int=3, top:int=15) -> list[dict]:
    "The top functions of `load_volume(p)` by own time (cProfile, `calls` calls)."
    bio.load_volume(p)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls): bio.load_volume(p)
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, _) in st.stats.items():
        rows.append({'function': f"{Path(fn).name}:{line}({name})" if fn != '~' else name, 'ncalls': nc,
                     'tottime_ms_per_call': round(tt/calls*1e3, 3), 'cumtime_ms_per_call': round(ct/calls*1e3, 3)})
    return sorted(rows, key=lambda r: -r['tottime_ms_per_call'])[:top]


def bench_load(files:dict[str, Path], repeats:int, profile:bool) -> tuple[dict, list[dict]]:
    res, checks = {}, []
    for case, p in files.items():
        ts = time_interleaved({'brainkit': lambda: bk_load(p), 'nibabel': lambda: nib_load(p)}, repeats=repeats, warmup=1)
        bk, nb = stats(ts['brainkit']), stats(ts['nibabel'])
        ratio = bk['median_ms']/nb['median_ms']
        met = ratio <= LOAD_TARGET
        res[case] = {'file': str(p), 'file_bytes': p.stat().st_size, 'shape': list(nib.load(p).shape),
                     'on_disk_dtype': str(nib.load(p).get_data_dtype()),
                     'brainkit_load_volume': bk, 'nibabel_get_fdata_float32': nb,
                     'ratio_brainkit_over_nibabel': round(ratio, 4), 'overhead_ms': round(bk['median_ms'] - nb['median_ms'], 3),
                     'target_ratio': LOAD_TARGET, 'target_met': met, 'same_voxels_as_nibabel_in_ras': same_voxels(p)}
        if profile or not met:
            res[case]['profile'] = {'steps_median_ms': step_breakdown(p), 'cprofile_top_by_tottime': cprofile_load(p)}
        checks.append(check(f'load {case}: brainkit/nibabel', ratio, LOAD_TARGET, 'x'))
        print(f"load {case:<16} brainkit {bk['median_ms']:8.1f} ms   nibabel {nb['median_ms']:8.1f} ms   "
              f"ratio {ratio:.3f}  {'OK' if met else 'MISSED'}", flush=True)
    return res, checks


def make_brats_tree(root:Path, n:int) -> Path:
    "`n` BraTS 2021 subject folders of empty (0-byte) files: discovery must not read them."
    for i in range(n):
        sid = f'BraTS2021_{i:05d}'
        d = root/sid
        d.mkdir(parents=True)
        for m in MODS: (d/f'{sid}_{m}.nii.gz').touch()
    return root


def bench_discovery(root:Path, n:int, repeats:int) -> tuple[dict, list[dict]]:
    res, checks = {}, []
    for case, kw in (('auto', {}), ('brats2021', {'dataset': 'brats2021'})):
        ts = time_fn(lambda: bio.open_dataset(root, **kw), repeats=repeats, warmup=1)
        ds = bio.open_dataset(root, **kw)
        st = stats(ts)
        found, layout = len(ds), ds.layout.name
        ok = st['median_ms'] < DISCOVERY_TARGET_MS and found == n and layout == 'brats2021'
        res[case] = {'call': f"open_dataset(root{', ' + ', '.join(f'{k}={v!r}' for k, v in kw.items()) if kw else ''})",
                     **st, 'subjects_expected': n, 'subjects_found': found, 'layout_found': layout,
                     'count_ok': found == n, 'target_ms': DISCOVERY_TARGET_MS,
                     'target_met': st['median_ms'] < DISCOVERY_TARGET_MS, 'ok': ok}
        checks.append(check(f'discovery {case}: open_dataset, {n} subjects', st['median_ms'], DISCOVERY_TARGET_MS, 'ms'))
        checks.append({'name': f'discovery {case}: subjects found', 'value': found, 'unit': '',
                       'target': f'== {n}', 'met': found == n})
        print(f"discovery {case:<10} {st['median_ms']:8.1f} ms  ({found} subjects, layout {layout})  "
              f"{'OK' if ok else 'MISSED'}", flush=True)
    return res, checks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=7, help='timed repeats per load loader (median reported)')
    ap.add_argument('--discovery-repeats', type=int, default=5)
    ap.add_argument('--subjects', type=int, default=1000, help='synthetic BraTS subjects for the discovery benchmark')
    ap.add_argument('--profile', action='store_true', help='add the load step breakdown and cProfile even if targets are met')
    ap.add_argument('--tmp', default=None, help='folder for the temporary files (default: the system temp dir)')
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='brainkit-bench-io-', dir=a.tmp) as tmp:
        tmp = Path(tmp)
        files = write_synthetic(tmp)
        files = {'synthetic_nii_gz': files['nii.gz'], 'synthetic_nii': files['nii'],
                 'sample_brats_t1': bio.samples_dir('brats')/'BraTS2021_90000'/'BraTS2021_90000_t1.nii.gz'}
        load, c1 = bench_load(files, a.repeats, a.profile)
        for v in load.values():
            if v['file'].startswith(str(tmp)): v['file'] = Path(v['file']).name + ' (temporary, synthetic)'
        disc, c2 = bench_discovery(make_brats_tree(tmp/'brats', a.subjects), a.subjects, a.discovery_repeats)
    checks = c1 + c2
    path = write_result('io', {
        'description': 'brainkit.io: load_volume vs nibabel get_fdata(float32); open_dataset discovery time',
        'settings': {'load_repeats': a.repeats, 'load_warmup': 1, 'load_order': 'interleaved, reversed every round',
                     'discovery_repeats': a.discovery_repeats, 'discovery_warmup': 1, 'subjects': a.subjects,
                     'synthetic_volume': {'shape': list(SHAPE), 'dtype': 'int16', 'affine': LPS_AFFINE.tolist(),
                                          'orientation': 'LPS'}},
        'load': load, 'discovery': disc, 'checks': checks,
        'all_targets_met': all(c['met'] for c in checks),
        'wall_s': round(time.perf_counter() - t0, 2)})
    print(f"\nbench_io: {sum(c['met'] for c in checks)}/{len(checks)} targets met "
          f"({time.perf_counter() - t0:.1f} s) -> {path}")
    print(format_checks(checks))
    return 0


if __name__ == '__main__':
    sys.exit(main())
