"brainkit.io under faults: temporary files that name their writer, stale-temp cleanup, write errors that name the user's file."
import errno
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import brainkit.io as bio
from brainkit.io import BrainkitError, atomic_write_bytes, load_volume, make_volume, save_volume

HOST = re.sub(r'[^A-Za-z0-9_.]', '_', socket.gethostname()) + (f"_ns{os.stat('/proc/self/ns/pid').st_ino}" if os.path.exists('/proc/self/ns/pid') else '')   # and its process namespace


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob('*') if p.name.endswith('.tmp'))


# ---------------------------------------------------------------- temporary files name their writer

def test_temp_path_names_host_pid_and_a_random_part(tmp_path):
    a, b = bio.temp_path(tmp_path/'checkpoint.pt'), bio.temp_path(tmp_path/'checkpoint.pt')
    assert a.parent == tmp_path and a != b
    assert re.fullmatch(rf'\.checkpoint\.pt\.{re.escape(HOST)}-{os.getpid()}-[0-9a-f]{{8}}\.tmp', a.name), a.name
    long = bio.temp_path(tmp_path/('x' * 250 + '.nii.gz'))
    assert len(long.name.encode()) <= 255 and long.name.endswith(f'-{os.getpid()}-{long.name[-12:-4]}.tmp')
    atomic_write_bytes(tmp_path/('y' * 250), b'fits')                  # the final name fits, so its temp must too
    assert (tmp_path/('y' * 250)).read_bytes() == b'fits'


def test_atomic_write_goes_through_temp_path(tmp_path, monkeypatch):
    seen, real = [], os.replace
    monkeypatch.setattr(bio.os, 'replace', lambda s, d: (seen.append(Path(s)), real(s, d)))
    atomic_write_bytes(tmp_path/'metrics.json', b'{}')
    (src,) = seen
    assert src.parent == tmp_path and src.name.startswith('.metrics.json.') and f'{HOST}-{os.getpid()}-' in src.name


def _killed_writer(path: Path) -> Path:
    "Run a real process that starts an atomic write of `path` through `temp_path` and is SIGKILLed before the rename."
    code = ("import os, signal, sys; from brainkit.io import temp_path\n"
            "t = temp_path(sys.argv[1]); f = open(t, 'xb'); f.write(b'w' * 5000); f.flush(); print(t, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.run([sys.executable, '-c', code, str(path)], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    return Path(p.stdout.strip())


def test_remove_stale_temps_removes_a_killed_writers_temp_and_nothing_else(tmp_path, caplog):
    run = tmp_path/'run'; run.mkdir()
    dead = _killed_writer(run/'checkpoint.pt')
    assert dead.is_file() and dead.stat().st_size == 5000
    live = bio.temp_path(run/'history.csv'); live.write_bytes(b'being written')           # this process: alive
    other = run/f'.checkpoint.pt.other_host_ns4026531836-{dead.name.split("-")[-2]}-0123abcd.tmp'   # another host, same pid
    other.write_bytes(b'x')
    old = run/'.slices.npy.0123abcd.tmp'; old.write_bytes(b'o' * 100)                     # earlier brainkit, 2 h old
    os.utime(old, (time.time() - 7200,) * 2)
    old12 = run/'.checkpoint.pt.0123456789ab.tmp'; old12.write_bytes(b''); os.utime(old12, (time.time() - 7200,) * 2)
    fresh = run/'.slices.npy.89abcdef.tmp'; fresh.write_bytes(b'')                         # earlier brainkit, just now
    keep = [run/'checkpoint.pt', run/'.hidden', run/'notes.tmp', run/'.a.b.tmp']
    for k in keep: k.write_bytes(b'k')
    with caplog.at_level(logging.INFO, logger='brainkit.io'):
        gone = bio.remove_stale_temps(run)
    assert sorted(gone) == sorted([dead, old, old12])
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in [live, other, fresh, *keep])
    (line,) = [r.getMessage() for r in caplog.records if 'stale' in r.getMessage()]
    assert str(run) in line and ' 3 ' in line and '5.1 kB' in line, line   # count and bytes freed (5000 + 100)
    assert bio.remove_stale_temps(run) == []


def test_remove_stale_temps_waits_for_a_live_process_of_this_host(tmp_path):
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        t = tmp_path/f'.checkpoint.pt.{HOST}-{sleeper.pid}-0123abcd.tmp'; t.write_bytes(b'busy')
        assert bio.remove_stale_temps(tmp_path) == [] and t.exists()    # its writer still runs
    finally:
        sleeper.kill(); sleeper.wait()
    assert bio.remove_stale_temps(tmp_path) == [t] and not t.exists()   # now it is gone


