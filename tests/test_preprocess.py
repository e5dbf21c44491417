"brainkit.preprocess: brain masks, normalization, crop/pad and tumour-free slices, including bad input."
import json
import pickle

import numpy as np
import pytest

from brainkit.io import load_volume, make_volume, open_dataset, samples_dir
from brainkit.preprocess import (METHODS, NORMALIZATIONS, NYUL_PERCENTILES, CropPad, NoBrainError, NoTumourFreeSlicesError,
                                 Normalizer, PercentileNormalizer, brain_mask, crop_pad, fill_holes, otsu_threshold,
                                 tumour_free_slices)


@pytest.fixture(scope='module')
def brats():
    return open_dataset(samples_dir('brats'))


def test_fill_holes_fills_enclosed_holes_only():
    m = np.zeros((10, 10, 10), bool); m[2:8, 2:8, 2:8] = True
    m[4:6, 4:6, 4:6] = False                      # an enclosed cavity
    m[5, 0:3, 5] = False                          # a tunnel from the border: not a hole
    f = fill_holes(m)
    assert f[4:6, 4:6, 4:6].all() and not f[5, 0:3, 5].any()
    assert (f & ~m).sum() == 8


def test_brain_mask_of_skull_stripped_data_is_the_nonzero_region():
    d = np.zeros((12, 12, 12), np.float32); d[2:10, 2:10, 2:10] = 100; d[5, 5, 5] = 0   # a dark voxel inside
    assert brain_mask(d).sum() == 8 ** 3 - 1                       # zero background: no filling by default
    m = brain_mask(d, fill=True)
    assert m.sum() == 8 ** 3 and m[5, 5, 5]


def test_fill_holes_in_a_brats_sized_volume_fills_exactly_the_cavity():
    m = np.zeros((240, 240, 155), bool); m[60:180, 50:200, 20:140] = True; m[100:110, 100:120, 70:80] = False
    m[60:180, 120, 60:62] = False                                   # a slot cut through to the surface: not a hole
    f = fill_holes(m)
    assert f.sum() == m.sum() + 10 * 20 * 10 and f[100:110, 100:120, 70:80].all() and not f[60:180, 120, 60:62].any()


def test_brain_mask_uses_otsu_when_the_background_is_a_noise_floor():
    rng = np.random.default_rng(0)
    d = rng.normal(5, 1, (16, 16, 16)).astype(np.float32)
    d[4:12, 4:12, 4:12] += 100
    d[7, 7, 7] = 5                                                # a dark voxel inside: Otsu mode fills it
    m = brain_mask(d)
    assert m.sum() == 8 ** 3 and m[4:12, 4:12, 4:12].all()
    assert 5 < otsu_threshold(d.ravel()) < 105


def test_a_volume_with_no_brain_is_refused_with_its_file_named(tmp_path):
    with pytest.raises(NoBrainError) as ei: brain_mask(np.zeros((5, 5, 5)))
    assert 'no voxel is above' in str(ei.value)
    v = make_volume(np.full((5, 5, 5), -3.0, np.float32), np.eye(4), path=tmp_path/'stripped_everything.nii.gz')
    with pytest.raises(NoBrainError) as ei: Normalizer('zscore')(v)
    assert 'stripped_everything.nii.gz' in str(ei.value) and 'Fix:' in str(ei.value)


def test_constant_brain_cannot_be_normalized():
    d = np.zeros((6, 6, 6), np.float32); d[1:5, 1:5, 1:5] = 7.0
    with pytest.raises(NoBrainError): Normalizer('percentile')(d)


@pytest.mark.parametrize('method', METHODS)
def test_normalizers_map_the_brain_to_unit_range_and_invert(brats, method):
    vols = [s['t1'] for s in brats]
    n = Normalizer(method)
    if n.needs_fit: n.fit(vols[:5])                          # nyul and none learn from training volumes
    v = vols[6]
    mask = brain_mask(v)
    y, stats = n.apply(v, mask)
    assert y.dtype == np.float32 and y.shape == v.shape
    assert y.min() >= -1 and y.max() <= 1 and (y[~mask] == -1).all()
    inside = mask & (np.abs(y) < 1)
    np.testing.assert_allclose(n.invert(y, stats)[inside], v.data[inside], rtol=1e-4, atol=1e-2)
    # recorded with a model: survives JSON
    again = Normalizer.from_dict(json.loads(json.dumps(n.to_dict())))
    np.testing.assert_array_equal(again(v, mask), y)


def test_normalization_is_independent_of_the_scanner_gain(brats):
    v = brats[0]['t1']
    twice = make_volume(v.data * 2.0, v.affine)
    for method in ('zscore', 'percentile'):
        np.testing.assert_allclose(Normalizer(method)(twice), Normalizer(method)(v.data), atol=1e-5)


