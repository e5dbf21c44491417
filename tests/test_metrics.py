"""`brainkit.metrics` against numbers known without it: the Fréchet distance against closed forms of Gaussians, KID
against a hand-computed unbiased MMD², Dice/HD95 against hand-counted voxels and distances, the BraSyn scale against a
volume whose percentiles are exact. FID's real code path (pytorch-fid's InceptionV3) runs with weights created here:
there is no internet, and the error that says which file to put where is checked, as is the hub cache."""
import dataclasses, os, shutil, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import wasserstein_distance

import brainkit.metrics as M
from brainkit.io import REGION_NAMES
from brainkit.metrics import dice_per_region, dice_score
from brainkit.io import Volume, load_volume, open_dataset, samples_dir
from brainkit.metrics import (FID_WEIGHTS_FILE, FIDError, consistency, fid_input, fid_kid, find_fid_weights,
                              frechet_distance, hd95, inception_features, kid, paired_scores, percentile_clip,
                              real_features, region_values, segmentation_scores, surface_distances,
                              tissue_classes, tissue_distances, volume_slices)
from brainkit.preprocess import brain_mask

pytestmark = pytest.mark.usefixtures('one_torch_thread')   # (conftest.py)

SLICING = dict(plane='axial', size=64, spacing=4.8, stride=4)   # a few small slices per subject
PLACEHOLDER = 'BRAINKIT_TORCHVISION_PLACEHOLDER'


def rotation(d, seed=0):
    "A random orthogonal matrix."
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def brats(sid='BraTS2021_90000', mods=('t1', 't2', 'seg')):
    return {s.id: s for s in open_dataset(samples_dir('brats'))}[sid].load(list(mods))


# ---------------------------------------------------------------------------------------------------------------------
# Fréchet distance and KID

def test_frechet_distance_of_diagonal_gaussians():
    m1, m2 = np.array([0., 1., -2., 3.]), np.array([1., 1., 0., -1.])
    a, b = np.array([1., 4., 0.25, 2.]), np.array([9., 1., 1., 2.])
    expected = ((m1 - m2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()      # 1+0+4+16 + 4+1+0.25+0 = 26.25
    assert expected == pytest.approx(26.25)
    assert frechet_distance((m1, np.diag(a)), (m2, np.diag(b))) == pytest.approx(expected, abs=1e-9)


def test_frechet_distance_identity_against_a_rotated_covariance():
    d, lam = 5, np.array([0.25, 1., 2.25, 4., 9.])
    R = rotation(d, 1)
    s2 = R @ np.diag(lam) @ R.T
    expected = np.trace(np.eye(d) + s2) - 2 * np.sqrt(lam).sum()               # Tr(I + S2) - 2 Tr(S2^1/2)
    assert expected == pytest.approx(5.5)                                     # 5 + 16.5 - 2 * (0.5 + 1 + 1.5 + 2 + 3)
    assert frechet_distance((np.zeros(d), np.eye(d)), (np.zeros(d), s2)) == pytest.approx(5.5, abs=1e-8)


def test_frechet_distance_of_a_mean_shift_is_its_squared_length():
    d = 6
    R = rotation(d, 2)
    s = R @ np.diag(np.linspace(0.5, 3, d)) @ R.T
    shift = np.arange(d) * 0.5
    assert frechet_distance((np.zeros(d), s), (shift, s)) == pytest.approx((shift ** 2).sum(), abs=1e-7)
    assert frechet_distance((shift, s), (shift, s)) == pytest.approx(0, abs=1e-7)


def test_frechet_distance_of_samples_approaches_the_closed_form():
    d, n, rng = 3, 20000, np.random.default_rng(3)
    lam, R = np.array([0.5, 2., 4.]), rotation(3, 4)
    m2 = np.array([1., -1., 0.5])
    x = rng.normal(size=(n, d))                                               # N(0, I)
    y = m2 + (rng.normal(size=(n, d)) * np.sqrt(lam)) @ R.T                    # N(m2, R diag(lam) R^T)
    expected = (m2 ** 2).sum() + d + lam.sum() - 2 * np.sqrt(lam).sum()        # 2.25 + 9.5 - 2*(3.535...) = 4.679
    got = frechet_distance(x, y)
    assert got == pytest.approx(expected, rel=0.03)
    # raw features and their (mean, covariance) give the same number
    stats = lambda f: (f.mean(0), np.cov(f, rowvar=False))
    assert frechet_distance(stats(x), stats(y)) == pytest.approx(got, rel=1e-12)
    assert frechet_distance(x, stats(y)) == pytest.approx(got, rel=1e-12)


def test_frechet_distance_refuses_features_of_different_sizes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match='different sizes'):
        frechet_distance(rng.normal(size=(20, 4)), rng.normal(size=(20, 5)))
    with pytest.raises(ValueError):
        frechet_distance((np.zeros(3), np.eye(3)), (np.zeros(4), np.eye(4)))
    with pytest.raises(ValueError, match='at least 2'):
        frechet_distance(rng.normal(size=(1, 4)), rng.normal(size=(20, 4)))


def mmd2_by_hand(x, y):
    "Unbiased MMD² with k(u, v) = (u.v/d + 1)^3, written out term by term."
    d, m, n = len(x[0]), len(x), len(y)
    k = lambda u, v: (sum(a * b for a, b in zip(u, v)) / d + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_a_hand_computed_mmd():
    x = [[0., 1.], [1., 0.], [1., 1.]]
    y = [[2., 0.], [0., 0.], [1., -1.]]
    # k = (u.v/2 + 1)^3. xx: x0.x1 = 0 -> 1, x0.x2 = x1.x2 = 1 -> 3.375: 2 * 7.75 / 6
    # yy: y0.y1 = y1.y2 = 0 -> 1, y0.y2 = 2 -> 8: 2 * 10 / 6
    # xy: dot products 0, 0, -1 / 2, 0, 1 / 2, 0, 0 -> 1 + 1 + 0.125 + 8 + 1 + 3.375 + 8 + 1 + 1 = 24.5, over 9
    expected = 15.5 / 6 + 20 / 6 - 2 * 24.5 / 9
    assert expected == pytest.approx(17 / 36) and mmd2_by_hand(x, y) == pytest.approx(expected, abs=1e-12)
    mean, std = kid(np.array(x), np.array(y), subsets=7, subset_size=3)
    # each subset is the whole of both sets (in some order): the unbiased MMD² does not depend on the order, and a
    # spread over identical subsets means nothing, so it is NaN rather than a reassuring 0
    assert mean == pytest.approx(17 / 36, abs=1e-12) and np.isnan(std)
    assert not np.isnan(kid(np.array(x), np.array(y + [[3., 3.]]), subsets=7, subset_size=3)[1])   # y's subsets differ


def test_kid_of_one_distribution_is_near_zero_and_of_shifted_ones_positive():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    mean, std = kid(a, b, subsets=40, subset_size=100)
    assert std > 0 and abs(mean) < 3 * std
    mean_s, std_s = kid(a, b + 0.5, subsets=40, subset_size=100)
    assert mean_s > 4 * std_s and mean_s > 20 * abs(mean)


def test_kid_needs_two_vectors_each_side():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match='at least 2'):
        kid(rng.normal(size=(1, 4)), rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match='at least 2'):
        kid(rng.normal(size=(10, 4)), rng.normal(size=(10, 4)), subset_size=1)


# ---------------------------------------------------------------------------------------------------------------------
# what Inception is fed

def test_fid_input_makes_three_identical_channels_in_0_1():
    x = torch.tensor([-1.5, -1., 0., 0.5, 1., 2.]).reshape(1, 1, 2, 3).repeat(2, 1, 1, 1)
    y = fid_input(x)
    assert y.shape == (2, 3, 2, 3) and y.dtype == torch.float32
    expected = torch.tensor([0., 0., 0.5, 0.75, 1., 1.]).reshape(2, 3)        # clamped at -1 and 1, then (x+1)/2
    for c in range(3): assert torch.equal(y[:, c], expected.expand(2, 2, 3))
    assert torch.equal(fid_input(x[:, 0].numpy().astype(np.float64)), y)       # (N, H, W), numpy, float64
    with pytest.raises(ValueError, match='grayscale'):
        fid_input(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError):
        fid_input(torch.zeros(8, 8))


# ---------------------------------------------------------------------------------------------------------------------
# weights: where they are looked for, and what is said when they are not there

@pytest.fixture(scope='session')
def fid_weights(tmp_path_factory) -> Path:
    "Random (calibrated) weights in the FID Inception's layout, made once."
    return M.random_fid_weights(tmp_path_factory.mktemp('fid')/'random_inception.pth', calibrate=2)


@pytest.fixture(scope='session')
def net(fid_weights):
    return M.fid_inception((64, 192), fid_weights, device='cpu')


@pytest.fixture
def hub(tmp_path, monkeypatch):
    "An empty torch hub cache under tmp_path, through TORCH_HOME (and no set_dir in force); no download can happen."
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch_home'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    assert Path(torch.hub.get_dir()) == tmp_path/'torch_home'/'hub'
    return tmp_path/'torch_home'/'hub'


def no_download(monkeypatch):
    def refuse(*a, **k): raise AssertionError(f'a download was attempted: {a}')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)