def test_remove_stale_temps_recursive_and_missing_folder(tmp_path):
    deep = tmp_path/'cache'/'ab'/'cd'; deep.mkdir(parents=True)
    dead = _killed_writer(deep/'x.npy')
    assert bio.remove_stale_temps(tmp_path/'cache') == [] and dead.exists()   # not below unless recursive
    assert bio.remove_stale_temps(tmp_path/'cache', recursive=True) == [dead]
    assert bio.remove_stale_temps(tmp_path/'absent') == []


# ---------------------------------------------------------------- write errors name the user's file

def small_volume():
    return make_volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 1, np.eye(4))


def test_an_output_name_that_is_a_folder_is_named_not_its_temp(tmp_path):
    out = tmp_path/'dir.nii.gz'; out.mkdir()
    with pytest.raises(bio.WriteError) as ei: save_volume(small_volume(), out)
    msg = str(ei.value)
    assert msg.startswith(f'{out}: is a folder') and '.tmp' not in msg and 'Fix: choose another output name' in msg, msg
    assert isinstance(ei.value, OSError) and isinstance(ei.value, BrainkitError) and ei.value.errno == errno.EISDIR
    assert temps(tmp_path) == [] and out.is_dir()


class FullDisk:
    "A file object whose writes fail as on a full disk, after the file was created."
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
    def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def __getattr__(self, k): return getattr(self.f, k)


