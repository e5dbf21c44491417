"brainkit.io: loading, canonical orientation, saving, errors and planes, on tiny synthetic NIfTI files."
import gzip
import os
import pickle
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import brainkit.io as bio
from brainkit.io import (BRATS_LABELS, BrainkitError, DatasetLayoutError, DatasetScanError, DimensionError,
                         EmptyVolumeError, GeometryMismatchError, LabelValueError, MissingFileError, MissingModalityError,
                         NonFiniteError, UnreadableFileError, load_volume, open_dataset, plane_axis, save_volume,
                         take_slice)

RAS = ('R', 'A', 'S')
LPS_AFF = np.array([[-1., 0, 0, 90], [0, -1., 0, 126], [0, 0, 1., -72], [0, 0, 0, 1]])     # BraTS-like
LAS_AFF = np.array([[-0.7, 0, 0, 90], [0, 0.7, 0, -126], [0, 0, 0.7, -72], [0, 0, 0, 1]])  # HCP/FSL-like
# a sagittal acquisition at 1x1x4 mm: i -> P, j -> I (1 mm), k -> R (4 mm); no obliquity, permuted axes
PIR_AFF = np.array([[0, 0, 4., -80], [-1., 0, 0, 100], [0, -1., 0, 90], [0, 0, 0, 1]])
HEADERS = {'LPS': (LPS_AFF, ('L', 'P', 'S')), 'LAS': (LAS_AFF, ('L', 'A', 'S')), 'PIR': (PIR_AFF, ('P', 'I', 'R'))}


def assert_names_file_and_fix(err: BaseException, name: str):
    "A brainkit error message names the file and says what to do."
    msg = str(err)
    assert name in msg, msg
    assert 'Fix:' in msg, msg


def world_to_value(vol, raw, src_affine):
    "Check independently that every source voxel sits at the same world position in the canonical volume."
    ijk = np.indices(raw.shape).reshape(3, -1)
    world = src_affine[:3, :3] @ ijk + src_affine[:3, 3:]
    inv = np.linalg.inv(vol.affine)
    can = inv[:3, :3] @ world + inv[:3, 3:]
    can_idx = np.rint(can).astype(int)
    np.testing.assert_allclose(can, can_idx, atol=1e-4)   # voxel centres land on voxel centres
    assert np.array_equal(vol.data[tuple(can_idx)], raw[tuple(ijk)])


# ---------------------------------------------------------------- round trip

@pytest.mark.parametrize('codes', [(1, 1), (1, 0), (2, 4)], ids=['q1s1', 'qform-only', 'q2s4'])
@pytest.mark.parametrize('orient', list(HEADERS))
@pytest.mark.parametrize('ext', ['.nii.gz', '.nii'])
def test_round_trip_keeps_voxels_affine_and_codes(tmp_path, nifti, orient, codes, ext):
    aff, axcodes = HEADERS[orient]
    assert nib.aff2axcodes(aff) == axcodes
    raw = np.random.default_rng(1).normal(100, 20, (7, 8, 9)).astype(np.float32)
    src = nifti(tmp_path/f'src{ext}', raw, aff, qform_code=codes[0], sform_code=codes[1])
    src_img = nib.load(src)
    assert (int(src_img.header['qform_code']), int(src_img.header['sform_code'])) == codes

    vol = load_volume(src)
    assert vol.data.dtype == np.float32
    assert nib.aff2axcodes(vol.affine) == RAS
    assert vol.source_axcodes == axcodes
    world_to_value(vol, raw, src_img.affine)

    out = save_volume(vol, tmp_path/f'copy{ext}')
    back = nib.load(out)
    assert np.array_equal(np.asanyarray(back.dataobj), raw)            # the file's own voxel order and values
    np.testing.assert_allclose(back.affine, src_img.affine, atol=1e-6)
    assert nib.aff2axcodes(back.affine) == axcodes
    assert (int(back.header['qform_code']), int(back.header['sform_code'])) == codes
    again = load_volume(out)
    assert np.array_equal(again.data, vol.data)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-6)


def test_permuted_anisotropic_axes_are_reordered_exactly(tmp_path, nifti):
    "A PIR sagittal volume: canonical x comes from k (4 mm), y from i flipped, z from j flipped."
    raw = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7) + 1
    vol = load_volume(nifti(tmp_path/'sag.nii.gz', raw, PIR_AFF))
    assert vol.shape == (7, 5, 6)
    np.testing.assert_allclose(vol.spacing, (4, 1, 1))
    x, y, z = np.indices(vol.shape)
    assert np.array_equal(vol.data, raw[4 - y, 5 - z, x])


def test_lps_and_its_ras_twin_load_identically(tmp_path, nifti):
    rng = np.random.default_rng(2)
    d = rng.uniform(1, 50, (6, 7, 8)).astype(np.float32)
    sp = np.array([2., 3., 4.])
    t = np.array([-10., 20., 30.])
    ras = np.diag([*sp, 1.]); ras[:3, 3] = t
    lps = np.diag([-sp[0], -sp[1], sp[2], 1.]); lps[:3, 3] = t + sp * [d.shape[0] - 1, d.shape[1] - 1, 0]
    a = load_volume(nifti(tmp_path/'ras.nii.gz', d, ras))
    b = load_volume(nifti(tmp_path/'lps.nii.gz', d[::-1, ::-1, :], lps))
    assert nib.aff2axcodes(lps) == ('L', 'P', 'S')
    assert np.array_equal(a.data, b.data)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)
    np.testing.assert_allclose(a.affine, ras, atol=1e-9)


