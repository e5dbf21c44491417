"""Pix2Pix and CycleGAN training, as users run it: settings refused before anything runs, exact resume (in one process
and after a real SIGKILL of `brainkit train`), checkpoints that survive a kill while saving, the logs and sample grids a
run writes, several input channels, and bad checkpoints refused without running their code."""
import csv, json, math, os, pickle, random, re, signal, subprocess, sys, time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from brainkit.cyclegan import CycleGAN, CycleGANConfig, train_cyclegan
from brainkit.pix2pix import Pix2Pix, Pix2PixConfig, train_pix2pix
from brainkit.train import CheckpointError, load_checkpoint, save_checkpoint
from brainkit.translate import load_translator

from conftest import EXE, brainkit_cli as brainkit   # in this process (conftest.run_main)

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}   # the same arithmetic in every process
for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'): ENV.pop(k, None)

# tiny runs: 32 px slices of volumes resampled to 4.8 mm, only the larger brain slices (about 30 batches an epoch)
P2P = dict(epochs=2, epochs_decay=2, size=32, ngf=4, ndf=4, batch_size=4, sample_every=0, device='cpu', min_brain=0.6,
           spacing=4.8)
# pool_size 50 (the default): the pools must resume too; dropout in the ResNet blocks draws from the global RNG, which
# must resume too (the default Pix2Pix generator, unet_32, has no dropout layer: only U-Nets deeper than 5 levels do)
CYC = dict(epochs=1, epochs_decay=1, size=32, ngf=4, ndf=4, batch_size=8, sample_every=10, device='cpu', min_brain=0.6,
           spacing=4.8, dropout=True)


pytestmark = pytest.mark.usefixtures('one_torch_thread')   # (conftest.py)


def cli_args(cfg: dict) -> list[str]:
    "The `brainkit train` options that give the settings `cfg`."
    out = []
    for k, v in cfg.items():
        opt = k.replace('_', '-')
        if isinstance(v, bool): out.append(f"--{'' if v else 'no-'}{opt}")
        else: out += [f'--{opt}', *(map(str, v) if isinstance(v, (list, tuple)) else [str(v)])]
    return out



@contextmanager
def one_thread():
    "The arithmetic of a `brainkit` process with OMP_NUM_THREADS=1, in this process."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try: yield
    finally: torch.set_num_threads(n)


def history(run):
    return json.loads((Path(run)/'history.json').read_text())


def losses_of(hist):
    "Everything an epoch's row holds but its wall time."
    return [{k: v for k, v in h.items() if k != 'seconds'} for h in hist]


def weights(run):
    return torch.load(Path(run)/'checkpoint.pt', weights_only=True)['nets']


def same_weights(a, b):
    return set(a) == set(b) and all(set(a[n]) == set(b[n]) and all(torch.equal(a[n][k], b[n][k]) for k in a[n]) for n in a)


@pytest.fixture(scope='module')
def p2p_whole(tmp_path_factory):
    "An uninterrupted tiny Pix2Pix run (4 epochs), through the Python API with one thread."
    out = tmp_path_factory.mktemp('p2p')/'whole'
    with one_thread(): train_pix2pix(P2P, out, progress=False)
    return out


@pytest.fixture(scope='module')
def cyc_whole(tmp_path_factory):
    "An uninterrupted tiny CycleGAN run (2 epochs, sample grids every 10 iterations)."
    out = tmp_path_factory.mktemp('cyc')/'whole'
    with one_thread(): train_cyclegan(CYC, out, progress=False)
    return out


@pytest.fixture(scope='module')
def p2p_multi(tmp_path_factory):
    "`brainkit train pix2pix` with three input channels and sample grids every 25 iterations (2 epochs)."
    out = tmp_path_factory.mktemp('p2pm')/'run'
    r = brainkit('train', 'pix2pix', '--out', out, *cli_args({**P2P, 'epochs': 1, 'epochs_decay': 1, 'sample_every': 25}),
                 '--sources', 't1', 't1ce', 'flair', '--target', 't2')
    assert r.returncode == 0, r.stderr
    return out