def test_an_explicit_weights_path_must_exist(tmp_path):
    missing = tmp_path/'nowhere'/'inception.pth'
    with pytest.raises(FIDError) as e: find_fid_weights(missing)
    assert str(missing) in str(e.value) and 'does not exist' in str(e.value)
    with pytest.raises(FIDError, match='does not exist'): M.fid_inception(64, missing)


def test_weights_in_the_hub_cache_are_used_without_a_download(hub, fid_weights, net, monkeypatch):
    no_download(monkeypatch)
    assert find_fid_weights() is None and find_fid_weights('auto') is None
    target = hub/'checkpoints'/FID_WEIGHTS_FILE
    assert M.hub_weights_path() == target
    target.parent.mkdir(parents=True); shutil.copy(fid_weights, target)
    assert find_fid_weights() == target
    net_hub = M.fid_inception(64, device='cpu', download=False)
    assert net_hub.dims == (64,) and not net_hub.training
    assert net_hub.weights_sha256 == net.weights_sha256                      # the file's hash, not a fresh network's
    x = torch.rand(3, 1, 40, 40) * 2 - 1
    assert np.array_equal(inception_features(net_hub, x, progress=False)[64], inception_features(net, x, progress=False)[64])
    # torch.hub.set_dir is honoured too
    other = hub.parent/'elsewhere'
    monkeypatch.setattr(torch.hub, '_hub_dir', str(other))
    assert M.hub_weights_path() == other/'checkpoints'/FID_WEIGHTS_FILE and find_fid_weights() is None


def test_missing_weights_without_download_say_what_to_put_where(hub, monkeypatch):
    no_download(monkeypatch)
    inception, _ = M.import_pytorch_fid()
    with pytest.raises(FIDError) as e: M.fid_inception(64, download=False)
    msg = str(e.value)
    assert FID_WEIGHTS_FILE in msg and str(hub/'checkpoints'/FID_WEIGHTS_FILE) in msg and inception.FID_WEIGHTS_URL in msg
    assert 'weights=' in msg


def test_a_failed_download_is_reported(hub, monkeypatch):
    inception, _ = M.import_pytorch_fid()
    def offline(url, dst, *a, **k): raise OSError(f'<urlopen error [Errno -2] Name or service not known> ({url})')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)       # no internet here: fail at once, as DNS does
    with pytest.raises(FIDError) as e: M.fid_inception(64, download=True)
    msg = str(e.value)
    assert 'could not be downloaded' in msg and 'Name or service not known' in msg
    assert inception.FID_WEIGHTS_URL in msg and str(hub/'checkpoints'/FID_WEIGHTS_FILE) in msg
    assert not (hub/'checkpoints'/FID_WEIGHTS_FILE).exists()