# ---------------------------------------------------------------- scaled and singleton data

@pytest.mark.parametrize('ext', ['.nii', '.nii.gz'])
def test_scaled_int16_loads_as_scaled_float32(tmp_path, raw_nifti, ext):
    raw = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 50) * 3
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(raw.shape); hdr.set_data_dtype(np.int16)
    hdr.set_qform(LPS_AFF, 1); hdr.set_sform(LPS_AFF, 1)
    hdr['scl_slope'], hdr['scl_inter'] = 0.5, 10.0
    p = raw_nifti(tmp_path/f'scaled{ext}', hdr, raw)
    blob = p.read_bytes()
    blob = gzip.decompress(blob) if ext.endswith('.gz') else blob
    assert struct.unpack('<2f', blob[112:120]) == (0.5, 10.0)   # scl_slope, scl_inter really are in the file
    assert struct.unpack('<h', blob[70:72]) == (4,)              # datatype NIFTI_TYPE_INT16

    vol = load_volume(p)
    assert vol.data.dtype == np.float32
    expected = (raw.astype(np.float64) * 0.5 + 10).astype(np.float32)[::-1, ::-1, :]   # LPS -> RAS flips x and y
    assert np.array_equal(vol.data, expected)


def test_float_saved_as_int16_with_slope_loads_scaled(tmp_path, nifti):
    data = np.linspace(0.001, 0.7, 4 * 4 * 4).reshape(4, 4, 4).astype(np.float32)
    p = nifti(tmp_path/'f.nii.gz', data, np.eye(4), dtype=np.int16)
    img = nib.load(p)
    assert img.get_data_dtype() == np.int16
    assert img.dataobj.slope != 1.0                      # nibabel kept a real scale factor
    vol = load_volume(p)
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, data, atol=img.dataobj.slope)
    assert len(np.unique(vol.data)) > 30                 # not collapsed to a few integers


def test_trailing_singleton_dimension_loads_as_3d(tmp_path, nifti):
    raw = np.random.default_rng(3).uniform(1, 2, (4, 5, 6, 1)).astype(np.float32)
    vol = load_volume(nifti(tmp_path/'one.nii.gz', raw, np.eye(4)))
    assert vol.shape == (4, 5, 6)
    assert np.array_equal(vol.data, raw[..., 0])


# ---------------------------------------------------------------- bad inputs, one test each

def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError) as ei: load_volume(tmp_path/'nope_t1.nii.gz')
    assert_names_file_and_fix(ei.value, 'nope_t1.nii.gz')


def test_non_nifti_with_nifti_name(tmp_path):
    (tmp_path/'notes.nii.gz').write_text('these are my notes, not an image')
    with pytest.raises(UnreadableFileError) as ei: load_volume(tmp_path/'notes.nii.gz')
    assert_names_file_and_fix(ei.value, 'notes.nii.gz')


def test_empty_file(tmp_path):
    (tmp_path/'empty.nii.gz').write_bytes(b'')
    with pytest.raises(UnreadableFileError) as ei: load_volume(tmp_path/'empty.nii.gz')
    assert_names_file_and_fix(ei.value, 'empty.nii.gz')


def test_folder_instead_of_file(tmp_path):
    (tmp_path/'dir.nii.gz').mkdir()
    with pytest.raises(UnreadableFileError) as ei: load_volume(tmp_path/'dir.nii.gz')
    assert_names_file_and_fix(ei.value, 'dir.nii.gz')


def _good_bytes(tmp_path, nifti, ext):
    raw = np.random.default_rng(4).normal(100, 20, (16, 16, 16)).astype(np.float32)
    return nifti(tmp_path/f'good{ext}', raw, np.eye(4)).read_bytes()


@pytest.mark.parametrize('keep', [0.5, 0.1], ids=['half', 'tenth'])
def test_truncated_nii_gz(tmp_path, nifti, keep):
    good = _good_bytes(tmp_path, nifti, '.nii.gz')
    (tmp_path/'cut.nii.gz').write_bytes(good[:int(len(good) * keep)])
    with pytest.raises(UnreadableFileError) as ei: load_volume(tmp_path/'cut.nii.gz')
    assert_names_file_and_fix(ei.value, 'cut.nii.gz')


def test_truncated_nii_gz_missing_gzip_trailer(tmp_path, nifti):
    good = _good_bytes(tmp_path, nifti, '.nii.gz')
    cut = good[:-8]
    with pytest.raises(EOFError): gzip.decompress(cut)         # independently: the gzip stream is incomplete
    (tmp_path/'cut.nii.gz').write_bytes(cut)
    with pytest.raises(UnreadableFileError): load_volume(tmp_path/'cut.nii.gz')