def test_a_full_disk_names_the_folder_and_the_space_needed(tmp_path, monkeypatch):
    out = tmp_path/'run'; out.mkdir()
    (out/'checkpoint.pt').write_bytes(b'previous checkpoint')
    monkeypatch.setattr(bio, 'open', lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    with pytest.raises(OSError) as ei: atomic_write_bytes(out/'checkpoint.pt', bytes(43_200_000))
    monkeypatch.undo()
    e = ei.value
    assert isinstance(e, bio.WriteError) and e.errno == errno.ENOSPC
    msg = str(e)
    assert msg.startswith(f'{out/"checkpoint.pt"}: no space left') and 'needs 43.2 MB' in msg and 'free' in msg, msg
    assert f'Fix: free space on {out} or write to another folder (--out / out_dir)' in msg, msg
    assert '.tmp' not in msg
    assert temps(tmp_path) == [] and (out/'checkpoint.pt').read_bytes() == b'previous checkpoint'


@pytest.mark.skipif(os.geteuid() == 0, reason='root may write anywhere')
def test_a_folder_without_write_permission_is_named(tmp_path):
    ro = tmp_path/'readonly'; ro.mkdir(); ro.chmod(0o555)
    try:
        with pytest.raises(bio.WriteError) as ei: save_volume(small_volume(), ro/'pred.nii.gz')
    finally: ro.chmod(0o755)
    msg = str(ei.value)
    assert msg.startswith(f'{ro/"pred.nii.gz"}: permission denied: {ro} is not writable') and '.tmp' not in msg, msg
    assert '--out / out_dir' in msg and temps(tmp_path) == []


@pytest.mark.parametrize('code,said', [(errno.EROFS, 'is on a read-only file system'), (errno.EACCES, 'permission denied')])
def test_a_read_only_file_system_and_a_file_in_place_of_the_folder(tmp_path, monkeypatch, code, said):
    def refuse(*a, **k): raise OSError(code, os.strerror(code), str(a[0]))
    monkeypatch.setattr(bio, 'open', refuse, raising=False)
    with pytest.raises(bio.WriteError, match=said) as ei: atomic_write_bytes(tmp_path/'m.json', b'{}')
    assert ei.value.errno == code and 'write to another folder (--out / out_dir)' in str(ei.value)
    assert str(ei.value).startswith(f'{tmp_path/"m.json"}:') and '.tmp' not in str(ei.value)
    monkeypatch.undo()
    (tmp_path/'out').write_text('a file where the output folder should be')
    with pytest.raises(bio.WriteError) as ei: atomic_write_bytes(tmp_path/'out'/'sub'/'m.json', b'{}')
    assert f"{tmp_path/'out'} is a file, not a folder" in str(ei.value) and 'Fix:' in str(ei.value)


def test_write_errors_pickle_and_keep_their_errno(tmp_path):
    import pickle
    e = bio.WriteError(tmp_path/'x.pt', 'no space left on the device: writing it needs 1.0 kB', 'free space', errno.ENOSPC)
    back = pickle.loads(pickle.dumps(e))
    assert (type(back), str(back), back.errno, back.filename) == (bio.WriteError, str(e), errno.ENOSPC, str(tmp_path/'x.pt'))


# ---------------------------------------------------------------- a .nii that is gzip; a header that claims 32 GB

def test_a_gzipped_file_named_nii_says_rename_it_to_nii_gz(tmp_path, nifti):
    good = nifti(tmp_path/'t1.nii.gz', np.ones((3, 3, 3), np.float32))
    wrong = tmp_path/'t1.nii'; wrong.write_bytes(good.read_bytes())
    for header_only in (False, True):
        with pytest.raises(bio.UnreadableFileError) as ei: bio.open_nifti(wrong, header_only=header_only)
        msg = str(ei.value)
        assert msg.startswith(f'{wrong}: is gzip-compressed') and 'rename it to .nii.gz' in msg, msg
    with pytest.raises(bio.UnreadableFileError, match='rename it to .nii.gz'): load_volume(wrong)


def claims_32gb(path: Path) -> Path:
    "A NIfTI-1 file whose header claims 2000^3 float32 voxels (32.0 GB) but holds 800 bytes of them (1.2 kB in all)."
    import gzip
    import nibabel as nib
    h = nib.Nifti1Header(); h.set_data_shape((2000, 2000, 2000)); h.set_data_dtype(np.float32)
    h['vox_offset'] = 352; h['magic'] = b'n+1'
    blob = h.binaryblock + b'\0' * 4 + np.ones(200, np.float32).tobytes()
    path.write_bytes(gzip.compress(blob, mtime=0) if path.name.endswith('.gz') else blob)
    return path


@pytest.mark.parametrize('name', ['huge.nii', 'huge.nii.gz'])
def test_info_on_a_header_claiming_32_gb_is_a_clear_error(tmp_path, capsys, name):
    from brainkit.cli import main
    bad = claims_32gb(tmp_path/name)
    assert main(['info', str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {bad}: header claims 32.0 GB of voxels but ') and 'Traceback' not in err, err
    assert ('the file holds 1.2 kB: truncated or a corrupt header' if name == 'huge.nii' else 'truncated or a corrupt header') in err
    assert 'Fix: re-download or re-export the file' in err


@pytest.mark.parametrize('name', ['huge.nii', 'huge.nii.gz'])
def test_load_and_header_scan_refuse_a_claim_the_file_cannot_hold(tmp_path, name, brats_subject):
    bad = claims_32gb(tmp_path/name)
    with pytest.raises(bio.UnreadableFileError, match='header claims 32.0 GB'): load_volume(bad)
    with pytest.raises(bio.UnreadableFileError, match='header claims 32.0 GB'): bio.open_nifti(bad, header_only=True)
    sub = brats_subject(tmp_path/'ds', 'BraTS2021_00001')
    claims_32gb(sub/'BraTS2021_00001_t2.nii.gz')
    for deep in (True, False):
        probs = bio.open_dataset(tmp_path/'ds').scan(deep=deep, raise_errors=False, progress=False)
        assert [str(e).split(': ', 1)[1][:33] for e in probs['BraTS2021_00001']] == ['header claims 32.0 GB of voxels b']


# ---------------------------------------------------------------- symbolic link loops and dangling subject folders

@pytest.fixture
def two_brats(tmp_path):
    "A BraTS 2021 dataset folder holding copies of two bundled sample subjects."
    import shutil
    src = bio.samples_dir('brats')
    root = tmp_path/'BraTS2021'; root.mkdir()
    ids = sorted(n for n in os.listdir(src) if n.startswith('BraTS2021_'))[:2]
    for sid in ids: shutil.copytree(src/sid, root/sid)
    return root, ids


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize('kind', ['loop', 'dangling'])
def test_a_subject_folder_that_is_a_broken_link_is_that_subjects_problem(two_brats, caplog, kind):
    root, ids = two_brats
    bad = 'BraTS2021_00009'
    os.symlink(bad if kind == 'loop' else '/mnt/storage-not-mounted/BraTS2021_00009', root/bad)
    with caplog.at_level(logging.WARNING, logger='brainkit.io'):
        ds = bio.open_dataset(root)
    assert ds.ids == ids and list(ds.missing) == [bad]                     # the rest opens
    (w,) = [m for m in warnings_of(caplog) if bad in m]
    assert 'cannot be opened' in w and ('symbolic link loop' if kind == 'loop' else 'does not exist') in w, w
    with pytest.raises(bio.DatasetScanError) as ei: ds.scan(deep=False, progress=False)
    assert list(ei.value.problems) == [bad]
    (e,) = ei.value.problems[bad]
    assert isinstance(e, bio.BrokenLinkError) and Path(e.path) == root/bad
    if kind == 'loop': assert 'symbolic link loop' in str(e) and 'Fix:' in str(e)
    else: assert 'the link target does not exist' in str(e) and 'Fix: mount the storage, or remove the link' in str(e)
    with pytest.raises(KeyError, match='cannot be opened'): ds[bad]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='brainkit.io'):
        quiet = bio.open_dataset(root, exclude=[bad])                       # a known-missing subject, left out on purpose
    assert quiet.missing == {} and quiet.scan(deep=False, progress=False) == {} and warnings_of(caplog) == []


def test_brainkit_scan_names_the_looped_subject_and_does_not_blame_out(two_brats, capsys):
    from brainkit.cli import main
    root, ids = two_brats
    os.symlink('BraTS2021_00009', root/'BraTS2021_00009')
    assert main(['scan', str(root), '--headers-only']) == 1
    out, err = capsys.readouterr()
    assert 'BraTS2021_00009' in err and 'symbolic link loop' in err and '--out' not in err, err
    assert f'{root}: brats2021' in out


def test_a_file_link_loop_inside_a_subject_is_reported_under_that_subject(two_brats):
    root, ids = two_brats
    seg = root/ids[0]/f'{ids[0]}_seg.nii.gz'                               # not a required modality
    seg.unlink(); os.symlink(seg.name, seg)
    ds = bio.open_dataset(root)
    assert ds.ids == ids
    probs = ds.scan(deep=False, raise_errors=False, progress=False)
    assert list(probs) == [ids[0]]
    (e,) = probs[ids[0]]
    assert isinstance(e, bio.BrokenLinkError) and Path(e.path) == seg and 'symbolic link loop' in str(e)
    with pytest.raises(bio.BrokenLinkError): ds[ids[0]]['seg']


def test_a_link_loop_in_a_generic_subject_folder_does_not_make_the_dataset_unopenable(tmp_path):
    vol = make_volume(np.ones((3, 4, 5), np.float32), np.eye(4))
    for sid in ('sub-01', 'sub-02'):
        for m in ('t1', 't2'): save_volume(vol, tmp_path/'ds'/sid/f'{sid}_{m}.nii.gz')
    loop = tmp_path/'ds'/'sub-02'/'sub-02_flair.nii.gz'; os.symlink(loop.name, loop)
    ds = bio.open_dataset(tmp_path/'ds', 'subjects')
    assert ds.ids == ['sub-01', 'sub-02'] and 'flair' not in ds['sub-02']
    probs = ds.scan(deep=False, raise_errors=False, progress=False)
    assert list(probs) == ['sub-02'] and 'symbolic link loop' in str(probs['sub-02'][0])


def test_a_dangling_file_in_a_plain_folder_is_a_missing_subject(tmp_path, caplog):
    vol = make_volume(np.ones((3, 4, 5), np.float32), np.eye(4))
    save_volume(vol, tmp_path/'plain'/'a.nii.gz')
    os.symlink('/mnt/storage-not-mounted/b.nii.gz', tmp_path/'plain'/'b.nii.gz')
    with caplog.at_level(logging.WARNING, logger='brainkit.io'):
        ds = bio.open_dataset(tmp_path/'plain', 'folder')
    assert ds.ids == ['a'] and list(ds.missing) == ['b'] and any("b: is a symbolic link" in w for w in warnings_of(caplog))
    assert list(ds.scan(raise_errors=False, progress=False)) == ['b']


def test_a_dataset_whose_every_subject_is_behind_unmounted_storage_says_so(tmp_path):
    root = tmp_path/'ds'; root.mkdir()
    for sid in ('BraTS2021_00001', 'BraTS2021_00002'): os.symlink(f'/mnt/storage-not-mounted/{sid}', root/sid)
    with pytest.raises(bio.DatasetLayoutError, match='the link target does not exist'): bio.open_dataset(root)
    with pytest.raises(bio.DatasetLayoutError, match='cannot be opened'): bio.open_dataset(root, 'brats2021')
    with pytest.raises(bio.BrokenLinkError, match='mount the storage'): bio.open_dataset(root/'BraTS2021_00001')
