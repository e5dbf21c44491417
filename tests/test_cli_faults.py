"""Issue 13, `brainkit segment predict` on messy inputs, as users run it (subprocesses, tiny trained models): a plain
folder of T1 files, a dataset with a bad subject in it, subjects left out with --exclude."""
import os, shutil, subprocess, sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainkit.io import samples_dir
from conftest import EXE, trained_run, brainkit_cli as brainkit   # in this process (conftest.run_main)

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
TINY = ['--epochs', 1, '--epochs-decay', 0, '--base', 4, '--depth', 3, '--size', 64, '--batch-size', 8, '--min-brain', 0.6]
SIDS = ('BraTS2021_90000', 'BraTS2021_90001', 'BraTS2021_90002')



@pytest.fixture(scope='module')
def seg_t1(tmp_path_factory):
    "A tiny segmenter of t1 alone: one input modality."
    return trained_run(tmp_path_factory, 'seg_t1', 'segment', 'train', '--modalities', 't1', *TINY)


@pytest.fixture(scope='module')
def seg_all(tmp_path_factory):
    "A tiny segmenter of the four BraTS modalities (the default)."
    return trained_run(tmp_path_factory, 'seg_all', 'segment', 'train', *TINY)


@pytest.fixture
def plain(tmp_path):
    "A plain folder of T1 files, one per subject (dataset layout 'folder': each file's modality is called 'image')."
    d = tmp_path/'t1s'; d.mkdir()
    for sid in SIDS: shutil.copy(samples_dir('brats')/sid/f'{sid}_t1.nii.gz', d/f'{sid}.nii.gz')
    return d


def test_predict_on_a_plain_folder_takes_each_file_as_the_models_one_input(seg_t1, plain, tmp_path):
    "Failed for every file ('has no t1 image'): a plain folder names every file 'image'."
    r = brainkit('segment', 'predict', '--checkpoint', seg_t1, '--input', plain, '--output', tmp_path/'a')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path/'a'/f'{sid}_pred.nii.gz') for sid in SIDS]
    for sid in SIDS:
        img, src = nib.load(tmp_path/'a'/f'{sid}_pred.nii.gz'), nib.load(plain/f'{sid}.nii.gz')
        assert img.shape == src.shape and np.array_equal(img.affine, src.affine)
    r = brainkit('segment', 'predict', '--checkpoint', seg_t1, '--input', plain, '--output', tmp_path/'b', '--modality', 't1')
    assert r.returncode == 0 and len(r.stdout.split()) == 3, r.stderr
    r = brainkit('segment', 'predict', '--checkpoint', seg_t1, '--input', plain, '--output', tmp_path/'c', '--modality', 't2')
    assert r.returncode == 1 and 'given as t2' in r.stderr and '--modality t1' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'c').exists()


def test_a_plain_folder_and_a_model_of_several_inputs_is_refused_with_the_fix(seg_all, plain, tmp_path):
    r = brainkit('segment', 'predict', '--checkpoint', seg_all, '--input', plain, '--output', tmp_path/'a', '--modality', 't1')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert str(plain) in r.stderr and 't1 + t1ce + t2 + flair' in r.stderr
    assert 'one file per modality' in r.stderr and '--modality cannot help' in r.stderr
    assert not (tmp_path/'a').exists()


def test_predict_goes_on_after_a_bad_subject_and_lists_both(seg_all, tmp_path):
    "Stopped at the first bad subject, leaving the predictions already written unlisted."
    data = tmp_path/'BraTS2021'
    for sid in SIDS: shutil.copytree(samples_dir('brats')/sid, data/sid)
    broken = data/SIDS[0]/f'{SIDS[0]}_flair.nii.gz'
    broken.write_bytes(broken.read_bytes()[:5000])                         # a download cut short, in the first subject
    r = brainkit('segment', 'predict', '--checkpoint', seg_all, '--input', data, '--output', tmp_path/'preds')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    want = [tmp_path/'preds'/f'{sid}_pred.nii.gz' for sid in SIDS[1:]]
    assert r.stdout.split() == [str(w) for w in want] and all(w.is_file() for w in want)
    assert not (tmp_path/'preds'/f'{SIDS[0]}_pred.nii.gz').exists()
    assert f'- {SIDS[0]}:' in r.stderr and str(broken) in r.stderr and '1 of 3 subject(s) could not be segmented' in r.stderr
    assert '--exclude' in r.stderr
    # leaving it out, as the fix says
    r = brainkit('segment', 'predict', '--checkpoint', seg_all, '--input', data, '--output', tmp_path/'rest', '--exclude', SIDS[0])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path/'rest').iterdir()) == [f'{sid}_pred.nii.gz' for sid in SIDS[1:]]