def test_corrupt_nii_gz_crc_mismatch(tmp_path, nifti):
    good = _good_bytes(tmp_path, nifti, '.nii.gz')
    for pos in range(len(good) // 2, len(good) - 16):     # first flipped byte that still inflates, but fails the CRC
        bad = bytearray(good); bad[pos] ^= 0x10; bad = bytes(bad)
        try: gzip.decompress(bad)
        except gzip.BadGzipFile as e:
            if 'CRC' in str(e): break
        except Exception: pass
    else: pytest.skip('no single-byte corruption with a pure CRC failure found')
    (tmp_path/'bitrot.nii.gz').write_bytes(bad)
    with pytest.raises(UnreadableFileError): load_volume(tmp_path/'bitrot.nii.gz')


@pytest.mark.parametrize('keep', [0.5, 0.16], ids=['half', 'header-only'])
def test_truncated_uncompressed_nii(tmp_path, nifti, keep):
    good = _good_bytes(tmp_path, nifti, '.nii')
    n = max(352, int(len(good) * keep))                   # the header survives, voxels are cut
    (tmp_path/'cut.nii').write_bytes(good[:n])
    with pytest.raises(UnreadableFileError) as ei: load_volume(tmp_path/'cut.nii')
    assert_names_file_and_fix(ei.value, 'cut.nii')


def test_4d_series_is_a_dimension_error(tmp_path, nifti):
    p = nifti(tmp_path/'series.nii.gz', np.ones((4, 4, 4, 3), np.float32), np.eye(4))
    with pytest.raises(DimensionError) as ei: load_volume(p)
    assert_names_file_and_fix(ei.value, 'series.nii.gz')


def test_2d_image_is_a_dimension_error(tmp_path, nifti):
    p = nifti(tmp_path/'flat.nii.gz', np.ones((4, 4), np.float32), np.eye(4))
    with pytest.raises(DimensionError) as ei: load_volume(p)
    assert_names_file_and_fix(ei.value, 'flat.nii.gz')


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf], ids=['nan', 'inf', '-inf'])
def test_non_finite(tmp_path, nifti, bad):
    a = np.ones((4, 4, 4), np.float32); a[1, 2, 3] = bad
    p = nifti(tmp_path/'nonfinite.nii.gz', a, np.eye(4))
    with pytest.raises(NonFiniteError) as ei: load_volume(p)
    assert_names_file_and_fix(ei.value, 'nonfinite.nii.gz')


@pytest.mark.filterwarnings('ignore:overflow encountered:RuntimeWarning')
def test_float64_beyond_float32_range_is_not_loaded_as_inf(tmp_path, nifti):
    a = np.ones((4, 4, 4)); a[1, 1, 1] = 1e39
    p = nifti(tmp_path/'huge.nii.gz', a, np.eye(4))
    assert nib.load(p).get_data_dtype() == np.float64
    try: vol = load_volume(p)
    except BrainkitError as e: assert_names_file_and_fix(e, 'huge.nii.gz')   # refusing it is fine
    else: assert np.isfinite(vol.data).all()                                 # returning inf is not


