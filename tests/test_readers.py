"brainkit.io dataset readers: layout detection, unified modality names, BraTS 2023 labels, lazy discovery, scans."
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import brainkit.io as bio
from brainkit.io import (DatasetLayoutError, DatasetScanError, GeometryMismatchError, LabelValueError, MissingModalityError,
                         NonFiniteError, UnreadableFileError, load_volume, open_dataset, samples_dir)

BRATS4 = {'t1', 't1ce', 't2', 'flair'}
UNIFIED = {'brats2021': BRATS4 | {'seg'}, 'ucsf_pdgm': BRATS4 | {'dwi', 'adc', 'swi', 'asl', 'seg'}, 'hcp': {'t1', 't2'},
           'subjects': BRATS4}


def no_nib_load(monkeypatch):
    "Make any volume read through nibabel fail loudly."
    def boom(*a, **k): raise AssertionError(f'nibabel.load called during discovery: {a}')
    monkeypatch.setattr(nib, 'load', boom)
    monkeypatch.setattr(bio.nib, 'load', boom)


# ---------------------------------------------------------------- detection of the bundled samples

def manifest_folders(name) -> list[str]:
    "The subject folders of one bundled sample dataset, as its generator recorded them in MANIFEST.json (not by the readers)."
    files = json.loads((samples_dir()/'MANIFEST.json').read_text())['files']
    pre = bio.SAMPLES[name] + '/'
    return sorted({f[len(pre):].split('/')[0] for f in files if f.startswith(pre)})


@pytest.mark.parametrize('name,kind', [('brats', 'brats2021'), ('hcp', 'hcp'), ('ucsf', 'ucsf_pdgm'), ('oracle', 'subjects')])
def test_samples_are_detected(name, kind, monkeypatch):
    n = len(manifest_folders(name))                            # one subject per folder the generator wrote
    assert n >= 6
    no_nib_load(monkeypatch)                                   # detection reads no volume
    ds = open_dataset(samples_dir(name))
    assert ds.layout.name == kind
    assert len(ds) == n == len(set(ds.ids))
    assert ds.root == samples_dir(name)
    ds2 = open_dataset(samples_dir(name), dataset=kind)        # the explicit name works too
    assert ds2.ids == ds.ids


def test_samples_dir_does_not_depend_on_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv('BRAINKIT_SAMPLES', raising=False)
    monkeypatch.chdir(tmp_path)
    repo_samples = Path(__file__).resolve().parent.parent/'data_samples'
    assert samples_dir().resolve() == repo_samples.resolve()
    assert samples_dir('brats').resolve() == (repo_samples/'BraTS2021').resolve()
    with pytest.raises(ValueError, match='brats'): samples_dir('bratz')


def test_unknown_dataset_name():
    with pytest.raises(ValueError) as ei: open_dataset(samples_dir('brats'), dataset='brats2020')
    assert 'brats2020' in str(ei.value) and 'brats2021' in str(ei.value)


def test_wrong_explicit_dataset_finds_no_subjects():
    with pytest.raises(DatasetLayoutError) as ei: open_dataset(samples_dir('brats'), dataset='ucsf_pdgm')
    assert 'Fix:' in str(ei.value)


# ---------------------------------------------------------------- unified modalities, loading each sample

@pytest.mark.parametrize('name', ['brats', 'ucsf', 'hcp', 'oracle'])
def test_unified_modalities_and_loading(name):
    ds = open_dataset(samples_dir(name))
    expected = UNIFIED[ds.layout.name]
    for s in ds:                                               # every subject has exactly the unified names
        assert set(s) == expected, s.id
        assert set(s.files) >= expected
    s = ds[0]
    vols = s.load()                                            # checks one shared grid
    assert set(vols) == expected
    shapes = {v.shape for v in vols.values()}
    assert len(shapes) == 1
    for m, v in vols.items():
        assert nib.aff2axcodes(v.affine) == ('R', 'A', 'S')
        if m == 'seg':
            assert v.data.dtype == np.uint8
            assert set(np.unique(v.data).tolist()) <= {0, 1, 2, 4}
        else:
            assert v.data.dtype == np.float32
            assert v.data.any() and np.isfinite(v.data).all()


def test_brats_sample_seg_labels_all_subjects():
    for s in open_dataset(samples_dir('brats')):
        assert set(np.unique(s['seg'].data).tolist()) <= {0, 1, 2, 4}


