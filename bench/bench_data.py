"""Benchmark `brainkit.data`: slice-cache read throughput against a naive per-item NIfTI loader, cache build time
and size, and peak RAM of iterating a dataset against one 10 times larger.

Writes `bench/results/data.json`. Run: `.venv/bin/python bench/bench_data.py` (or `make bench` for all benchmarks).

1. Random-slice reads `SliceSet.read(j, ['t1'])` from a built cache vs a naive loader that opens the `.nii.gz`
   per item (`load_volume(path).data[:, :, i]`), interleaved, single process, pinned to one core when possible.
   Cases: the bundled BraTS samples (t1, axial) and a BraTS-sized synthetic subject (240x240x155 int16, LPS).
   Targets: cache/naive >= 500x on both; >= 5000 slices/s for the 240x240 float32 slices.
2. Cache build time of the synthetic subject (t1 alone; t1, t1ce, t2, flair and seg), and the cache's size on disk.
3. Peak RSS (VmHWM) of iterating every item of `PairedSlices(t1 -> t2)` once through `make_loader(workers=0)`,
   for 8 subjects and for 80, each in a fresh subprocess, caches built beforehand. Target: 80/8 <= 1.2.
4. Checksums (no targets): what verifying one BraTS-sized entry (240x240x155 float32) costs the first time a process
   opens it (CRC-32 and the alternatives, s/GB); the code before checksums (git commit `--before`, default 5b591b5)
   and today's, opening and reading the same cache side by side in this one process; and the walk that removes
   stale temporary files, on a cache of `--tidy-entries` entries.
The per-step cost of a cache build is always added; that of a cache read when a throughput target is missed
(or with --profile).
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import deque
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check, format_checks, stats, time_fn, time_interleaved, write_result  # noqa: E402
from bench_io import LPS_AFFINE, SHAPE, synthetic_brain  # noqa: E402  (the same synthetic volume as bench_io)

import brainkit.data as bd  # noqa: E402
import brainkit.io as bio  # noqa: E402
from brainkit.data import PairedSlices, Prep, SliceCache, SliceSet, make_loader  # noqa: E402
from brainkit.preprocess import Normalizer  # noqa: E402

SPEEDUP_TARGET = 500.0       # cache reads / naive per-item .nii.gz reads
RATE_TARGET = 5000.0         # slices/s, 240x240 float32, one core
RSS_RATIO_TARGET = 1.2       # peak RSS, 10x dataset / 1x dataset
MODS = ('t1', 't1ce', 't2', 'flair')
SYN_ID = 'BraTS2021_00000'


# --- data -----------------------------------------------------------------------------------------------------

def _save(arr:np.ndarray, path:Path, dtype) -> Path:
    img = nib.Nifti1Image(arr.astype(dtype), LPS_AFFINE)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units('mm', 'sec')
    img.set_qform(LPS_AFFINE, code=1); img.set_sform(LPS_AFFINE, code=1)
    nib.save(img, path)
    return path


def synthetic_seg(shape=SHAPE) -> np.ndarray:
    "A BraTS-like label map (in the file's voxel order): edema (2) around a core (1) with an enhancing rim (4)."
    g = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing='ij')
    r = np.sqrt(sum(((gi - c)/rad)**2 for gi, c, rad in zip(g, (150., 100., 85.), (22., 26., 20.))))
    seg = np.zeros(shape, np.uint8)
    seg[r < 1.0] = 2; seg[r < 0.6] = 4; seg[r < 0.45] = 1
    return seg


def write_synthetic_subject(root:Path) -> Path:
    "A BraTS 2021 subject folder of BraTS-sized volumes (int16 t1/t1ce/t2/flair, uint8 seg, LPS header)."
    d = root/SYN_ID
    d.mkdir(parents=True)
    for n, m in enumerate(MODS):
        vol = synthetic_brain(seed=n)
        if m in ('t2', 'flair'):  # another contrast: bright where t1 is dark, same brain outline
            vol = np.where(vol > 0, np.clip(1400 - vol, 1, None), 0).astype(np.int16)
        _save(vol, d/f'{SYN_ID}_{m}.nii.gz', np.int16)
    _save(synthetic_seg(), d/f'{SYN_ID}_seg.nii.gz', np.uint8)
    return root


def replicate_samples(src_root:Path, dst_root:Path, n:int) -> Path:
    "`n` BraTS 2021 subjects made of the sample subjects' files under new ids (hard links, else copies)."
    subs = bio.open_dataset(src_root).subjects
    for c in range(n):
        s = subs[c % len(subs)]
        sid = f'BraTS2021_{10000 + c:05d}'
        d = dst_root/sid
        d.mkdir(parents=True)
        for m in (*MODS, 'seg'):
            src, dst = s.path(m), d/f'{sid}_{m}.nii.gz'
            try: os.link(src, dst)    # a distinct path: its own cache entry (a symlink would resolve to the same one)
            except OSError: shutil.copy2(src, dst)
    return dst_root


# --- 1. throughput --------------------------------------------------------------------------------------------

def pin_one_core() -> dict:
    "Pin this process to one core (the first it may use); return what was done and the previous affinity."
    try:
        before = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {before[0]})
        return {'pinned': True, 'cpu': before[0], 'affinity_before': before}
    except (AttributeError, OSError) as e:
        return {'pinned': False, 'reason': f'{type(e).__name__}: {e}'}


def unpin(pin:dict):
    if pin.get('pinned'): os.sched_setaffinity(0, set(pin['affinity_before']))


def read_profile(sset:SliceSet, js:np.ndarray) -> dict:
    "Where the time of one cache read goes: each step of a read, redone here with numpy/os calls, in us per slice."
    import brainkit.data as bd
    cache, m = sset.cache, 't1'
    items = [(sset.sources[k][m], sset.preps[m], int(i)) for k, i in sset.index[js]]
    files = getattr(sset, 'files', None)  # the entries' .npy paths, if the set keeps them
    npys = [files[k][m] if files else cache.paths(src, prep)[0] for (k, _), (src, prep, _) in zip(sset.index[js], items)]
    info = cache.info(*items[0][:2])
    header, nbytes = info['header_bytes'], int(np.prod(info['shape'][1:])) * np.dtype(info['dtype']).itemsize
    maps = {p: np.load(p, mmap_mode='r') for p in set(npys)}
    fds = {p: os.open(p, os.O_RDONLY) for p in set(npys)}
    n = len(items)
    drain = lambda gen: deque(gen, maxlen=0)   # each result is dropped at once, as a training loop does
    def per(fn):
        return round(stats(time_fn(fn, repeats=3, warmup=1))['median_ms'] * 1e3 / n, 2)
    loops = {}
    if hasattr(cache, 'paths'):
        loops['SliceCache.paths (stat + resolve + asdict + json + sha256 of the key)'] = lambda: drain(cache.paths(s, p) for s, p, _ in items)
    loops |= {
        'np.load(npy, mmap_mode="r") only (open, parse the .npy header, mmap)': lambda: drain(np.load(p, mmap_mode='r') for p in npys),
        'np.load(mmap) + np.array(m[i]) (a fresh mapping: page faults on the copy)':
            lambda: drain(np.array(np.load(p, mmap_mode='r')[i]) for p, (_, _, i) in zip(npys, items)),
        'np.array(m[i]) from a memmap kept open': lambda: drain(np.array(maps[p][i]) for p, (_, _, i) in zip(npys, items)),
        'os.pread of the slice bytes from an fd kept open (no mmap)':
            lambda: drain(np.frombuffer(os.pread(fds[p], nbytes, header + i*nbytes), info['dtype']) for p, (_, _, i) in zip(npys, items)),
    }
    if hasattr(bd, 'read_slice'):
        loops['brainkit.data.read_slice(npy, i)'] = lambda: drain(bd.read_slice(p, i) for p, (_, _, i) in zip(npys, items))
    loops['SliceCache.slice(src, prep, i) (public API, per call)'] = lambda: drain(cache.slice(s, p, i) for s, p, i in items)
    loops["SliceSet.read(j, ['t1']) (what the datasets call)"] = lambda: drain(sset.read(j, [m]) for j in js)
    try: steps = {k: per(fn) for k, fn in loops.items()}
    finally:
        for fd in fds.values(): os.close(fd)
        maps.clear()
    steps = {k: {'us_per_slice': v, 'slices_per_s': round(1e6/v, 1)} for k, v in steps.items()}
    pr = cProfile.Profile()
    pr.enable(); loops["SliceSet.read(j, ['t1']) (what the datasets call)"](); pr.disable()
    return {'reads_per_step': n, 'steps': steps, 'cprofile_top_by_tottime': _top(pr, n)}


def _top(pr:cProfile.Profile, calls:int, top:int=15) -> list[dict]:
    st = pstats.Stats(pr, stream=io.StringIO())
    rows = [{'function': f"{Path(fn).name}:{line}({name})" if fn != '~' else name, 'ncalls': nc,
             'tottime_us_per_call': round(tt/calls*1e6, 2), 'cumtime_us_per_call': round(ct/calls*1e6, 2)}
            for (fn, line, name), (cc, nc, tt, ct, _) in st.stats.items()]
    return sorted(rows, key=lambda r: -r['tottime_us_per_call'])[:top]


def file_index(img, i:int) -> tuple:
    "The index, in the file's voxel order, of canonical (RAS) axial slice `i` of `img`."
    ornt = bio.orientation(img.affine)
    a = int(np.flatnonzero(ornt[:, 0] == 2)[0])            # the file axis that runs inferior-superior
    z = int(i) if ornt[a, 1] > 0 else img.shape[a] - 1 - int(i)
    return tuple(z if ax == a else slice(None) for ax in range(3))


def bench_throughput(case:str, subjects, cache:SliceCache, n_cache:int, n_naive:int, repeats:int,
                     profile:bool, seed:int=0) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    sset = SliceSet(subjects, ['t1'], plane='axial', normalizer=Normalizer(), cache=cache, progress=False)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    def cache_batch():
        for j in rng.integers(len(sset), size=n_cache): sset.read(j, ['t1'])
    def naive_batch():
        for j in rng.integers(len(sset), size=n_naive):
            k, i = sset.index[j]
            np.array(bio.load_volume(sset.sources[k]['t1']).data[:, :, i])
    def nib_batch():  # nibabel's proxy slicing: decompresses the gzip stream up to the slice, nothing more
        for j in rng.integers(len(sset), size=n_naive):
            k, i = sset.index[j]
            img = nib.load(sset.sources[k]['t1'])
            np.asarray(img.dataobj[file_index(img, i)], dtype=np.float32)
    ts = time_interleaved({'cache': cache_batch, 'naive': naive_batch, 'nibabel_dataobj': nib_batch},
                          repeats=repeats, warmup=1)
    st = {k: stats(v) for k, v in ts.items()}
    rate = {'cache': n_cache/st['cache']['median_ms']*1e3, 'naive': n_naive/st['naive']['median_ms']*1e3,
            'nibabel_dataobj': n_naive/st['nibabel_dataobj']['median_ms']*1e3}
    speedup = rate['cache']/rate['naive']
    k, i = sset.index[len(sset)//2]
    src = sset.sources[k]['t1']
    cache.info(src, Prep.make('axial'))                            # an unnormalized entry of the same file
    raw = cache.slice(src, Prep.make('axial'), int(i))
    same = bool(np.array_equal(raw, bio.load_volume(src).data[:, :, i]))
    sl = sset.read(0, ['t1'])
    res = {'subjects': len(subjects), 'slices_in_set': len(sset), 'slice_shape': list(sl.shape), 'slice_dtype': str(sl.dtype),
           'slice_bytes': int(sl.nbytes), 'cache_build_s': round(build_s, 3),
           'cache_read': {'call': "SliceSet.read(j, ['t1']), random j", 'slices_per_call': n_cache, **st['cache'],
                          'slices_per_s': round(rate['cache'], 1), 'us_per_slice': round(1e6/rate['cache'], 2)},
           'naive_read': {'call': 'np.array(load_volume(path).data[:, :, i]), random (subject, i)', 'slices_per_call': n_naive,
                          **st['naive'], 'slices_per_s': round(rate['naive'], 2), 'ms_per_slice': round(1e3/rate['naive'], 2)},
           'nibabel_dataobj_read': {'call': 'nib.load(path).dataobj[:, :, z] as float32 (partial gzip decompression)',
                                    'slices_per_call': n_naive, **st['nibabel_dataobj'],
                                    'slices_per_s': round(rate['nibabel_dataobj'], 2)},
           'speedup_cache_over_naive': round(speedup, 1),
           'speedup_cache_over_nibabel_dataobj': round(rate['cache']/rate['nibabel_dataobj'], 1),
           'cached_raw_slice_equals_naive_slice': same}
    checks = [check(f'throughput {case}: cache/naive', speedup, SPEEDUP_TARGET, 'x', higher_is_better=True)]
    is_brats_size = tuple(sl.shape) == (1, 240, 240) and sl.dtype == np.float32
    if is_brats_size:
        checks.append(check(f'throughput {case}: cache reads, 240x240 float32, one core', rate['cache'], RATE_TARGET,
                            'slices/s', higher_is_better=True))
    if profile or not all(c['met'] for c in checks):
        try: res['profile'] = read_profile(sset, rng.integers(len(sset), size=min(n_cache, 1000)))
        except Exception as e: res['profile'] = {'error': f'{type(e).__name__}: {e}'}
    print(f"throughput {case:<10} cache {rate['cache']:9.1f}/s   naive {rate['naive']:7.2f}/s   "
          f"nibabel dataobj {rate['nibabel_dataobj']:7.2f}/s   speedup {speedup:8.1f}x  "
          f"{'OK' if all(c['met'] for c in checks) else 'MISSED'}", flush=True)
    return res, checks


# --- 2. build time and size -----------------------------------------------------------------------------------

def _du(root:Path) -> dict:
    files = [p for p in root.rglob('*') if p.is_file()]
    return {'bytes': sum(p.stat().st_size for p in files),
            'npy_bytes': sum(p.stat().st_size for p in files if p.suffix == '.npy'),
            'sidecar_bytes': sum(p.stat().st_size for p in files if p.suffix == '.json'),
            'allocated_bytes': sum(p.stat().st_blocks * 512 for p in files), 'files': len(files)}


def build_profile(src:Path) -> dict:
    "Milliseconds of each step a cache build performs for one modality, redone with public calls (one run each)."
    from brainkit.preprocess import brain_mask
    def once(fn):
        t0 = time.perf_counter(); out = fn(); return out, round((time.perf_counter() - t0) * 1e3, 1)
    steps = {}
    vol, steps['load_volume (gzip, NIfTI, RAS float32)'] = once(lambda: bio.load_volume(src))
    _, total = once(lambda: Normalizer()(vol))
    _, mask = once(lambda: brain_mask(vol))
    _, mask_nofill = once(lambda: brain_mask(vol, fill=False))
    data = Normalizer()(vol)
    steps['Normalizer() (percentile) total'] = total
    steps['  brain_mask: fill_holes'] = round(mask - mask_nofill, 1)
    steps['  brain_mask: threshold'] = mask_nofill
    steps['  percentiles + interp + where (the rest)'] = round(total - mask, 1)
    arr, steps['moveaxis -> slice-first contiguous copy'] = once(lambda: np.ascontiguousarray(np.moveaxis(data, 2, 0)))
    _, steps['per-slice brain area'] = once(lambda: (arr != -1).reshape(len(arr), -1).sum(1))
    with tempfile.TemporaryDirectory(prefix='brainkit-bench-data-w-', dir=src.parent.parent) as d:
        def write():
            with open(Path(d)/'a.npy', 'wb') as f:
                np.lib.format.write_array(f, arr, allow_pickle=False); f.flush(); os.fsync(f.fileno())
        _, steps['write .npy + fsync'] = once(write)
    return steps


def bench_build(subject, tmp:Path, repeats:int) -> dict:
    "Build time of a fresh cache for the subject (t1 alone; all four modalities + seg), and its size on disk."
    res = {}
    for case, mods in (('t1', ['t1']), ('all_modalities_and_seg', [*MODS, 'seg'])):
        times, size = [], None
        for r in range(repeats):         # no warm-up: every import and code path ran in the throughput part
            d = tmp/f'build-{case}-{r}'
            t0 = time.perf_counter()
            SliceSet([subject], mods, plane='axial', normalizer=Normalizer(), cache=SliceCache(d), progress=False)
            times.append((time.perf_counter() - t0) * 1e3)
            size = _du(d)
            t0 = time.perf_counter()
            SliceSet([subject], mods, plane='axial', normalizer=Normalizer(), cache=SliceCache(d), progress=False)
            warm_ms = (time.perf_counter() - t0) * 1e3
            shutil.rmtree(d)
        gz = sum(subject.path(m).stat().st_size for m in mods)
        raw = sum(int(np.prod(nib.load(subject.path(m)).shape)) * nib.load(subject.path(m)).get_data_dtype().itemsize
                  for m in mods)
        res[case] = {'modalities': mods, 'build': stats(times), 'reopen_built_cache_ms': round(warm_ms, 3),
                     'cache_size': size, 'nii_gz_bytes': gz, 'voxel_bytes_on_disk_dtype': raw,
                     'cache_over_nii_gz': round(size['bytes']/gz, 2), 'cache_over_uncompressed_nii': round(size['bytes']/raw, 2)}
        print(f"build {case:<24} {stats(times)['median_ms']:8.1f} ms   cache {size['bytes']/1e6:7.1f} MB = "
              f"{size['bytes']/gz:5.1f}x the .nii.gz ({gz/1e6:.1f} MB)", flush=True)
    try: res['profile_t1_steps_ms'] = build_profile(subject.path('t1'))
    except Exception as e: res['profile_t1_steps_ms'] = {'error': f'{type(e).__name__}: {e}'}  # a breakdown, not a result
    print('build t1 steps: ' + ', '.join(f"{k.strip()} {v}" for k, v in res['profile_t1_steps_ms'].items()), flush=True)
    return res


# --- 3. peak RSS ----------------------------------------------------------------------------------------------

def _status_kb(key:str) -> int|None:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'): return int(line.split()[1])
    return None


def iterate_child(root:str, cache_dir:str, batch_size:int) -> dict:
    "In a fresh process: open the dataset, iterate every PairedSlices(t1 -> t2) item once; report memory."
    after_import = _status_kb('VmRSS')
    ds = bio.open_dataset(root)
    pairs = PairedSlices(ds.subjects, ['t1'], 't2', cache=SliceCache(cache_dir), progress=False)
    after_init = _status_kb('VmRSS')
    t0 = time.perf_counter()
    items = batches = 0
    for b in make_loader(pairs, batch_size=batch_size, shuffle=True, workers=0):
        items += len(b['source']); batches += 1
    dt = time.perf_counter() - t0
    return {'subjects': len(ds), 'items': items, 'dataset_len': len(pairs), 'batches': batches, 'iterate_s': round(dt, 3),
            'items_per_s': round(items/dt, 1), 'rss_after_import_kb': after_import, 'rss_after_dataset_init_kb': after_init,
            'rss_end_kb': _status_kb('VmRSS'), 'peak_rss_kb_vmhwm': _status_kb('VmHWM'),
            'ru_maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def run_child(root:Path, cache_dir:Path, batch_size:int) -> dict:
    out = subprocess.run([sys.executable, __file__, '--iterate-child', str(root), str(cache_dir), str(batch_size)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_rss(small_root:Path, big_root:Path, cache_dir:Path, batch_size:int, runs:int) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    for root in (small_root, big_root):   # build every entry first: building reads volumes, iteration must not
        PairedSlices(bio.open_dataset(root).subjects, ['t1'], 't2', cache=SliceCache(cache_dir), progress=False)
    build_s = time.perf_counter() - t0
    res = {'small': [], 'large': []}
    for r in range(runs):                  # alternate the order: small, large, large, small, ...
        for name, root in ((('small', small_root), ('large', big_root)) if r % 2 == 0 else
                           (('large', big_root), ('small', small_root))):
            res[name].append(run_child(root, cache_dir, batch_size))
    peak = {n: max(c['peak_rss_kb_vmhwm'] for c in res[n]) for n in res}
    base = {n: min(c['rss_after_import_kb'] for c in res[n]) for n in res}
    ratio = peak['large']/peak['small']
    growth = {n: peak[n] - base[n] for n in res}
    out = {'call': "PairedSlices(subjects, ['t1'], 't2', cache=SliceCache(tmp)); every batch of "
                   f"make_loader(ds, batch_size={batch_size}, shuffle=True, workers=0), in a fresh subprocess",
           'small_dataset': 'the 8 bundled BraTS samples (96x96x64)',
           'large_dataset': '80 subjects: the samples\' files hard-linked under new BraTS 2021 ids (own cache entries)',
           'cache_build_s_both': round(build_s, 2), 'cache_size_both': _du(cache_dir),
           'runs': res, 'peak_rss_mb': {n: round(v/1024, 1) for n, v in peak.items()},
           'rss_after_import_mb': {n: round(v/1024, 1) for n, v in base.items()},
           'peak_minus_after_import_mb': {n: round(v/1024, 1) for n, v in growth.items()},
           'peak_rss_ratio_large_over_small': round(ratio, 4),
           'note': 'peak RSS is VmHWM of the child process (ru_maxrss is recorded too; after exec it can carry the '
                   'parent\'s high-water mark, so it is not used)'}
    chk = [check('peak RSS, iterate 80 subjects / 8 subjects', ratio, RSS_RATIO_TARGET, 'x')]
    print(f"peak RSS   8 subjects {peak['small']/1024:7.1f} MB   80 subjects {peak['large']/1024:7.1f} MB   "
          f"ratio {ratio:.3f}  {'OK' if chk[0]['met'] else 'MISSED'}", flush=True)
    return out, chk


# --- 4. checksums: what verifying an entry costs, and the cache before and after checksums ----------------------

BEFORE_REF = '5b591b5'       # the last commit whose slice cache had no checksums (issue 13)


def _this_process_forgets():
    "Forget which entries this process verified: the next open checks them as a new process would."
    bd._this_process()['entries'].clear()


def _chunked(path:Path, start:int, update, chunk:int=1 << 20):
    "A call that feeds `path`'s bytes from `start` on to `update(memoryview)` in `chunk`-byte pieces through one buffer."
    def run():
        buf = memoryview(bytearray(chunk))
        with open(path, 'rb') as f:
            f.seek(start)
            while (k := f.readinto(buf)): update(buf[:k])
    return run


def bench_verify(subject, tmp:Path, repeats:int) -> dict:
    "The cost of verifying one entry of a BraTS-sized volume (240x240x155 float32, 35.7 MB): checksums, the check, opens."
    cache, src, prep = SliceCache(tmp/'verify-cache'), subject.path('t1'), Prep.make('axial', None, Normalizer())
    info = cache.info(src, prep)
    npy = cache.paths(src, prep)[0]
    h0, arr = info['header_bytes'], np.load(npy)
    data_bytes = npy.stat().st_size - h0
    crc, adler = [0], [1]
    fns = {'read only, 1 MiB chunks (no checksum)': _chunked(npy, h0, lambda b: None),
           'zlib.crc32, file in 1 MiB chunks (what is used)': _chunked(npy, h0, lambda b: crc.__setitem__(0, zlib.crc32(b, crc[0]))),
           'zlib.adler32, file in 1 MiB chunks': _chunked(npy, h0, lambda b: adler.__setitem__(0, zlib.adler32(b, adler[0]))),
           'hashlib.sha256, file in 1 MiB chunks': lambda: _chunked(npy, h0, hashlib.sha256().update)(),
           'hashlib.blake2b, file in 1 MiB chunks': lambda: _chunked(npy, h0, hashlib.blake2b().update)(),
           'zlib.crc32 of the array in memory (at write)': lambda: zlib.crc32(memoryview(arr).cast('B')),
           'entry_problem(npy, info): size, header, CRC-32': lambda: bd.entry_problem(npy, info),
           'SliceCache.info, first open in a process (verifies)': lambda: (_this_process_forgets(), cache.info(src, prep)),
           'SliceCache.info, later opens (verified already)': lambda: cache.info(src, prep)}
    try:
        import xxhash                                                    # not a dependency: measured only where installed
        fns['xxhash.xxh3_64, file in 1 MiB chunks'] = lambda: _chunked(npy, h0, xxhash.xxh3_64().update)()
        xx = xxhash.VERSION
    except ImportError: xx = None
    ts = time_interleaved(fns, repeats=repeats, warmup=1)
    gb = data_bytes / 1e9
    out = {'entry': {'source': "the synthetic BraTS-sized t1, Prep.make('axial', None, Normalizer())",
                     'shape': info['shape'], 'dtype': info['dtype'], 'bytes': int(npy.stat().st_size)},
           'xxhash': xx or 'not installed (not measured)',
           'note': f'the file is in the OS page cache (just written); medians of {repeats} interleaved rounds', 'steps': {}}
    for k, v in ts.items():
        s = stats(v)
        out['steps'][k] = {**s, 's_per_gb': round(s['median_ms'] / 1e3 / gb, 4)}
    first = out['steps']['SliceCache.info, first open in a process (verifies)']['median_ms']
    later = out['steps']['SliceCache.info, later opens (verified already)']['median_ms']
    out['verification_ms_per_entry'] = round(first - later, 3)
    out['verification_s_per_gb'] = round((first - later) / 1e3 / gb, 4)
    print(f"verify     one 240x240x155 float32 entry ({npy.stat().st_size/1e6:.1f} MB): first open {first:.2f} ms, "
          f"later {later:.3f} ms -> verification {first - later:.2f} ms ({(first - later)/1e3/gb:.3f} s/GB); crc32 "
          f"{out['steps']['zlib.crc32, file in 1 MiB chunks (what is used)']['median_ms']:.2f} ms, read only "
          f"{out['steps']['read only, 1 MiB chunks (no checksum)']['median_ms']:.2f} ms", flush=True)
    return out


def load_before(ref:str):
    "`brainkit/data.py` as of git commit `ref`, imported beside the current one (its relative imports use today's io); or why not."
    import types
    repo = Path(__file__).resolve().parent.parent
    try:
        src = subprocess.run(['git', '-C', str(repo), 'show', f'{ref}:brainkit/data.py'], capture_output=True, text=True,
                             check=True).stdout
        sha = subprocess.run(['git', '-C', str(repo), 'rev-parse', ref], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        return None, f"git cannot show {ref}:brainkit/data.py ({getattr(e, 'stderr', '') or e})".strip()
    name = 'brainkit._bench_data_before'
    mod = types.ModuleType(name); mod.__package__, mod.__file__ = 'brainkit', f'<{ref}:brainkit/data.py>'
    sys.modules[name] = mod
    exec(compile(src, mod.__file__, 'exec'), mod.__dict__)
    return mod, sha


def bench_before_after(cases:dict, before, tmp:Path, n_reads:int, repeats:int, seed:int=0) -> dict:
    "The same cache opened and read by the code before checksums and by today's, interleaved, in this one process."
    out = {}
    for case, subjects in cases.items():
        root = tmp/f'before-after-{case}'
        kw = dict(plane='axial', normalizer=Normalizer(), progress=False)
        after_set = SliceSet(subjects, ['t1'], cache=SliceCache(root), **kw)          # built (with checksums) by today's code
        before_set = before.SliceSet(subjects, ['t1'], cache=before.SliceCache(root), **kw)
        n_entries = len(after_set.subjects)
        opens = time_interleaved({
            'before': lambda: before.SliceSet(subjects, ['t1'], cache=before.SliceCache(root), **kw),
            'after, first open in a process (verifies)': lambda: (_this_process_forgets(),
                                                                   SliceSet(subjects, ['t1'], cache=SliceCache(root), **kw)),
            'after, verified already': lambda: SliceSet(subjects, ['t1'], cache=SliceCache(root), **kw)},
            repeats=repeats, warmup=1)
        js = np.random.default_rng(seed).integers(len(after_set), size=n_reads)
        drain = lambda gen: deque(gen, maxlen=0)        # each slice is dropped at once, as a training loop does
        reads = time_interleaved({'before': lambda: drain(before_set.read(j, ['t1']) for j in js),
                                  'after': lambda: drain(after_set.read(j, ['t1']) for j in js)}, repeats=repeats, warmup=1)
        o = {k: stats(v) for k, v in opens.items()}
        r = {k: {**stats(v), 'us_per_slice': round(stats(v)['median_ms'] * 1e3 / n_reads, 3),
                 'slices_per_s': round(n_reads / stats(v)['median_ms'] * 1e3, 1)} for k, v in reads.items()}
        first, old = o['after, first open in a process (verifies)']['median_ms'], o['before']['median_ms']
        out[case] = {'entries': n_entries, 'slice_shape': list(after_set.files[0]['t1'].shape),
                     'open_dataset_ms': o, 'open_per_entry_ms': {k: round(v['median_ms'] / n_entries, 3) for k, v in o.items()},
                     'first_open_over_before': round(first / old, 3),
                     'reads': {'call': f"SliceSet.read(j, ['t1']), {n_reads} random j per round", **r},
                     'read_after_over_before': round(r['after']['median_ms'] / r['before']['median_ms'], 4)}
        print(f"before/after {case:<10} open {n_entries} entries: before {old:.2f} ms, after first {first:.2f} ms, after "
              f"verified {o['after, verified already']['median_ms']:.2f} ms;  read {r['before']['us_per_slice']:.2f} vs "
              f"{r['after']['us_per_slice']:.2f} us/slice", flush=True)
    return out


def bench_tidy(tmp:Path, entries:int, repeats:int) -> dict:
    "The walk that removes stale temporary files once per process and cache folder, on a cache of `entries` entries."
    root = tmp/'tidy-cache'
    for i in range(entries):                                   # the layout of a cache: <root>/<2 hex>/<key>.npy and .json
        key = hashlib.sha256(str(i).encode()).hexdigest()[:32]
        d = root/key[:2]; d.mkdir(parents=True, exist_ok=True)
        (d/f'{key}.npy').write_bytes(b''); (d/f'{key}.json').write_text('{}')
    gone = subprocess.Popen([sys.executable, '-c', 'pass']); gone.wait()
    stale = []
    for i in range(10):                                        # temps of a writer that was killed
        p = bio.temp_path(root/f'{i:02x}'/f'{i:032x}.npy'); p = p.with_name(p.name.replace(f'-{os.getpid()}-', f'-{gone.pid}-'))
        p.parent.mkdir(exist_ok=True); p.write_bytes(b'x' * 1000); stale.append(p)
    t0 = time.perf_counter(); removed = bio.remove_stale_temps(root, recursive=True); first = (time.perf_counter() - t0) * 1e3
    walk = stats(time_fn(lambda: bio.remove_stale_temps(root, recursive=True), repeats=repeats, warmup=1))
    folders = sum(1 for p in root.iterdir() if p.is_dir())
    out = {'call': 'brainkit.io.remove_stale_temps(root, recursive=True), as SliceCache calls it once per process and folder',
           'entries': entries, 'files': 2 * entries, 'folders': folders, 'stale_temps_removed_first_call': len(removed),
           'first_call_ms': round(first, 3), 'walk_ms': walk, 'us_per_entry': round(walk['median_ms'] * 1e3 / entries, 3)}
    print(f"tidy       {entries} entries in {folders} folders: {walk['median_ms']:.2f} ms per walk "
          f"(first call, removing {len(removed)} stale temps: {first:.2f} ms)", flush=True)
    shutil.rmtree(root)
    return out


# --- main -----------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=7, help='timed rounds of the throughput comparison (median reported)')
    ap.add_argument('--cache-reads', type=int, default=2000, help='random cache reads per round')
    ap.add_argument('--naive-reads', type=int, default=4, help='random naive reads per round')
    ap.add_argument('--build-repeats', type=int, default=2, help='fresh cache builds per case (median reported)')
    ap.add_argument('--rss-runs', type=int, default=2, help='subprocess runs per dataset size (peak = max)')
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--profile', action='store_true', help='add the cache-read step breakdown even if the targets are met')
    ap.add_argument('--no-pin', action='store_true', help='do not pin the throughput measurement to one core')
    ap.add_argument('--tmp', default=None, help='folder for the temporary files (default: the system temp dir)')
    ap.add_argument('--before', default=BEFORE_REF, help="git commit whose brainkit/data.py is compared ('none': skip)")
    ap.add_argument('--tidy-entries', type=int, default=300, help='entries of the cache the stale-temp walk is timed on')
    ap.add_argument('--iterate-child', nargs=3, metavar=('ROOT', 'CACHE', 'BATCH'), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.iterate_child:
        print(json.dumps(iterate_child(a.iterate_child[0], a.iterate_child[1], int(a.iterate_child[2]))))
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='brainkit-bench-data-', dir=a.tmp) as tmp:
        tmp = Path(tmp)
        syn = bio.open_dataset(write_synthetic_subject(tmp/'synthetic'))
        samples = bio.open_dataset(bio.samples_dir('brats'))
        cache = SliceCache(tmp/'cache')
        pin = {'pinned': False, 'reason': '--no-pin'} if a.no_pin else pin_one_core()
        try:
            thr, c1 = {}, []
            for case, ds, n_naive in (('samples', samples, a.naive_reads * 4), ('synthetic', syn, a.naive_reads)):
                thr[case], c = bench_throughput(case, ds.subjects, cache, a.cache_reads, n_naive, a.repeats, a.profile)
                c1 += c
            before, ref = (None, 'skipped (--before none)') if a.before == 'none' else load_before(a.before)
            ba = ({'ref': a.before, 'commit': ref, **bench_before_after({'samples': samples.subjects, 'synthetic': syn.subjects},
                                                                         before, tmp, a.cache_reads, a.repeats)}
                  if before is not None else {'ref': a.before, 'skipped': ref})
        finally: unpin(pin)
        shutil.rmtree(tmp/'cache')
        build = bench_build(syn[0], tmp, a.build_repeats)
        rss, c2 = bench_rss(samples.root, replicate_samples(samples.root, tmp/'large', 80), tmp/'rss-cache',
                            a.batch_size, a.rss_runs)
        verify = bench_verify(syn[0], tmp, a.repeats)
        tidy = bench_tidy(tmp, a.tidy_entries, a.repeats)
        real = stats(time_fn(lambda: bio.remove_stale_temps(tmp/'rss-cache', recursive=True), repeats=a.repeats, warmup=1))
        tidy['rss_cache'] = {'entries': sum(1 for _ in (tmp/'rss-cache').rglob('*.npy')), 'walk_ms': real}
    checks = c1 + c2
    path = write_result('data', {
        'description': 'brainkit.data: slice-cache reads vs a naive per-item .nii.gz loader; cache build time and '
                       'size; peak RSS of iterating 8 vs 80 subjects; the cost of verifying entries (checksums), the '
                       'cache before and after checksums side by side, and the stale-temp walk',
        'settings': {'throughput_repeats': a.repeats, 'throughput_warmup': 1,
                     'throughput_order': 'cache, naive and nibabel_dataobj rounds interleaved, reversed every round',
                     'cache_reads_per_round': a.cache_reads, 'naive_reads_per_round': {'samples': a.naive_reads * 4,
                                                                                      'synthetic': a.naive_reads},
                     'pinning': pin, 'normalizer': Normalizer().to_dict(), 'plane': 'axial',
                     'build_repeats': a.build_repeats, 'build_warmup': 0, 'rss_runs': a.rss_runs,
                     'batch_size': a.batch_size, 'temp_dir': str(Path(tmp).parent),
                     'synthetic_subject': {'id': SYN_ID, 'shape': list(SHAPE), 'dtype': 'int16 (seg uint8)',
                                           'affine': LPS_AFFINE.tolist(), 'orientation': 'LPS', 'modalities': [*MODS, 'seg']}},
        'throughput': thr, 'build': build, 'peak_rss': rss, 'checksum': {'verify': verify, 'before_after': ba},
        'stale_temps': tidy, 'checks': checks,
        'all_targets_met': all(c['met'] for c in checks),
        'wall_s': round(time.perf_counter() - t0, 2)})
    print(f"\nbench_data: {sum(c['met'] for c in checks)}/{len(checks)} targets met "
          f"({time.perf_counter() - t0:.1f} s) -> {path}")
    print(format_checks(checks))
    return 0


if __name__ == '__main__':
    sys.exit(main())