def test_the_real_download_fails_fast_offline(hub):
    "Through pytorch-fid's own download (urllib), where there is no internet: a prompt FIDError, not a hang."
    import socket, time
    try:
        socket.getaddrinfo('github.com', 443)
        pytest.skip('github.com resolves here: this test is for machines without internet')
    except OSError: pass
    old = socket.getdefaulttimeout(); socket.setdefaulttimeout(10)
    try:
        t0 = time.monotonic()
        with pytest.raises(FIDError) as e: M.fid_inception(64, download=True)
    finally: socket.setdefaulttimeout(old)
    assert time.monotonic() - t0 < 30
    assert 'could not be downloaded' in str(e.value) and str(hub/'checkpoints'/FID_WEIGHTS_FILE) in str(e.value)


def test_unreadable_or_foreign_weights_files_are_refused(tmp_path):
    garbage = tmp_path/'garbage.pth'; garbage.write_bytes(b'not a weights file' * 50)
    with pytest.raises(FIDError) as e: M.fid_inception(64, garbage)
    assert str(garbage) in str(e.value) and 'cannot be read' in str(e.value)
    foreign = tmp_path/'foreign.pth'; torch.save({'conv.weight': torch.zeros(3, 3)}, foreign)
    with pytest.raises(FIDError) as e: M.fid_inception(64, foreign)
    assert str(foreign) in str(e.value) and 'does not hold FID Inception weights' in str(e.value)
    with pytest.raises(ValueError, match='64, 192, 768, 2048'): M.fid_inception((64, 100), foreign)


def test_non_reference_weights_are_warned_about(fid_weights, caplog, monkeypatch):
    with caplog.at_level('WARNING', logger='brainkit.metrics'):
        M.fid_inception(64, fid_weights, device='cpu')
    assert any(str(fid_weights) in r.getMessage() and 'not comparable' in r.getMessage() for r in caplog.records)
    # the warning follows the file's hash: a file whose sha256 has the reference's prefix is not warned about
    caplog.clear()
    sha = M._sha256(fid_weights)
    monkeypatch.setattr(M, 'FID_WEIGHTS_FILE', f'pt_inception-2015-12-05-{sha[:8]}.pth')
    with caplog.at_level('WARNING', logger='brainkit.metrics'):
        M.fid_inception(64, fid_weights, device='cpu')
    assert not [r for r in caplog.records if r.levelname == 'WARNING']


def test_the_torchvision_placeholder_is_an_explicit_switch():
    "Without the switch a mismatched torchvision is refused with a message naming it; with it, pytorch-fid imports."
    code = textwrap.dedent(f"""
        import os, sys
        import brainkit.metrics as M
        try: M.import_pytorch_fid(); print('TORCHVISION_OK'); sys.exit(0)      # a matching torchvision: no switch needed
        except M.FIDError as e: print('REFUSED:', e)
        os.environ['{PLACEHOLDER}'] = '1'
        inception, fid_score = M.import_pytorch_fid()
        print('IMPORTED', inception.InceptionV3.__name__, fid_score.calculate_frechet_distance.__name__)""")
    env = {k: v for k, v in os.environ.items() if k != PLACEHOLDER}
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**env, 'OMP_NUM_THREADS': '1'},
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    if 'TORCHVISION_OK' in r.stdout: pytest.skip('torchvision imports with this torch: no placeholder is needed here')
    refused = r.stdout[r.stdout.index('REFUSED'):r.stdout.index('IMPORTED')]      # the problem, then the fix
    assert 'torchvision' in refused and f'{PLACEHOLDER}=1' in refused
    assert 'IMPORTED InceptionV3 calculate_frechet_distance' in r.stdout


# ---------------------------------------------------------------------------------------------------------------------
# the real code path, with the weights made here

@pytest.fixture(scope='module')
def some_slices():
    return volume_slices(brats(mods=('t2',))['t2'], 'axial', size=64, stride=6)


def test_features_are_finite_repeatable_and_independent_of_the_batch(net, some_slices):
    x = some_slices[:8]
    f = inception_features(net, x, batch_size=4, progress=False)
    assert set(f) == {64, 192} and f[64].shape == (8, 64) and f[192].shape == (8, 192)
    assert all(v.dtype == np.float64 and np.isfinite(v).all() and v.std() > 0 for v in f.values())
    again = inception_features(net, x, batch_size=4, progress=False)
    assert all(np.array_equal(f[d], again[d]) for d in f)
    one = inception_features(net, x, batch_size=1, progress=False)
    assert all(np.allclose(f[d], one[d], rtol=1e-4, atol=1e-5 * np.abs(f[d]).max()) for d in f)
    # each slice's features are its own: a slice alone gives its row of the batch
    alone = inception_features(net, x[5:6].numpy(), progress=False)
    assert np.allclose(alone[64][0], f[64][5], rtol=1e-4, atol=1e-5 * np.abs(f[64]).max())
    with pytest.raises(ValueError, match='no slices'): inception_features(net, x[:0], progress=False)


def test_fid_of_a_set_with_itself_is_zero_and_of_other_images_is_not(net, some_slices):
    f = inception_features(net, some_slices, progress=False)
    n = len(some_slices)
    same = fid_kid(f, f, kid_subsets=5)
    assert set(same) == {'fid_64', 'kid_64', 'kid_64_std', 'fid_192', 'kid_192', 'kid_192_std', 'n_fake', 'n_real'}
    assert same['n_fake'] == same['n_real'] == n
    noise = inception_features(net, torch.rand(n, 1, 64, 64) * 2 - 1, progress=False)
    other = fid_kid(noise, f, kid_subsets=5)
    assert other['fid_64'] > 1e-3
    assert abs(same['fid_64']) < 1e-4 * other['fid_64']
    assert other['kid_64'] > 0


def copy_subjects(src: Path, dst: Path, ids):
    for sid in ids: shutil.copytree(src/sid, dst/sid)
    return open_dataset(dst)


@pytest.fixture
def two_subjects(tmp_path):
    return list(copy_subjects(samples_dir('brats'), tmp_path/'brats', ['BraTS2021_90000', 'BraTS2021_90001']))