# --- settings ---

@pytest.mark.parametrize('cls, change, field, msg', [
    (Pix2PixConfig, {'size': 48}, 'size', 'size 48 does not suit unet_32'),
    (Pix2PixConfig, {'target': 't1'}, 'target', "target 't1' is also a source"),
    (Pix2PixConfig, {'sources': ('t1', 't1')}, 'sources', 'distinct'),
    (Pix2PixConfig, {'norm': 'group'}, 'norm', 'norm must be one of'),
    (Pix2PixConfig, {'split': (0.5, 0.2, 0.1)}, 'split', 'sum to 1'),
    (Pix2PixConfig, {'lr': 0.0}, 'lr', 'lr must be positive'),
    (Pix2PixConfig, {'amp': 'fp8'}, 'amp', "amp must be one of none, bf16, fp16, not 'fp8'"),
    (Pix2PixConfig, {'epochs': 0, 'epochs_decay': 0}, 'epoch', 'at least one epoch'),
    (Pix2PixConfig, {'batch_size': 0}, 'batch_size', 'at least 1'),
    (CycleGANConfig, {'pairing': 'nearest'}, 'pairing', "pairing must be one of random, position, position_range, not 'nearest'"),
    (CycleGANConfig, {'size': 30}, 'size', 'size 30 does not suit resnet_6blocks'),
    (CycleGANConfig, {'spacing': 0.0}, 'spacing', 'spacing must be positive'),
    (CycleGANConfig, {'window': 0.0}, 'window', 'window must be in (0, 1]'),
    (CycleGANConfig, {'pool_size': -1}, 'pool_size', 'at least 0'),
    (CycleGANConfig, {'b_slices': 'some'}, 'b_slices', "b_slices must be 'tumour_free' or 'all'"),
    (CycleGANConfig, {'gan_mode': 'hinge'}, 'gan_mode', 'gan_mode must be one of')])
def test_impossible_settings_are_refused_naming_the_field(cls, change, field, msg):
    with pytest.raises(ValueError) as e: cls(**change)
    assert msg in str(e.value) and field in str(e.value)
    with pytest.raises(ValueError, match=re.escape(msg)): cls.from_dict({**json.loads(json.dumps(asdict(cls()))), **change})


@pytest.mark.parametrize('cls', [Pix2PixConfig, CycleGANConfig])
def test_unknown_settings_are_refused_and_known_ones_round_trip(cls):
    with pytest.raises(ValueError, match=rf"unknown {cls.__name__} setting\(s\) \['epoch'\]"): cls.from_dict({'epoch': 3})
    with pytest.raises(ValueError, match='unknown'): cls.from_dict({**asdict(cls()), 'netg': 'unet_32'})   # case matters
    cfg = cls(size=64, split=(0.5, 0.5, 0.0))
    back = cls.from_dict(json.loads(json.dumps(asdict(cfg))))          # as a checkpoint's / config.json's plain data
    assert back == cfg and isinstance(back.split, tuple)


def test_the_command_refuses_impossible_settings_before_writing_anything(tmp_path):
    r = brainkit('train', 'pix2pix', '--out', tmp_path/'x', '--size', 48)
    assert r.returncode == 1 and r.stderr.startswith('error:') and 'size 48 does not suit unet_32' in r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path/'x').exists()


# --- exact resume ---

def test_pix2pix_resumes_exactly(p2p_whole, tmp_path):
    # batch norm (running statistics), Adam and a shuffled loader: all of it must continue where it stopped
    assert Pix2PixConfig().norm == 'batch'
    out = tmp_path/'split'
    with one_thread():
        first = train_pix2pix({**P2P, 'epochs': 1, 'epochs_decay': 0}, out, progress=False)   # new objects each call
        assert first['epochs'] == 1
        m = train_pix2pix(P2P, out, progress=False)
    assert [h['epoch'] for h in m['history']] == [1, 2, 3, 4]
    assert losses_of(history(out)) == losses_of(history(p2p_whole))   # exactly equal, not just close
    assert same_weights(weights(out), weights(p2p_whole))
    whole = json.loads((p2p_whole/'metrics.json').read_text())
    assert m['val'] == whole['val'] and m['final_losses'] == whole['final_losses']


