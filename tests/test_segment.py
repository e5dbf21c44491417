"""Tumour segmentation end to end, as users run it: `brainkit segment train|predict` in subprocesses, a real
SIGKILL in the middle of training and a resume that reproduces the uninterrupted run, NIfTI outputs in the input's
own space, and clear refusals of bad checkpoints and inputs."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainkit.io import GeometryMismatchError, open_dataset, samples_dir
from brainkit.io import label_regions, regions_to_labels
from brainkit.segment import SegConfig, load_segmenter, segment_subject, train_segmentation
from brainkit.train import CheckpointError

from conftest import EXE, brainkit_cli as brainkit   # in this process (conftest.run_main)

# small enough for seconds per epoch on one core; augmentation on, so its randomness must resume exactly too
TINY = ['--base', '4', '--depth', '3', '--size', '64', '--batch-size', '8', '--min-brain', '0.6']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}   # the same arithmetic in every process



def history(run):
    return json.loads((Path(run)/'history.json').read_text())


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A tiny segmentation run on the BraTS-like samples (1 epoch)."
    out = tmp_path_factory.mktemp('seg')/'run'
    r = brainkit('segment', 'train', '--out', out, '--epochs', 1, '--epochs-decay', 0, *TINY)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_losses_of_an_uninterrupted_one(tmp_path):
    # with tumour oversampling: the sampler's draws must depend on (seed, epoch) only, or the resumed epochs differ
    args = ['segment', 'train', '--epochs', 3, '--epochs-decay', 2, '--tumour-share', 0.5, *TINY]
    whole = brainkit(*args, '--out', tmp_path/'whole')
    assert whole.returncode == 0, whole.stderr
    # the same run, killed with SIGKILL as soon as its epoch-2 checkpoint exists (that is, during epoch 3)
    p = subprocess.Popen([str(EXE), '-q', *map(str, args), '--out', str(tmp_path/'killed')], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hist = tmp_path/'killed'/'history.json'
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if hist.is_file() and len(json.loads(hist.read_text() or '[]')) >= 2: break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = len(history(tmp_path/'killed'))
    assert 2 <= done < 5
    resumed = brainkit(*args, '--out', tmp_path/'killed')
    assert resumed.returncode == 0, resumed.stderr
    a, b = history(tmp_path/'whole'), history(tmp_path/'killed')
    assert [h['epoch'] for h in b] == [1, 2, 3, 4, 5]
    for key in ('loss', 'lr', 'val_WT', 'val_TC', 'val_ET'):
        assert [h[key] for h in b] == [h[key] for h in a], key          # exactly equal, not just close
    wa = torch.load(tmp_path/'whole'/'checkpoint.pt', weights_only=True)['nets']['unet']
    wb = torch.load(tmp_path/'killed'/'checkpoint.pt', weights_only=True)['nets']['unet']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    iters = (tmp_path/'killed'/'iterations.csv').read_text().splitlines()
    assert iters[1:] and [int(l.split(',')[1]) for l in iters[1:]] == list(range(1, len(iters)))   # no duplicates


def test_train_writes_the_run_folder(trained):
    names = {p.name for p in trained.iterdir()}
    assert {'checkpoint.pt', 'config.json', 'history.csv', 'history.json', 'iterations.csv', 'metrics.json'} <= names
    m = json.loads((trained/'metrics.json').read_text())
    assert m['epochs'] == 1 and set(m['val_dice']) == {'WT', 'TC', 'ET'}
    n = len(open_dataset(samples_dir('brats')))
    assert len(m['val_subjects']) == n - round(0.75 * n) and m['config']['base'] == 4      # the default 0.75/0.25 split
    assert json.loads((trained/'config.json').read_text())['size'] == 64


def test_predict_one_subject_keeps_the_input_space(trained, tmp_path):
    subj = samples_dir('brats')/'BraTS2021_90003'
    out = tmp_path/'pred.nii.gz'
    r = brainkit('segment', 'predict', '--checkpoint', trained, '--input', subj, '--output', out)
    assert r.returncode == 0, r.stderr
    img, src = nib.load(out), nib.load(subj/'BraTS2021_90003_seg.nii.gz')
    assert img.shape == src.shape and np.array_equal(img.affine, src.affine)
    assert nib.aff2axcodes(img.affine) == ('L', 'P', 'S')
    assert set(np.unique(np.asarray(img.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_predict_a_dataset_folder(trained, tmp_path):
    data = tmp_path/'BraTS2021'
    for sid in ('BraTS2021_90000', 'BraTS2021_90001'): shutil.copytree(samples_dir('brats')/sid, data/sid)
    r = brainkit('segment', 'predict', '--checkpoint', trained, '--input', data, '--output', tmp_path/'preds')
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path/'preds').iterdir()) == ['BraTS2021_90000_pred.nii.gz', 'BraTS2021_90001_pred.nii.gz']
    r = brainkit('segment', 'predict', '--checkpoint', trained, '--input', data, '--output', tmp_path/'one.nii.gz')
    assert r.returncode == 1 and 'holds 2 subjects' in r.stderr


def test_predict_never_overwrites_an_input(trained, tmp_path):
    subj = tmp_path/'BraTS2021_90000'; shutil.copytree(samples_dir('brats')/'BraTS2021_90000', subj)
    target = subj/'BraTS2021_90000_seg.nii.gz'
    before = target.read_bytes()
    r = brainkit('segment', 'predict', '--checkpoint', trained, '--input', subj, '--output', target)
    assert r.returncode == 1 and 'refusing to overwrite' in r.stderr and 'Traceback' not in r.stderr
    assert target.read_bytes() == before


def test_bad_checkpoints_are_refused_with_a_clear_error(trained, tmp_path):
    subj = samples_dir('brats')/'BraTS2021_90000'
    blob = (trained/'checkpoint.pt').read_bytes()
    (tmp_path/'cut.pt').write_bytes(blob[:len(blob) // 3])
    r = brainkit('segment', 'predict', '--checkpoint', tmp_path/'cut.pt', '--input', subj, '--output', tmp_path/'o.nii.gz')
    assert r.returncode == 1 and 'truncated or damaged' in r.stderr and 'Traceback' not in r.stderr
    torch.save({'brainkit': '0', 'kind': 'pix2pix', 'nets': {}}, tmp_path/'other.pt')
    r = brainkit('segment', 'predict', '--checkpoint', tmp_path/'other.pt', '--input', subj, '--output', tmp_path/'o.nii.gz')
    assert r.returncode == 1 and "is a 'pix2pix' checkpoint, but a 'segment' model" in r.stderr
    assert not (tmp_path/'o.nii.gz').exists()


def test_resuming_with_another_architecture_is_refused(trained, tmp_path):
    run = tmp_path/'run'; shutil.copytree(trained, run)
    r = brainkit('segment', 'train', '--out', run, '--epochs', 2, *TINY, '--base', '8')   # the last --base wins
    assert r.returncode == 1 and 'another architecture' in r.stderr and 'base 4 in the checkpoint, 8 here' in r.stderr
    assert 'Traceback' not in r.stderr


def test_wrong_settings_and_inputs_are_refused_before_training(tmp_path, trained):
    r = brainkit('segment', 'train', '--out', tmp_path/'x', '--size', '100')
    assert r.returncode == 1 and 'does not divide by 2**depth' in r.stderr and not (tmp_path/'x').exists()
    r = brainkit('segment', 'train', '--out', tmp_path/'x', '--epoch', '3')
    assert r.returncode == 2                                            # argparse: unknown option
    model, meta = load_segmenter(trained)
    subj = open_dataset(samples_dir('brats'))[0]
    with pytest.raises(Exception, match='has no flair image'):
        segment_subject(model, meta, {m: subj[m] for m in ('t1', 't1ce', 't2')})
    with pytest.raises(GeometryMismatchError):
        segment_subject(model, meta, {**{m: subj[m] for m in ('t1', 't1ce', 't2')},
                                      'flair': open_dataset(samples_dir('hcp'))[0]['t1']})


def test_python_api_matches_the_command(trained, tmp_path):
    cfg = json.loads((trained/'config.json').read_text())
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try: m = train_segmentation(SegConfig.from_dict(cfg), tmp_path/'api', progress=False)
    finally: torch.set_num_threads(threads)
    cli = json.loads((trained/'metrics.json').read_text())
    assert m['final_loss'] == cli['final_loss']                         # same seed, same arithmetic (one thread each)
    with pytest.raises(ValueError, match='unknown segmentation setting'): SegConfig.from_dict({**cfg, 'epoch': 2})


def test_regions_round_trip_every_label_combination():
    seg = np.array([[0, 1], [2, 4]], np.uint8)
    r = label_regions(seg)
    assert r.shape == (3, 2, 2) and r.dtype == bool
    assert (regions_to_labels(r) == seg).all()
    # an ET outside the TC and WT still gives a consistent label map: enhancing wins
    odd = np.zeros((3, 1), bool); odd[2, 0] = True
    assert regions_to_labels(odd).tolist() == [4]


# --- found by review ---

@pytest.mark.parametrize('args, msg', [
    (['--patch', '40', '--dims', '3'], 'multiple of 2**depth'), (['--patch', '32'], 'needs dims 3'),
    (['--split', '0.5', '0.2', '0.1'], 'sum to 1'), (['--norm', 'group'], 'norm must be one of'),
    (['--normalization', 'foo'], 'normalization must be one of'), (['--dataset', 'foo'], "dataset must be 'auto'"),
    (['--save-every', '0'], 'at least 1'), (['--epochs', '0', '--epochs-decay', '0'], 'at least one epoch'),
    (['--batch-size', '0'], 'at least 1'), (['--workers', '-1'], 'workers at least 0')])
def test_impossible_settings_are_refused_before_anything_runs(tmp_path, args, msg):
    r = brainkit('segment', 'train', '--out', tmp_path/'x', *args)
    assert r.returncode == 1 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'x').exists()


def test_resuming_with_changed_settings_is_refused(trained, tmp_path):
    run = tmp_path/'run'; shutil.copytree(trained, run)
    r = brainkit('segment', 'train', '--out', run, '--epochs', 2, *TINY, '--normalization', 'percentile')
    assert r.returncode == 1 and "normalization 'zscore' there, 'percentile' now" in r.stderr, r.stderr


def test_validation_dice_is_the_dice_of_the_written_prediction(trained):
    m = json.loads((trained/'metrics.json').read_text())
    model, meta = load_segmenter(trained)
    ds = open_dataset(samples_dir('brats'))
    for row in m['val_subjects']:
        s = next(x for x in ds if x.id == row['subject'])
        pred = segment_subject(model, meta, s)
        from brainkit.metrics import dice_per_region
        d = dice_per_region(torch.from_numpy(label_regions(pred.data)), torch.from_numpy(label_regions(s['seg'].data)))
        # validation runs on the whole grid, with the same normalization and post-processing as `predict`
        assert d == pytest.approx({k: row[k] for k in d}, abs=0.02), (row['subject'], d, row)
