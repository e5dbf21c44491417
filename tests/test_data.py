"brainkit.data: splits, the slice cache, paired/unpaired/volume datasets, pairing policies, augmentation, loaders."
import json
import logging
import os
import shutil
import time

import numpy as np
import pytest
import torch

from brainkit.io import GeometryMismatchError, MissingModalityError, load_volume, open_dataset, samples_dir
from brainkit.data import (PAIRINGS, Augment, CacheError, PairedSlices, Prep, SliceCache, SliceSet, SplitError,
                           UnpairedSlices, VolumeSet, default_cache_dir, make_loader, split_dataset, split_record,
                           split_subjects, subject_fingerprint)
from brainkit.preprocess import NoBrainError, NoTumourFreeSlicesError, Normalizer, brain_mask


@pytest.fixture(scope='module')
def brats():
    return open_dataset(samples_dir('brats'))


@pytest.fixture(scope='module')
def hcp():
    return open_dataset(samples_dir('hcp'))


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return SliceCache(tmp_path_factory.mktemp('cache'))


def copy_subjects(src_root, dst, ids):
    for sid in ids: shutil.copytree(src_root/sid, dst/sid)
    return open_dataset(dst)


# ---------------------------------------------------------------- splits

def test_splits_are_reproducible_by_subject_and_complete():
    ids = [f'S{i:03d}' for i in range(37)]
    a, b = split_subjects(ids, seed=3), split_subjects(ids[::-1], seed=3)
    assert a == b and sorted(sum(a.values(), [])) == ids
    assert split_subjects(ids, seed=4) != a
    assert [len(v) for v in a.values()] == [26, 6, 5]


def test_split_file_is_used_and_checked(tmp_path):
    ids = ['a', 'b', 'c', 'd']
    f = tmp_path/'split.json'
    f.write_text(json.dumps({'train': ['a', 'b'], 'test': ['c']}))
    assert split_subjects(ids, split_file=f) == {'train': ['a', 'b'], 'test': ['c']}
    f.write_text(json.dumps({'train': ['a', 'x', 'y']}))
    with pytest.raises(SplitError, match="not in the dataset") as ei: split_subjects(ids, split_file=f)
    assert 'split.json' in str(ei.value)
    f.write_text('{not json')
    with pytest.raises(SplitError, match='cannot be read'): split_subjects(ids, split_file=f)


# ---------------------------------------------------------------- resuming keeps its split

IDS3 = ['BraTS2021_90000', 'BraTS2021_90001', 'BraTS2021_90002']


def test_a_subject_fingerprint_lists_each_file_with_size_and_mtime(tmp_path, brats):
    ds = copy_subjects(brats.root, tmp_path, IDS3[:1])
    s = ds[0]
    (s.root/f'{s.id}_flair.nii.gz').unlink()                            # a file that is missing is not listed
    fp = subject_fingerprint(s)
    assert sorted(fp) == sorted(f'{s.id}_{m}.nii.gz' for m in ('t1', 't1ce', 't2', 'seg'))
    st = s.path('t2').stat()
    assert fp[f'{s.id}_t2.nii.gz'] == [st.st_size, st.st_mtime_ns]
    hcp = open_dataset(samples_dir('hcp'))                              # files in a subfolder: named by their path in the subject
    assert sorted(subject_fingerprint(hcp[0])) == ['T1w/T1w_acpc_dc_restore_brain.nii.gz', 'T1w/T2w_acpc_dc_restore_brain.nii.gz']