def test_nyul_landmarks_are_increasing_and_need_fitting(brats):
    n = Normalizer('nyul')
    with pytest.raises(ValueError, match='fitted'): n(brats[0]['t1'])
    n.fit([s['t1'] for s in brats[:4]])
    assert np.all(np.diff(n.landmarks) > 0) and n.landmarks[0] == 0 and n.landmarks[-1] == pytest.approx(100)


def test_unknown_normalization_name():
    with pytest.raises(ValueError, match='zscore, percentile, nyul'): Normalizer('histeq')


@pytest.mark.parametrize('shape,size,plane', [((7, 9, 5), (4, 12), 'axial'), ((3, 8, 8, 6), 10, 'sagittal'),
                                               ((6, 6, 6), (6, 6), 'coronal'), ((240, 240, 155), 256, 'axial')])
def test_crop_pad_round_trip_is_exact_where_nothing_is_cropped(shape, size, plane):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    cp = crop_pad(shape, size, plane)
    y = cp.apply(x, value=-1)
    back = cp.invert(y, value=-1)
    assert back.shape == x.shape
    kept = back != -1
    np.testing.assert_array_equal(back[kept], x[kept])
    # every axis that was only padded is restored completely
    if all(s >= shape[ax] for ax, s in cp.sizes): np.testing.assert_array_equal(back, x)


def test_crop_pad_refuses_a_wrong_shape():
    cp = CropPad((4, 4, 4), ((0, 6), (1, 6)))
    with pytest.raises(ValueError, match='expected an array of shape'): cp.apply(np.zeros((5, 4, 4)))
    with pytest.raises(ValueError, match='expected an array of shape'): cp.invert(np.zeros((4, 4, 4)))


def test_crop_keeps_the_centre():
    x = np.zeros((10, 10, 3)); x[4:6, 4:6] = 1
    y = crop_pad(x.shape, 4).apply(x)
    assert y.sum() == x.sum() and y[1:3, 1:3].all()


def test_tumour_free_slices_with_margin_and_brain(brats):
    s = brats[0]
    seg, mask = s['seg'], brain_mask(s['t1'])
    free = tumour_free_slices(seg, 'axial')
    tumour = np.flatnonzero((seg.data > 0).any((0, 1)))
    assert not set(free) & set(tumour) and len(free) + len(tumour) == seg.shape[2]
    with_margin = tumour_free_slices(seg, 'axial', margin=3, brain=mask, min_brain=0.25)
    assert set(with_margin) <= set(free)
    near = {z for t in tumour for z in range(t - 3, t + 4)}
    assert not set(with_margin) & near
    area = mask.sum((0, 1))
    assert (area[with_margin] >= 0.25 * area.max()).all()
    for plane in ('sagittal', 'coronal'): assert len(tumour_free_slices(seg, plane)) > 0


def test_a_subject_with_tumour_on_every_slice_gets_a_clear_error(tmp_path):
    seg = make_volume(np.ones((6, 6, 6), np.uint8), np.eye(4), path=tmp_path/'all_tumour_seg.nii.gz')
    with pytest.raises(NoTumourFreeSlicesError) as ei: tumour_free_slices(seg, 'axial')
    assert 'all_tumour_seg.nii.gz' in str(ei.value) and 'Fix:' in str(ei.value)
    # also when a margin swallows the only free slices
    labels = np.zeros((6, 6, 6), np.uint8); labels[:, :, 1:5] = 2
    assert list(tumour_free_slices(labels)) == [0, 5]
    with pytest.raises(NoTumourFreeSlicesError, match='margin 1'): tumour_free_slices(labels, margin=1)


def test_unknown_plane_is_refused():
    with pytest.raises(ValueError, match='axial'): tumour_free_slices(np.zeros((3, 3, 3)), 'transverse')


def test_invert_restores_the_background_with_a_mask(brats):
    v = brats[0]['t2']; mask = brain_mask(v)
    n = Normalizer('percentile')
    y, st = n.apply(v, mask)
    back = n.invert(y, st, mask)
    assert (back[~mask] == 0).all() and (n.invert(y, st)[~mask] > 0).all()


