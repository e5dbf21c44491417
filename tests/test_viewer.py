"brainkit.viewer: orthogonal views built headless, and the ipywidgets Viewer driven by setting its controls."
import base64
import os

os.environ.setdefault('MPLBACKEND', 'Agg')

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from brainkit.io import PLANES, GeometryMismatchError, make_volume, open_dataset
from brainkit.viewer import ORTHO, Viewer, display_position, figure_png, intensity_window, ortho_views
from brainkit.viz import LABEL_COLORS, display_slice

SHAPE = (6, 7, 5)


@pytest.fixture(scope='module')
def coords():
    return np.stack(np.meshgrid(*map(np.arange, SHAPE), indexing='ij'), -1)


@pytest.fixture(scope='module')
def brats(samples):
    return open_dataset(samples/'BraTS2021')[0].load()


@pytest.fixture(scope='module')
def pair(samples):
    "An HCP-like subject and its oracle rendering with the BraTS-like protocol: a source and its ideal translation."
    return open_dataset(samples/'HCP')[0].load(), open_dataset(samples/'oracle'/'HCP_in_BraTS_contrast')['000001'].load()


def shown(fig, panel=0, layer=0):
    return np.asarray(fig.axes[panel].images[layer].get_array())


def png_of(viewer):
    (out,) = viewer.out.outputs
    assert out['output_type'] == 'display_data'
    png = base64.b64decode(out['data']['image/png'])
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    return png


# --- display_position and intensity_window

@pytest.mark.parametrize('plane', list(PLANES))
def test_display_position_finds_the_voxel_in_the_displayed_slice(coords, plane):
    for point in np.ndindex(*SHAPE):
        r, c = display_position(SHAPE, plane, point)
        np.testing.assert_array_equal(display_slice(coords, plane, point[PLANES[plane]])[r, c], point)


def test_intensity_window_ignores_background_and_a_few_hot_voxels():
    v = np.zeros((10, 10, 10), np.float32); v[2:8, 2:8, 2:8] = np.linspace(10, 100, 216).reshape(6, 6, 6)
    v[5, 5, 5] = 1e5
    lo, hi = intensity_window(v)
    assert lo == 0 and 90 < hi < 101
    assert intensity_window(make_volume(v, np.eye(4))) == (lo, hi)
    assert intensity_window(np.full((2, 2, 2), -1.)) == (-1., 0.)     # constant volume: a valid window anyway
    assert intensity_window(v - 1)[0] == -1                             # [-1, 1]-style data: the minimum is the floor


# --- ortho_views

def test_ortho_views_three_planes_through_the_point_headless(brats):
    before = plt.get_fignums()
    point = (60, 40, 30)
    fig = ortho_views(brats['flair'], point, seg=brats['seg'], names=('flair',))
    assert isinstance(fig, Figure) and plt.get_fignums() == before      # made without pyplot: nothing left open
    assert [a.get_title() for a in fig.axes] == [f'flair {p} {point[PLANES[p]]}' for p in ORTHO]
    for ax, plane in zip(fig.axes, ORTHO):
        np.testing.assert_array_equal(shown(fig, fig.axes.index(ax)), display_slice(brats['flair'].data, plane, point[PLANES[plane]]))
        assert len(ax.images) == 2 and len(ax.lines) == 2               # image + labels; the crosshair
        r, c = display_position(brats['flair'].shape, plane, point)
        assert ax.lines[0].get_ydata()[0] == r and ax.lines[1].get_xdata()[0] == c
    x, y, z = (brats['flair'].affine @ [*point, 1])[:3]
    assert fig.get_suptitle() == f'voxel {point} = world ({x:.1f}, {y:.1f}, {z:.1f}) mm'
    assert figure_png(fig)[:4] == b'\x89PNG'                            # renders with Agg, no display


def test_ortho_views_one_grey_window_per_volume(brats):
    fig = ortho_views(brats['t1'], windows=[(0, 123)])
    assert all(ax.images[0].get_clim() == (0, 123) for ax in fig.axes)
    fig = ortho_views(brats['t1'], planes='coronal')
    assert fig.axes[0].images[0].get_clim() == pytest.approx(intensity_window(brats['t1']))