def test_a_resume_uses_its_stored_split_and_ignores_added_subjects(tmp_path, brats, caplog):
    ds = copy_subjects(brats.root, tmp_path, IDS3)
    split = {'train': ['BraTS2021_90002'], 'val': ['BraTS2021_90000', 'BraTS2021_90001'], 'test': []}
    rec = split_record(ds, split)
    assert rec['split'] == split and sorted(rec['fingerprints']) == IDS3
    assert rec['fingerprints']['BraTS2021_90001'] == subject_fingerprint(ds[1])
    for sid in ('BraTS2021_90003', 'BraTS2021_90004'): shutil.copytree(brats.root/sid, tmp_path/sid)   # arrived since
    f = tmp_path/'split.json'; f.write_text(json.dumps({'train': IDS3[:2], 'val': IDS3[2:]}))
    with caplog.at_level(logging.WARNING, logger='brainkit.data'):
        ds2, (tr, va, te), parts = split_dataset(tmp_path, fractions=(0.5, 0.5, 0.0), seed=7, split_file=f, stored=rec)
    assert parts == split                                              # not drawn again, and not the split file
    assert [s.id for s in tr] == ['BraTS2021_90002'] and [s.id for s in va] == IDS3[:2] and te == []
    added = [r.getMessage() for r in caplog.records if 'added since this run began' in r.getMessage()]
    assert len(added) == 1 and '2 subject(s)' in added[0] and 'BraTS2021_90003, BraTS2021_90004' in added[0]


def test_a_resume_refuses_subjects_that_are_gone_changed_or_excluded(tmp_path, brats):
    ds = copy_subjects(brats.root, tmp_path, IDS3)
    _, _, parts = split_dataset(tmp_path, fractions=(2/3, 1/3, 0.0))
    rec = split_record(ds, parts)
    t1 = tmp_path/'BraTS2021_90001'/'BraTS2021_90001_t1.nii.gz'
    st = t1.stat(); os.utime(t1, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))     # the file was written again
    seg = tmp_path/'BraTS2021_90002'/'BraTS2021_90002_seg.nii.gz'
    size = seg.stat().st_size
    with open(seg, 'ab') as fh: fh.write(b'\0' * 10)                                 # ... or grew
    with pytest.raises(SplitError) as ei: split_dataset(tmp_path, stored=rec)
    msg = str(ei.value)
    assert str(tmp_path) in msg and '2 subject(s)' in msg
    assert 'BraTS2021_90001: BraTS2021_90001_t1.nii.gz was modified' in msg
    assert f"BraTS2021_90002: BraTS2021_90002_seg.nii.gz changed size ({size:,} -> {size + 10:,} bytes)" in msg
    assert 'another output folder (--out / out_dir)' in msg and '--no-resume' not in msg and "restore those subjects' files" in msg
    shutil.rmtree(tmp_path/'BraTS2021_90000')                                         # a subject gone
    with pytest.raises(SplitError, match='BraTS2021_90000: no longer in the dataset'):
        split_dataset(tmp_path, stored=rec | {'fingerprints': None})
    shutil.copytree(brats.root/'BraTS2021_90000', tmp_path/'BraTS2021_90000')
    old = rec | {'fingerprints': None}                                 # an older checkpoint: only the subjects are checked
    assert split_dataset(tmp_path, stored=old)[2] == parts
    with pytest.raises(SplitError, match='BraTS2021_90002: excluded now'):
        split_dataset(tmp_path, stored=old, exclude=['BraTS2021_90002'])


def test_split_dataset_passes_exclude_and_allow_unknown_on(tmp_path, brats):
    ds, (tr, va, te), parts = split_dataset(brats.root, fractions=(0.5, 0.5, 0.0), exclude=['BraTS2021_90000'])
    assert 'BraTS2021_90000' not in {s.id for s in tr + va + te} and len(tr + va + te) == len(brats) - 1
    f = tmp_path/'joint.json'
    f.write_text(json.dumps({'train': brats.ids[:6] + ['UCSF-PDGM-0004'], 'val': brats.ids[6:] + ['UCSF-PDGM-0005']}))
    with pytest.raises(SplitError, match='allow_unknown'): split_dataset(brats.root, split_file=f)
    _, (tr, va, _), parts = split_dataset(brats.root, split_file=f, allow_unknown=True)
    assert [s.id for s in va] == sorted(brats.ids[6:]) and parts['val'] == sorted(brats.ids[6:])


# ---------------------------------------------------------------- the cache

def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('BRAINKIT_CACHE', str(tmp_path/'bk'))
    assert default_cache_dir() == tmp_path/'bk'
    monkeypatch.delenv('BRAINKIT_CACHE'); monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path/'xdg'))
    assert default_cache_dir() == tmp_path/'xdg'/'brainkit'