# ---------------------------------------------------------------- BraTS 2023 GLI

SUB21 = 'BraTS2021_90000'   # a 'necrotic' sample: labels 1, 2 and 4 (checked below)
NAMES23 = {'t1': 't1n', 't1ce': 't1c', 't2': 't2w', 'flair': 't2f'}


def make_brats2023(root: Path, sid='BraTS-GLI-00000-000', seg_transform=lambda s: np.where(s == 4, 3, s)) -> Path:
    "Re-save one BraTS 2021 sample subject in the BraTS 2023 GLI layout (ET stored as 3)."
    src = samples_dir('brats')/SUB21
    d = root/sid; d.mkdir(parents=True)
    for m, m23 in NAMES23.items(): shutil.copyfile(src/f'{SUB21}_{m}.nii.gz', d/f'{sid}-{m23}.nii.gz')
    img = nib.load(src/f'{SUB21}_seg.nii.gz')
    seg = np.asanyarray(img.dataobj)
    nib.save(nib.Nifti1Image(seg_transform(seg).astype(np.uint8), img.affine, img.header), d/f'{sid}-seg.nii.gz')
    return d


def test_brats2023_detected_mapped_and_relabelled(tmp_path):
    make_brats2023(tmp_path/'gli')
    on_disk = np.asanyarray(nib.load(tmp_path/'gli'/'BraTS-GLI-00000-000'/'BraTS-GLI-00000-000-seg.nii.gz').dataobj)
    assert set(np.unique(on_disk).tolist()) == {0, 1, 2, 3}      # the file really uses BraTS 2023 labels
    ds = open_dataset(tmp_path/'gli')
    assert ds.layout.name == 'brats2023' and ds.ids == ['BraTS-GLI-00000-000']
    s = ds[0]
    assert set(s) == BRATS4 | {'seg'}
    orig = open_dataset(samples_dir('brats'))[SUB21]
    for m in BRATS4: assert np.array_equal(s[m].data, orig[m].data), m
    seg, seg21 = s['seg'].data, orig['seg'].data
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
    assert np.array_equal(seg == 4, seg21 == 4)                # ET lands on exactly the original 4s
    assert np.array_equal(seg, seg21)
    s.load()


def test_brats2023_seg_with_4_is_refused(tmp_path):
    make_brats2023(tmp_path/'gli', seg_transform=lambda s: s)  # left with BraTS 2021's 4
    s = open_dataset(tmp_path/'gli')[0]
    with pytest.raises(LabelValueError) as ei: s['seg']
    assert 'BraTS-GLI-00000-000-seg.nii.gz' in str(ei.value) and 'Fix:' in str(ei.value)
    assert '[4]' in str(ei.value)


def test_brats2023_single_subject_folder(tmp_path):
    d = make_brats2023(tmp_path/'gli')
    ds = open_dataset(d)
    assert ds.layout.name == 'brats2023' and ds.ids == ['BraTS-GLI-00000-000']


# ---------------------------------------------------------------- plain folders, wrappers, one subject

def test_plain_folder_of_nifti(tmp_path, nifti):
    for name in ('scan_b', 'scan_a', 'scan_c'):
        nifti(tmp_path/'plain'/f'{name}.nii.gz', np.full((3, 3, 3), 1., np.float32))
    (tmp_path/'plain'/'notes.txt').write_text('ignored')
    ds = open_dataset(tmp_path/'plain')
    assert ds.layout.name == 'folder'
    assert ds.ids == ['scan_a', 'scan_b', 'scan_c']
    assert [list(s) for s in ds] == [['image']] * 3
    assert ds['scan_b']['image'].path.name == 'scan_b.nii.gz'
    ds_t1 = open_dataset(tmp_path/'plain', modality='t1')
    assert [list(s) for s in ds_t1] == [['t1']] * 3
    assert ds_t1[0]['t1'].shape == (3, 3, 3)
    assert open_dataset(tmp_path/'plain', dataset='folder', modality='flair')[2].files == {'flair': tmp_path/'plain'/'scan_c.nii.gz'}


