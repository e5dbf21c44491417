"""Training runs that must not go silently wrong (issue 13), with real processes where the fault is one: two
trainings into one folder, a stale lock after SIGKILL, a dataset that changed under a resume, `--workers` that must not
change the model, a finished run resumed with fewer epochs, files that are not checkpoints, orphan temporary files."""
import json, os, shutil, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch
from torch import nn

from brainkit import train as T
from brainkit.io import samples_dir
from brainkit.segment import SegConfig

from conftest import EXE, brainkit_cli as brainkit   # in this process (conftest.run_main)

TINY = ['--base', '4', '--depth', '3', '--size', '64', '--batch-size', '8', '--min-brain', '0.6']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}



def popen(*args):
    return subprocess.Popen([str(EXE), '-q', *map(str, args)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, p=None, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and (p is None or p.poll() is None):
        if cond(): return True
        time.sleep(0.02)
    return cond()


def copy_subjects(dst, ids):
    src = samples_dir('brats')
    dst.mkdir(parents=True, exist_ok=True)
    for i in ids: shutil.copytree(src/i, dst/i)
    return dst


def add_subject(root, src_id, new_id):
    "A copy of subject `src_id` under the name `new_id` (its files renamed too)."
    (root/new_id).mkdir()
    for f in (samples_dir('brats')/src_id).iterdir(): shutil.copy2(f, root/new_id/f.name.replace(src_id, new_id))


# --- two trainings into one folder ---------------------------------------------------------------------------------

def test_a_second_training_into_the_same_folder_is_refused_naming_the_first(tmp_path):
    out = tmp_path/'run'
    first = popen('segment', 'train', '--out', out, '--epochs', 100, '--epochs-decay', 0, *TINY)   # far longer than the test
    try:
        assert wait_for(lambda: (out/T.LOCK).is_file() and (out/T.LOCK).read_text().strip(), first), first.communicate()
        second = brainkit('segment', 'train', '--out', out, '--epochs', 2, '--epochs-decay', 0, '--seed', 1, *TINY)
        assert first.poll() is None, first.communicate()
        assert second.returncode != 0
        assert 'in use by another training run' in second.stderr and f'process {first.pid} ' in second.stderr, second.stderr
        assert wait_for(lambda: (out/'config.json').is_file(), first)
    finally: first.kill(); first.wait()
    rows = (out/'iterations.csv').read_text().splitlines()[1:-1]    # (the last row may be cut by the kill)
    its = [int(r.split(',')[1]) for r in rows]
    assert its == list(range(1, len(its) + 1))                      # one run's rows, none twice
    assert json.loads((out/'config.json').read_text())['seed'] == 0   # the folder holds the first run's model


TOY = textwrap.dedent('''
    import sys, time, torch
    from torch import nn
    from brainkit import train as T
    T.seed_everything(0)
    net = nn.Linear(3, 1); opt = torch.optim.SGD(net.parameters(), 0.01)
    run = T.Run(sys.argv[1], 'toy', {}, {'net': net}, {'net': opt})
    x = torch.randn(64, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1)), batch_size=8, shuffle=True,
                                         generator=torch.Generator())
    def step(b):
        time.sleep(float(sys.argv[3]))
        loss = ((net(b[0])[:, 0] - b[1]) ** 2).mean(); opt.zero_grad(); loss.backward(); opt.step()
        return {'mse': loss.item()}
    T.fit(run, loader, step, int(sys.argv[2]), progress=False)
    print('done', run.epoch)
''')


def test_a_stale_lock_of_a_killed_run_does_not_block_its_resume(tmp_path):
    out = tmp_path/'run'
    p = subprocess.Popen([sys.executable, '-c', TOY, str(out), '50', '0.05'], env=ENV, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (out/'checkpoint.pt').is_file(), p), p.stderr.read()
    p.send_signal(signal.SIGKILL); p.wait()
    assert (out/T.LOCK).is_file() and str(p.pid) in (out/T.LOCK).read_text()   # the killed process's lock file stays
    r = subprocess.run([sys.executable, '-c', TOY, str(out), '60', '0'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split()[-2:] == ['done', '60'], r.stderr


def test_prepare_out_dir_never_deletes_a_folder_under_a_running_training(tmp_path):
    out = T.prepare_out_dir(tmp_path/'exp')
    p = subprocess.Popen([sys.executable, '-c', TOY, str(out), '50', '0.05'], env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (out/'checkpoint.pt').is_file(), p), p.stderr.read()
        with pytest.raises(T.RunLockedError, match='in use by another training run'): T.prepare_out_dir(out)
        assert (out/'checkpoint.pt').is_file()
    finally: p.kill(); p.wait()


# --- a dataset that changes under a resume -------------------------------------------------------------------------

def test_a_resume_keeps_its_split_and_refuses_a_changed_subject(tmp_path):
    data = copy_subjects(tmp_path/'BraTS2021', [f'BraTS2021_9000{i}' for i in range(1, 5)])
    out = tmp_path/'run'
    args = ['segment', 'train', '--data', data, '--out', out, '--epochs-decay', 0, *TINY]
    r = brainkit(*args, '--epochs', 1)
    assert r.returncode == 0, r.stderr
    split = torch.load(out/'checkpoint.pt', weights_only=True)['meta']['split']
    # subjects arrive while the run is paused (a folder still being unpacked): the resume must not re-split
    add_subject(data, 'BraTS2021_90000', 'BraTS2021_90000')
    add_subject(data, 'BraTS2021_90005', 'BraTS2021_90005')
    r = brainkit(*args, '--epochs', 2)
    assert r.returncode == 0, r.stderr
    assert 'BraTS2021_90000' in r.stderr and 'BraTS2021_90005' in r.stderr and 'not used' in r.stderr, r.stderr
    ck = torch.load(out/'checkpoint.pt', weights_only=True)
    assert ck['meta']['split'] == split and ck['epoch'] == 2
    m = json.loads((out/'metrics.json').read_text())
    assert sorted(s['subject'] for s in m['val_subjects']) == sorted(split['val'])
    # a file of a subject in the split changes: refuse, naming it, and train nothing
    sid = split['train'][0]
    f = data/sid/f'{sid}_t1.nii.gz'
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    before = (out/'checkpoint.pt').read_bytes()
    r = brainkit(*args, '--epochs', 3)
    assert r.returncode != 0 and sid in r.stderr and f.name in r.stderr, r.stderr
    assert (out/'checkpoint.pt').read_bytes() == before
    # a subject of the split is gone: refuse too
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns - 10**9))
    gone = split['val'][0]
    shutil.rmtree(data/gone)
    r = brainkit(*args, '--epochs', 3)
    assert r.returncode != 0 and gone in r.stderr, r.stderr


# --- workers must not change the model -----------------------------------------------------------------------------

def test_workers_0_and_2_train_the_same_model_bit_for_bit(tmp_path):
    args = ['segment', 'train', '--epochs', 1, '--epochs-decay', 0, *TINY]
    runs = {w: brainkit(*args, '--workers', w, '--out', tmp_path/f'w{w}') for w in (0, 2)}
    for w, r in runs.items(): assert r.returncode == 0, (w, r.stderr)
    a, b = (torch.load(tmp_path/f'w{w}'/'checkpoint.pt', weights_only=True) for w in (0, 2))
    assert all(torch.equal(a['nets']['unet'][k], b['nets']['unet'][k]) for k in a['nets']['unet'])
    assert a['history'][0]['loss'] == b['history'][0]['loss']


def test_the_epoch_loop_iterates_the_loader_once_per_epoch(tmp_path):
    class Counting(torch.utils.data.DataLoader):
        iters = 0
        def __iter__(self):
            type(self).iters += 1
            return super().__iter__()
    x = torch.randn(16, 3)
    loader = Counting(torch.utils.data.TensorDataset(x, x.sum(1)), batch_size=4, shuffle=True, generator=torch.Generator())
    net = nn.Linear(3, 1); opt = torch.optim.SGD(net.parameters(), 0.01)
    def step(b):
        loss = ((net(b[0])[:, 0] - b[1]) ** 2).mean(); opt.zero_grad(); loss.backward(); opt.step()
        return {'mse': loss.item()}
    T.fit(T.Run(tmp_path, 'toy', {}, {'net': net}, {'net': opt}), loader, step, 3, progress=True)   # bars on: tqdm.auto
    assert Counting.iters == 3


# --- a finished run resumed with fewer epochs ------------------------------------------------------------------------

def test_resuming_a_finished_run_with_fewer_epochs_says_so_and_changes_nothing(tmp_path):
    out = tmp_path/'run'
    args = ['segment', 'train', '--out', out, '--epochs-decay', 0, *TINY]
    assert brainkit(*args, '--epochs', 2).returncode == 0
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != T.LOCK}   # (the lock names its holder)
    r = brainkit(*args, '--epochs', 1)
    assert r.returncode != 0
    assert 'holds a run of 2 epoch' in r.stderr and ' 1 epoch' in r.stderr and 'nothing was trained or changed' in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name in files} == files