def test_resample_keeps_the_world_and_the_labels():
    from brainkit.io import make_volume, save_volume, load_volume
    from brainkit.preprocess import resample
    rng = np.random.default_rng(0)
    lab = make_volume(rng.choice(np.array([0, 1, 2, 4], np.uint8), (20, 24, 16)), np.diag([-1.5, -1.5, 2.0, 1.0]))
    r = resample(lab, 3.0, label=True)
    assert r.shape == (10, 12, 11) and set(np.unique(r.data)) <= {0, 1, 2, 4} and r.spacing == (3.0, 3.0, 3.0)
    centre = lambda v: v.affine @ [*(np.array(v.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre(r), centre(lab), atol=1e-6)
    # nearest: every new voxel holds the label of the old voxel nearest to its centre
    inv = np.linalg.inv(lab.affine)
    for ijk in [(0, 0, 0), (5, 6, 5), (9, 11, 10)]:
        old = np.clip(np.rint(inv @ r.affine @ [*ijk, 1])[:3], 0, np.array(lab.shape) - 1).astype(int)
        assert r.data[ijk] == lab.data[tuple(old)]


def test_a_resampled_volume_saves_in_the_sources_space(tmp_path, brats):
    from brainkit.io import save_volume, load_volume
    from brainkit.preprocess import resample
    v = brats[0]['t1']
    r = resample(v, 3.0)
    back = load_volume(save_volume(r, tmp_path/'r.nii.gz'))
    np.testing.assert_allclose(back.affine, r.affine, atol=1e-4)
    assert back.source_axcodes == v.source_axcodes == ('L', 'P', 'S')


# --- the registry of normalizations (issue 12) ---

LEGACY = {  # what Normalizer.to_dict() recorded in checkpoints before the methods were split: every field of every method
    'zscore': {'method': 'zscore', 'low': 0.5, 'high': 99.5, 'k': 3.0, 'percentiles': list(NYUL_PERCENTILES), 'landmarks': None},
    'percentile': {'method': 'percentile', 'low': 0.5, 'high': 99.5, 'k': 3.0, 'percentiles': list(NYUL_PERCENTILES),
                   'landmarks': None},
}


@pytest.fixture(scope='module')
def fitted(brats):
    "One normalizer per method, the fitted ones fitted on the first 4 BraTS-like T1s."
    train = [s['t1'] for s in brats[:4]]
    return {m: (Normalizer(m).fit(train) if Normalizer(m).needs_fit else Normalizer(m)) for m in METHODS}


def test_every_registered_name_builds_its_own_class():
    assert METHODS == ('zscore', 'percentile', 'nyul', 'none') == tuple(NORMALIZATIONS)
    for name, cls in NORMALIZATIONS.items():
        n = Normalizer(name)
        assert type(n) is cls and isinstance(n, Normalizer) and n.method == name and cls().method == name
    assert type(Normalizer()) is PercentileNormalizer and Normalizer(method='zscore', k=2).k == 2.0
    assert {m for m in METHODS if Normalizer(m).needs_fit} == {'nyul', 'none'}
    with pytest.raises(TypeError, match="'low'"): Normalizer('zscore', low=1.0)      # another method's parameter
    with pytest.raises(ValueError, match="'zscore'"): PercentileNormalizer(method='zscore')


def test_each_method_holds_only_its_own_parameters(fitted):
    assert {m: set(n.to_dict()) for m, n in fitted.items()} == {
        'zscore': {'method', 'k'}, 'percentile': {'method', 'low', 'high'},
        'nyul': {'method', 'percentiles', 'landmarks'}, 'none': {'method', 'high', 'scale'}}


@pytest.mark.parametrize('method', METHODS)
def test_to_dict_from_dict_round_trip_through_json(fitted, method):
    n = fitted[method]
    again = Normalizer.from_dict(json.loads(json.dumps(n.to_dict())))
    assert type(again) is type(n) and again == n and again.to_dict() == n.to_dict()
    assert pickle.loads(pickle.dumps(n)) == n                  # DataLoader workers may pickle them


def test_the_full_dicts_of_older_checkpoints_still_load(fitted):
    for m, d in LEGACY.items(): assert Normalizer.from_dict(d) == Normalizer(m)
    old_nyul = LEGACY['percentile'] | {'method': 'nyul', 'landmarks': fitted['nyul'].landmarks}
    assert Normalizer.from_dict(old_nyul) == fitted['nyul']
    with pytest.raises(ValueError, match=r"\['kk'\]"): Normalizer.from_dict({'method': 'zscore', 'kk': 3.0})
    with pytest.raises(ValueError, match='zscore, percentile, nyul, none'): Normalizer.from_dict({'method': 'minmax'})


def test_cache_keys_tell_normalizers_apart(brats, fitted, tmp_path):
    from brainkit.data import Prep, SliceCache
    cache, src = SliceCache(tmp_path), brats[0].path('t1')
    key = lambda n: cache.paths(src, Prep.make('axial', 96, n))[0]
    distinct = [*fitted.values(), Normalizer('zscore', k=2.0), Normalizer(low=1.0), Normalizer('nyul'), Normalizer('none')]
    assert len({key(n) for n in distinct}) == len(distinct)
    assert key(Normalizer('zscore', k=3)) == key(Normalizer('zscore')) == key(Normalizer.from_dict(LEGACY['zscore']))
    assert key(Normalizer.from_dict(fitted['none'].to_dict())) == key(fitted['none'])
    assert Prep.make('axial', 96, fitted['nyul']).normalize == fitted['nyul']


def test_none_needs_fitting_and_keeps_the_gain(brats, fitted):
    v = brats[0]['t1']; mask = brain_mask(v)
    with pytest.raises(ValueError, match='fitted'): Normalizer('none')(v)
    with pytest.raises(ValueError, match='at least one training volume'): Normalizer('none').fit([])
    n = fitted['none']
    tops = [np.percentile(s['t1'].data[brain_mask(s['t1'])].astype(np.float64), 99.5) for s in brats[:4]]
    assert n.scale == pytest.approx(np.mean(tops))
    y = n(v, mask)
    assert y.dtype == np.float32 and y.min() == -1 and y.max() <= 1 and (y[~mask] == -1).all()
    brighter = n(v.data * 1.5, mask)                           # the same brain, receive gain +50%
    kept = mask & (brighter < 1)
    below = mask & (1.5 * v.data.astype(np.float64) < n.scale)  # what one fixed line keeps below its top: it clips nothing else
    assert abs(int(kept.sum()) - int(below.sum())) <= 1e-4 * mask.sum() and kept.sum() > 0.1 * mask.sum()
    np.testing.assert_allclose(brighter[kept] + 1, 1.5 * (y[kept] + 1), rtol=1e-5)   # the gain survives 'none'
    for m in ('zscore', 'percentile', 'nyul'):                                          # ... and vanishes otherwise
        np.testing.assert_allclose(fitted[m](v.data * 1.5, mask), fitted[m](v, mask), atol=1e-5)


def test_none_maps_every_volume_through_one_line_and_inverts(brats, fitted):
    n = fitted['none']
    for s in brats[4:]:
        v = s['t1']; mask = brain_mask(v)
        y, stats = n.apply(v, mask)
        assert stats['xp'] == [0.0, n.scale] and stats['fp'] == [-1.0, 1.0]
        np.testing.assert_allclose(y[mask], np.clip(v.data[mask] / n.scale * 2 - 1, -1, 1), atol=1e-6)
        inside = mask & (np.abs(y) < 1)
        back = n.invert(y, stats, mask)
        np.testing.assert_allclose(back[inside], v.data[inside], rtol=1e-5, atol=1e-3)
        assert (back[~mask] == 0).all()


def _reference(method, data, mask, landmarks=None):
    "Today's (pre-registry) arithmetic for each method, written out again: the refactor must reproduce it bit for bit."
    vals = data[mask].astype(np.float64)
    if method == 'zscore':
        mu, sd = float(vals.mean()), float(vals.std()) or 1.0
        xp, fp = [mu - 3.0 * sd, mu + 3.0 * sd], [-1.0, 1.0]
    elif method == 'percentile':
        lo, hi = np.percentile(vals, [0.5, 99.5]); xp, fp = [float(lo), float(hi)], [-1.0, 1.0]
    else:
        s = np.asarray(landmarks)
        xp = [float(v) for v in np.percentile(vals, NYUL_PERCENTILES)]
        fp = [float(v) for v in (s - s[0]) / (s[-1] - s[0]) * 2 - 1]
    return np.where(mask, np.interp(data, xp, fp), -1.0).astype(np.float32), xp, fp


def test_the_old_methods_are_bit_identical_to_before(brats, fitted):
    marks = []                                                     # Nyul's standard scale, as it was learned
    for s in brats[:4]:
        p = np.percentile(s['t1'].data[brain_mask(s['t1'])].astype(np.float64), NYUL_PERCENTILES)
        marks.append((p - p[0]) / max(p[-1] - p[0], 1e-12) * 100)
    assert fitted['nyul'].landmarks == [float(m) for m in np.mean(marks, 0)]
    for s in (brats[0], brats[6]):
        for mod in ('t1', 'flair'):
            v = s[mod]; mask = brain_mask(v)
            for m in ('zscore', 'percentile', 'nyul'):
                want, xp, fp = _reference(m, v.data, mask, fitted['nyul'].landmarks)
                y, stats = fitted[m].apply(v, mask)
                assert y.dtype == want.dtype and np.array_equal(y, want), (mod, m)
                assert stats == {'method': m, 'xp': xp, 'fp': fp}
                assert np.array_equal(fitted[m](v), want)          # the mask computed from the data is the same one
                assert np.array_equal(fitted[m].invert(y, stats), np.interp(y, fp, xp).astype(np.float32))