def test_ortho_views_compare_layouts(pair):
    src, ideal = pair
    fig = ortho_views(src['t1'], compare=ideal['t1'], names=('src', 'ideal'))
    assert len(fig.axes) == 6                                           # one row per volume
    assert [a.get_title().split()[0] for a in fig.axes] == ['src'] * 3 + ['ideal'] * 3
    c = tuple(s // 2 for s in src['t1'].shape)
    np.testing.assert_array_equal(shown(fig, 4), display_slice(ideal['t1'].data, 'sagittal', c[0]))
    side = ortho_views(src['t1'], (10, 20, 30), compare=ideal['t2'], planes='axial')
    assert len(side.axes) == 2 and all(not a.lines for a in side.axes)  # one plane: no crosshair
    (l0, b0, *_), (l1, b1, *_) = (a.get_position().bounds for a in side.axes)
    assert b0 == pytest.approx(b1) and l1 > l0                          # side by side, source on the left
    np.testing.assert_array_equal(shown(side, 1), display_slice(ideal['t2'].data, 'axial', 30))


def test_ortho_views_accepts_plain_arrays_and_checks_its_input(coords):
    data = coords.sum(-1).astype(np.float32)
    fig = ortho_views(data, planes=['coronal', 'axial'], crosshair=False)
    assert len(fig.axes) == 2 and not fig.get_suptitle() and not fig.axes[0].lines
    with pytest.raises(GeometryMismatchError, match='shape'): ortho_views(data, compare=data[:-1])
    with pytest.raises(GeometryMismatchError, match='seg'): ortho_views(data, seg=np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match='not a voxel'): ortho_views(data, (0, 0, SHAPE[2]))
    with pytest.raises(ValueError, match='not a voxel'): ortho_views(data, (0, 0))
    with pytest.raises(ValueError, match='unknown plane'): ortho_views(data, planes='transverse')


# --- Viewer

def test_viewer_builds_from_a_subject_and_shows_a_png(brats):
    v = Viewer(brats)                                                   # 'seg' becomes the overlay, not a modality
    assert v.modality.options == ('t1', 't1ce', 't2', 'flair') and v.seg is brats['seg']
    assert v.labels.value and not v.labels.disabled and v.compare.disabled and v.compare.value == 'off'
    assert (v.plane.value, v.slice.max, v.slice.value) == ('axial', 63, 32) and v.point == [48, 48, 32]
    png_of(v)
    assert len(v.fig.axes) == 1 and len(v.fig.axes[0].images) == 2
    assert v.out in v.children


def test_viewer_controls_drive_the_figure(brats):
    v = Viewer(brats, point=(70, 40, 30))
    png0 = png_of(v)

    v.slice.value = 20                                                  # slice: another axial image
    assert v.point == [70, 40, 20] and png_of(v) != png0
    np.testing.assert_array_equal(shown(v.fig), display_slice(brats['t1'].data, 'axial', 20))

    v.modality.value = 'flair'                                          # modality
    np.testing.assert_array_equal(shown(v.fig), display_slice(brats['flair'].data, 'axial', 20))

    v.plane.value = 'sagittal'                                          # plane: the slider follows
    assert (v.slice.max, v.slice.value) == (95, 70)
    np.testing.assert_array_equal(shown(v.fig), display_slice(brats['flair'].data, 'sagittal', 70))
    assert v.fig.axes[0].get_title() == 'flair sagittal 70'

    v.opacity.value = 0.9                                               # opacity of the labels
    alpha = shown(v.fig, layer=1)[..., 3]
    assert alpha.max() == pytest.approx(0.9) and set(np.unique(alpha)) <= {0, 0.9}
    v.labels.value = False                                              # labels off
    assert len(v.fig.axes[0].images) == 1

    v.ortho.value = True                                                # the three planes through the point
    assert [a.get_title() for a in v.fig.axes] == ['flair axial 20', 'flair sagittal 70', 'flair coronal 40']


def test_viewer_keeps_the_point_when_the_slider_range_shrinks(brats):
    v = Viewer(brats, plane='sagittal')
    v.slice.value = 90                                                  # beyond the 64 axial slices
    v.plane.value = 'axial'                                             # the slider clamps while its range changes...
    assert (v.slice.max, v.slice.value) == (63, 32) and v.point == [90, 48, 32]   # ...but the point is kept
    v.plane.value = 'sagittal'
    assert v.slice.value == 90
    np.testing.assert_array_equal(shown(v.fig), display_slice(brats['t1'].data, 'sagittal', 90))


def test_viewer_compares_a_translation_with_its_source(pair):
    src, ideal = pair
    v = Viewer(src, compare=ideal, names=('HCP', 'as BraTS'), plane='coronal')
    assert not v.labels.value and v.labels.disabled                     # nothing to overlay
    assert v.compare.value == 't1' and v.compare.options == ('off', *ideal)   # the same modality, when there is one
    assert [a.get_title() for a in v.fig.axes] == ['HCP t1 coronal 48', 'as BraTS t1 coronal 48']
    np.testing.assert_array_equal(shown(v.fig, 1), display_slice(ideal['t1'].data, 'coronal', 48))
    v.compare.value = 'flair'
    np.testing.assert_array_equal(shown(v.fig, 1), display_slice(ideal['flair'].data, 'coronal', 48))
    v.slice.value = 10                                                  # one slider moves both
    assert [a.get_title()[-10:] for a in v.fig.axes] == ['coronal 10'] * 2
    v.ortho.value = True
    assert len(v.fig.axes) == 6
    v.compare.value = 'off'
    assert len(v.fig.axes) == 3


def test_viewer_refuses_volumes_on_different_grids(brats, pair):
    src, _ = pair
    with pytest.raises(GeometryMismatchError, match='shape'): Viewer(src, compare={'t1': brats['t1']})
    with pytest.raises(GeometryMismatchError, match='seg'): Viewer(src, seg=brats['seg'])
    with pytest.raises(ValueError, match='at least one'): Viewer({'seg': brats['seg']})


def test_viewer_opens_no_pyplot_figures(brats):
    before = plt.get_fignums()
    v = Viewer(brats)
    for i in range(5): v.slice.value = i
    assert plt.get_fignums() == before


def test_viewer_on_plain_arrays(coords):
    data = coords.sum(-1).astype(np.float32)
    v = Viewer({'sum': data, 'x': coords[..., 0].astype(np.float32)}, seg=(coords[..., 0] > 3).astype(np.uint8) * 2)
    assert v.slice.max == SHAPE[2] - 1
    v.modality.value = 'x'
    np.testing.assert_array_equal(shown(v.fig), display_slice(coords[..., 0], 'axial', SHAPE[2] // 2))
    overlay = shown(v.fig, layer=1)
    np.testing.assert_allclose(overlay[0, 0], [*LABEL_COLORS[2], 0.45])  # top-left: the patient's right, x = 5 > 3