@pytest.mark.parametrize('plane,axis', [('axial', 2), ('coronal', 1), ('sagittal', 0)])
def test_cached_slices_equal_an_independent_computation(brats, cache, plane, axis):
    src, norm = brats[1].path('flair'), Normalizer('zscore')
    prep = Prep.make(plane, 100, norm)
    info = cache.info(src, prep)
    vol = load_volume(src)
    want = np.moveaxis(norm(vol), axis, 0)                     # independently: normalize, slice along the axis
    n, h, w = want.shape
    assert info['shape'] == [n, 100, 100]
    i = n // 2
    got = cache.slice(src, prep, i)
    oh, ow = (100 - h) // 2, (100 - w) // 2                      # padded symmetrically, with background -1
    np.testing.assert_array_equal(got[oh:oh + h, ow:ow + w], want[i])
    assert (got[:oh] == -1).all() and (got[oh + h:] == -1).all()
    assert info['area'][i] == int(np.moveaxis(brain_mask(vol), axis, 0)[i].sum())   # the brain, clipped voxels included


def test_the_cache_never_writes_into_the_dataset_folder(tmp_path, brats):
    ds = copy_subjects(brats.root, tmp_path/'data', ['BraTS2021_90002'])
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path/'data').rglob('*'))
    PairedSlices(ds, ['t1'], 't2', cache=SliceCache(tmp_path/'cache'), progress=False)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path/'data').rglob('*')) == before
    assert any((tmp_path/'cache').rglob('*.npy'))


def test_a_changed_source_or_preprocessing_gets_a_new_entry(tmp_path, brats):
    ds = copy_subjects(brats.root, tmp_path/'data', ['BraTS2021_90003'])
    cache, src = SliceCache(tmp_path/'cache'), ds[0].path('t1')
    prep = Prep.make('axial', None, Normalizer('percentile'))
    first = cache.slice(src, prep, 30)
    assert cache.paths(src, Prep.make('axial', None, Normalizer('zscore')))[0] != cache.paths(src, prep)[0]
    import nibabel as nib
    img = nib.load(src); data = np.asanyarray(img.dataobj).copy(); data[data > 0] = 500 - data[data > 0] % 400
    time.sleep(0.01)
    old = cache.paths(src, prep)[0]
    nib.save(nib.Nifti1Image(data, img.affine, img.header), src)      # the source changed on disk
    now = cache.slice(src, prep, 30)                                  # a new entry is built from the new content
    assert cache.paths(src, prep)[0] != old and not np.array_equal(now, first)
    np.testing.assert_array_equal(now, np.moveaxis(Normalizer('percentile')(load_volume(src)), 2, 0)[30])


