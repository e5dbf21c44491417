"""`brainkit translate` as users run it: a trained Pix2Pix or CycleGAN generator applied to a NIfTI file, a subject or
a whole dataset, written in the input's own space (shape, affine, orientation), zero outside the brain; inputs never
overwritten, sizes the network cannot take refused or padded, and one broken subject reported without losing the rest."""
import os, shutil, subprocess, sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainkit.io import load_volume, samples_dir
from brainkit.preprocess import brain_mask
from brainkit.train import CheckpointError
from brainkit.translate import load_translator, translate_path, translate_volume
from conftest import EXE, trained_run, brainkit_cli as brainkit   # in this process (conftest.run_main)

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'): ENV.pop(k, None)
TINY = ['--epochs', 1, '--epochs-decay', 0, '--size', 32, '--ngf', 4, '--ndf', 4, '--batch-size', 8, '--sample-every', 0,
        '--device', 'cpu', '--min-brain', 0.6]
SID = 'BraTS2021_90003'


pytestmark = pytest.mark.usefixtures('one_torch_thread')   # (conftest.py)



def t1_of(sid=SID):
    return samples_dir('brats')/sid/f'{sid}_t1.nii.gz'


@pytest.fixture(scope='module')
def p2p(tmp_path_factory):
    "A tiny Pix2Pix run, t1 -> t2, on the samples' own grid (no resampling)."
    return trained_run(tmp_path_factory, 'p2p', 'train', 'pix2pix', *TINY)


@pytest.fixture(scope='module')
def cyc(tmp_path_factory):
    "A tiny CycleGAN run, HCP-like t1 <-> BraTS-like t1, trained on volumes resampled to 4.8 mm."
    return trained_run(tmp_path_factory, 'cyc', 'train', 'cyclegan', *TINY, '--spacing', 4.8)