def test_all_zero_volume(tmp_path, nifti):
    p = nifti(tmp_path/'zeros.nii.gz', np.zeros((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(EmptyVolumeError) as ei: load_volume(p)
    assert_names_file_and_fix(ei.value, 'zeros.nii.gz')
    assert not load_volume(p, check=False).data.any()    # check=False lets it through


def test_brats2023_label_in_brats2021_seg(tmp_path, brats_subject):
    seg = np.zeros((4, 5, 6), np.uint8); seg[1, 1, 1], seg[2, 2, 2], seg[3, 3, 3] = 1, 2, 3
    brats_subject(tmp_path, 'BraTS2021_00001', overrides={'seg': (seg, np.diag([-1., -1., 1., 1.]))})
    s = open_dataset(tmp_path)['BraTS2021_00001']
    with pytest.raises(LabelValueError) as ei: s['seg']
    assert_names_file_and_fix(ei.value, 'BraTS2021_00001_seg.nii.gz')
    assert "dataset='brats2023'" in str(ei.value)
    assert '[3]' in str(ei.value)


def test_label_outside_convention_direct(tmp_path, nifti):
    p = nifti(tmp_path/'seg.nii.gz', np.array([0, 1, 2, 5], np.uint8).reshape(1, 1, 4), np.eye(4))
    with pytest.raises(LabelValueError) as ei: load_volume(p, label=True, label_values=BRATS_LABELS)
    assert_names_file_and_fix(ei.value, 'seg.nii.gz')
    assert 'brats2023' not in str(ei.value)              # the BraTS 2023 hint is only for a stray 3


def test_non_integer_labels(tmp_path, brats_subject):
    seg = np.zeros((4, 5, 6), np.float32); seg[1, 1, 1] = 1.5; seg[2, 2, 2] = 2
    brats_subject(tmp_path, 'BraTS2021_00002', overrides={'seg': (seg, np.diag([-1., -1., 1., 1.]))})
    with pytest.raises(LabelValueError) as ei: open_dataset(tmp_path)[0]['seg']
    assert_names_file_and_fix(ei.value, 'BraTS2021_00002_seg.nii.gz')


def test_labels_that_do_not_fit_uint8_are_refused(tmp_path, nifti):
    p = nifti(tmp_path/'atlas.nii.gz', np.array([0, 1, 300, 2], np.int16).reshape(1, 1, 4), np.eye(4))
    with pytest.raises(LabelValueError): load_volume(p, label=True)


def test_shape_mismatch_in_subject(tmp_path, brats_subject):
    aff = np.diag([-1., -1., 1., 1.])
    brats_subject(tmp_path, 'BraTS2021_00003',
                  overrides={'t2': (np.ones((4, 5, 7), np.float32), aff)})
    s = open_dataset(tmp_path)[0]
    with pytest.raises(GeometryMismatchError) as ei: s.load()
    assert_names_file_and_fix(ei.value, 'BraTS2021_00003_t2.nii.gz')
    s.load(['t1', 't1ce', 'flair', 'seg'])               # the others share one grid


def test_affine_mismatch_in_subject(tmp_path, brats_subject):
    aff = np.diag([-1., -1., 1., 1.])
    shifted = aff.copy(); shifted[:3, 3] = [0, 0, 2.5]
    brats_subject(tmp_path, 'BraTS2021_00004',
                  overrides={'flair': (np.ones((4, 5, 6), np.float32), shifted)})
    s = open_dataset(tmp_path)[0]
    with pytest.raises(GeometryMismatchError) as ei: s.load(['t1', 'flair'])
    assert_names_file_and_fix(ei.value, 'BraTS2021_00004_flair.nii.gz')


def test_subject_missing_a_modality(tmp_path, brats_subject):
    brats_subject(tmp_path, 'BraTS2021_00005', skip=('flair',))
    s = open_dataset(tmp_path)['BraTS2021_00005']
    with pytest.raises(MissingModalityError) as ei: s['flair']
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, MissingFileError)
    assert_names_file_and_fix(ei.value, 'BraTS2021_00005_flair.nii.gz')
    assert s.get('flair') is None
    assert 'flair' not in s and 't1' in s
    assert set(s) == {'t1', 't1ce', 't2', 'seg'}
    assert s.get('t1') is not None
    with pytest.raises(MissingModalityError) as ei: s['dwi']   # not a modality of this layout at all
    assert 'dwi' in str(ei.value) and 'Fix:' in str(ei.value)


def test_empty_folder_is_a_layout_error(tmp_path):
    (tmp_path/'empty_ds').mkdir()
    with pytest.raises(DatasetLayoutError) as ei: open_dataset(tmp_path/'empty_ds')
    assert_names_file_and_fix(ei.value, 'empty_ds')


def test_unrecognised_folder_is_a_layout_error(tmp_path):
    root = tmp_path/'mystery'
    (root/'some_folder').mkdir(parents=True)
    (root/'some_folder'/'readme.txt').write_text('hi')
    (root/'table.csv').write_text('a,b\n')
    with pytest.raises(DatasetLayoutError) as ei: open_dataset(root)
    assert_names_file_and_fix(ei.value, 'mystery')
    assert 'some_folder' in str(ei.value)                # says what it found


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetLayoutError) as ei: open_dataset(tmp_path/'gone')
    assert_names_file_and_fix(ei.value, 'gone')
    with pytest.raises(DatasetLayoutError): open_dataset(tmp_path/'gone', dataset='brats2021')


# ---------------------------------------------------------------- healthy label maps

def test_all_zero_label_map_is_accepted(tmp_path, nifti, brats_subject):
    p = nifti(tmp_path/'healthy_seg.nii.gz', np.zeros((4, 5, 6), np.uint8), np.eye(4))
    v = load_volume(p, label=True, label_values=BRATS_LABELS)
    assert v.data.dtype == np.uint8 and not v.data.any()
    aff = np.diag([-1., -1., 1., 1.])
    brats_subject(tmp_path/'ds', 'BraTS2021_00006', overrides={'seg': (np.zeros((4, 5, 6), np.uint8), aff)})
    vols = open_dataset(tmp_path/'ds')[0].load()
    assert not vols['seg'].data.any()
    assert open_dataset(tmp_path/'ds').scan(progress=False) == {}


# ---------------------------------------------------------------- save_volume

@pytest.fixture
def vol_and_src(tmp_path, nifti):
    raw = np.random.default_rng(5).normal(100, 20, (6, 7, 8)).astype(np.float32)
    src = nifti(tmp_path/'src'/'t1.nii.gz', raw, LPS_AFF)
    return load_volume(src), src


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith('.tmp') or p.name.startswith('.'))


def test_save_leaves_no_temporary_file(tmp_path, vol_and_src):
    vol, _ = vol_and_src
    out_dir = tmp_path/'out'
    save_volume(vol, out_dir/'a.nii.gz')
    assert sorted(p.name for p in out_dir.iterdir()) == ['a.nii.gz']