def test_cyclegan_resumes_exactly_with_its_image_pools_and_dropout(cyc_whole, tmp_path):
    out = tmp_path/'split'
    with one_thread():
        train_cyclegan({**CYC, 'epochs': 1, 'epochs_decay': 0}, out, progress=False)
        pools = torch.load(out/'checkpoint.pt', weights_only=True)['extras']
        assert len(pools['pool_A']['images']) == 50 and len(pools['pool_B']['images']) == 50   # full: it mattered
        m = train_cyclegan(CYC, out, progress=False)
    assert [h['epoch'] for h in m['history']] == [1, 2]
    assert losses_of(history(out)) == losses_of(history(cyc_whole))
    assert same_weights(weights(out), weights(cyc_whole))
    a = torch.load(out/'checkpoint.pt', weights_only=True)['extras']['pool_B']['images']
    b = torch.load(cyc_whole/'checkpoint.pt', weights_only=True)['extras']['pool_B']['images']
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_a_killed_training_command_resumes_to_the_uninterrupted_run(p2p_whole, tmp_path):
    per_epoch = sum(1 for r in csv.DictReader((p2p_whole/'iterations.csv').open()) if r['epoch'] == '1')
    # the one sample grid, half way through epoch 3, tells us when to kill: after the epoch-2 checkpoint, mid-epoch
    kill_at = every = 2 * per_epoch + per_epoch // 2
    assert 2 * per_epoch < kill_at < 3 * per_epoch and 2 * every > 4 * per_epoch
    cmd = [str(EXE), '-q', 'train', 'pix2pix', '--out', str(tmp_path/'run'), *cli_args({**P2P, 'sample_every': every})]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    grid = tmp_path/'run'/'samples'/f'iter_{kill_at:07d}.png'
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not grid.exists(): time.sleep(0.005)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    ck = load_checkpoint(tmp_path/'run', 'pix2pix')
    assert ck['epoch'] == 2 and ck['iteration'] == 2 * per_epoch         # killed in epoch 3, after its checkpoint
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)   # the same command again
    assert r.returncode == 0, r.stderr
    assert losses_of(history(tmp_path/'run')) == losses_of(history(p2p_whole))
    assert same_weights(weights(tmp_path/'run'), weights(p2p_whole))
    its = [int(r['iteration']) for r in csv.DictReader((tmp_path/'run'/'iterations.csv').open())]
    assert its == list(range(1, 4 * per_epoch + 1))                     # nothing lost, nothing twice
    assert [json.loads(l)['iteration'] for l in (tmp_path/'run'/'iterations.jsonl').read_text().splitlines()] == its


WRITER = r"""
import sys, torch
from torch import nn
from brainkit.train import Run
out, start = sys.argv[1], int(sys.argv[2])
net = nn.Linear(2048, 2048)                                  # 16 MB of weights: a save takes a while
run = Run(out, 'toy', {'n': 1}, {'net': net})
for i in range(start + 1, start + 10000):
    with torch.no_grad(): net.weight.fill_(i); net.bias.fill_(i)
    run.epoch, run.history = i, [{'epoch': j} for j in range(1, i + 1)]
    run.save()
    if i == start + 1: print('saving', flush=True)
"""


def writing(out, full):
    "Whether a checkpoint is being written: a temporary file for it exists, or checkpoint.pt itself is incomplete."
    try: return any('checkpoint' in n and n.endswith('.tmp') for n in os.listdir(out)) or (out/'checkpoint.pt').stat().st_size < full // 2
    except FileNotFoundError: return True