@pytest.fixture(scope='module')
def translated(p2p, tmp_path_factory):
    "The sample t1 of one subject translated to t2 by the command."
    out = tmp_path_factory.mktemp('tr')/'out.nii.gz'
    r = brainkit('translate', '--checkpoint', p2p, '--input', t1_of(), '--output', out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    return out


def check_in_input_space(out, src, empty_outside=True):
    "`out` opens, lies on `src`'s grid in its orientation, holds finite floats, and is 0 outside src's brain."
    img, ref = nib.load(out), nib.load(src)
    assert img.shape == ref.shape and np.array_equal(img.affine, ref.affine)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(ref.affine)
    assert img.get_data_dtype().kind == 'f'
    y = np.asanyarray(img.dataobj)
    assert np.isfinite(y).all()
    mask = brain_mask(np.asanyarray(ref.dataobj).astype(np.float32))        # in the file's own voxel order
    if empty_outside: assert (y[~mask] == 0).all()
    assert y[mask].std() > 0 and np.abs(y[mask]).max() > 0                   # a real image inside the brain
    return y


def test_a_file_keeps_the_inputs_space(translated):
    assert nib.aff2axcodes(nib.load(t1_of()).affine) == ('L', 'P', 'S')      # not RAS: the output must follow it
    check_in_input_space(translated, t1_of())


def test_a_dataset_folder_gives_one_file_per_subject_and_a_subject_folder_one_file(p2p, tmp_path):
    data = tmp_path/'BraTS2021'
    for sid in ('BraTS2021_90000', 'BraTS2021_90001'): shutil.copytree(samples_dir('brats')/sid, data/sid)
    r = brainkit('translate', '--checkpoint', p2p, '--input', data, '--output', tmp_path/'out')
    assert r.returncode == 0, r.stderr
    # (issue 12 changed this layout on purpose: flat <id>_<target>.nii.gz files were no dataset any reader opens)
    assert sorted(p.name for p in (tmp_path/'out').iterdir() if p.is_dir()) == ['BraTS2021_90000', 'BraTS2021_90001']
    for sid in ('BraTS2021_90000', 'BraTS2021_90001'):
        check_in_input_space(tmp_path/'out'/sid/f'{sid}_t2.nii.gz', data/sid/f'{sid}_t1.nii.gz')
    r = brainkit('translate', '--checkpoint', p2p, '--input', data/'BraTS2021_90001', '--output', tmp_path/'one.nii.gz')
    assert r.returncode == 0, r.stderr
    assert np.array_equal(nib.load(tmp_path/'one.nii.gz').get_fdata(),
                          nib.load(tmp_path/'out'/'BraTS2021_90001'/'BraTS2021_90001_t2.nii.gz').get_fdata())


def test_the_command_never_overwrites_its_input(p2p, tmp_path):
    src = tmp_path/'t1.nii.gz'; shutil.copy(t1_of(), src)
    before = src.read_bytes()
    r = brainkit('translate', '--checkpoint', p2p, '--input', src, '--output', src)
    assert r.returncode == 1 and 'refusing to overwrite' in r.stderr and str(src) in r.stderr and 'Traceback' not in r.stderr
    assert src.read_bytes() == before
    # nor a subject's own target image, when the subject is the input
    subj = tmp_path/SID; shutil.copytree(samples_dir('brats')/SID, subj)
    t2 = subj/f'{SID}_t2.nii.gz'; before = t2.read_bytes()
    with pytest.raises(Exception, match='refusing to overwrite'): translate_path(p2p, subj, t2, device='cpu', progress=False)
    assert t2.read_bytes() == before


@pytest.fixture
def odd_volume(tmp_path):
    "The sample t1 cropped to 90 x 84 x 60 voxels: axial slices the U-Net (multiples of 32) cannot take as they are."
    img = nib.load(t1_of())
    small = img.slicer[3:93, 6:90, 2:62]
    path = tmp_path/'odd_t1.nii.gz'; nib.save(small, path)
    return path


def test_sizes_the_network_cannot_take_are_refused_or_padded(p2p, odd_volume, tmp_path):
    r = brainkit('translate', '--checkpoint', p2p, '--input', odd_volume, '--output', tmp_path/'a.nii.gz', '--fit', 'none')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert '90x84' in r.stderr and 'multiples of 32' in r.stderr and '--fit pad' in r.stderr
    assert not (tmp_path/'a.nii.gz').exists()
    # the default pads the slices, and gives back the input's own grid
    written = translate_path(p2p, odd_volume, tmp_path/'b.nii.gz', device='cpu', progress=False)
    assert written == [tmp_path/'b.nii.gz']
    check_in_input_space(tmp_path/'b.nii.gz', odd_volume)


def test_another_plane_keeps_the_shape(p2p, translated, tmp_path):
    r = brainkit('translate', '--checkpoint', p2p, '--input', t1_of(), '--output', tmp_path/'sag.nii.gz', '--plane', 'sagittal')
    assert r.returncode == 0, r.stderr
    y = check_in_input_space(tmp_path/'sag.nii.gz', t1_of())
    assert not np.allclose(y, nib.load(translated).get_fdata())          # really sliced along another axis
    c = translate_volume(*load_translator(p2p, device='cpu'), load_volume(t1_of()), plane='coronal')
    assert c.shape == load_volume(t1_of()).shape


def test_batched_and_one_slice_at_a_time_agree(p2p, translated):
    G, info = load_translator(p2p, device='cpu')
    v = load_volume(t1_of())
    one = translate_volume(G, info, v, batch_size=1).data
    many = translate_volume(G, info, v, batch_size=64).data
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-5)
    # and the command's output is that volume, written back in the file's orientation
    np.testing.assert_allclose(load_volume(translated).data, many, rtol=0, atol=1e-4)