@pytest.mark.parametrize('fail_at', ['replace', 'fsync'])
@pytest.mark.parametrize('existed', [False, True], ids=['new', 'existing'])
def test_save_failure_leaves_no_partial_file(tmp_path, vol_and_src, monkeypatch, fail_at, existed):
    vol, _ = vol_and_src
    out_dir = tmp_path/'out'; out_dir.mkdir()
    target = out_dir/'result.nii.gz'
    if existed: target.write_bytes(b'previous result')

    def boom(*a, **k): raise OSError('disk full (injected)')
    monkeypatch.setattr(bio.os, fail_at, boom)
    with pytest.raises(OSError, match='injected'): save_volume(vol, target)
    monkeypatch.undo()

    if existed: assert target.read_bytes() == b'previous result'   # the old file is untouched
    else: assert not target.exists()
    assert _leftovers(out_dir) == []
    assert sorted(p.name for p in out_dir.iterdir()) == (['result.nii.gz'] if existed else [])


def test_save_is_deterministic(tmp_path, vol_and_src):
    vol, _ = vol_and_src
    a = save_volume(vol, tmp_path/'a.nii.gz').read_bytes()
    b = save_volume(vol, tmp_path/'b.nii.gz').read_bytes()
    assert a == b
    save_volume(vol, tmp_path/'a.nii.gz')                  # overwrite: same bytes again
    assert (tmp_path/'a.nii.gz').read_bytes() == a
    assert gzip.decompress(a)                              # a valid gzip stream
    assert a[4:8] == b'\0\0\0\0'                           # no gzip timestamp


def test_save_refuses_its_own_source(vol_and_src):
    vol, src = vol_and_src
    before = src.read_bytes()
    with pytest.raises(BrainkitError) as ei: save_volume(vol, src)
    assert 'refusing to overwrite' in str(ei.value) and src.name in str(ei.value)
    with pytest.raises(BrainkitError): save_volume(vol, src.parent/'..'/src.parent.name/src.name)  # same file, other spelling
    assert src.read_bytes() == before


def test_save_refuses_existing_file_without_overwrite(tmp_path, vol_and_src):
    vol, _ = vol_and_src
    (tmp_path/'there.nii.gz').write_bytes(b'keep me')
    with pytest.raises(BrainkitError) as ei: save_volume(vol, tmp_path/'there.nii.gz', overwrite=False)
    assert_names_file_and_fix(ei.value, 'there.nii.gz')
    assert (tmp_path/'there.nii.gz').read_bytes() == b'keep me'


@pytest.mark.parametrize('name', ['result.png', 'result.nii.tar', 'result'])
def test_save_refuses_non_nifti_name(tmp_path, vol_and_src, name):
    vol, _ = vol_and_src
    with pytest.raises(UnreadableFileError) as ei: save_volume(vol, tmp_path/name)
    assert_names_file_and_fix(ei.value, name)
    assert not (tmp_path/name).exists()


@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_file_mode_honours_umask(tmp_path, vol_and_src, umask, mode):
    vol, _ = vol_and_src
    old = os.umask(umask)
    try: out = save_volume(vol, tmp_path/f'm{umask:o}.nii.gz')
    finally: os.umask(old)
    assert out.stat().st_mode & 0o777 == mode


def test_save_uint8_rounds_and_clips(tmp_path):
    data = np.array([-3., 0.4, 0.6, 1.2, 3.7, 254.6, 300.]).reshape(1, 1, 7).astype(np.float32)
    vol = bio.make_volume(data, np.eye(4))
    out = save_volume(vol, tmp_path/'lab.nii.gz', dtype=np.uint8)
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    assert np.asanyarray(img.dataobj).ravel().tolist() == [0, 0, 1, 1, 4, 255, 255]


def test_save_label_volume_from_lps_seg(tmp_path, nifti):
    seg = np.zeros((4, 5, 6), np.uint8); seg[0, 1, 2] = 4; seg[3, 4, 5] = 1
    src = nifti(tmp_path/'seg.nii.gz', seg, LPS_AFF)
    v = load_volume(src, label=True, label_values=BRATS_LABELS)
    back = nib.load(save_volume(v, tmp_path/'seg_copy.nii.gz'))
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(back.dataobj), seg)


def test_save_scaled_source_does_not_double_scale(tmp_path, raw_nifti):
    "A volume from a scaled int16 file, saved as float32, reads back with the same values (slope not reapplied)."
    raw = np.arange(60, dtype=np.int16).reshape(3, 4, 5) + 1
    hdr = nib.Nifti1Header(); hdr.set_data_shape(raw.shape); hdr.set_data_dtype(np.int16)
    hdr.set_qform(LPS_AFF, 1); hdr.set_sform(LPS_AFF, 1)
    hdr['scl_slope'], hdr['scl_inter'] = 2.0, -5.0
    v = load_volume(raw_nifti(tmp_path/'s.nii', hdr, raw))
    back = nib.load(save_volume(v, tmp_path/'s_copy.nii.gz'))
    np.testing.assert_array_equal(back.get_fdata(), raw * 2.0 - 5.0)


# ---------------------------------------------------------------- errors are picklable

ERROR_CLASSES = [BrainkitError, MissingFileError, MissingModalityError, UnreadableFileError, DimensionError,
                 GeometryMismatchError, NonFiniteError, EmptyVolumeError, LabelValueError, DatasetLayoutError,
                 DatasetScanError]