def test_wrapper_folder_one_level_down(tmp_path, brats_subject):
    wrap = tmp_path/'download'/'RSNA_ASNR_MICCAI_BraTS2021_TrainingData'
    for i in (1, 2, 3): brats_subject(wrap, f'BraTS2021_0000{i}', seed=i)
    ds = open_dataset(tmp_path/'download')
    assert ds.layout.name == 'brats2021'
    assert ds.root == wrap
    assert ds.ids == ['BraTS2021_00001', 'BraTS2021_00002', 'BraTS2021_00003']


@pytest.mark.parametrize('name,sid', [('brats', 'BraTS2021_90003'), ('ucsf', 'UCSF-PDGM-9002'), ('hcp', '000005')])
def test_one_subject_folder(name, sid):
    full = open_dataset(samples_dir(name))
    folder = full[sid].root
    ds = open_dataset(folder)
    assert ds.layout.name == full.layout.name
    assert ds.ids == [sid]
    assert ds[0].files == full[sid].files


def test_one_subject_folder_given_as_dot(monkeypatch):
    monkeypatch.chdir(samples_dir('brats')/'BraTS2021_90003')
    ds = open_dataset('.')
    assert ds.layout.name == 'brats2021' and ds.ids == ['BraTS2021_90003']


# ---------------------------------------------------------------- lazy discovery

def test_discovery_reads_no_volume_and_scan_finds_empty_files(tmp_path, monkeypatch):
    root = tmp_path/'brats_empty'
    ids = ['BraTS2021_00010', 'BraTS2021_00011']
    for sid in ids:
        (root/sid).mkdir(parents=True)
        for m in ('t1', 't1ce', 't2', 'flair', 'seg'): (root/sid/f'{sid}_{m}.nii.gz').write_bytes(b'')
    with monkeypatch.context() as mp:
        no_nib_load(mp)
        ds = open_dataset(root)
        assert ds.layout.name == 'brats2021' and ds.ids == ids
        assert set(ds[0]) == BRATS4 | {'seg'}                  # membership is a directory listing
    with pytest.raises(DatasetScanError) as ei: ds.scan(progress=False)
    probs = ei.value.problems
    assert set(probs) == set(ids)
    for sid in ids:
        assert all(isinstance(e, UnreadableFileError) for e in probs[sid])
        named = sorted(Path(e.path).name for e in probs[sid])
        assert named == sorted(f'{sid}_{m}.nii.gz' for m in ('t1', 't1ce', 't2', 'flair', 'seg'))


# ---------------------------------------------------------------- scan reports everything at once

@pytest.fixture
def messy_brats(tmp_path, brats_subject):
    "A tiny BraTS 2021 dataset: one fine subject, one missing flair, one NaN t2, one t1ce on another grid."
    root = tmp_path/'messy'
    aff = np.diag([-1., -1., 1., 1.])
    brats_subject(root, 'BraTS2021_00001', seed=1)
    brats_subject(root, 'BraTS2021_00002', skip=('flair',), seed=2)
    nan = np.full((4, 5, 6), 50., np.float32); nan[1, 1, 1] = np.nan
    brats_subject(root, 'BraTS2021_00003', overrides={'t2': (nan, aff)}, seed=3)
    brats_subject(root, 'BraTS2021_00004', overrides={'t1ce': (np.ones((4, 5, 8), np.float32), aff)}, seed=4)
    return root


def test_scan_reports_every_bad_subject(messy_brats):
    ds = open_dataset(messy_brats)
    assert len(ds) == 4
    with pytest.raises(DatasetScanError) as ei: ds.scan(progress=False)
    err = ei.value
    assert set(err.problems) == {'BraTS2021_00002', 'BraTS2021_00003', 'BraTS2021_00004'}
    (e2,), (e3,), (e4,) = (err.problems[k] for k in ('BraTS2021_00002', 'BraTS2021_00003', 'BraTS2021_00004'))
    assert isinstance(e2, MissingModalityError) and 'BraTS2021_00002_flair.nii.gz' in str(e2)
    assert isinstance(e3, NonFiniteError) and 'BraTS2021_00003_t2.nii.gz' in str(e3)
    assert isinstance(e4, GeometryMismatchError) and 'BraTS2021_00004_t1ce.nii.gz' in str(e4)
    msg = str(err)
    for f in ('BraTS2021_00002_flair.nii.gz', 'BraTS2021_00003_t2.nii.gz', 'BraTS2021_00004_t1ce.nii.gz'): assert f in msg
    assert 'BraTS2021_00001' not in msg