def test_cyclegan_translates_both_ways(cyc, tmp_path):
    hcp = samples_dir('hcp')/'000001'/'T1w'/'T1w_acpc_dc_restore_brain.nii.gz'
    r = brainkit('translate', '--checkpoint', cyc, '--input', hcp, '--output', tmp_path/'ab.nii.gz', '--direction', 'AtoB')
    assert r.returncode == 0, r.stderr
    check_in_input_space(tmp_path/'ab.nii.gz', hcp)
    r = brainkit('translate', '--checkpoint', cyc, '--input', t1_of(), '--output', tmp_path/'ba.nii.gz', '--direction', 'BtoA')
    assert r.returncode == 0, r.stderr
    check_in_input_space(tmp_path/'ba.nii.gz', t1_of())
    GA, ia = load_translator(cyc, 'AtoB', device='cpu'); GB, ib = load_translator(cyc, 'BtoA', device='cpu')
    assert (ia['direction'], ib['direction']) == ('AtoB', 'BtoA') and ia['spacing'] == 4.8
    v = load_volume(t1_of())
    assert not np.allclose(translate_volume(GA, ia, v).data, translate_volume(GB, ib, v).data)


def test_unknown_directions_are_refused(p2p, cyc, tmp_path):
    r = brainkit('translate', '--checkpoint', p2p, '--input', t1_of(), '--output', tmp_path/'x.nii.gz', '--direction', 'BtoA')
    assert r.returncode == 1 and "has no 'BtoA' direction (it has AtoB)" in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'x.nii.gz').exists()
    with pytest.raises(CheckpointError, match="has no 'CtoD' direction"): load_translator(cyc, 'CtoD')


def test_a_broken_subject_does_not_stop_the_others(p2p, tmp_path):
    data = tmp_path/'BraTS2021'
    sids = ('BraTS2021_90000', 'BraTS2021_90001', 'BraTS2021_90002')
    for sid in sids: shutil.copytree(samples_dir('brats')/sid, data/sid)
    broken = data/sids[1]/f'{sids[1]}_t1.nii.gz'
    blob = broken.read_bytes(); broken.write_bytes(blob[:len(blob) // 2])   # a download cut short
    r = brainkit('translate', '--checkpoint', p2p, '--input', data, '--output', tmp_path/'out')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path/'out').iterdir() if p.is_dir()) == [sids[0], sids[2]]   # (subject folders since issue 12)
    assert all((tmp_path/'out'/sid/f'{sid}_t2.nii.gz').is_file() for sid in (sids[0], sids[2]))
    assert sids[1] in r.stderr and str(broken) in r.stderr, r.stderr        # the broken file, named whole
    # issue 13: what was written is still listed (stdout), and the summary says what to do (stderr)
    assert r.stdout.split() == [str(tmp_path/'out'/sid/f'{sid}_t2.nii.gz') for sid in (sids[0], sids[2])]
    assert '1 of 3 subject(s) could not be translated' in r.stderr and '--exclude' in r.stderr


def test_paths_and_values_the_system_or_the_model_refuse_are_clear_errors(p2p, tmp_path):
    (tmp_path/'taken.nii.gz').mkdir()                                       # a folder where the output file should go
    r = brainkit('translate', '--checkpoint', p2p, '--input', t1_of(), '--output', tmp_path/'taken.nii.gz')
    assert r.returncode == 1 and r.stderr.startswith('error:') and 'Traceback' not in r.stderr and 'Fix:' in r.stderr
    r = brainkit('translate', '--checkpoint', p2p, '--input', t1_of(), '--output', tmp_path/'o.nii.gz', '--batch-size', '0')
    assert r.returncode == 2 and 'at least 1' in r.stderr                  # refused by the command line itself
    r = brainkit('translate', '--checkpoint', p2p, '--input', t1_of(), '--output', tmp_path/'o.nii.gz', '--device', 'gpu')
    assert r.returncode == 1 and "'gpu' is not a device name" in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'o.nii.gz').exists()


def test_training_another_model_into_a_run_folder_is_refused_with_the_fix(p2p):
    r = brainkit('train', 'cyclegan', '--out', p2p, *TINY, '--spacing', 4.8)
    assert r.returncode == 1 and "belongs to a 'pix2pix' run, not a 'cyclegan' one" in r.stderr
    assert 'another folder' in r.stderr and 'Traceback' not in r.stderr