@pytest.mark.parametrize('damage', ['truncate_npy', 'delete_sidecar', 'corrupt_sidecar'])
def test_a_damaged_entry_is_rebuilt_never_used(brats, tmp_path, damage):
    cache, src = SliceCache(tmp_path), brats[0].path('t2')
    prep = Prep.make('axial', 96, Normalizer('percentile'))
    cache.info(src, prep)
    good = cache.slice(src, prep, 20)
    npy, side, _ = cache.paths(src, prep)
    if damage == 'truncate_npy': npy.write_bytes(npy.read_bytes()[:len(npy.read_bytes()) // 3])
    elif damage == 'delete_sidecar': side.unlink()
    else: side.write_text('{"shape": [1')
    assert cache.info(src, prep)['shape'] == [64, 96, 96]
    np.testing.assert_array_equal(cache.slice(src, prep, 20), good)


def test_an_unwritable_cache_folder_gets_a_clear_error(tmp_path, brats):
    blocker = tmp_path/'not_a_folder'; blocker.write_text('a file where the cache folder should be')
    with pytest.raises(CacheError) as ei:
        PairedSlices(brats[:1], ['t1'], 't2', cache=SliceCache(blocker/'cache'), progress=False)
    assert 'not_a_folder' in str(ei.value) and 'BRAINKIT_CACHE' in str(ei.value)


# ---------------------------------------------------------------- datasets: bad input

def test_subjects_missing_a_modality_are_all_listed(tmp_path, brats):
    ds = copy_subjects(brats.root, tmp_path, ['BraTS2021_90000', 'BraTS2021_90001', 'BraTS2021_90002'])
    (tmp_path/'BraTS2021_90000'/'BraTS2021_90000_t2.nii.gz').unlink()
    (tmp_path/'BraTS2021_90002'/'BraTS2021_90002_t2.nii.gz').unlink()
    with pytest.raises(MissingModalityError) as ei:
        PairedSlices(ds, ['t1'], 't2', cache=SliceCache(tmp_path/'c'), progress=False)
    msg = str(ei.value)
    assert 'BraTS2021_90000_t2.nii.gz' in msg and 'BraTS2021_90002_t2.nii.gz' in msg and '2 missing file(s)' in msg


def test_an_unknown_plane_is_refused(brats, cache):
    with pytest.raises(ValueError, match='axial'): PairedSlices(brats[:1], plane='transverse', cache=cache, progress=False)
    with pytest.raises(ValueError, match="'all' or 'tumour_free'"): SliceSet(brats[:1], ['t1'], slices='healthy', cache=cache)
    with pytest.raises(ValueError, match='random, position, position_range'):
        UnpairedSlices(brats[:1], 't1', brats[1:2], 't1', pairing='nearest', cache=cache, progress=False)


def test_a_volume_with_no_brain_is_refused_when_caching(tmp_path, brats):
    import nibabel as nib
    ds = copy_subjects(brats.root, tmp_path, ['BraTS2021_90000'])
    f = tmp_path/'BraTS2021_90000'/'BraTS2021_90000_t1.nii.gz'
    img = nib.load(f); nib.save(nib.Nifti1Image(np.full(img.shape, -5, np.int16), img.affine, img.header), f)
    with pytest.raises(NoBrainError) as ei: PairedSlices(ds, ['t1'], 't2', cache=SliceCache(tmp_path/'c'), progress=False)
    assert 'BraTS2021_90000_t1.nii.gz' in str(ei.value)


def test_tumour_everywhere_subjects_are_skipped_with_a_warning(tmp_path, brats, caplog):
    import nibabel as nib
    ds = copy_subjects(brats.root, tmp_path, ['BraTS2021_90000', 'BraTS2021_90001'])
    f = tmp_path/'BraTS2021_90000'/'BraTS2021_90000_seg.nii.gz'
    img = nib.load(f); nib.save(nib.Nifti1Image(np.full(img.shape, 2, np.uint8), img.affine, img.header), f)
    with caplog.at_level(logging.WARNING):
        s = SliceSet(ds, ['t1'], slices='tumour_free', cache=SliceCache(tmp_path/'c'), progress=False)
    assert [x.id for x in s.subjects] == ['BraTS2021_90001'] and 'BraTS2021_90000' in caplog.text
    with pytest.raises(NoTumourFreeSlicesError, match='no axial slice was selected'):
        SliceSet(ds[:1], ['t1'], slices='tumour_free', cache=SliceCache(tmp_path/'c'), progress=False)


# ---------------------------------------------------------------- datasets: behaviour

def test_paired_items_match_the_volumes(brats, cache):
    ds = PairedSlices(brats[:2], ['t1', 'flair'], 't2', size=96, cache=cache, progress=False)
    it = ds[len(ds) - 1]
    assert it['source'].shape == (2, 96, 96) and it['target'].shape == (1, 96, 96) and it['source'].dtype == torch.float32
    sub = brats[it['subject']]
    for c, m in enumerate(['t1', 'flair']):
        want = Normalizer()(sub[m])[:, :, it['slice']]
        np.testing.assert_array_equal(it['source'][c].numpy(), want)
    np.testing.assert_array_equal(it['target'][0].numpy(), Normalizer()(sub['t2'])[:, :, it['slice']])


def test_tumour_free_slices_hold_no_tumour_and_enough_brain(brats, cache):
    s = SliceSet(brats[:4], ['t1'], slices='tumour_free', margin=1, min_brain=0.3, cache=cache, progress=False)
    for k, i in s.index:
        seg = s.subjects[k]['seg'].data
        assert not seg[:, :, max(i - 1, 0):i + 2].any()
    areas = [np.asarray(s.cache.info(s.sources[k]['t1'], s.preps['t1'])['area']) for k in range(len(s.subjects))]
    assert all(areas[k][i] >= 0.3 * areas[k].max() for k, i in s.index)
    assert ((0 <= s.position) & (s.position <= 1)).all()


def test_position_pairing_stays_within_the_jitter(brats, hcp, cache):
    ds = UnpairedSlices(hcp, 't1', brats, 't1', pairing='position', b_slices='all', cache=cache, progress=False)
    for j in range(0, len(ds.A), 5):
        rng = np.random.default_rng(j)
        jb = ds.partner(j, rng)
        k = ds.B.index[jb, 0]
        cand = ds.B.slices_of(k)
        idx = ds.B.index[cand, 1]
        expected = np.interp(ds.A.position[j], ds.B.position[cand], idx)
        assert -5 - 1 <= ds.B.index[jb, 1] - expected <= 4 + 1         # jitter in [-5, 4], then the nearest slice
        assert ds.B.subjects[k].id != ds.A.subjects[ds.A.index[j, 0]].id


def test_position_range_draws_within_the_window_and_changes_with_the_epoch(brats, hcp, cache):
    ds = UnpairedSlices(hcp, 't1', brats, 't1', pairing='position_range', window=0.1, cache=cache, seed=5, progress=False)
    gaps = [abs(ds[j]['A_position'] - ds[j]['B_position']) for j in range(0, len(ds), 7)]
    assert np.median(gaps) <= 0.1
    before = [ds[j]['B_slice'] for j in range(40)]
    assert before == [ds[j]['B_slice'] for j in range(40)]           # same epoch: same pairs
    ds.set_epoch(1)
    assert before != [ds[j]['B_slice'] for j in range(40)]           # a new epoch redraws them


def test_random_pairing_ignores_position(brats, hcp, cache):
    ds = UnpairedSlices(hcp, 't1', brats, 't1', pairing='random', cache=cache, progress=False)
    d = np.array([(ds[j]['A_position'], ds[j]['B_position']) for j in range(0, len(ds), 3)])
    assert abs(np.corrcoef(d.T)[0, 1]) < 0.3 and len(ds) == max(len(ds.A), len(ds.B))


def test_volume_set(brats, cache):
    vs = VolumeSet(brats[6:], size=96, cache=cache, progress=False)
    v = vs[1]
    assert tuple(v['image'].shape) == (4, 64, 96, 96) and tuple(v['label'].shape) == (64, 96, 96)
    np.testing.assert_array_equal(v['label'].numpy(), np.moveaxis(brats[7]['seg'].data, 2, 0)[:, :, :])


def test_augment_flips_only_left_right():
    x = -np.ones((1, 8, 8), np.float32); x[0, 1, 2] = 1.0                # axis 1 of the array is the slice's axis 0
    aug = Augment(flip=True, rotate=0, scale=0, intensity=0)
    outs = [aug(np.random.default_rng(s), x)[0] for s in range(20)]
    flipped = x[:, ::-1]
    assert any(np.allclose(o, flipped, atol=1e-5) for o in outs) and any(np.allclose(o, x, atol=1e-5) for o in outs)
    assert all(np.allclose(aug(np.random.default_rng(s), x, lr_axis=None)[0], x, atol=1e-5) for s in range(10))


def test_loaders_give_the_same_batches_with_any_number_of_workers(brats, cache):
    ds = PairedSlices(brats[:3], ['t1'], 't2', size=96, augment=Augment(), cache=cache, seed=2, progress=False)
    a = [b['source'] for b in make_loader(ds, 5, seed=9, workers=0)][:3]
    b = [b['source'] for b in make_loader(ds, 5, seed=9, workers=2)][:3]
    for x, y in zip(a, b): torch.testing.assert_close(x, y)


# ---------------------------------------------------------------- found by review

def test_set_epoch_reaches_dataloader_workers(brats, hcp, cache):
    ds = UnpairedSlices(hcp, 't1', brats, 't1', pairing='position_range', cache=cache, seed=1, progress=False)
    loader = make_loader(ds, 16, shuffle=False, workers=2)
    pairs = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        pairs.append(next(iter(loader))['B_slice'])
    assert not torch.equal(pairs[0], pairs[1])                       # the workers saw the new epoch
    ds.set_epoch(1)
    assert torch.equal(next(iter(make_loader(ds, 16, shuffle=False, workers=0)))['B_slice'], pairs[1])


def test_the_cache_applies_the_datasets_label_convention(tmp_path, brats):
    import nibabel as nib
    sid = 'BraTS-GLI-00001-000'
    d = tmp_path/sid; d.mkdir()
    src = brats.root/'BraTS2021_90000'
    for ours, theirs in (('t1', 't1n'), ('t1ce', 't1c'), ('t2', 't2w'), ('flair', 't2f')):
        shutil.copy(src/f'BraTS2021_90000_{ours}.nii.gz', d/f'{sid}-{theirs}.nii.gz')
    img = nib.load(src/'BraTS2021_90000_seg.nii.gz'); lab = np.asanyarray(img.dataobj).copy(); lab[lab == 4] = 3
    nib.save(nib.Nifti1Image(lab, img.affine, img.header), d/f'{sid}-seg.nii.gz')
    ds = open_dataset(tmp_path)
    assert ds.layout.name == 'brats2023'
    v = VolumeSet(ds, ['t1'], cache=SliceCache(tmp_path/'c'), progress=False)[0]
    assert set(np.unique(v['label'].numpy())) == {0, 1, 2, 4}          # ET 3 -> 4, as Subject['seg'] gives it


def test_a_normalizer_dict_must_cover_every_image_modality(brats, cache):
    with pytest.raises(ValueError, match="no entry for 't2'"):
        PairedSlices(brats[:1], ['t1'], 't2', normalizer={'t1': Normalizer('zscore')}, cache=cache, progress=False)
    ds = PairedSlices(brats[:1], ['t1'], 't2', normalizer='zscore', cache=cache, progress=False)     # a name works too
    assert ds[0]['target'].max() <= 1


def test_modalities_on_different_grids_are_refused(tmp_path, brats):
    import nibabel as nib
    ds = copy_subjects(brats.root, tmp_path, ['BraTS2021_90000', 'BraTS2021_90001'])
    f = tmp_path/'BraTS2021_90001'/'BraTS2021_90001_t2.nii.gz'
    img = nib.load(f); nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, :60], img.affine, img.header), f)
    with pytest.raises(GeometryMismatchError) as ei:
        PairedSlices(ds, ['t1'], 't2', cache=SliceCache(tmp_path/'c'), progress=False)
    assert 'BraTS2021_90001_t2.nii.gz' in str(ei.value)