def test_scan_without_raising_returns_the_dict(messy_brats):
    ds = open_dataset(messy_brats)
    probs = ds.scan(raise_errors=False, progress=False)
    assert set(probs) == {'BraTS2021_00002', 'BraTS2021_00003', 'BraTS2021_00004'}
    threaded = ds.scan(raise_errors=False, progress=False, workers=3)
    assert {k: [str(e) for e in v] for k, v in threaded.items()} == {k: [str(e) for e in v] for k, v in probs.items()}


def test_shallow_scan_checks_headers_only(messy_brats):
    probs = open_dataset(messy_brats).scan(deep=False, raise_errors=False, progress=False)
    assert set(probs) == {'BraTS2021_00002', 'BraTS2021_00004'}   # the NaN needs the voxels
    assert isinstance(probs['BraTS2021_00002'][0], MissingModalityError)
    assert isinstance(probs['BraTS2021_00004'][0], GeometryMismatchError)


def test_shallow_scan_matches_deep_on_permuted_headers(tmp_path, brats_subject):
    "A modality stored in another voxel order but on the same world grid is not a mismatch, with or without voxels."
    root = tmp_path/'perm'
    aff = np.diag([-1., -1., 1., 1.])
    d = brats_subject(root, 'BraTS2021_00007')
    t1 = np.asanyarray(nib.load(d/'BraTS2021_00007_t1.nii.gz').dataobj)
    ras = aff.copy(); ras[:3, :3] = np.eye(3); ras[:3, 3] = [-3, -4, 0]       # the same grid, stored RAS
    nib.save(nib.Nifti1Image(t1[::-1, ::-1, :].copy(), ras), d/'BraTS2021_00007_t1.nii.gz')
    ds = open_dataset(root)
    assert ds.scan(progress=False) == {} and ds.scan(deep=False, progress=False) == {}
    assert np.allclose(ds[0]['t1'].affine, ds[0]['t2'].affine)


def test_scan_of_clean_samples_is_empty():
    assert open_dataset(samples_dir('ucsf')).scan(deep=False, progress=False) == {}


# ---------------------------------------------------------------- indexing

def test_indexing_by_id_and_position():
    ds, folders = open_dataset(samples_dir('brats')), manifest_folders('brats')   # a BraTS subject's id is its folder
    assert ds.ids == sorted(ds.ids) == folders
    assert ds['BraTS2021_90002'] is ds[2]
    assert ds[-1].id == folders[-1] == f'BraTS2021_{90000 + len(folders) - 1}'
    assert [s.id for s in ds[1:3]] == ['BraTS2021_90001', 'BraTS2021_90002']
    with pytest.raises(KeyError) as ei: ds['BraTS2021_00000']
    assert 'BraTS2021_00000' in str(ei.value) and 'BraTS2021' in str(ei.value)
    with pytest.raises(IndexError): ds[len(folders)]


def test_exclude_leaves_subjects_out_and_the_fix_message_names_it(samples, caplog, tmp_path, brats_subject):
    from brainkit.io import MissingModalityError
    ds = open_dataset(samples/'BraTS2021', exclude=['BraTS2021_90001', 'BraTS2021_99999'])
    assert len(ds) == len(manifest_folders('brats')) - 1 and 'BraTS2021_90001' not in ds.ids
    assert 'BraTS2021_99999' in caplog.text                       # an id that names no subject is reported
    brats_subject(tmp_path, 'BraTS2021_00001', skip=('flair',))
    sub = open_dataset(tmp_path)[0]
    with pytest.raises(MissingModalityError) as ei: sub['flair']
    assert "exclude=['BraTS2021_00001']" in str(ei.value)        # the advertised fix exists, and works:
    with pytest.raises(DatasetLayoutError): open_dataset(tmp_path, exclude=['BraTS2021_00001'])


# --- found by review ---

def test_comparing_and_searching_subjects_never_reads_a_volume(samples, monkeypatch):
    ds = open_dataset(samples/'BraTS2021')
    def no_reads(*a, **k): raise AssertionError('a volume was read')
    monkeypatch.setattr(bio, 'load_volume', no_reads)
    a, b = ds[0], open_dataset(samples/'BraTS2021')[0]
    assert a == b and a != ds[1] and hash(a) == hash(b) and len({a, b, ds[1]}) == 2
    assert ds[5] in ds and ds.index(ds[5]) == 5
    part = ds[2:4]
    assert isinstance(part, bio.MRIDataset) and part.ids == ds.ids[2:4]