def test_another_plane_than_the_training_one_warns_and_quiet_may_follow_the_command(p2p, tmp_path):
    r = subprocess.run([str(EXE), 'translate', '--checkpoint', str(p2p), '--input', str(t1_of()), '--output',
                        str(tmp_path/'c.nii.gz'), '--plane', 'coronal', '-q'], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    assert 'translating coronal slices with a model trained on axial slices' in r.stderr
    assert 'translate' not in r.stderr.replace('translating', '')         # -q after the command: no progress bar


# ---------------------------------------------------------------- outputs are datasets, with their provenance

def test_a_translated_dataset_is_a_dataset_the_readers_open(p2p, tmp_path):
    from brainkit.io import open_dataset
    written = translate_path(p2p, samples_dir('brats'), tmp_path/'out', device='cpu', progress=False)
    ds = open_dataset(tmp_path/'out')
    assert len(ds) == len(open_dataset(samples_dir('brats'))) == len(written)
    for s in ds:
        assert s.path('t2') == tmp_path/'out'/s.id/f'{s.id}_t2.nii.gz'
        check_in_input_space(s.path('t2'), samples_dir('brats')/s.id/f'{s.id}_t1.nii.gz')


def test_one_models_output_dataset_is_the_next_models_input(cyc, p2p, tmp_path):
    "The report's hybrid strategy in miniature: HCP t1 -> BraTS-like t1 (CycleGAN), then t1 -> t2 (Pix2Pix) on that output."
    from brainkit.io import open_dataset
    first = translate_path(cyc, samples_dir('hcp'), tmp_path/'stage1', device='cpu', progress=False)
    second = translate_path(p2p, tmp_path/'stage1', tmp_path/'stage2', device='cpu', progress=False)
    assert len(first) == len(second) == len(open_dataset(samples_dir('hcp')))
    for s in open_dataset(tmp_path/'stage2'):
        hcp_t1 = samples_dir('hcp')/s.id/'T1w'/'T1w_acpc_dc_restore_brain.nii.gz'
        check_in_input_space(s.path('t2'), hcp_t1)                        # still the HCP input's own space


def test_every_output_records_what_made_it(p2p, translated, tmp_path):
    import hashlib, json
    from brainkit.translate import sidecar_path
    side = sidecar_path(translated)
    assert side.name == translated.name[:-7] + '.json'
    prov = json.loads(side.read_text())
    ck = p2p/'checkpoint.pt'
    assert prov['model'] == 'pix2pix' and prov['direction'] == 'AtoB' and prov['target'] == 't2'
    assert prov['checkpoint'] == str(ck.resolve()) and prov['checkpoint_sha256'] == hashlib.sha256(ck.read_bytes()).hexdigest()
    assert prov['inputs'] == {'t1': str(t1_of().resolve())} and prov['epoch'] == 1 and prov['brainkit']


def test_the_input_layout_keeps_the_inputs_and_adds_the_new_modality(p2p, tmp_path):
    from brainkit.io import open_dataset
    data = tmp_path/'BraTS2021'/SID; data.mkdir(parents=True)
    for m in ('t1', 't1ce', 'flair', 'seg'): shutil.copy(samples_dir('brats')/SID/f'{SID}_{m}.nii.gz', data)
    r = brainkit('translate', '--checkpoint', p2p, '--input', data.parent, '--output', tmp_path/'plus', '--layout', 'input')
    assert r.returncode == 0, r.stderr
    ds = open_dataset(tmp_path/'plus')
    assert ds.layout.name == 'brats2021' and ds.scan(progress=False) == {}          # all five BraTS files, readable
    for m in ('t1', 't1ce', 'flair', 'seg'):
        assert (tmp_path/'plus'/SID/f'{SID}_{m}.nii.gz').read_bytes() == (data/f'{SID}_{m}.nii.gz').read_bytes()
    check_in_input_space(tmp_path/'plus'/SID/f'{SID}_t2.nii.gz', data/f'{SID}_t1.nii.gz')
    # a layout with no file name for the target (a plain folder of files) is refused, naming the fix
    plain = tmp_path/'plain'; plain.mkdir(); shutil.copy(data/f'{SID}_t1.nii.gz', plain/'a.nii.gz')
    r = brainkit('translate', '--checkpoint', p2p, '--input', plain, '--output', tmp_path/'h', '--layout', 'input', '--dataset', 'folder')
    assert r.returncode == 1 and 'Traceback' not in r.stderr and "--layout subjects" in r.stderr, r.stderr
    assert not (tmp_path/'h').exists() or not any((tmp_path/'h').rglob('*.nii.gz'))


@pytest.fixture(scope='module')
def multi(tmp_path_factory):
    "A tiny Pix2Pix run of two inputs, t1 + flair -> t2."
    return trained_run(tmp_path_factory, 'multi', 'train', 'pix2pix', *TINY, '--sources', 't1', 'flair')


def test_a_model_with_several_inputs_translates_a_subject(multi, tmp_path):
    # failed before issue 12: the output of a two-input model was un-padded with the input's channel count
    r = brainkit('translate', '--checkpoint', multi, '--input', samples_dir('brats')/SID, '--output', tmp_path/'o.nii.gz')
    assert r.returncode == 0, r.stderr
    check_in_input_space(tmp_path/'o.nii.gz', t1_of())


def test_a_translated_dataset_declares_its_layout_so_scan_passes(p2p, tmp_path):
    from brainkit.io import DATASET_FILE, open_dataset
    data = tmp_path/'BraTS2021'
    for sid in ('BraTS2021_90000', 'BraTS2021_90001'): shutil.copytree(samples_dir('brats')/sid, data/sid)
    assert brainkit('translate', '--checkpoint', p2p, '--input', data, '--output', tmp_path/'out').returncode == 0
    assert (tmp_path/'out'/DATASET_FILE).is_file()
    ds = open_dataset(tmp_path/'out')
    assert ds.layout.name == 'subjects' and sorted(ds[0].files) == ['t2']   # not a BraTS 2021 folder missing four files
    r = brainkit('scan', tmp_path/'out')
    assert r.returncode == 0, r.stderr
    assert open_dataset(tmp_path/'out'/'BraTS2021_90001').ids == ['BraTS2021_90001']   # one subject's folder of it too


def test_a_plain_folder_of_files_is_translated_file_by_file(p2p, tmp_path):
    from brainkit.io import open_dataset
    plain = tmp_path/'plain'; plain.mkdir()
    for sid in ('BraTS2021_90000', 'BraTS2021_90001'): shutil.copy(samples_dir('brats')/sid/f'{sid}_t1.nii.gz', plain/f'{sid[-5:]}.nii.gz')
    written = translate_path(p2p, plain, tmp_path/'out', device='cpu', progress=False)
    assert sorted(p.parent.name for p in written) == ['90000', '90001']
    check_in_input_space(tmp_path/'out'/'90000'/'90000_t2.nii.gz', plain/'90000.nii.gz')
    # but one subject's modalities, in a folder not named like the subject, are not a folder of separate t1 volumes
    one = tmp_path/'patient1'; shutil.copytree(samples_dir('brats')/SID, one)
    r = brainkit('translate', '--checkpoint', p2p, '--input', one, '--output', tmp_path/'p.nii.gz')
    assert r.returncode == 1 and f"holds one subject's modalities" in r.stderr and f"rename the folder to {SID}" in r.stderr, r.stderr
    assert not (tmp_path/'p.nii.gz').exists()


def test_the_input_layout_never_replaces_a_real_file_with_a_synthetic_one(p2p, tmp_path):
    data = tmp_path/'BraTS2021'/SID; shutil.copytree(samples_dir('brats')/SID, data)   # its real t2 is there
    r = brainkit('translate', '--checkpoint', p2p, '--input', data.parent, '--output', tmp_path/'plus', '--layout', 'input')
    assert r.returncode == 1 and f"is subject {SID}'s own t2" in r.stderr and '--layout subjects' in r.stderr, r.stderr
    assert not (tmp_path/'plus'/SID/f'{SID}_t2.nii.gz').exists()


def test_a_fixed_scale_target_comes_back_on_the_targets_scale(tmp_path):
    "normalization 'none': one scale per modality, fitted on the training volumes; the output uses the target's."
    from brainkit.preprocess import Normalizer, brain_mask
    from brainkit.train import load_checkpoint
    r = brainkit('train', 'pix2pix', '--out', tmp_path/'none', *TINY, '--sources', 't1', 'flair', '--normalization', 'none')
    assert r.returncode == 0, r.stderr
    G, info = load_translator(tmp_path/'none', device='cpu')
    scale_t2 = Normalizer.from_dict(load_checkpoint(tmp_path/'none')['meta']['normalizers']['t2']).scale
    s = {m: load_volume(samples_dir('brats')/SID/f'{SID}_{m}.nii.gz') for m in ('t1', 'flair')}
    raw, out = translate_volume(G, info, s, denormalize=False).data, translate_volume(G, info, s).data
    brain = brain_mask(s['t1'])
    np.testing.assert_allclose(out[brain], (raw[brain] + 1) / 2 * scale_t2, rtol=1e-5, atol=1e-3 * scale_t2)


# ---------------------------------------------------------------- issue 13: plain folders, --modality, --exclude

@pytest.fixture
def plain(tmp_path):
    "A plain folder of copies of the samples' T1 files, under their own names (dataset layout 'folder')."
    d = tmp_path/'t1s'; d.mkdir()
    for sid in ('BraTS2021_90000', 'BraTS2021_90001', 'BraTS2021_90002'): shutil.copy(t1_of(sid), d)
    return d


def test_a_plain_folder_takes_modality_and_exclude(p2p, plain, tmp_path):
    ids = [f'BraTS2021_9000{i}_t1' for i in range(3)]                  # a plain folder's subjects: its files' names
    r = brainkit('translate', '--checkpoint', p2p, '--input', plain, '--output', tmp_path/'a', '--modality', 't1',
                 '--exclude', ids[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path/'a'/i/f'{i}_t2.nii.gz') for i in (ids[0], ids[2])]
    check_in_input_space(tmp_path/'a'/ids[0]/f'{ids[0]}_t2.nii.gz', plain/f'{ids[0]}.nii.gz')
    r = brainkit('translate', '--checkpoint', p2p, '--input', plain, '--output', tmp_path/'b', '--modality', 't2')
    assert r.returncode == 1 and 'given as t2' in r.stderr and 'the model reads t1' in r.stderr and '--modality t1' in r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path/'b').exists()
    # the library takes the same, and a whole dataset can leave subjects out too
    written = translate_path(p2p, samples_dir('brats'), tmp_path/'c', device='cpu', progress=False,
                             exclude=['BraTS2021_90000', 'BraTS2021_90001'])
    from brainkit.io import open_dataset
    assert len(written) == len(open_dataset(samples_dir('brats'))) - 2 and not (tmp_path/'c'/'BraTS2021_90000').exists()
    with pytest.raises(Exception, match='given as t2'):
        translate_path(p2p, t1_of(), tmp_path/'d.nii.gz', device='cpu', progress=False, modality='t2')


def test_a_plain_folder_and_a_model_of_several_inputs_is_refused_with_the_fix(multi, plain, tmp_path):
    r = brainkit('translate', '--checkpoint', multi, '--input', plain, '--output', tmp_path/'o', '--modality', 't1')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert str(plain) in r.stderr and 't1 + flair' in r.stderr
    assert 'one file per modality' in r.stderr and '--modality cannot help' in r.stderr
    assert not (tmp_path/'o').exists()