# --- what is not a checkpoint ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('content, says', [
    (b'version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 45000000\n', 'Git LFS pointer'),
    (b'<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>', 'HTML'),
    (b'{}', 'JSON text'),
    (b'epoch,loss\n1,0.5\n', 'a text file'),
    (b'', 'empty')])
def test_files_that_are_not_checkpoints_are_named_for_what_they_are(tmp_path, content, says):
    p = tmp_path/'checkpoint.pt'
    p.write_bytes(content)
    with pytest.raises(T.CheckpointError) as e: T.load_checkpoint(p)
    assert says in str(e.value) and 'would run code' not in str(e.value)
    if says == 'Git LFS pointer': assert 'git lfs pull' in str(e.value)


def test_a_real_checkpoint_is_not_mistaken_for_text(tmp_path):
    T.Run(tmp_path, 'toy', {}, {'net': nn.Linear(2, 1)}).save()
    assert T.not_a_checkpoint(tmp_path/'checkpoint.pt') is None
    assert T.load_checkpoint(tmp_path)['kind'] == 'toy'


# --- settings ---------------------------------------------------------------------------------------------------------

def test_one_modality_twice_is_refused():
    with pytest.raises(ValueError, match='modalities must be distinct'): SegConfig(modalities=('t1', 't1'))
    r = brainkit('segment', 'train', '--out', '/nonexistent/never', '--modalities', 't1', 't1')
    assert r.returncode != 0 and 'modalities must be distinct' in r.stderr, r.stderr


