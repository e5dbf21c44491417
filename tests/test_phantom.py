"brainkit.phantom: the sample datasets (manifest, regeneration, contents) and the MR physics behind them."
import gzip
import hashlib
import itertools
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import brainkit.phantom as ph
from brainkit.io import load_volume, open_dataset, samples_dir
from brainkit.phantom import (CLASSES, SITES, TISSUES, TUMOUR_TYPES, default_template, generate_samples,
                              inversion_recovery, make_anatomy, null_ti, spin_echo, t1_after_contrast, tissue_signals,
                              verify_samples)


@pytest.fixture(scope='module', autouse=True)
def samples():
    "This module tests the samples themselves: the whole bundled folder (the other modules see a subset, conftest.py)."
    from conftest import REPO_SAMPLES
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('BRAINKIT_SAMPLES', str(REPO_SAMPLES))
        assert samples_dir() == REPO_SAMPLES
        yield REPO_SAMPLES


@pytest.fixture(scope='module')
def manifest(samples):
    return json.loads((samples/'MANIFEST.json').read_text())


# ---------------------------------------------------------------- manifest and verification

def test_committed_samples_verify(samples):
    assert verify_samples(samples) == []


def test_verify_reports_changed_and_missing_files(tmp_path, samples, manifest):
    sub = 'BraTS2021/BraTS2021_90001'
    rels = [f'{sub}/BraTS2021_90001_{m}.nii.gz' for m in ('t1', 'flair', 'seg')]
    root = tmp_path/'copy'
    for rel in rels:
        (root/rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(samples/rel, root/rel)
    (root/'MANIFEST.json').write_text(json.dumps({'seed': manifest['seed'], 'files': {r: manifest['files'][r] for r in rels}}))
    assert verify_samples(root) == []                          # an intact copy verifies

    t1 = root/rels[0]
    data = bytearray(t1.read_bytes()); data[len(data) // 2] ^= 0x01
    t1.write_bytes(bytes(data))
    (root/rels[1]).unlink()
    probs = verify_samples(root)
    assert len(probs) == 2
    changed = [p for p in probs if 'BraTS2021_90001_t1.nii.gz' in p]
    missing = [p for p in probs if 'BraTS2021_90001_flair.nii.gz' in p]
    assert len(changed) == 1 and 'differ' in changed[0]
    assert len(missing) == 1 and 'missing' in missing[0]


def test_verify_without_manifest(tmp_path):
    probs = verify_samples(tmp_path)
    assert len(probs) == 1 and 'MANIFEST.json' in probs[0]
    (tmp_path/'MANIFEST.json').write_text('{not json')
    probs = verify_samples(tmp_path)
    assert len(probs) == 1 and 'MANIFEST.json' in probs[0]


def test_manifest_hashes_match_files_on_disk(samples, manifest):
    "The manifest lists every file of the folder (but itself), and nothing else."
    on_disk = sorted(str(p.relative_to(samples)) for p in samples.rglob('*') if p.is_file() and p.name != 'MANIFEST.json')
    assert on_disk == sorted(manifest['files'])
    readme = (samples/'README.md').read_bytes()
    assert hashlib.sha256(readme).hexdigest() == manifest['files']['README.md']


@pytest.mark.slow
def test_regeneration_is_byte_identical(tmp_path, samples, manifest):
    """Subjects regenerate byte for byte, and a folder is written whole. Each subject depends only on the seed, its site
    and its index (`subject_rng`), so the first, a middle and the last subject of every site stand for the rest: a
    quarter of the time of regenerating all 44 (73 s on 2 cores; `brainkit samples generate` does that)."""
    seed, counts = manifest['seed'], manifest['counts']
    jobs = [(s, i, seed) for s, n in counts.items() for i in sorted({0, n // 2, n - 1})]
    for (site, i, _), files in zip(jobs, ph._rendered(jobs, workers=2)):
        assert files and all(rel in manifest['files'] for rel in files), (site, i)
        for rel, data in files.items(): assert ph._sha(data) == manifest['files'][rel], rel    # every file of it (sha256)
    assert ph._readme(seed, counts).encode() == (samples/'README.md').read_bytes()
    out = tmp_path/'s'
    small = generate_samples(out, seed=seed, counts={'brats': 1, 'hcp': 1, 'ucsf': 1}, workers=1, progress=False)
    assert {rel: sha for rel, sha in small['files'].items() if rel != 'README.md'} == \
           {rel: manifest['files'][rel] for rel in small['files'] if rel != 'README.md'}   # the folder's first subjects, unchanged
    assert json.loads((out/'MANIFEST.json').read_text())['files'] == small['files']
    assert verify_samples(out) == []
    for rel in ('BraTS2021/BraTS2021_90000/BraTS2021_90000_seg.nii.gz', 'HCP/000001/T1w/T1w_acpc_dc_restore_brain.nii.gz'):
        assert (out/rel).read_bytes() == (samples/rel).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ['s']      # no temporary or old folders left beside it


# ---------------------------------------------------------------- what data_samples holds

def test_samples_size_and_contents(samples):
    total = sum(p.stat().st_size for p in samples.rglob('*') if p.is_file())
    assert total <= 50 * 1024 * 1024                           # the size budget of data_samples/ in git (issue 14)

    brats = [d for d in (samples/'BraTS2021').iterdir() if d.is_dir()]
    assert len(brats) >= 8
    for d in brats:
        assert {f'{d.name}_{m}.nii.gz' for m in ('t1', 't1ce', 't2', 'flair', 'seg')} <= {p.name for p in d.iterdir()}
    hcp = sorted(d.name for d in (samples/'HCP').iterdir() if d.is_dir())
    assert len(hcp) >= 8
    for sid in hcp:
        for f in ('T1w_acpc_dc_restore_brain.nii.gz', 'T2w_acpc_dc_restore_brain.nii.gz'):
            assert (samples/'HCP'/sid/'T1w'/f).is_file()
    ucsf = [d for d in (samples/'UCSF-PDGM').iterdir() if d.is_dir()]
    assert len(ucsf) >= 6
    oracle = samples/'oracle'/'HCP_in_BraTS_contrast'
    assert sorted(d.name for d in oracle.iterdir() if d.is_dir()) == hcp   # one oracle subject per HCP subject
    for sid in hcp:
        assert {p.name for p in (oracle/sid).iterdir()} == {f'{sid}_{m}.nii.gz' for m in ('t1', 't1ce', 't2', 'flair')}
        assert (samples/'oracle'/'tissues'/f'{sid}_tissues.nii.gz').is_file()


def _all_nifti(samples):
    return sorted(p for p in samples.rglob('*.nii.gz'))


def test_every_header_is_marked_synthetic_and_oriented_per_site(samples):
    expected = {'BraTS2021': ('L', 'P', 'S'), 'UCSF-PDGM': ('L', 'P', 'S'), 'HCP': ('L', 'A', 'S')}
    seen = set()
    for p in _all_nifti(samples):
        hdr = nib.load(p).header                             # header only: voxels are not read
        assert b'brainkit synthetic' in hdr['descrip'].tobytes(), p
        top = p.relative_to(samples).parts[0]
        if top in expected:
            assert nib.aff2axcodes(hdr.get_best_affine()) == expected[top], p
            seen.add(top)
    assert seen == set(expected)
    hcp_t1 = samples/'HCP'/'000001'/'T1w'/'T1w_acpc_dc_restore_brain.nii.gz'
    oracle_t1 = samples/'oracle'/'HCP_in_BraTS_contrast'/'000001'/'000001_t1.nii.gz'
    assert np.allclose(nib.load(oracle_t1).affine, nib.load(hcp_t1).affine)  # the oracle lives on the HCP grid


# ---------------------------------------------------------------- tumour kinds in the committed files

def test_sample_tumours_match_their_kind(samples):
    ds = open_dataset(samples_dir('brats'))
    for i, s in enumerate(ds):
        labels = set(np.unique(s['seg'].data).tolist())
        kind = TUMOUR_TYPES[i % len(TUMOUR_TYPES)]
        assert labels <= {0, 1, 2, 4} and 2 in labels, s.id
        if kind == 'necrotic': assert {1, 2, 4} <= labels, (s.id, labels)
        if kind == 'non-enhancing': assert 4 not in labels, (s.id, labels)
    for s in open_dataset(samples_dir('hcp')):               # HCP-like subjects are healthy: no seg at all
        assert 'seg' not in s


# ---------------------------------------------------------------- make_anatomy

@pytest.fixture(scope='module')
def tpl():
    return default_template()


@pytest.fixture(scope='module')
def small_site():
    "The HCP-like site on a coarse grid, so anatomies are cheap."
    return replace(SITES['hcp'], spacing=5.0, shape=(32, 38, 32))


def test_make_anatomy_is_deterministic(tpl, small_site):
    a = make_anatomy(np.random.default_rng(42), small_site, tpl)
    b = make_anatomy(np.random.default_rng(42), small_site, tpl)
    c = make_anatomy(np.random.default_rng(43), small_site, tpl)
    assert np.array_equal(a.fractions, b.fractions)
    assert np.array_equal(a.texture, b.texture) and np.array_equal(a.seg, b.seg)
    assert not np.allclose(a.fractions, c.fractions, atol=1e-3)
    assert (a.tissues() != c.tissues()).mean() > 0.01
    for an in (a, c):
        assert an.fractions.shape == (len(CLASSES), *small_site.shape)
        assert an.fractions.min() >= 0 and an.fractions.max() <= 1 + 1e-9
        assert an.fractions.sum(0).max() <= 1 + 1e-9
        assert not an.seg.any()                                # healthy
        assert 0.05 < an.mask.mean() < 0.8                     # a brain, not an empty or full box


@pytest.fixture(scope='module')
def tumours(tpl):
    site = SITES['brats']
    return {k: make_anatomy(np.random.default_rng(5), site, tpl, tumour=k) for k in ('non-enhancing', 'necrotic')}


def test_non_enhancing_tumour_has_no_label_4(tumours):
    an = tumours['non-enhancing']
    labels = set(np.unique(an.seg).tolist())
    assert 4 not in labels and {1, 2} <= labels
    assert an.fractions[CLASSES.index('enhancing')].max() == 0
    assert an.fractions.min() >= 0 and an.fractions.sum(0).max() <= 1 + 1e-9


def test_necrotic_tumour_has_labels_1_2_4(tumours):
    an = tumours['necrotic']
    assert {1, 2, 4} <= set(np.unique(an.seg).tolist()) <= {0, 1, 2, 4}
    assert an.fractions.min() >= 0 and an.fractions.sum(0).max() <= 1 + 1e-9
    nec, enh = (an.fractions[CLASSES.index(c)] for c in ('necrosis', 'enhancing'))
    assert nec[an.seg == 1].mean() > enh[an.seg == 1].mean()  # label 1 is mostly necrosis
    assert enh[an.seg == 4].mean() > 0.5                      # label 4 is mostly enhancing tissue


# ---------------------------------------------------------------- the domain gap, in the files

def test_hcp_and_oracle_t1_differ_in_gm_wm_contrast(samples):
    hcp = open_dataset(samples_dir('hcp'))
    oracle = open_dataset(samples_dir('oracle'))
    for sid in hcp.ids:
        tis = load_volume(samples/'oracle'/'tissues'/f'{sid}_tissues.nii.gz', label=True).data
        h, o = hcp[sid]['t1'].data, oracle[sid]['t1'].data
        assert h.shape == o.shape == tis.shape
        wm_gm = lambda v: np.median(v[tis == 3]) / np.median(v[tis == 2])
        assert wm_gm(h) > 1.3 * wm_gm(o), sid
        assert wm_gm(o) > 1.0                                  # both are still T1-weighted (WM brighter)


def test_brats_contrasts_are_pairwise_distinct():
    s = open_dataset(samples_dir('brats'))[0]
    vols = {m: s[m].data for m in ('t1', 't1ce', 't2', 'flair')}
    brain = np.all([v > 0 for v in vols.values()], 0)
    assert brain.sum() > 10000
    for a, b in itertools.combinations(vols, 2):
        r = np.corrcoef(vols[a][brain], vols[b][brain])[0, 1]
        assert r < 0.98, (a, b, r)


# ---------------------------------------------------------------- signal equations

CSF, GM, WM = (TISSUES[k] for k in ('csf', 'gm', 'wm'))


@pytest.mark.parametrize('tr', [6000, 9000, 11000])
def test_flair_at_null_ti_nulls_csf(tr):
    ti = null_ti(CSF.t1, tr)
    assert inversion_recovery(CSF.pd, CSF.t1, CSF.t2, tr, ti, 120) == pytest.approx(0, abs=1e-9)
    wm = inversion_recovery(WM.pd, WM.t1, WM.t2, tr, ti, 120)
    assert wm > 0.1                                            # white matter is not nulled
    # independently: the longitudinal magnetisation 1 - 2 exp(-TI/T1) + exp(-TR/T1) changes sign at TI
    mz = lambda t: 1 - 2 * math.exp(-t / CSF.t1) + math.exp(-tr / CSF.t1)
    assert mz(ti - 1) < 0 < mz(ti + 1)


def test_null_ti_long_tr_limit():
    assert null_ti(4000, 1e9) == pytest.approx(4000 * math.log(2))   # textbook: TI = T1 ln 2 for full recovery


def test_site_flair_sequences_null_csf():
    for site in ('brats', 'ucsf'):
        s = tissue_signals(SITES[site].sequences['flair'])
        assert s['csf'] < 0.02 * s['wm'], site
        assert s['edema'] > s['wm']


def test_spin_echo_weightings():
    t1w = {k: spin_echo(t.pd, t.t1, t.t2, 500, 12) for k, t in TISSUES.items()}
    t2w = {k: spin_echo(t.pd, t.t1, t.t2, 5000, 100) for k, t in TISSUES.items()}
    assert t1w['wm'] > t1w['gm'] > t1w['csf']
    assert t2w['csf'] > t2w['gm'] > t2w['wm']
    assert spin_echo(1.0, 1000, 100, 1e9, 0) == pytest.approx(1.0)   # full recovery, no decay: PD


def test_t1_after_contrast():
    assert t1_after_contrast(1500, 0.25) == pytest.approx(600)
    assert t1_after_contrast(900, 0) == pytest.approx(900)
    # rates add: 1/T1' = 1/T1 + r1 [Gd], with r1 = 4 /(mM s)
    assert 1 / t1_after_contrast(1000, 0.5) == pytest.approx(1 / 1000 + 4 * 0.5 / 1000)
    t1ce = SITES['brats'].sequences['t1ce']
    post, pre = tissue_signals(t1ce), tissue_signals(replace(t1ce, contrast=False))   # the same sequence, without gadolinium
    assert post['enhancing'] > 1.5 * pre['enhancing']         # gadolinium brightens the enhancing rim
    assert post['csf'] == pytest.approx(pre['csf'])            # and nothing without gadolinium


def test_brats_t1ce_is_a_gradient_echo_and_t1_a_spin_echo():
    "BraTS T1Gd is mostly a 3D gradient echo after gadolinium; its native T1 often a 2D spin echo (01_phantom)."
    seqs = SITES['brats'].sequences
    assert (seqs['t1'].kind, seqs['t1ce'].kind, seqs['t1ce'].contrast) == ('se', 'mprage', True)
    s = tissue_signals(seqs['t1ce'])
    assert s['enhancing'] > 1.5 * s['wm'] > 1.5 * s['csf']     # the rim brightest, CSF dark, as on an MPRAGE


# ---------------------------------------------------------------- tumours spread over the brain (issue 14)

def test_committed_samples_cover_every_position_with_tumour_free_slices(samples, tmp_path):
    "CycleGAN's domain B: every 0.05 bin of relative axial position has tumour-free slices from >= 3 subjects."
    from brainkit.data import SliceCache, tumour_free_coverage
    brats = open_dataset(samples/'BraTS2021')
    for kw in ({}, {'size': 64, 'spacing': 3.6}):                # the native grid, and the CycleGAN lesson's slices
        cov = tumour_free_coverage(brats, cache=SliceCache(tmp_path/'cache'), bins=20, **kw)
        assert cov.needed()[1:-1].all(), kw                      # every bin but the two ends has brain in >= 3 subjects
        assert cov.fewest() >= 3, (kw, cov.per_bin.tolist())


def test_sample_tumour_volumes_follow_the_documented_distribution(samples):
    ds = open_dataset(samples/'BraTS2021')
    wt = np.array([(s['seg'].data > 0).sum() * np.prod(s['seg'].spacing) / 1000 for s in ds])
    assert len(ds) == ph.COUNTS['brats']
    assert 30 < np.median(wt) < 100 and wt.max() > 120 and wt.min() > 1      # tens to low hundreds of ml
    q = np.array([ph.tumour_quantiles(i) for i in range(len(ds))])
    for c in range(2):                                            # the Halton quantiles fill every quarter of [0, 1]
        assert np.histogram(q[:, c], bins=4, range=(0, 1))[0].min() >= len(ds) // 8


# --- found by review ---

def test_generate_refuses_to_replace_a_folder_that_is_not_a_samples_folder(tmp_path):
    study = tmp_path/'mystudy'; study.mkdir(); (study/'notes.txt').write_text('irreplaceable')
    with pytest.raises(ph.BrainkitError) as ei:
        ph.generate_samples(study, counts={'brats': 1, 'hcp': 0, 'ucsf': 0}, progress=False)
    assert 'refusing to replace' in str(ei.value) and (study/'notes.txt').read_text() == 'irreplaceable'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mystudy']          # nothing left beside it
    # an earlier samples folder, and an empty folder, are fine to (re)generate into
    ph.generate_samples(tmp_path/'s', counts={'brats': 1, 'hcp': 0, 'ucsf': 0}, progress=False)
    ph.generate_samples(tmp_path/'s', counts={'brats': 1, 'hcp': 0, 'ucsf': 0}, progress=False)
    (tmp_path/'empty').mkdir(); ph.generate_samples(tmp_path/'empty', counts={'brats': 0, 'hcp': 0, 'ucsf': 1}, progress=False)
    assert ph.verify_samples(tmp_path/'s') == [] and ph.verify_samples(tmp_path/'empty') == []


def test_verification_accepts_the_same_content_compressed_differently(tmp_path):
    ph.generate_samples(tmp_path/'s', counts={'brats': 1, 'hcp': 0, 'ucsf': 0}, progress=False)
    f = tmp_path/'s'/'BraTS2021'/'BraTS2021_90000'/'BraTS2021_90000_t1.nii.gz'
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes()), compresslevel=1, mtime=0))   # another zlib, say
    assert ph.verify_samples(tmp_path/'s') == []
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-2] + b'\1\1', mtime=0))      # other content
    assert len(ph.verify_samples(tmp_path/'s')) == 1


def test_the_whole_brain_top_is_inside_every_sample_box(samples):
    from brainkit.io import open_dataset
    for name, faces in (('BraTS2021', 'S'), ('UCSF-PDGM', 'S'), ('HCP', 'RLAPSI')):
        for s in open_dataset(samples/name):
            d = s['t1'].data > 0                                   # canonical RAS: +x R, +y A, +z S
            on = {'R': d[-1].any(), 'L': d[0].any(), 'A': d[:, -1].any(), 'P': d[:, 0].any(),
                  'S': d[:, :, -1].any(), 'I': d[:, :, 0].any()}
            assert not any(on[f] for f in faces), (s.id, {k for k,v in on.items() if v})