def test_an_unforeseen_failure_in_one_file_does_not_end_the_scan(tmp_path, brats_subject, monkeypatch):
    brats_subject(tmp_path, 'BraTS2021_00001'); brats_subject(tmp_path, 'BraTS2021_00002')
    real = bio.load_volume
    def flaky(path, *a, **k):
        if 'BraTS2021_00001_t2' in str(path): raise TypeError('something nibabel did not expect')
        return real(path, *a, **k)
    monkeypatch.setattr(bio, 'load_volume', flaky)
    problems = open_dataset(tmp_path).scan(raise_errors=False, progress=False)
    assert list(problems) == ['BraTS2021_00001']
    (err,) = problems['BraTS2021_00001']
    assert isinstance(err, bio.UnreadableFileError) and 'BraTS2021_00001_t2.nii.gz' in str(err) and 'TypeError' in str(err)


def test_uncompressed_files_are_accepted_in_dedicated_layouts(tmp_path, brats_subject):
    d = brats_subject(tmp_path, 'BraTS2021_00001')
    for p in d.glob('*.nii.gz'): p.with_name(p.name[:-3]).write_bytes(gzip.decompress(p.read_bytes())); p.unlink()
    ds = open_dataset(tmp_path)
    assert ds.layout.name == 'brats2021'
    assert set(ds[0].load()) == {'t1', 't1ce', 't2', 'flair', 'seg'}


def test_a_missing_modality_names_the_unclaimed_files_present(tmp_path, brats_subject):
    d = brats_subject(tmp_path, 'BraTS2021_00001')
    (d/'BraTS2021_00001_t1ce.nii.gz').rename(d/'BraTS2021_00001_t1Gd.nii.gz')
    with pytest.raises(MissingModalityError) as ei: open_dataset(tmp_path)[0]['t1ce']
    assert 'BraTS2021_00001_t1Gd.nii.gz' in str(ei.value)


def test_subjects_of_another_layout_in_the_same_folder_are_reported(tmp_path, brats_subject, caplog):
    brats_subject(tmp_path, 'BraTS2021_00001')
    for sid in ('BraTS-GLI-00001-000', 'BraTS-GLI-00002-000'):
        d = tmp_path/sid; d.mkdir()
        for m in ('t1n', 't1c', 't2w', 't2f'):
            nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), d/f'{sid}-{m}.nii.gz')
    ds = open_dataset(tmp_path)
    assert ds.layout.name == 'brats2023' and len(ds) == 2
    assert '1 brats2021' in caplog.text                      # not silently dropped
    assert 'BraTS2021_00001' in caplog.text                  # named among the ignored folders


def test_an_explicit_dataset_name_accepts_one_subjects_folder(samples):
    sub = samples/'BraTS2021'/'BraTS2021_90003'
    assert open_dataset(sub, 'brats2021').ids == ['BraTS2021_90003']
    assert open_dataset(samples/'HCP'/'000002', 'hcp').ids == ['000002']


def test_a_file_given_as_dataset_points_to_info(samples):
    with pytest.raises(DatasetLayoutError) as ei:
        open_dataset(samples/'BraTS2021'/'BraTS2021_90000'/'BraTS2021_90000_t1.nii.gz')
    assert 'brainkit info' in str(ei.value)


def test_a_scan_names_the_file_off_the_subjects_grid_even_when_it_is_t1(tmp_path, brats_subject):
    aff = np.diag([-1., -1., 1., 1.])
    brats_subject(tmp_path, 'BraTS2021_00001')
    brats_subject(tmp_path, 'BraTS2021_00002', overrides={'t1': (np.ones((4, 5, 8), np.float32), aff)})
    for deep in (True, False):
        probs = open_dataset(tmp_path).scan(deep=deep, raise_errors=False, progress=False)
        (e,), = probs.values()
        assert list(probs) == ['BraTS2021_00002'] and isinstance(e, GeometryMismatchError)
        assert Path(e.path).name == 'BraTS2021_00002_t1.nii.gz' and str(e).startswith(str(e.path)), str(e)
        assert 't1ce' in str(e)                                      # ... and says which files it differs from