@pytest.mark.parametrize('cls', ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_pickle_round_trip(cls):
    e = cls(Path('sub-01/sub-01_t1.nii.gz'), 'something is wrong', 'do this')
    assert str(e) == 'sub-01/sub-01_t1.nii.gz: something is wrong\n  Fix: do this'
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is cls
    assert str(e2) == str(e)
    assert (e2.path, e2.problem, e2.fix) == (e.path, e.problem, e.fix)


def test_real_load_error_pickles(tmp_path):
    with pytest.raises(MissingFileError) as ei: load_volume(tmp_path/'x.nii.gz')
    assert str(pickle.loads(pickle.dumps(ei.value))) == str(ei.value)


def test_dataset_scan_error_pickles_with_problems():
    probs = {'BraTS2021_00001': [MissingModalityError('a/BraTS2021_00001_flair.nii.gz', 'missing flair', 'restore it')],
             'BraTS2021_00002': [NonFiniteError('b/BraTS2021_00002_t2.nii.gz', '3 voxel(s) are NaN', 're-export'),
                                 EmptyVolumeError('b/BraTS2021_00002_t1.nii.gz', 'all zero', 're-export')]}
    e = DatasetScanError('ds', '2 bad subject(s)', 'fix them', problems=probs)
    s = str(e)
    for frag in ('BraTS2021_00001', 'BraTS2021_00001_flair.nii.gz', 'BraTS2021_00002_t2.nii.gz', 'BraTS2021_00002_t1.nii.gz'):
        assert frag in s
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is DatasetScanError
    assert str(e2) == s
    assert list(e2.problems) == list(probs)
    assert [type(x) for x in e2.problems['BraTS2021_00002']] == [NonFiniteError, EmptyVolumeError]


# ---------------------------------------------------------------- planes

def test_take_slice_shapes_and_values():
    a = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    assert take_slice(a, 'sagittal', 1).shape == (6, 7)
    assert take_slice(a, 'coronal', 2).shape == (5, 7)
    assert take_slice(a, 'axial', 3).shape == (5, 6)
    assert np.array_equal(take_slice(a, 'sagittal', 1), a[1])
    assert np.array_equal(take_slice(a, 'coronal', 2), a[:, 2])
    assert np.array_equal(take_slice(a, 'axial', 3), a[:, :, 3])
    c = np.stack([a, -a])                                 # (C, X, Y, Z): channels are kept
    assert take_slice(c, 'axial', 3).shape == (2, 5, 6)
    assert take_slice(c, 'sagittal', 0).shape == (2, 6, 7)
    assert np.array_equal(take_slice(c, 'coronal', 4)[1], -a[:, 4])


def test_plane_axis():
    assert [plane_axis(p) for p in ('sagittal', 'coronal', 'axial')] == [0, 1, 2]


@pytest.mark.parametrize('bad', ['transverse', 'Axial', '', None, 2])
def test_unknown_plane_names_valid_planes(bad):
    with pytest.raises(ValueError) as ei: plane_axis(bad)
    for p in ('axial', 'coronal', 'sagittal'): assert p in str(ei.value)
    with pytest.raises(ValueError): take_slice(np.zeros((2, 2, 2)), bad, 0)


def test_axial_is_along_superior_axis(tmp_path, nifti):
    "'axial' slices a canonical volume along S: on an LPS file it is still the file's third axis."
    raw = np.zeros((4, 5, 6), np.float32); raw[..., 4] = 1   # one bright axial plane (k = 4, superior-ish)
    vol = load_volume(nifti(tmp_path/'ax.nii.gz', raw, LPS_AFF), check=False)
    sums = [take_slice(vol.data, 'axial', k).sum() for k in range(6)]
    assert np.argmax(sums) == 4 and sums[4] == 20


# --- saving derived data: crops, masks, label conventions (found by review) ---

def _sample_t1():
    return bio.samples_dir('brats')/'BraTS2021_90000'/'BraTS2021_90000_t1.nii.gz'


def test_a_cropped_volume_is_written_at_its_new_position(tmp_path):
    from dataclasses import replace
    v = load_volume(_sample_t1())
    A = v.affine.copy(); A[:3, 3] = v.affine[:3, :3] @ [8, 8, 0] + v.affine[:3, 3]   # crop starts at voxel (8, 8, 0)
    crop = replace(v, data=v.data[8:88, 8:88], affine=A)
    out = save_volume(crop, tmp_path/'crop.nii.gz')
    img = nib.load(out)
    # independently: voxel (0,0,0) of the crop, in the file's own (LPS) order, is the canonical (8,8,0) of the source
    ijk_file = np.array([crop.shape[0] - 1, crop.shape[1] - 1, 0, 1])      # LPS flips x and y
    np.testing.assert_allclose(img.affine @ ijk_file, v.affine @ [8, 8, 0, 1], atol=1e-4)
    assert nib.aff2axcodes(img.affine) == ('L', 'P', 'S')
    assert (int(img.header['qform_code']), int(img.header['sform_code'])) == (1, 1)
    back = load_volume(out)
    np.testing.assert_allclose(back.affine, A, atol=1e-5)
    np.testing.assert_array_equal(back.data, crop.data)


def test_masks_and_argmax_are_written_as_small_integer_types(tmp_path):
    v = load_volume(_sample_t1())
    m = nib.load(save_volume(v.with_data(v.data > 200), tmp_path/'mask.nii.gz'))
    assert m.get_data_dtype() == np.uint8 and set(np.unique(np.asanyarray(m.dataobj))) == {0, 1}
    am = np.argmax(np.stack([v.data, 300 - v.data]), 0)                        # int64 from numpy
    assert nib.load(save_volume(v.with_data(am), tmp_path/'am.nii.gz')).get_data_dtype() == np.uint8
    big = v.with_data(np.full(v.shape, 70000, np.int64))
    assert nib.load(save_volume(big, tmp_path/'big.nii.gz')).get_data_dtype() == np.int32


def test_derived_files_do_not_inherit_the_sources_display_window(tmp_path, nifti):
    src = nifti(tmp_path/'t1.nii.gz', np.linspace(1, 1000, 64, dtype=np.float32).reshape(4, 4, 4), LPS_AFF)
    img = nib.load(src); img.header['cal_min'], img.header['cal_max'] = 0, 1000
    img.header['descrip'] = b'scanner protocol X'; img.header.set_intent('estimate')
    nib.save(img, src)
    v = load_volume(src)
    out = nib.load(save_volume(v.with_data(v.data > 500), tmp_path/'mask.nii.gz'))
    assert float(out.header['cal_max']) == 0 and out.header.get_intent()[0] == 'none'
    assert b'scanner protocol X' not in bytes(out.header['descrip'])


def test_brats2023_labels_are_written_back_in_their_own_convention(tmp_path):
    seg = load_volume(bio.samples_dir('brats')/'BraTS2021_90000'/'BraTS2021_90000_seg.nii.gz', label=True)
    assert 4 in np.unique(seg.data)
    out = save_volume(seg, tmp_path/'seg.nii.gz', label_map=bio.LAYOUTS['brats2023'].raw_label_map)
    on_disk = np.asanyarray(nib.load(out).dataobj)
    assert set(np.unique(on_disk)) == {0, 1, 2, 3}
    again = load_volume(out, label=True, label_values=(0, 1, 2, 3), label_map={3: 4})
    np.testing.assert_array_equal(again.data, seg.data)


@pytest.mark.parametrize('dtype', [np.complex64, 'rgb'])
def test_complex_and_rgb_volumes_are_refused(tmp_path, dtype):
    p = tmp_path/'odd.nii.gz'
    if dtype == 'rgb':
        rgb = np.zeros((3, 3, 3), dtype=[('R', 'u1'), ('G', 'u1'), ('B', 'u1')]); rgb['R'] = 9
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), p)
    else: nib.save(nib.Nifti1Image(np.ones((3, 3, 3), dtype), np.eye(4)), p)
    with pytest.raises(UnreadableFileError) as ei: load_volume(p)
    assert_names_file_and_fix(ei.value, 'odd.nii.gz')


