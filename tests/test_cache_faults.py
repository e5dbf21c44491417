"brainkit.data's slice cache under faults: damaged entries (content, header, old sidecars) and temporary files of killed writers."
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import brainkit.data as bd
from brainkit.data import Prep, SliceCache, SliceSet, entry_problem
from brainkit.io import open_dataset, samples_dir, temp_path
from brainkit.preprocess import Normalizer

IDS = ['BraTS2021_90000', 'BraTS2021_90001']
IMAGES = ['t1', 't2']

# a fresh process opens the cache: the datasets a training run creates (slices to train on, volumes to validate on)
CHILD = r'''
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format='%(levelname)s:%(name)s:%(message)s')
from brainkit.io import open_dataset
from brainkit.data import SliceCache, SliceSet, VolumeSet
root, cache, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
subjects = [s for s in open_dataset(root) if s.id in ids]
s = SliceSet(subjects, ['t1', 't2', 'seg'], size=96, cache=SliceCache(cache), progress=False)
v = VolumeSet(subjects, ['t1', 't2'], size=96, cache=SliceCache(cache), progress=False)
print(json.dumps({'slices': len(s), 'volume': list(v[0]['image'].shape)}))
'''


@pytest.fixture(scope='module')
def brats():
    return open_dataset(samples_dir('brats'))


def build(brats, root) -> tuple[SliceSet, dict]:
    "A cache of two subjects' t1, t2 and seg, and a copy of each image entry's array, by .npy path."
    s = SliceSet([brats[i] for i in IDS], [*IMAGES, 'seg'], size=96, cache=SliceCache(root), progress=False)
    entries = {s.files[k][m].path: s.sources[k][m] for k in range(len(s.subjects)) for m in IMAGES}
    return s, {p: (np.load(p), src) for p, src in entries.items()}


def fresh_process(brats, root) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, '-c', CHILD, str(brats.root), str(root), *IDS],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def overwrite(npy, start:int, stop:int, keep_mtime:bool=False):
    "Overwrite bytes [start, stop) of `npy` with noise; its size stays, and its mtime too if asked."
    st = os.stat(npy)
    with open(npy, 'r+b') as f: f.seek(start); f.write(np.random.default_rng(start).bytes(stop - start))
    if keep_mtime: os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))


def later(npy):
    "Move `npy`'s mtime 1 s on: a write right after the entry's build may fall in the same tick of the file system's clock."
    st = os.stat(npy); os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def damaged_warnings(stderr:str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith('WARNING:brainkit.data:') and 'is damaged' in l]