@pytest.fixture
def counted(monkeypatch):
    "Counts the feature passes `real_features` makes."
    calls = []
    real = M.inception_features
    def counting(net, slices, *a, **k):
        calls.append(len(slices)); return real(net, slices, *a, **k)
    monkeypatch.setattr(M, 'inception_features', counting)
    return calls


def test_real_features_come_from_the_cache_while_nothing_changed(net, two_subjects, counted, tmp_path, monkeypatch):
    cache = tmp_path/'fidcache'
    first = real_features(two_subjects, 't2', net, cache=cache, progress=False, **SLICING)
    assert len(counted) == 1 and len(list(cache.glob('*.npz'))) == 1
    expected = torch.cat([volume_slices(s.load(['t2'])['t2'], **SLICING) for s in two_subjects])
    assert counted[0] == len(expected) == len(first[64]) and first[192].shape == (len(expected), 192)
    assert np.array_equal(first[64], inception_features(net, expected, progress=False)[64])
    again = real_features(two_subjects, 't2', net, cache=cache, progress=False, **SLICING)
    assert len(counted) == 1                                                   # no feature pass
    assert all(np.array_equal(first[d], again[d]) for d in (64, 192))
    # other slicing: computed again (and cached beside)
    real_features(two_subjects, 't2', net, cache=cache, progress=False, **{**SLICING, 'stride': 3})
    assert len(counted) == 2 and len(list(cache.glob('*.npz'))) == 2
    # other weights: computed again
    with monkeypatch.context() as mp:
        mp.setattr(net, 'weights_sha256', '0' * 64)
        real_features(two_subjects, 't2', net, cache=cache, progress=False, **SLICING)
    assert len(counted) == 3
    real_features(two_subjects, 't2', net, cache=cache, progress=False, **SLICING)
    assert len(counted) == 3
    # a touched dataset file: computed again (same content: same features)
    p = two_subjects[1].path('t2'); st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    touched = real_features(two_subjects, 't2', net, cache=cache, progress=False, **SLICING)
    assert len(counted) == 4 and np.array_equal(touched[64], first[64])
    # cache=False: always computed, nothing written
    n_files = len(list(cache.glob('*.npz')))
    real_features(two_subjects, 't2', net, cache=False, progress=False, **SLICING)
    assert len(counted) == 5 and len(list(cache.glob('*.npz'))) == n_files


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty'])
def test_a_damaged_feature_cache_is_recomputed(net, two_subjects, counted, tmp_path, caplog, damage):
    cache = tmp_path/'fidcache'
    first = real_features(two_subjects, 't2', net, cache=cache, progress=False, **SLICING)
    [f] = cache.glob('*.npz')
    raw = f.read_bytes()
    f.write_bytes({'garbage': b'this is not an npz file' * 20, 'truncated': raw[:len(raw) // 2], 'empty': b''}[damage])
    with caplog.at_level('WARNING', logger='brainkit.metrics'):
        again = real_features(two_subjects, 't2', net, cache=cache, progress=False, **SLICING)
    assert len(counted) == 2 and np.array_equal(again[64], first[64])
    assert any(str(f) in r.getMessage() and 'damaged' in r.getMessage() for r in caplog.records)
    real_features(two_subjects, 't2', net, cache=cache, progress=False, **SLICING)   # rewritten: read again
    assert len(counted) == 2


def test_tumour_free_real_features_keep_only_slices_without_tumour(net, two_subjects, counted, tmp_path):
    cache = tmp_path/'fidcache'
    slicing = {**SLICING, 'stride': 2}
    every = real_features(two_subjects, 't2', net, cache=cache, progress=False, **slicing)
    free = real_features(two_subjects, 't2', net, cache=cache, progress=False, tumour_free=True, **slicing)
    assert len(counted) == 2 and 0 < len(free[64]) < len(every[64])
    expected = []
    for s in two_subjects:
        v = s.load(['t2', 'seg'])
        keep = ~(v['seg'].data > 0).reshape(-1, v['seg'].shape[2]).any(0)      # axial slices without a tumour voxel
        assert keep.any() and not keep.all()
        expected.append(volume_slices(v['t2'], keep=keep, **slicing))
    expected = torch.cat(expected)
    assert len(expected) == len(free[64])
    assert np.allclose(free[64], inception_features(net, expected, progress=False)[64], rtol=1e-5, atol=1e-6)
    # the seg file is part of the key: touching it recomputes the tumour-free set only
    p = two_subjects[0].path('seg'); st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    real_features(two_subjects, 't2', net, cache=cache, progress=False, **slicing)
    assert len(counted) == 2
    real_features(two_subjects, 't2', net, cache=cache, progress=False, tumour_free=True, **slicing)
    assert len(counted) == 3


# ---------------------------------------------------------------------------------------------------------------------
# slices for FID

@pytest.fixture(scope='module')
def t2():
    return brats(mods=('t2',))['t2']


def test_volume_slices_are_brainkit_slices_with_brainless_ones_dropped(t2):
    every = volume_slices(t2, 'axial', min_brain=0)
    assert every.shape == (t2.shape[2], 1, 96, 96) and every.dtype == torch.float32
    assert every.min() >= -1 and every.max() <= 1 and every.max() == 1
    brain = brain_mask(t2)
    b = torch.from_numpy(np.moveaxis(brain, 2, 0))[:, None]
    assert (every[~b] == -1).all() and (every[b] > -1).float().mean() > 0.99   # background -1, brain above it
    area = brain.reshape(-1, brain.shape[2]).sum(0)
    ok = area >= 0.1 * area.max()
    assert 0 < ok.sum() < len(ok)                                            # some slices hold (almost) no brain
    kept = volume_slices(t2, 'axial')
    assert torch.equal(kept, every[torch.from_numpy(ok)])
    assert torch.equal(volume_slices(t2, 'axial', stride=3), kept[::3])
    flags = np.arange(t2.shape[2]) % 2 == 0
    assert torch.equal(volume_slices(t2, 'axial', keep=flags), every[torch.from_numpy(ok & flags)])
    assert torch.equal(volume_slices(t2, 'axial', keep=flags, stride=2), every[torch.from_numpy(ok & flags)][::2])


def test_volume_slices_crop_resample_and_take_other_planes(t2):
    small = volume_slices(t2, 'axial', size=64, spacing=4.8)
    assert small.shape[1:] == (1, 64, 64) and small.min() >= -1 and small.max() <= 1
    assert len(small) < len(volume_slices(t2, 'axial'))                      # half as many slices at 4.8 mm
    assert torch.equal(volume_slices(t2, 'axial', size=64, spacing=4.8, keep=np.ones(t2.shape[2], bool)), small)
    assert len(volume_slices(t2, 'axial', size=64, spacing=4.8, keep=np.zeros(t2.shape[2], bool))) == 0
    cor = volume_slices(t2, 'coronal', size=64)
    assert cor.shape[1:] == (1, 64, 64) and (cor == -1).any()


# ---------------------------------------------------------------------------------------------------------------------
# paired metrics

def test_percentile_clip_is_exact():
    x = np.arange(201, dtype=np.float32).reshape(3, 67)                      # 0..200: percentiles 0.5, 99.5 are 1, 199
    y = percentile_clip(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, (np.clip(x, 1, 199) - 1) / 198, atol=1e-7)
    z = np.arange(-100, 101, dtype=np.float64)                               # percentiles -99, 99: the low one raised to 0
    np.testing.assert_allclose(percentile_clip(z), np.clip(z, 0, 99) / 99, atol=1e-7)
    np.testing.assert_allclose(percentile_clip(z, strictly_positive=False), (np.clip(z, -99, 99) + 99) / 198, atol=1e-7)
    np.testing.assert_allclose(percentile_clip(x, 10, 90), (np.clip(x, 20, 180) - 20) / 160, atol=1e-7)
    with pytest.raises(ValueError, match='empty'): percentile_clip(np.full((4, 4, 4), 5.0))


def brain_volume(rng, shape=(40, 40, 40)):
    "A volume with exact 0.5/99.5 percentiles 0 and 1: zeros, a slab of ones outside the brain, brain values in (0.1, 0.8)."
    real = np.zeros(shape, np.float32)
    real[:2] = 1.0                                                           # 5% ones, all outside the brain
    brain = np.zeros(shape, bool); brain[10:30, 10:30, 10:30] = True         # 12.5% brain, the rest (82.5%) zeros
    real[brain] = ndimage.gaussian_filter(rng.uniform(0.1, 0.8, shape), 1.5)[brain]
    assert np.percentile(real, [0.5, 99.5]).tolist() == [0.0, 1.0]
    return real, brain


def test_paired_scores_of_identical_volumes():
    real, brain = brain_volume(np.random.default_rng(0))
    s = paired_scores(real, real, brain)
    assert s['mae'] == 0 and s['ssim'] == pytest.approx(1, abs=1e-6) and s['psnr'] >= 100
    assert set(s) == {'psnr', 'mae', 'ssim'}


def test_paired_scores_exact_mae_and_psnr():
    real, brain = brain_volume(np.random.default_rng(1))
    fake = real.copy(); fake[brain] += 0.1                                   # its percentiles stay 0 and 1
    s = paired_scores(Volume(fake, np.eye(4)), Volume(real, np.eye(4)), brain)
    assert s['mae'] == pytest.approx(0.1, abs=1e-6)
    assert s['psnr'] == pytest.approx(20.0, abs=1e-4)                         # 10 log10(1 / 0.1^2)
    assert 0 < s['ssim'] < 1


def test_brasyn_ssim_inside_and_outside_the_tumour():
    rng = np.random.default_rng(2)
    real, brain = brain_volume(rng)
    tumour = np.zeros_like(brain); tumour[16:24, 16:24, 16:24] = True
    fake = real.copy(); fake[tumour] = rng.uniform(0.1, 0.8, int(tumour.sum()))   # only the tumour is damaged
    s = paired_scores(fake, real, brain, tumour)
    assert set(s) == {'psnr', 'mae', 'ssim', 'ssim_tumour', 'ssim_healthy'}
    assert s['ssim_tumour'] < 0.2 and s['ssim_healthy'] > 0.8 and s['ssim_healthy'] - s['ssim_tumour'] > 0.6
    assert s['ssim_tumour'] < s['ssim'] < s['ssim_healthy']
    same = paired_scores(real, real, brain, tumour)
    assert same['ssim_tumour'] == pytest.approx(1, abs=1e-6) and same['ssim_healthy'] == pytest.approx(1, abs=1e-6)


def test_paired_scores_refuse_what_cannot_be_scored():
    real, brain = brain_volume(np.random.default_rng(3))
    with pytest.raises(ValueError, match='different grids'): paired_scores(real[:-1], real, brain)
    with pytest.raises(ValueError, match='empty'): paired_scores(real, real, np.zeros_like(brain))
    flat = np.full(real.shape, 3.0, np.float32)
    with pytest.raises(ValueError, match='percentile range is empty'): paired_scores(flat, real, brain)


# ---------------------------------------------------------------------------------------------------------------------
# tissue distributions

def test_tissue_distances_are_1d_wasserstein_of_pooled_values():
    rng = np.random.default_rng(4)
    a1, a2, b, c = rng.normal(0.4, 0.1, 300), rng.normal(0.5, 0.1, 200), rng.uniform(0, 1, 400), rng.uniform(0, 1, 50)
    w = tissue_distances({'GM': [a1, a2], 'CSF': c}, {'GM': b, 'WM': c})
    assert set(w) == {'GM'}                                                  # only the regions both sides have
    assert w['GM'] == pytest.approx(wasserstein_distance(np.concatenate([a1, a2]), b), rel=1e-12)
    u = rng.uniform(0, 0.5, 1000)
    assert tissue_distances({'WM': u + 0.1}, {'WM': (u[:400], u[400:])})['WM'] == pytest.approx(0.1, abs=1e-9)


@pytest.fixture(scope='module')
def subject():
    sid = 'BraTS2021_90002'
    v = brats(sid)
    v['tissues'] = load_volume(samples_dir('tissues')/f'{sid}_tissues.nii.gz', label=True)
    return v


def test_tissue_classes_agree_with_the_oracle_tissues(subject):
    t1, truth, tumour = subject['t1'], subject['tissues'].data, subject['seg'].data > 0
    lab = tissue_classes(t1, exclude=tumour)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1, 2, 3}
    assert (lab[tumour] == 0).all() and (lab[~brain_mask(t1)] == 0).all()
    known = truth > 0
    assert (lab[known] == truth[known]).mean() > 0.6
    means = [t1.data[lab == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]                                    # CSF < GM < WM on a T1
    assert (tissue_classes(t1)[tumour] > 0).any()                            # without `exclude` the tumour is labelled


def test_region_values_are_on_the_brasyn_scale(subject):
    t2 = subject['t2']
    regions = {'CSF': subject['tissues'].data == 1, 'tumour': subject['seg'].data > 0,
               'none': np.zeros(t2.shape, bool)}
    vals = region_values(t2, regions)
    assert set(vals) == {'CSF', 'tumour'}                                    # empty regions are left out
    scaled = percentile_clip(t2.data)
    for n, v in vals.items():
        assert np.array_equal(v, scaled[regions[n]]) and v.min() >= 0 and v.max() <= 1


# ---------------------------------------------------------------------------------------------------------------------
# 3D consistency

def oracle(sid='000001', mod='t2'):
    "An HCP-like brain's true BraTS-contrast volume, and its brain."
    return (load_volume(samples_dir('oracle')/sid/f'{sid}_{mod}.nii.gz'),
            brain_mask(load_volume(samples_dir('oracle')/sid/f'{sid}_t1.nii.gz')))


def test_difference_energies_by_hand_and_the_excess_of_the_truth():
    ramp = np.broadcast_to(np.arange(12.)[None, None], (10, 10, 12))           # slope 1 along z, flat across
    assert M.difference_energies(ramp, np.ones(ramp.shape, bool)) == pytest.approx((0, 0, 1), abs=1e-12)
    rng = np.random.default_rng(5)                                           # a random volume and mask, against a plain loop
    v, m = rng.normal(size=(5, 6, 7)) ** 3, rng.random((5, 6, 7)) < 0.6
    loop = [np.mean([(v[tuple(np.add(i, step))] - v[i]) ** 2 for i in np.ndindex(v.shape)
                     if all(np.add(i, step) < v.shape) and m[i] and m[tuple(np.add(i, step))]]) for step in np.eye(3, dtype=int)]
    assert M.difference_energies(v, m) == pytest.approx(loop, rel=1e-12)
    assert M.difference_energies(v, m) != pytest.approx(M.difference_energies(v, np.ones(v.shape, bool)), rel=1e-3)
    mask = np.zeros(ramp.shape, bool); mask[2:5, 2:5, 3:6] = True; mask[8, 8, 9] = True   # a lone voxel has no pair
    assert M.difference_energies(ramp * 3, mask) == pytest.approx((0, 0, 9), abs=1e-12)
    with pytest.raises(ValueError, match='empty'): M.difference_energies(ramp, np.zeros(ramp.shape, bool))
    with pytest.raises(ValueError, match='no two neighbouring'): M.difference_energies(ramp, mask & (np.arange(12) == 4))
    with pytest.raises(ValueError, match='no ratio'): M.through_plane_ratio(np.ones((6, 6, 6)), 'axial', np.ones((6, 6, 6), bool))
    o, brain = oracle()
    c = consistency(2.5 * o.data - 40, o, brain)                              # any affine intensity map: exactly 1
    assert set(c) == {'axial', 'coronal', 'sagittal'}
    for plane, r in c.items():
        assert r['excess'] == pytest.approx(1, abs=1e-12)
        assert r['reference_ratio'] == pytest.approx(M.through_plane_ratio(o, plane, brain))
    assert consistency(o, o)['axial']['excess'] == 1                          # the default mask: the reference's brain


ARTEFACT_STRENGTHS = {'gain': [0, .01, .02, .04, .08, .16], 'offset': [0, .02, .04, .08, .16, .32],
                      'shift': [0, .1, .2, .4, .8, 1.6], 'blur': [0, .25, .5, 1, 1.5, 2]}


@pytest.mark.parametrize('sid,mod', [('000002', 't2'), ('000005', 'flair'), ('000008', 't1ce')])
def test_the_score_rises_with_every_slice_wise_artefact_and_stays_flat_under_the_rest(sid, mod):
    """Issue 16's validation (chapter 12 plots it): on the truth, the excess along the stacking axis rises at every
    step of every artefact's strength, for every pattern of per-slice draws, and stays at 1 under a global gain and
    smooth 3D noise. Measured margins (all 8 oracle t2 volumes, chapter 12): a first step raises it by 0.2-2.5 %;
    smooth noise moves it by at most 1 %, white noise of 0.2 brain sd by at most 4 %."""
    o, brain = oracle(sid, mod)
    for axis in ('axial', 'coronal', 'sagittal'):
        ref = M.through_plane_ratio(o, axis, brain)
        for kind, strengths in ARTEFACT_STRENGTHS.items():
            for pattern in (0, 1):
                r = [M.through_plane_ratio(M.slice_artefact(o, kind, s, axis, brain, pattern), axis, brain) / ref for s in strengths]
                assert r[0] == pytest.approx(1, abs=1e-9) and np.all(np.diff(r) > 0), (axis, kind, pattern, r)
        for s in (-.5, 1): assert M.through_plane_ratio(M.slice_artefact(o, 'global gain', s, axis, brain), axis, brain) == pytest.approx(ref, rel=1e-9)
        for s in (.1, .2, .4):
            assert abs(M.through_plane_ratio(M.slice_artefact(o, 'smooth 3D noise', s, axis, brain), axis, brain) / ref - 1) < 0.03
        assert abs(M.through_plane_ratio(M.slice_artefact(o, 'white noise', .2, axis, brain), axis, brain) / ref - 1) < 0.1
        alike = [M.through_plane_ratio(M.slice_artefact(o, 'in-plane blur', s, axis, brain), axis, brain) / ref for s in (.5, 1, 2)]
        assert np.all(np.diff(alike) > 0) and alike[0] > 1       # a uniform in-plane blur raises it too: the score compares detail
    # the stripes of one stacking axis show along it: above 1 there, below 1 in the two other planes (their in-plane axes)
    c = consistency(M.slice_artefact(o, 'gain', .08, 'axial', brain), o, brain)
    assert c['axial']['excess'] > 1.2 and c['coronal']['excess'] < 1 and c['sagittal']['excess'] < 1
    with pytest.raises(ValueError, match='unknown artefact'): M.slice_artefact(o, 'stripes', 1)


def test_plane_scores_see_slice_wise_errors_outside_their_plane():
    o, brain = oracle()
    assert M.plane_scores(o, o, brain, 'sagittal') == {'ssim': 1.0, 'psnr': 120.0, 'mae': 0.0}
    x = o.with_data(M.slice_artefact(o, 'gain', .08, 'axial', brain).astype(np.float32))
    ps = {p: M.plane_scores(x, o, brain, p) for p in ('axial', 'coronal', 'sagittal')}
    for k in ('ssim', 'psnr'): assert ps['axial'][k] > max(ps['coronal'][k], ps['sagittal'][k]), (k, ps)
    for p in ps: assert ps[p]['mae'] == pytest.approx(paired_scores(x, o, brain)['mae'], rel=1e-4)   # area-weighted: the volume's
    aff = o.affine.copy(); aff[0, 3] += 5                                     # the same shape, moved 5 mm: another grid
    shifted = dataclasses.replace(o, affine=aff)
    with pytest.raises(ValueError, match='different grids'): M.plane_scores(x, shifted, brain)
    with pytest.raises(ValueError, match='different grids'): consistency(x, shifted, brain)
    with pytest.raises(ValueError, match='different grids'): M.plane_scores(o.data[:-1], o.data, brain[:-1])


def test_a_3d_transform_of_the_truth_scores_better_than_the_same_transform_stacked_with_slice_noise():
    o, brain = oracle('000003')
    truth = o.data.astype(np.float64)
    rng = np.random.default_rng(3)
    blurred = ndimage.gaussian_filter(truth, 1.0)                            # 3D-consistent, like a smooth translation
    # per axial slice: a smooth in-plane error field of a few percent, independent from slice to slice
    scale = truth[brain].mean()
    err = np.stack([ndimage.gaussian_filter(rng.normal(size=truth.shape[:2]), 6) for _ in range(truth.shape[2])], -1)
    stacked = blurred + 0.03 * scale * err / err.std()
    c3d, c2d = (consistency(x, o, brain)['axial']['excess'] for x in (blurred, stacked))
    assert c2d > c3d and c2d > 1.1
    assert abs(np.log(c3d)) < 0.1          # a 3D blur is no stripe (1.05: anatomy's spectrum is not the same along every axis)


# ---------------------------------------------------------------------------------------------------------------------
# Dice and HD95

def point(shape, *idx):
    m = np.zeros(shape, bool); m[idx] = True; return m


def test_hd95_of_hand_computed_cases():
    assert hd95(point((5, 5, 1), 0, 0, 0), point((5, 5, 1), 3, 4, 0)) == pytest.approx(5.0)          # 3-4-5
    a, b = np.zeros(10, bool), np.zeros(10, bool)
    a[1:6], b[3:8] = True, True                                              # segments [1, 5] and [3, 7]: ends 2 apart
    assert hd95(a, b) == pytest.approx(2.0)
    # anisotropic voxels: 2 mm along x, 1 mm along y and z
    assert hd95(point((4, 4, 4), 1, 1, 1), point((4, 4, 4), 2, 1, 1), (2.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95(point((4, 4, 4), 1, 1, 1), point((4, 4, 4), 1, 2, 1), (2.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert hd95(point((4, 4, 4), 1, 1, 1), point((4, 4, 4), 1, 1, 3), 0.5) == pytest.approx(1.0)
    cube = np.zeros((5, 5, 5), bool); cube[1:4, 1:4, 1:4] = True
    assert hd95(cube, cube) == 0 and (surface_distances(cube, cube) == 0).all() and len(surface_distances(cube, cube)) == 26


def test_hd95_interpolates_the_95th_percentile():
    # two lines of voxels (every voxel is a surface voxel): a = z 0..9, b = z 0..4
    a, b = np.zeros((3, 3, 12), bool), np.zeros((3, 3, 12), bool)
    a[1, 1, 0:10], b[1, 1, 0:5] = True, True
    pooled = [0] * 5 + [1, 2, 3, 4, 5] + [0] * 5                             # a -> b, then b -> a
    assert np.percentile(pooled, 95) == pytest.approx(4.3)                    # 14 * 0.95 = 13.3: 4 + 0.3 * (5 - 4)
    assert sorted(surface_distances(a, b)) == [0] * 5 + [1, 2, 3, 4, 5]
    assert hd95(a, b) == pytest.approx(4.3) and hd95(b, a) == pytest.approx(4.3)
    assert hd95(a, b, (1, 1, 2.5)) == pytest.approx(4.3 * 2.5)


def test_hd95_of_empty_masks():
    e = np.zeros((4, 5, 6), bool)
    assert hd95(e, e) == 0
    one = point((4, 5, 6), 1, 1, 1)
    assert hd95(one, e) == pytest.approx(np.sqrt(16 + 25 + 36)) == hd95(e, one)
    assert hd95(one, e, (2.0, 1.0, 1.0)) == pytest.approx(np.sqrt(64 + 25 + 36))
    assert hd95(one, e, empty=373.13) == 373.13
    with pytest.raises(ValueError, match='different grids'): hd95(one, np.zeros((4, 5, 7), bool))


def test_segmentation_scores_of_a_hand_counted_label_map():
    # one line of 20 voxels along z, 2 mm apart
    truth, pred = np.zeros((1, 1, 20), np.uint8), np.zeros((1, 1, 20), np.uint8)
    truth[0, 0, 2:10], truth[0, 0, 10:14] = 2, 1                             # WT z 2..13 (12), TC z 10..13 (4), no ET
    pred[0, 0, 4:12], pred[0, 0, 12:16] = 2, 1                               # WT z 4..15 (12), TC z 12..15 (4), no ET
    vol = Volume(truth, np.diag([1., 1., 2., 1.]))
    s = segmentation_scores(pred, vol)                                       # spacing from the Volume
    assert set(s) == {'WT', 'TC', 'ET'} and all(set(r) == {'dice', 'hd95'} for r in s.values())
    assert s['WT']['dice'] == pytest.approx(2 * 10 / (12 + 12))               # |P n T| = z 4..13
    assert s['TC']['dice'] == pytest.approx(2 * 2 / (4 + 4))                  # z 12..13
    assert s['ET'] == {'dice': 1.0, 'hd95': 0.0}                             # absent in both
    wt = [0] * 10 + [1, 2] + [2, 1] + [0] * 10                               # pred -> truth: z14, z15; truth -> pred: z2, z3
    assert s['WT']['hd95'] == pytest.approx(2.0 * np.percentile(wt, 95))      # 2 mm * 1.85
    tc = [0, 0, 1, 2] + [2, 1, 0, 0]                                          # pred z12..15 -> truth; truth z10..13 -> pred
    assert s['TC']['hd95'] == pytest.approx(2.0 * np.percentile(tc, 95))
    assert segmentation_scores(pred, truth)['WT']['hd95'] == pytest.approx(np.percentile(wt, 95))   # an array: 1 mm
    assert segmentation_scores(pred, vol, spacing=0.5)['WT']['hd95'] == pytest.approx(0.5 * np.percentile(wt, 95))
    pred[0, 0, 18] = 4                                                       # ET predicted where the truth has none
    s = segmentation_scores(pred, vol)
    assert s['ET']['dice'] == 0 and s['ET']['hd95'] == pytest.approx(np.linalg.norm([1, 1, 40]))
    assert s['TC']['dice'] == pytest.approx(2 * 2 / (5 + 4))                   # ET is part of TC (and of WT)


def test_masks_may_be_label_volumes_and_wrong_inputs_get_clear_errors():
    "Review findings: a mask given as a Volume must be its voxels (not one truthy object); wrong grids and labels are named."
    v = brats('BraTS2021_90004', ('t1', 't2', 'seg'))
    brain = brain_mask(v['t1'])
    as_array = paired_scores(v['t1'], v['t2'], brain, v['seg'].data > 0)
    as_volume = paired_scores(v['t1'], v['t2'], v['t1'].with_data(brain.astype(np.uint8)), v['seg'])
    assert as_volume == pytest.approx(as_array)
    with pytest.raises(ValueError, match='same grid'): paired_scores(v['t1'], v['t2'], brain[:-1])
    with pytest.raises(ValueError, match='different grids'): consistency(v['t1'].data[:-1], v['t2'].data)
    with pytest.raises(ValueError, match=r'label\(s\) \[3\].*label_map'):
        segmentation_scores(np.where(v['seg'].data == 4, 3, v['seg'].data), v['seg'])
    assert segmentation_scores(v['seg'], v['seg'])['WT']['hd95'] == 0.0                 # Volumes accepted, spacing from them
    with pytest.raises(ValueError, match="region 'GM' has no translated voxels"):
        tissue_distances({'GM': np.array([])}, {'GM': np.ones(3)})
    with pytest.raises(ValueError, match='ints'): M.fid_inception('64')


# ---------------------------------------------------------------- Dice metric (BraTS rule), moved here from test_losses with the metric

def test_dice_score_hand_computed():
    pred = torch.tensor([[[1, 1, 0, 0], [1, 1, 1, 0]]])                  # (N=1, C=2, 4)
    truth = torch.tensor([[[1, 0, 1, 0], [1, 1, 1, 1]]])
    torch.testing.assert_close(dice_score(pred, truth), torch.tensor([[2 * 1 / 4, 2 * 3 / 7]]))
    p3 = torch.zeros(2, 1, 3, 3, 3, dtype=torch.bool); t3 = torch.zeros_like(p3)
    p3[0, 0, :2] = True; t3[0, 0, 1:] = True                             # 18 and 18 voxels, 9 shared
    p3[1, 0, 0, 0, 0] = True; t3[1, 0, 0, 0, 0] = True
    torch.testing.assert_close(dice_score(p3, t3), torch.tensor([[0.5], [1.0]]))


def test_dice_score_empty_masks_follow_the_brats_rule():
    z = torch.zeros(1, 1, 4, 4)
    one = z.clone(); one[0, 0, 2, 2] = 1
    assert dice_score(z, z).item() == 1.0                                # empty prediction on empty truth
    assert dice_score(one, z).item() == 0.0                              # any false positive on empty truth
    assert dice_score(z, one).item() == 0.0                              # missed a non-empty truth


def test_dice_score_refuses_bad_shapes():
    with pytest.raises(ValueError, match='shape'): dice_score(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError): dice_score(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match='N, C'): dice_score(torch.zeros(3, 4), torch.zeros(3, 4))


def test_dice_per_region_names_each_region():
    pred = torch.zeros(3, 4, 4, 4, dtype=torch.uint8); truth = torch.zeros_like(pred)
    truth[0, :2] = 1; pred[0, 1:3] = 1                                  # WT: 32 and 32 voxels, 16 shared
    truth[1, 0, 0, 0] = 1                                               # TC: truth present, nothing predicted
    # ET: empty in both
    d = dice_per_region(pred, truth)
    assert d == {'WT': 0.5, 'TC': 0.0, 'ET': 1.0} and tuple(d) == REGION_NAMES
    assert all(isinstance(v, float) for v in d.values())
    pred[2, 3, 3, 3] = 1                                                # a false positive on an empty ET
    assert dice_per_region(pred, truth)['ET'] == 0.0
    assert dice_per_region(pred[:1], truth[:1], names=('brain',)) == {'brain': 0.5}


def test_dice_per_region_refuses_bad_input():
    with pytest.raises(ValueError, match='region names'): dice_per_region(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match='shape'): dice_per_region(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))