# --- orphan temporary files -------------------------------------------------------------------------------------------

def test_a_killed_runs_half_written_checkpoint_is_removed_when_the_run_starts_again(tmp_path):
    out = tmp_path/'run'
    p = subprocess.Popen([sys.executable, '-c', TOY, str(out), '50', '0.05'], env=ENV, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (out/'checkpoint.pt').is_file(), p), p.stderr.read()
    # what SIGKILL during a save leaves: the temporary file of that process, next to the last whole checkpoint
    p.send_signal(signal.SIGKILL); p.wait()
    from brainkit.io import temp_path
    name = temp_path(out/'checkpoint.pt').name.replace(f'-{os.getpid()}-', f'-{p.pid}-')
    (out/name).write_bytes(b'\0' * 4096)
    r = subprocess.run([sys.executable, '-c', TOY, str(out), '60', '0'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (out/name).exists() and (out/'checkpoint.pt').is_file()


def test_prepare_out_dir_never_deletes_a_subfolder_under_a_running_training(tmp_path):
    out = T.prepare_out_dir(tmp_path/'exp')
    p = subprocess.Popen([sys.executable, '-c', TOY, str(out/'multi'), '50', '0.05'], env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (out/'multi'/'checkpoint.pt').is_file(), p), p.stderr.read()
        with pytest.raises(T.RunLockedError, match='in use by another training run'): T.prepare_out_dir(out)
        assert (out/'multi'/'checkpoint.pt').is_file()
    finally: p.kill(); p.wait()
    assert not (T.prepare_out_dir(out)/'multi').exists()                      # once it ended, a fresh start is allowed


def test_a_read_only_or_full_out_folder_is_named(tmp_path, monkeypatch):
    import errno, builtins
    real = builtins.open
    def full(f, mode='r', *a, **k):
        if str(f).endswith(T.LOCK): raise OSError(errno.ENOSPC, 'No space left on device')
        return real(f, mode, *a, **k)
    monkeypatch.setattr(builtins, 'open', full)
    with pytest.raises(OSError) as e:
        with T.run_lock(tmp_path/'run'): pass
    assert str(tmp_path/'run') in str(e.value) and 'space' in str(e.value)


# --- the fixes the messages offer work from the command line -------------------------------------------------------

def test_segment_train_excludes_a_broken_subject_from_the_command_line(tmp_path):
    data = copy_subjects(tmp_path/'BraTS2021', [f'BraTS2021_9000{i}' for i in range(4)])
    (data/'BraTS2021_90002'/'BraTS2021_90002_t1ce.nii.gz').unlink()
    args = ['segment', 'train', '--data', data, '--epochs', 1, '--epochs-decay', 0, *TINY]
    r = brainkit(*args, '--out', tmp_path/'a')
    assert r.returncode != 0 and 'BraTS2021_90002_t1ce.nii.gz' in r.stderr and '--exclude' in r.stderr, r.stderr
    r = brainkit(*args, '--out', tmp_path/'b', '--exclude', 'BraTS2021_90002')
    assert r.returncode == 0, r.stderr
    split = torch.load(tmp_path/'b'/'checkpoint.pt', weights_only=True)['meta']['split']
    assert 'BraTS2021_90002' not in sum(split.values(), [])


def test_train_cyclegan_takes_one_split_file_for_both_domains(tmp_path):
    hcp = sorted(p.name for p in samples_dir('hcp').iterdir() if p.is_dir())
    brats = sorted(p.name for p in samples_dir('brats').iterdir() if p.is_dir())
    sf = tmp_path/'split.json'
    sf.write_text(json.dumps({'train': hcp[:3] + brats[:4], 'val': hcp[3:4] + brats[4:5], 'test': []}))
    r = brainkit('train', 'cyclegan', '--out', tmp_path/'run', '--split-file', sf, '--epochs', 1, '--epochs-decay', 0,
                 '--size', 32, '--spacing', 4.8, '--ngf', 4, '--ndf', 4, '--batch-size', 8, '--sample-every', 0)
    assert r.returncode == 0, r.stderr
    split = torch.load(tmp_path/'run'/'checkpoint.pt', weights_only=True)['meta']['split']
    assert split['A'] == {'train': hcp[:3], 'val': hcp[3:4], 'test': []}
    assert split['B'] == {'train': brats[:4], 'val': brats[4:5], 'test': []}
    only_a = tmp_path/'only_a.json'
    only_a.write_text(json.dumps({'train': hcp[:3], 'val': hcp[3:4]}))
    r = brainkit('train', 'cyclegan', '--out', tmp_path/'run2', '--split-file', only_a, '--epochs', 1, '--epochs-decay', 0)
    assert r.returncode != 0 and 'no training subject' in r.stderr and str(only_a) in r.stderr, r.stderr
