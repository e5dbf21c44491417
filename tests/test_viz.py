"brainkit.viz: the radiological display convention in every plane, label overlays, slices, grids and histograms (headless)."
import os

os.environ.setdefault('MPLBACKEND', 'Agg')

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from brainkit.io import PLANES, make_volume, open_dataset
from brainkit.viz import (EDGE_LETTERS, LABEL_COLORS, REGION_COLORS, TISSUE_LABELS, display_slice, intensity_histograms,
                          label_overlay, modality_grid, region_masks, show_slice)

SHAPE = (4, 5, 6)  # all different, so a transposed or swapped axis cannot pass


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close('all')


@pytest.fixture(scope='module')
def coords():
    "A canonical volume whose voxel (i, j, k) holds (i, j, k)."
    return np.stack(np.meshgrid(*map(np.arange, SHAPE), indexing='ij'), -1)


def expected_slice(coords, plane, index):
    "The radiological slice built pixel by pixel from the convention's table, independently of display_slice."
    X, Y, Z = SHAPE
    if plane == 'axial':     # rows: anterior -> posterior (y high -> low); columns: right -> left (x high -> low)
        return np.array([[coords[X - 1 - c, Y - 1 - r, index] for c in range(X)] for r in range(Y)])
    if plane == 'coronal':   # rows: superior -> inferior; columns: right -> left
        return np.array([[coords[X - 1 - c, index, Z - 1 - r] for c in range(X)] for r in range(Z)])
    if plane == 'sagittal':  # rows: superior -> inferior; columns: anterior -> posterior
        return np.array([[coords[index, Y - 1 - c, Z - 1 - r] for c in range(Y)] for r in range(Z)])


@pytest.mark.parametrize('plane', list(PLANES))
def test_display_slice_follows_the_radiological_convention(coords, plane):
    for index in range(SHAPE[PLANES[plane]]):
        got = display_slice(coords, plane, index)
        np.testing.assert_array_equal(got, expected_slice(coords, plane, index))
        assert (got[..., PLANES[plane]] == index).all()


@pytest.mark.parametrize('plane', list(PLANES))
def test_edge_letters_name_the_directions_the_image_shows(coords, plane):
    "The letter at each edge is the RAS direction the image runs towards there (L/P/I at the far ends)."
    left, right, top, bottom = EDGE_LETTERS[plane]
    img = display_slice(coords, plane, 0)
    u, v = (a for a in range(3) if a != PLANES[plane])
    opposite = dict(zip('RASLPI', 'LPIRAS'))
    assert img[0, 0, u] > img[0, -1, u] and left == 'RAS'[u] and right == opposite[left]   # columns: u decreases
    assert img[0, 0, v] > img[-1, 0, v] and top == 'RAS'[v] and bottom == opposite[top]    # rows: v decreases


def test_display_slice_keeps_channels_and_checks_the_plane():
    rgba = np.random.default_rng(0).random((*SHAPE, 4))
    assert display_slice(rgba, 'coronal', 2).shape == (SHAPE[2], SHAPE[0], 4)
    with pytest.raises(ValueError, match='axial'):
        display_slice(rgba, 'transverse', 0)


def test_label_overlay_colours_labels_and_leaves_the_rest_transparent():
    seg = np.array([[0, 1, 2], [4, 3, 0]], np.uint8)
    rgba = label_overlay(seg, alpha=0.3)
    assert rgba.shape == (2, 3, 4)
    for lab in (1, 2, 4):
        np.testing.assert_allclose(rgba[seg == lab][0], [*LABEL_COLORS[lab], 0.3])
    assert (rgba[seg == 0] == 0).all() and (rgba[seg == 3] == 0).all()   # background and unknown labels: invisible
    custom = label_overlay(seg, 1.0, colors={3: (0, 0, 1)})
    np.testing.assert_allclose(custom[1, 1], [0, 0, 1, 1])
    assert (custom[0, 1] == 0).all()                                       # only the given colours are drawn
    assert label_overlay(np.zeros((2, 3, 4), np.uint8)).shape == (2, 3, 4, 4)


def test_label_overlay_default_alpha_and_brats_colours():
    rgba = label_overlay(np.array([4]))
    np.testing.assert_allclose(rgba[0], [*LABEL_COLORS[4], 0.45])
    assert set(LABEL_COLORS) == {1, 2, 4}


def test_show_slice_draws_the_display_slice_overlay_and_letters(coords):
    data = coords[..., 0].astype(np.float32) + 10 * coords[..., 1] + 100 * coords[..., 2]
    seg = np.zeros(SHAPE, np.uint8); seg[1, 2, 3] = 4
    fig, ax = plt.subplots()
    assert matplotlib.get_backend().lower() == 'agg'
    show_slice(ax, data, 'axial', 3, seg=seg, title='t', alpha=0.7)
    np.testing.assert_array_equal(ax.images[0].get_array(), display_slice(data, 'axial', 3))
    overlay = ax.images[1].get_array()
    assert overlay.shape == (SHAPE[1], SHAPE[0], 4)
    np.testing.assert_allclose(overlay[SHAPE[1] - 1 - 2, SHAPE[0] - 1 - 1], [*LABEL_COLORS[4], 0.7])
    assert overlay[..., 3].sum() == pytest.approx(0.7)                      # exactly one labelled pixel
    assert sorted(t.get_text() for t in ax.texts) == sorted(EDGE_LETTERS['axial'])
    assert ax.get_title() == 't' and ax.images[0].get_cmap().name == 'gray'