def test_uncompressed_file_named_nii_gz_and_empty_file_get_precise_messages(tmp_path, nifti):
    plain = nifti(tmp_path/'plain.nii', np.ones((3, 3, 3), np.float32))
    wrong = tmp_path/'wrong.nii.gz'; wrong.write_bytes(plain.read_bytes())
    with pytest.raises(UnreadableFileError) as ei: load_volume(wrong)
    assert 'not gzip-compressed' in str(ei.value) and 'rename it to .nii' in str(ei.value)
    (tmp_path/'empty.nii.gz').write_bytes(b'')
    with pytest.raises(UnreadableFileError) as ei: load_volume(tmp_path/'empty.nii.gz')
    assert '0 bytes' in str(ei.value)


# ---------------------------------------------------------------- oblique grids, the odd file out, io's public opener

def rotated_z(deg, spacing=(1., 1., 1.), shift=(-20., -30., -10.)):
    "An affine whose voxel axes are rotated `deg` degrees about z (an oblique axial acquisition)."
    t = np.radians(deg)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ np.diag(spacing)
    aff[:3, 3] = shift
    return aff


def noisy(aff, scale, seed=0):
    "`aff` with float noise of `scale` mm on its rotation part, as real headers carry (float32 rounding, resampling tools)."
    out = np.array(aff, float)
    out[:3, :3] += np.random.default_rng(seed).normal(0, scale, (3, 3))
    return out


def test_oblique_angle_of_axis_aligned_rotated_and_noisy_affines():
    for aff in (LPS_AFF, LAS_AFF, PIR_AFF, np.eye(4)): assert bio.oblique_angle(aff) == 0.0
    np.testing.assert_allclose(bio.oblique_angle(rotated_z(10)), 10, atol=1e-9)
    np.testing.assert_allclose(bio.oblique_angle(rotated_z(-3, (0.7, 0.7, 2.))), 3, atol=1e-9)
    # float noise of real, nearly axis-aligned headers stays far below the tolerance; a real 1° tilt does not
    for aff in (noisy(LPS_AFF, 1e-6), noisy(LAS_AFF, 1e-6), noisy(PIR_AFF, 1e-7)):
        assert 0 < bio.oblique_angle(aff) < bio.OBLIQUE_TOL_DEG / 10
    assert bio.oblique_angle(rotated_z(1)) > 10 * bio.OBLIQUE_TOL_DEG


