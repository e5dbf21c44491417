"""Checkpoints written before the translation core (checkpoint format 1, brainkit at 8a7bfb5) still load, translate,
segment and resume: tiny real checkpoints of that version are in tests/data/legacy/, with what that version computed
from them (expected.json; tests/data/legacy/make_legacy.py says how they were made).

The BraTS-like subject those outputs were computed from (BraTS2021_90003 of the phantom-version-1 samples) is kept in
tests/data/legacy/inputs/, because data_samples/ is regenerated when the phantom changes and the old outputs are facts of
the old input. The HCP-like subject (000001) is read from data_samples/ while it is byte-identical to the one they used."""
import hashlib, json, shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brainkit.io import open_dataset, samples_dir
from brainkit.gan import upgrade_meta
from brainkit.preprocess import Normalizer
from brainkit.segment import load_segmenter, segment_subject
from brainkit.train import load_checkpoint
from brainkit.translate import load_translator, translate_path, translate_volume

LEGACY = Path(__file__).parent/'data'/'legacy'
EXPECTED = json.loads((LEGACY/'expected.json').read_text())
pytestmark = pytest.mark.usefixtures('one_torch_thread')


INPUTS = LEGACY/'inputs'
# sha256 of the HCP-like inputs that make_legacy.py read (data_samples/MANIFEST.json, phantom version 1)
HCP_INPUTS = {'000001': {'T1w/T1w_acpc_dc_restore_brain.nii.gz':
                         'e1e7cfaad160e5fa820103b7fca751b76ebcd370868f068ea4c53ecbca9d7107'}}


def subject(sid):
    "The subject an old checkpoint's outputs in expected.json were computed from: the very files that version read."
    if sid.startswith('BraTS'): return open_dataset(INPUTS/'BraTS2021')[sid]
    root = samples_dir('hcp')
    for f, digest in HCP_INPUTS[sid].items():
        assert hashlib.sha256((root/sid/f).read_bytes()).hexdigest() == digest, (
            f'{root/sid/f} is no longer the file expected.json was computed from: copy that subject from the old samples '
            f'into {INPUTS}/HCP/ and read it from there, as BraTS2021_90003 is')
    return open_dataset(root)[sid]


def test_the_fixtures_are_format_1_checkpoints():
    for name in ('pix2pix', 'pix2pix_multi', 'cyclegan', 'cyclegan_t2_nyul'):
        ck = load_checkpoint(LEGACY/name)
        assert ck['format'] == 1 and 'generators' in ck['meta'] and 'directions' not in ck['meta'], name   # as written then


def test_the_two_domains_of_an_old_cyclegan_keep_their_own_modality_and_normalizer():
    a, b = (load_translator(LEGACY/'cyclegan_t2_nyul', d, device='cpu')[1] for d in ('AtoB', 'BtoA'))
    assert (a['sources'], a['target'], b['sources'], b['target']) == (['t1'], 't2', ['t2'], 't1')
    la, lb = a['normalizers']['t1']['landmarks'], b['normalizers']['t2']['landmarks']
    assert la != lb and len(la) == len(lb) == 11                         # A's and B's own fitted landmarks


@pytest.mark.parametrize('key', ['pix2pix_AtoB', 'pix2pix_multi_AtoB', 'cyclegan_AtoB', 'cyclegan_BtoA',
                                 'cyclegan_t2_nyul_AtoB', 'cyclegan_t2_nyul_BtoA'])
def test_old_translation_checkpoints_load_with_their_directions(key):
    name, direction = key.rsplit('_', 1)
    G, info = load_translator(LEGACY/name, direction, device='cpu')
    want = EXPECTED[key]['info']
    assert {k: info[k] for k in want} == want
    for d in info['normalizers'].values(): Normalizer.from_dict(d)      # the old full dicts still build normalizers


@pytest.mark.parametrize('key', ['pix2pix_AtoB', 'cyclegan_AtoB', 'cyclegan_BtoA', 'cyclegan_t2_nyul_AtoB', 'cyclegan_t2_nyul_BtoA'])
def test_old_translation_checkpoints_translate_as_they_did(key):
    name, direction = key.rsplit('_', 1)
    want = EXPECTED[key]
    G, info = load_translator(LEGACY/name, direction, device='cpu')
    y = translate_volume(G, info, subject(want['subject'])).data
    np.testing.assert_allclose([y.mean(), y.std(), np.abs(y).sum()], [want['mean'], want['std'], want['sum_abs']], rtol=2e-3)


def test_an_old_multi_input_checkpoint_translates_a_subject(tmp_path):
    # (this also failed before: a two-input model could not translate a volume at all)
    G, info = load_translator(LEGACY/'pix2pix_multi', device='cpu')
    s = subject('BraTS2021_90003')
    y = translate_volume(G, info, s)
    assert y.shape == s['t1'].shape and np.isfinite(y.data).all() and (y.data[s['t1'].data == 0] == 0).all()


def test_an_old_segmentation_checkpoint_segments_as_it_did():
    model, meta = load_segmenter(LEGACY/'segment', 'cpu')
    lab = segment_subject(model, meta, subject(EXPECTED['segment']['subject'])).data
    got = {str(k): int(v) for k, v in zip(*np.unique(lab, return_counts=True))}
    want = EXPECTED['segment']['counts']
    assert set(got) == set(want)
    for k in want: assert abs(got[k] - want[k]) <= 0.001 * lab.size, (got, want)


def test_old_runs_resume(tmp_path):
    from brainkit.pix2pix import train_pix2pix
    from brainkit.segment import train_segmentation
    for name, train in (('pix2pix', train_pix2pix), ('segment', train_segmentation)):
        run = tmp_path/name
        run.mkdir(); shutil.copy(LEGACY/name/'checkpoint.pt', run)
        cfg = {**load_checkpoint(run)['config'], 'epochs': 2}               # one more epoch than was trained
        m = train(cfg, run, progress=False)
        assert m['epochs'] == 2 and [h['epoch'] for h in m['history']] == [1, 2], name
    assert 'directions' in load_checkpoint(tmp_path/'pix2pix')['meta']     # its next checkpoint is in the new format


def test_upgrade_leaves_new_metadata_alone():
    meta = {'directions': {'AtoB': {'net': 'G', 'sources': ['t1'], 'target': 't2', 'normalizers': {}}}, 'plane': 'axial'}
    assert upgrade_meta(meta) == meta