def test_labels_as_an_extra_input_channel_are_read_as_labels(brats, cache):
    ds = PairedSlices(brats[:1], ['t1', 'seg'], 't2', cache=cache, progress=False)
    it = max((ds[j] for j in range(len(ds))), key=lambda it: int((it['source'][1] > 0).sum()))
    assert set(np.unique(it['source'][1].numpy())) <= {0, 1, 2, 4} and (it['source'][1] > 0).any()


def test_position_pairing_with_tumour_free_b_keeps_anatomy_aligned(brats, hcp, cache):
    for pairing in ('position', 'position_range'):
        ds = UnpairedSlices(hcp, 't1', brats, 't1', pairing=pairing, b_slices='tumour_free', spacing=2.4,
                            cache=cache, seed=0, progress=False)
        gap = np.array([abs(ds[j]['A_position'] - ds[j]['B_position']) for j in range(0, len(ds), 3)])
        assert gap.mean() < 0.08 and (gap > 0.2).mean() < 0.05, (pairing, gap.mean(), (gap > 0.2).mean())


def test_a_failed_build_leaves_no_partial_file_and_says_why(tmp_path, brats, monkeypatch):
    import errno
    def full_disk(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(np.lib.format, 'write_array', full_disk)
    with pytest.raises(CacheError) as ei:
        PairedSlices(brats[:1], ['t1'], 't2', cache=SliceCache(tmp_path), progress=False)
    assert 'No space left on device' in str(ei.value) and 'make room' in str(ei.value)
    assert not list(tmp_path.rglob('*.tmp')) and not list(tmp_path.rglob('*.npy'))


def test_a_huge_margin_is_handled(brats, cache):
    with pytest.raises(NoTumourFreeSlicesError):
        SliceSet(brats[:1], ['t1'], slices='tumour_free', margin=400, cache=cache, progress=False)


def test_entries_removed_while_in_use_give_a_cache_error(tmp_path, brats):
    cache = SliceCache(tmp_path)
    ps = PairedSlices(brats[:1], ['t1'], 't2', cache=cache, progress=False)
    vs = VolumeSet(brats[:1], ['t1'], label=None, cache=cache, progress=False)
    for npy in tmp_path.rglob('*.npy'): npy.unlink()
    for dataset, entry in ((ps, ps.set.files[0]['t1'].path), (vs, vs.set.files[0]['t1'].path)):
        with pytest.raises(CacheError) as ei: dataset[0]
        msg = str(ei.value)                       # the fix names the entry and the cache folder to delete
        assert f"delete the entry ({entry} and its sidecar" in msg and f"or the whole cache folder {tmp_path} ($BRAINKIT_CACHE" in msg
        assert 'create the dataset again' not in msg


def test_spacing_resamples_before_slicing(brats, hcp, cache):
    a = SliceSet(hcp[:1], ['t1'], spacing=2.4, cache=cache, progress=False)
    b = SliceSet(hcp[:1], ['t1'], cache=cache, progress=False)
    sa, sb = a.files[0]['t1'].shape, b.files[0]['t1'].shape
    assert sb == (80, 96) and sa == (round(80 * 2 / 2.4), round(96 * 2 / 2.4))


def test_split_fractions_are_checked():
    with pytest.raises(ValueError, match='sum to 1'): split_subjects(['a', 'b'], (0.2, 0.2, 0.0))
    with pytest.raises(ValueError, match='sum to 1'): split_subjects(['a', 'b'], (1.2, -0.1, -0.1))


def test_make_loader_accepts_auto_device_and_a_sampler(brats, cache):
    ds = PairedSlices(brats[:1], ['t1'], 't2', cache=cache, progress=False)
    assert next(iter(make_loader(ds, 2, device='auto')))['source'].shape[0] == 2
    sampler = torch.utils.data.SequentialSampler(range(3))
    assert next(iter(make_loader(ds, 3, sampler=sampler)))['slice'].tolist() == [ds.set.index[j, 1] for j in range(3)]


def test_a_file_the_run_never_reads_may_arrive_later(tmp_path, brats):
    "A folder still being unpacked: the flair files arrive after a t1 -> t2 run began; its resume must not mind."
    ds = copy_subjects(brats.root, tmp_path, IDS3)
    flair = [next(p for p in (tmp_path/i).iterdir() if p.name.endswith('_flair.nii.gz')) for i in IDS3]
    held = [f.read_bytes() for f in flair]
    for f in flair: f.unlink()
    ds, _, parts = split_dataset(tmp_path, fractions=(2/3, 1/3, 0.0))
    rec = split_record(ds, parts, ['t1', 't2'])
    assert all(set(fp) == {f'{i}_t1.nii.gz', f'{i}_t2.nii.gz'} for i, fp in rec['fingerprints'].items())
    for f, b in zip(flair, held): f.write_bytes(b)                                     # unpacking goes on
    assert split_dataset(tmp_path, stored=rec)[2] == parts
    t2 = tmp_path/IDS3[0]/f'{IDS3[0]}_t2.nii.gz'
    with open(t2, 'ab') as fh: fh.write(b'\0')                                       # a file the run reads changed
    with pytest.raises(SplitError, match=f'{IDS3[0]}_t2.nii.gz changed size'): split_dataset(tmp_path, stored=rec)


def test_an_excluded_subject_named_by_the_split_file_is_left_out(tmp_path, brats):
    copy_subjects(brats.root, tmp_path, IDS3)
    sf = tmp_path/'split.json'
    sf.write_text(json.dumps({'train': IDS3[:2], 'val': IDS3[2:]}))
    _, (train, val, _), parts = split_dataset(tmp_path, split_file=sf, exclude=[IDS3[1]])
    assert parts == {'train': [IDS3[0]], 'val': [IDS3[2]]} and [s.id for s in train] == [IDS3[0]]