def test_show_slice_defaults_to_the_middle_slice_and_can_skip_letters(coords):
    data = coords[..., 2].astype(float)
    fig, ax = plt.subplots()
    show_slice(ax, data, 'axial', letters=False)
    assert (ax.images[0].get_array() == SHAPE[2] // 2).all() and not ax.texts and len(ax.images) == 1
    fig, ax = plt.subplots()
    show_slice(ax, data, 'coronal', 0, cmap='magma', vmin=0, vmax=10)
    assert ax.images[0].get_cmap().name == 'magma' and ax.images[0].get_clim() == (0, 10)


def test_show_slice_keeps_the_true_proportions_of_anisotropic_voxels():
    vol = make_volume(np.ones((8, 8, 4), np.float32), np.diag([1., 1., 3., 1.]))   # 3 mm slices
    for plane, aspect in (('axial', 1.0), ('coronal', 3.0), ('sagittal', 3.0)):
        fig, ax = plt.subplots()
        show_slice(ax, vol, plane, 1, seg=np.ones(vol.shape, np.uint8))
        assert ax.get_aspect() == pytest.approx(aspect), plane
        assert all(im.get_extent() == ax.images[0].get_extent() for im in ax.images)


def test_modality_grid_panels(samples):
    vols = open_dataset(samples/'BraTS2021')[0].load()
    mods = {m: vols[m] for m in ('t1', 't1ce', 't2', 'flair')}
    fig = modality_grid(mods, 'sagittal', 50, seg=vols['seg'], size=2)
    assert [a.get_title() for a in fig.axes] == ['t1', 't1ce', 't2', 'flair', 'labels on flair']
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), display_slice(vols['t2'].data, 'sagittal', 50))
    assert len(fig.axes[-1].images) == 2 and all(len(a.images) == 1 for a in fig.axes[:-1])
    assert len(modality_grid({'t1': vols['t1'].data}).axes) == 1


def test_region_masks_names_tissues_then_present_labels():
    tissues = np.array([0, 1, 2, 3, 0, 0, 3])
    seg = np.array([0, 0, 0, 0, 2, 4, 0])
    masks = region_masks(tissues, seg)
    assert list(masks) == ['CSF', 'GM', 'WM', 'edema', 'enhancing tumour']   # no necrotic core: not present
    np.testing.assert_array_equal(masks['WM'], tissues == 3)
    assert list(region_masks(seg=seg)) == ['edema', 'enhancing tumour'] and region_masks() == {}
    assert set(TISSUE_LABELS.values()) | {'necrotic core', 'edema', 'enhancing tumour'} == set(REGION_COLORS)


def test_intensity_histograms_one_scaled_density_per_region():
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(100, 5, 500), rng.normal(200, 5, 500)])
    masks = {'GM': np.arange(1000) < 500, 'WM': np.arange(1000) >= 500}
    fig, ax = plt.subplots()
    intensity_histograms(ax, data, masks, scale=200, bins=40, range=(0, 1.5), title='h', ls='--')
    assert len(ax.patches) == 2 and ax.get_title() == 'h'
    labels = [p.get_label() for p in ax.patches]
    assert labels == ['GM', 'WM']
    assert ax.patches[1].get_edgecolor()[:3] == pytest.approx(REGION_COLORS['WM'])
    peaks = [p.get_path().vertices for p in ax.patches]
    mode = [v[np.argmax(v[:, 1]), 0] for v in peaks]                    # where each density peaks, scaled
    assert mode[0] == pytest.approx(0.5, abs=0.05) and mode[1] == pytest.approx(1.0, abs=0.05)
    fig, solid = plt.subplots()
    intensity_histograms(solid, data, masks)
    assert ax.patches[0].get_linestyle() != solid.patches[0].get_linestyle()   # hist keywords (ls) reach every curve


def test_intensity_histograms_default_range_covers_the_regions():
    data = np.linspace(-1, 1, 201)                     # e.g. a generator's output in [-1, 1]
    fig, ax = plt.subplots()
    intensity_histograms(ax, data, {'CSF': data < -0.5, 'WM': data > 0.5})
    xs = np.concatenate([p.get_path().vertices[:, 0] for p in ax.patches])
    assert xs.min() == pytest.approx(-1) and xs.max() == pytest.approx(1, abs=0.01)
    fig, ax = plt.subplots()
    intensity_histograms(ax, data, {'WM': data > 0.5})
    assert ax.patches[0].get_path().vertices[:, 0].min() == pytest.approx(0)   # from 0 when everything is positive
    assert intensity_histograms(ax, data, {}) is ax                             # nothing to draw: no error


def test_label_overlay_is_drawn_without_blending_neighbours(coords):
    fig, ax = plt.subplots()
    show_slice(ax, coords[..., 0].astype(float), 'axial', 0, seg=np.ones(SHAPE, np.uint8))
    assert ax.images[1].get_interpolation() == 'nearest'