def test_a_checkpoint_survives_sigkill_while_it_is_being_saved(tmp_path):
    out, rng, last, leftovers = tmp_path/'run', random.Random(0), 0, 0
    for round in range(5):
        p = subprocess.Popen([sys.executable, '-c', WRITER, str(out), str(last)], env=ENV, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == 'saving'
        if round % 2:                                            # mid-save for sure: kill as soon as the checkpoint
            full, deadline = (out/'checkpoint.pt').stat().st_size, time.time() + 10   # is being written (somewhere)
            while time.time() < deadline and not writing(out, full): pass
        else: time.sleep(rng.uniform(0, 0.25))                  # any moment
        p.send_signal(signal.SIGKILL); p.wait(); p.stdout.close()
        assert p.returncode == -signal.SIGKILL
        ck = load_checkpoint(out, 'toy')                         # never a partial file
        k = ck['epoch']
        assert k > last and len(ck['history']) == k
        w = ck['nets']['net']
        assert bool((w['weight'] == k).all()) and bool((w['bias'] == k).all())   # one consistent state, not a mix
        assert len(json.loads((out/'history.json').read_text())) in (k - 1, k)   # written after the checkpoint
        json.loads((out/'config.json').read_text())
        tmps = [n for n in os.listdir(out) if n.endswith('.tmp')]
        assert all(n.startswith('.') for n in tmps), tmps        # a partial write only ever under a hidden temporary name
        leftovers += len(tmps)
        last = k
    assert leftovers >= 1, "no kill landed while a file was being written"


# --- logs, samples, metrics ---

def check_logs(run, loss_names, every):
    m = json.loads((run/'metrics.json').read_text())
    n = m['train_slices'] if isinstance(m['train_slices'], int) else max(m['train_slices'].values())
    per_epoch = math.ceil(n / m['config']['batch_size'])
    total = per_epoch * m['epochs']
    rows = list(csv.DictReader((run/'iterations.csv').open()))
    assert list(rows[0]) == ['epoch', 'iteration', *loss_names]
    assert [int(r['iteration']) for r in rows] == list(range(1, total + 1))
    assert [int(r['epoch']) for r in rows] == [1 + i // per_epoch for i in range(total)]
    assert all(math.isfinite(float(r[k])) for r in rows for k in loss_names)
    lines = [json.loads(l) for l in (run/'iterations.jsonl').read_text().splitlines()]
    assert [{k: str(v) for k, v in l.items()} for l in lines] == rows    # the same rows, as JSON lines
    grids = sorted(p.name for p in (run/'samples').iterdir())
    assert grids == [f'iter_{i:07d}.png' for i in range(every, total + 1, every)]
    assert all((run/'samples'/g).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for g in grids)
    hist = history(run)
    assert [h['epoch'] for h in hist] == list(range(1, m['epochs'] + 1))
    for k in loss_names:                                                  # an epoch's row: the mean of its iterations
        assert hist[-1][k] == pytest.approx(np.mean([float(r[k]) for r in rows[-per_epoch:]]), rel=1e-6)
    return m


def sane(scores):
    assert set(scores) == {'ssim', 'psnr', 'mae'}
    assert -1 <= scores['ssim'] <= 1 and 3 < scores['psnr'] < 60 and 0 < scores['mae'] < 1, scores


def test_pix2pix_logs_every_iteration_and_sample_grids(p2p_multi):
    m = check_logs(p2p_multi, Pix2Pix.loss_names, 25)
    assert m['kind'] == 'pix2pix' and m['processes'] == 1 and m['epochs'] == 2
    sane(m['val'])
    from brainkit.io import open_dataset, samples_dir
    n = len(open_dataset(samples_dir('brats')))
    assert len(m['val_subjects']) == n - round(0.75 * n) and all(set(r) == {'subject', 'ssim', 'psnr', 'mae'} for r in m['val_subjects'])
    for r in m['val_subjects']: sane({k: v for k, v in r.items() if k != 'subject'})
    assert {'val_ssim', 'val_psnr', 'val_mae', 'lr'} <= set(history(p2p_multi)[-1])
    assert json.loads((p2p_multi/'config.json').read_text())['sample_every'] == 25


def test_cyclegan_logs_every_iteration_sample_grids_and_oracle_scores(cyc_whole):
    m = check_logs(cyc_whole, CycleGAN.loss_names, 10)
    assert m['kind'] == 'cyclegan' and m['epochs'] == 2
    sane(m['oracle'])
    assert m['oracle_subjects'] and all(r['subject'].isdigit() for r in m['oracle_subjects'])   # held-out HCP-like ids
    assert {'oracle_ssim', 'oracle_psnr', 'oracle_mae'} <= set(history(cyc_whole)[-1])


def test_pix2pix_with_three_input_channels(p2p_multi):
    ck = load_checkpoint(p2p_multi, 'pix2pix')
    assert ck['specs']['G']['in_ch'] == 3 and ck['specs']['D']['in_ch'] == 4        # D judges the 3 inputs + the output
    assert ck['nets']['G']['model.model.0.weight'].shape[1] == 3
    G, info = load_translator(p2p_multi, device='cpu')
    assert info['sources'] == ['t1', 't1ce', 'flair'] and info['target'] == 't2'
    assert set(info['normalizers']) == {'t1', 't1ce', 'flair'}
    with torch.no_grad(): y = G(torch.zeros(2, 3, 32, 32))
    assert y.shape == (2, 1, 32, 32)


# --- bad checkpoints ---

class Evil:
    "Unpickling this runs a shell command."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def test_bad_checkpoints_are_refused_by_translate_with_a_clear_error(p2p_multi, tmp_path):
    subj = Path(__file__).parent.parent/'data_samples'/'BraTS2021'/'BraTS2021_90000'
    out = tmp_path/'o.nii.gz'
    blob = (p2p_multi/'checkpoint.pt').read_bytes()
    (tmp_path/'cut.pt').write_bytes(blob[:len(blob) // 3])
    r = brainkit('translate', '--checkpoint', tmp_path/'cut.pt', '--input', subj, '--output', out)
    assert r.returncode == 1 and 'cut.pt' in r.stderr and 'truncated or damaged' in r.stderr and 'Traceback' not in r.stderr

    # a real brainkit checkpoint, of a segmentation model
    save_checkpoint(tmp_path/'seg.pt', {'format': 1, 'brainkit': '0', 'kind': 'segment', 'nets': {'unet': {}}, 'meta': {},
                                        'specs': {}, 'epoch': 1})
    r = brainkit('translate', '--checkpoint', tmp_path/'seg.pt', '--input', subj, '--output', out)
    assert r.returncode == 1 and "is a 'segment' checkpoint, not a translation model" in r.stderr, r.stderr

    marker = tmp_path/'pwned'
    torch.save({'brainkit': '0', 'kind': 'pix2pix', 'nets': {}, 'x': Evil(marker)}, tmp_path/'evil.pt')
    r = brainkit('translate', '--checkpoint', tmp_path/'evil.pt', '--input', subj, '--output', out)
    assert r.returncode == 1 and 'would run code' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize('keep', [0, 10, 0.5])
def test_a_cut_checkpoint_is_refused_as_truncated(p2p_whole, tmp_path, keep):
    "Empty (a copy that never started, a full disk), a few bytes, or half of a real checkpoint: a clear CheckpointError."
    blob = (p2p_whole/'checkpoint.pt').read_bytes()
    (tmp_path/'cut.pt').write_bytes(blob[:int(len(blob) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match='cut.pt: is truncated or damaged'): load_checkpoint(tmp_path/'cut.pt')
    with pytest.raises(CheckpointError, match='truncated or damaged'): load_translator(tmp_path/'cut.pt', device='cpu')


def test_unsafe_pickles_are_refused_by_the_python_api_and_by_resume(tmp_path):
    marker = tmp_path/'pwned'
    with open(tmp_path/'plain.pt', 'wb') as f: pickle.dump({'brainkit': '0', 'nets': {}, 'x': Evil(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match='would run code|truncated or damaged'): load_translator(tmp_path/'plain.pt')
    run = tmp_path/'run'; run.mkdir()
    torch.save({'brainkit': '0', 'kind': 'pix2pix', 'nets': {}, 'x': Evil(marker)}, run/'checkpoint.pt')
    with one_thread(), pytest.raises(CheckpointError, match='would run code'):
        train_pix2pix({**P2P, 'epochs': 1, 'epochs_decay': 0}, run, progress=False)   # resuming reads the checkpoint
    assert not marker.exists()


def test_the_samples_oracle_scores_the_hcp_samples_however_they_are_named(tmp_path):
    from brainkit.io import samples_dir
    m = train_cyclegan(CycleGANConfig(**{**CYC, 'epochs_decay': 0, 'sample_every': 0}, a_data=str(samples_dir('hcp'))),
                       tmp_path/'run', progress=False)
    assert set(m['oracle']) == {'ssim', 'psnr', 'mae'} and len(m['oracle_subjects']) == 2


def test_a_residual_pix2pix_corrects_a_previous_estimate_read_from_the_subjects_layout(tmp_path):
    "ProvoGAN's later stages: the last source is `<target>_prev`, a previous estimate; G outputs prev − 2·residual."
    from brainkit.io import load_volume, open_dataset, save_volume, samples_dir
    from brainkit.networks import ResidualOutput
    from brainkit.translate import translate_volume
    from scipy import ndimage
    subjects = list(open_dataset(samples_dir('brats')))[:6]
    for s in subjects:                                    # a 'subjects' folder: t1, t2, and a blurred t2 as the estimate
        v = s.load(['t1', 't2'])
        for m, x in (('t1', v['t1']), ('t2', v['t2']), ('t2_prev', v['t2'].with_data(ndimage.gaussian_filter(v['t2'].data, 1.5)))):
            save_volume(x, tmp_path/'stage'/s.id/f'{s.id}_{m}.nii.gz')
    ds = open_dataset(tmp_path/'stage', 'subjects')        # (BraTS-like ids: 'auto' would take it for BraTS 2021)
    assert 't2_prev' in ds.subjects[0].files and ds.subjects[0].path('t2_prev').is_file()
    cfg = {**P2P, 'data': str(tmp_path/'stage'), 'sources': ['t1', 't2_prev'], 'target': 't2', 'plane': 'sagittal',
           'dataset': 'subjects', 'residual': True, 'epochs': 1, 'epochs_decay': 0, 'spacing': None}   # the volumes' own grid: no resampling
    with one_thread(): train_pix2pix(cfg, tmp_path/'run', progress=False)
    G, info = load_translator(tmp_path/'run', device='cpu')
    assert isinstance(G, ResidualOutput) and info['sources'] == ['t1', 't2_prev'] and info['plane'] == 'sagittal'
    s = ds.subjects[0].load(['t1', 't2', 't2_prev'])
    out = translate_volume(G, info, {'t1': s['t1'], 't2_prev': s['t2_prev']}, denormalize=False)
    assert out.shape == s['t2'].shape
    with torch.no_grad():                                 # a generator that outputs 0 passes the estimate through
        for p in G.net.parameters(): p.zero_()
    same = translate_volume(G, info, {'t1': s['t1'], 't2_prev': s['t2_prev']}, denormalize=False)
    from brainkit.preprocess import Normalizer, brain_mask
    est, _ = Normalizer.from_dict(info['normalizers']['t2_prev']).apply(s['t2_prev'], brain_mask(s['t2_prev']))
    brain = brain_mask(s['t1'])
    assert np.abs(same.data[brain] - np.clip(est, -1, 1)[brain]).max() < 1e-5
    back = translate_volume(G, info, {'t1': s['t1'], 't2_prev': s['t2_prev']})   # on the estimate's own intensity scale
    inside = brain & (np.abs(est) < 1)                    # (the normalization clips the estimate's extremes)
    rel = np.abs(back.data[inside] - s['t2_prev'].data[inside]) / np.abs(s['t2_prev'].data[brain]).max()
    assert rel.max() < 1e-4, rel.max()
    with pytest.raises(ValueError, match='residual needs at least 2 sources'): Pix2PixConfig(**{**cfg, 'sources': ['t2_prev']})