@pytest.mark.parametrize('keep_mtime', [False, True], ids=['written', 'bit_rot_keeps_mtime'])
def test_noise_in_cached_images_is_found_by_a_new_process_and_rebuilt(brats, tmp_path, keep_mtime):
    _, original = build(brats, tmp_path)
    for npy in original:                                    # the case: the middle half of each image entry
        n = os.path.getsize(npy); overwrite(npy, n // 4, 3 * n // 4, keep_mtime)
    out = fresh_process(brats, tmp_path)
    warned = damaged_warnings(out.stderr)
    assert len(warned) == len(original), out.stderr         # each entry once (verified once per process), no other
    for npy, (arr, src) in original.items():
        line = next(l for l in warned if npy in l)
        assert str(src) in line and 'its content changed' in line and 'rebuilding it' in line
        np.testing.assert_array_equal(np.load(npy), arr)    # rebuilt under the same name, with the same data
    assert not damaged_warnings(fresh_process(brats, tmp_path).stderr)   # and sound from then on


def test_a_damaged_npy_header_is_found_and_rebuilt(brats, tmp_path):
    _, original = build(brats, tmp_path)
    for npy in original: overwrite(npy, 0, 64)              # the first 64 bytes: magic and header
    out = fresh_process(brats, tmp_path)                    # reading the volumes (np.load) works again
    assert json.loads(out.stdout.splitlines()[-1])['volume'][0] == 2
    warned = damaged_warnings(out.stderr)
    assert len(warned) == len(original) and all("its .npy header cannot be read" in l for l in warned), out.stderr
    for npy, (arr, _) in original.items(): np.testing.assert_array_equal(np.load(npy), arr)


def test_a_header_that_disagrees_with_its_sidecar_is_rebuilt(brats, tmp_path, caplog):
    cache, src, prep = SliceCache(tmp_path), brats[0].path('t1'), Prep.make('axial', 96, Normalizer('percentile'))
    info = cache.info(src, prep)
    npy = cache.paths(src, prep)[0]
    good = np.load(npy)
    np.save(npy, good.reshape(96, 64, 96)); later(npy)      # a valid .npy, as large, of another shape
    assert 'header says float32 [96, 64, 96]' in entry_problem(npy, info)
    with caplog.at_level(logging.WARNING, logger='brainkit.data'):
        assert cache.info(src, prep)['shape'] == [64, 96, 96]
    assert any('header says' in r.getMessage() and str(src) in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(npy), good)


def test_an_entry_from_before_checksums_is_rebuilt_in_place(brats, tmp_path, caplog):
    cache, src, prep = SliceCache(tmp_path), brats[0].path('t2'), Prep.make('axial', 96, Normalizer('percentile'))
    info = cache.info(src, prep)
    assert isinstance(info['crc32'], int)
    npy, side, _ = cache.paths(src, prep)
    good = np.load(npy)
    side.write_text(json.dumps({k: v for k, v in info.items() if k != 'crc32'}))   # as brainkit wrote sidecars before
    n = npy.stat().st_size; overwrite(npy, n // 4, 3 * n // 4)
    with caplog.at_level(logging.WARNING, logger='brainkit.data'):
        again = cache.info(src, prep)
    assert again['crc32'] == info['crc32'] and cache.paths(src, prep)[0] == npy          # the same entry, written again
    assert not [r for r in caplog.records if 'damaged' in r.getMessage()]            # old, not damaged: no warning
    np.testing.assert_array_equal(np.load(npy), good)
    assert sorted(p.name for p in tmp_path.rglob('*') if p.is_file()) == sorted([npy.name, side.name])


def test_an_entry_is_verified_once_per_process(brats, tmp_path, monkeypatch):
    calls = []
    real = bd.entry_problem
    monkeypatch.setattr(bd, 'entry_problem', lambda npy, info: calls.append(npy) or real(npy, info))
    cache, src, prep = SliceCache(tmp_path), brats[0].path('t1'), Prep.make('axial', 96, Normalizer('percentile'))
    cache.info(src, prep); cache.info(src, prep); cache.slice(src, prep, 3)
    assert calls == []                                      # written by this process: known to be sound
    bd._this_process()['entries'].clear()                   # what a new process knows
    for _ in range(3): cache.info(src, prep)
    assert len(calls) == 1                                  # read and checked once, then remembered
    npy = cache.paths(src, prep)[0]
    overwrite(npy, 200, 300); later(npy)                    # a change of the file (its mtime moves) is checked again
    cache.info(src, prep); cache.info(src, prep)
    assert len(calls) == 2                                  # found damaged and rebuilt; the rebuilt entry is not re-read


def test_temporary_files_of_ended_writers_are_removed_when_a_cache_is_first_used(brats, tmp_path):
    gone = subprocess.Popen([sys.executable, '-c', 'pass']); gone.wait()
    def temp(folder, pid):
        p = temp_path(tmp_path/folder/'0123456789abcdef0123456789abcdef.npy')
        p = p.with_name(p.name.replace(f'-{os.getpid()}-', f'-{pid}-'))
        p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(b'part of an entry')
        return p
    dead, dead_deep, live = temp('ab', gone.pid), temp('cd', gone.pid), temp('ab', os.getpid())
    old = tmp_path/'ef'/'.0123456789abcdef0123456789abcdef.npy.1a2b3c4d.tmp'             # a temp named before writers were
    old.parent.mkdir(); old.write_bytes(b'x'); os.utime(old, (0, os.path.getmtime(old) - 7200))
    recent = tmp_path/'ef'/'.fedcba9876543210fedcba9876543210.npy.5e6f7a8b.tmp'; recent.write_bytes(b'x')
    SliceSet(brats[:1], ['t1'], size=96, cache=SliceCache(tmp_path), progress=False)
    assert not dead.exists() and not dead_deep.exists() and not old.exists()
    assert live.exists() and recent.exists()                # a writer still running, or maybe running: kept
    stale = temp('ab', gone.pid)
    SliceSet(brats[:1], ['t1'], size=96, cache=SliceCache(tmp_path), progress=False)
    assert stale.exists()                                   # one walk per process and cache folder, not per dataset


def test_a_killed_writer_leaves_a_temp_that_the_next_process_removes(brats, tmp_path):
    "A real kill: a process building an entry is stopped inside the write; the next process's first use removes its temp."
    code = r'''
import os, signal, sys, numpy as np
import brainkit.data as bd
from brainkit.data import SliceCache, Prep
from brainkit.io import open_dataset
from brainkit.preprocess import Normalizer
real = np.lib.format.write_array
def write_then_die(f, arr, **kw):
    real(f, arr, **kw); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
np.lib.format.write_array = write_then_die
src = open_dataset(sys.argv[1])[0].path('t1')
SliceCache(sys.argv[2]).info(src, Prep.make('axial', 96, Normalizer('percentile')))
'''
    out = subprocess.run([sys.executable, '-c', code, str(brats.root), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr[-2000:]
    left = list(tmp_path.rglob('*.tmp'))
    assert len(left) == 1 and left[0].stat().st_size > 1e6       # the whole array, never renamed into place
    SliceSet(brats[:1], ['t1'], size=96, cache=SliceCache(tmp_path), progress=False)
    assert not list(tmp_path.rglob('*.tmp'))