def test_an_oblique_volume_loads_with_one_warning_naming_file_and_angle(tmp_path, nifti, caplog):
    raw = np.random.default_rng(0).uniform(1, 2, (6, 7, 8)).astype(np.float32)
    p = nifti(tmp_path/'oblique.nii.gz', raw, rotated_z(10))
    with caplog.at_level('WARNING', logger='brainkit.io'): vol = load_volume(p)
    recs = [r for r in caplog.records if r.name == 'brainkit.io' and r.levelname == 'WARNING']
    assert len(recs) == 1, [r.getMessage() for r in recs]
    msg = recs[0].getMessage()
    assert 'oblique.nii.gz' in msg and '10.0' in msg and 'axial' in msg and 'voxel grid' in msg, msg
    # the loaded volume itself is unchanged: the closest canonical order, every voxel at its world position
    world_to_value(vol, raw, nib.load(p).affine)


@pytest.mark.parametrize('codes', [(1, 1), (1, 0)], ids=['sform', 'qform-only'])
def test_nearly_axis_aligned_real_headers_load_silently(tmp_path, nifti, caplog, codes):
    data = np.random.default_rng(1).uniform(1, 2, (5, 6, 7)).astype(np.float32)
    with caplog.at_level('DEBUG', logger='brainkit.io'):
        for i, aff in enumerate((LPS_AFF, LAS_AFF, noisy(LPS_AFF, 1e-6, 1), noisy(LAS_AFF, 3e-7, 2), noisy(PIR_AFF, 1e-7, 3))):
            load_volume(nifti(tmp_path/f'h{i}.nii.gz', data, aff, qform_code=codes[0], sform_code=codes[1]))
    assert 'oblique' not in caplog.text, caplog.text


def test_the_odd_file_out_is_named_even_when_it_is_the_reference_t1(tmp_path, brats_subject):
    aff = np.diag([-1., -1., 1., 1.])
    brats_subject(tmp_path, 'BraTS2021_00007', overrides={'t1': (np.ones((4, 5, 7), np.float32), aff)})
    s = open_dataset(tmp_path)[0]
    with pytest.raises(GeometryMismatchError) as ei: s.load()
    e = ei.value
    assert Path(e.path).name == 'BraTS2021_00007_t1.nii.gz', str(e)
    assert str(e).startswith(str(s.path('t1'))), str(e)            # the message leads with the file that differs
    assert '(4, 5, 7)' in str(e) and '(4, 5, 6)' in str(e) and 'Fix:' in str(e)
    # the same for an affine that differs
    shifted = aff.copy(); shifted[:3, 3] = [0, 0, 2.5]
    brats_subject(tmp_path, 'BraTS2021_00008', overrides={'t1': (np.ones((4, 5, 6), np.float32), shifted)})
    with pytest.raises(GeometryMismatchError) as ei: open_dataset(tmp_path)['BraTS2021_00008'].load()
    assert Path(ei.value.path).name == 'BraTS2021_00008_t1.nii.gz', str(ei.value)
    assert str(ei.value).startswith(str(tmp_path/'BraTS2021_00008'/'BraTS2021_00008_t1.nii.gz'))


def test_check_same_grid_with_no_majority_keeps_the_first_as_reference():
    a = bio.make_volume(np.ones((2, 3, 4), np.float32), np.eye(4), 'a.nii.gz')
    b = bio.make_volume(np.ones((2, 3, 5), np.float32), np.eye(4), 'b.nii.gz')
    with pytest.raises(GeometryMismatchError) as ei: bio.check_same_grid({'t1': a, 't2': b})
    assert Path(ei.value.path).name == 'b.nii.gz'
    bio.check_same_grid({'t1': a, 't1ce': a}); bio.check_same_grid({}); bio.check_same_grid({'t1': a})


def test_open_nifti_is_public_and_gives_brainkit_errors(tmp_path, nifti):
    with pytest.raises(MissingFileError): bio.open_nifti(tmp_path/'absent.nii.gz')
    (tmp_path/'notes.nii.gz').write_text('not an image')
    with pytest.raises(UnreadableFileError) as ei: bio.open_nifti(tmp_path/'notes.nii.gz')
    assert_names_file_and_fix(ei.value, 'notes.nii.gz')
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    p = nifti(tmp_path/'ok.nii.gz', data, LPS_AFF)
    img = bio.open_nifti(str(p))
    assert isinstance(img, nib.Nifti1Image) and np.array_equal(np.asanyarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, LPS_AFF)                # the file as stored: not reoriented
    assert bio.open_nifti(p, header_only=True).shape == (2, 3, 4)


def test_no_module_imports_a_private_name_of_io():
    import ast
    pkg = Path(bio.__file__).parent
    offenders = []
    for f in sorted(pkg.glob('*.py')):
        for node in ast.walk(ast.parse(f.read_text())):
            # `from .io import _x` or `from brainkit.io import _x` (a plain `import io` is the standard library's)
            if isinstance(node, ast.ImportFrom) and (node.module, node.level) in (('io', 1), ('brainkit.io', 0)):
                offenders += [f"{f.name}: {a.name}" for a in node.names if a.name.startswith('_')]
    assert not offenders, offenders
