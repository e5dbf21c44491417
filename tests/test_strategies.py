"""The report's strategies (chapter 14) as a user runs them: chains of translators, the models they need trained once
and reused (also by another process at the same time), a failing model that fails only the strategies using it, the
written BraTS 2021 datasets (the readers, the scan and `brainkit scan` accept them), and Table 1 from a sweep's runs."""
import json
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brainkit.baselines import fit_baseline
from brainkit.cyclegan import CycleGANConfig
from brainkit.data import split_subjects
from brainkit.io import DATASET_FILE, load_volume, open_dataset, samples_dir
from brainkit.preprocess import brain_mask
from brainkit.strategies import (MAIN_JOB, MODEL_METRICS, REPORT, TRAINED, STRATEGIES, Chain, ModelSpec, Step, Strategy, StrategyError, _train,
                                 ensure_models, flat_rows, get_strategy, model_config, model_key, models_needed, oracle_dir,
                                 rank_agreement, report_conclusion_holds, report_markdown, score_strategy, table1,
                                 write_strategy_dataset)
from brainkit.train import run_lock
from brainkit.translate import sidecar_path
from conftest import brainkit_cli

CLASSICAL = ['histmatch+lookup', 'lookup', 'none']
TINY = {'pix2pix': dict(size=32, ngf=4, ndf=4, spacing=4.8), 'cyclegan': dict(size=32, ngf=4, ndf=4, spacing=4.8)}


@pytest.fixture(scope='module')
def hcp(): return open_dataset(samples_dir('hcp'))


@pytest.fixture(scope='module')
def held(hcp):
    ids = split_subjects(hcp.ids, CycleGANConfig().split, 0)['val']
    return [s for s in hcp if s.id in ids]


@pytest.fixture(scope='module')
def classical(tmp_path_factory):
    "The classical strategies' models, fitted for real (seconds), for t2 and t1ce."
    root = tmp_path_factory.mktemp('models')
    specs = models_needed(CLASSICAL, ['t2', 't1ce'])
    models = ensure_models(specs, root, progress=False)
    assert all(isinstance(v, Path) for v in models.values()), models
    return root, models


class Spy:
    "A trainer that records its calls and runs the real one, or fails for the kinds in `fail`."
    def __init__(self, fail=()): self.calls, self.fail = [], set(fail)
    def __call__(self, spec, cfg, folder, progress):
        self.calls.append(spec)
        if spec.kind in self.fail: raise RuntimeError(f"{spec.kind} cannot train here")
        _train(spec, cfg, folder, progress)


def test_a_strategy_is_a_checked_chain():
    assert [str(s) for s in models_needed(REPORT + ('upper',), ['t2', 'flair'])] == [
        'cyclegan t1->t1', 'pix2pix t1->t2', 'pix2pix t1->flair', 'cyclegan t1->t2', 'cyclegan t1->flair']
    with pytest.raises(StrategyError, match='step 2 reads t2, but step 1 writes t1'):
        Strategy('broken', (Step('cyclegan', 't1', 't1'), Step('pix2pix', 't2')))
    with pytest.raises(StrategyError, match='histmatch keeps the modality'): Strategy('x', (Step('histmatch', 't1', 't2'),))
    with pytest.raises(StrategyError, match='kind must be one of'): Strategy('x', (Step('unet', 't1'),))
    with pytest.raises(StrategyError, match="is not a built-in strategy"): get_strategy('hybird')
    mine = get_strategy({'name': 'mine', 'steps': [{'kind': 'histmatch', 'source': 't1', 'target': 't1'}, {'kind': 'pix2pix'}]})
    assert mine.at('t1ce')[1] == Step('pix2pix', 't1', 't1ce') and set(models_needed([mine, 'paired'], ['t2'])) == {
        ModelSpec('histmatch', 't1', 't1'), ModelSpec('pix2pix', 't1', 't2')}      # the user's strategy shares strategy 3's model


def test_model_keys_follow_the_settings_not_the_device():
    spec = ModelSpec('pix2pix', 't1', 't2')
    k = lambda **kw: model_key(spec, model_config(spec, **kw))
    assert k(device='cpu') == k(device='cuda') and k(seed=0) != k(seed=1)
    assert k() != k(settings={'pix2pix': {'ngf': 8}})
    assert model_key(ModelSpec('lookup', 't1', 't2'), model_config(ModelSpec('lookup', 't1', 't2'), seed=3)) == \
        model_key(ModelSpec('lookup', 't1', 't2'), model_config(ModelSpec('lookup', 't1', 't2'), seed=0))   # no seed in a classical fit
    assert model_config(ModelSpec('cyclegan', 't1', 't1')).lambda_identity > 0        # the identity term only where contrasts agree
    assert model_config(ModelSpec('cyclegan', 't1', 't2')).lambda_identity == 0


def test_the_classical_chain_is_the_classical_strategy_1(classical, held):
    "Chaining histmatch -> lookup step by step gives chapter 08's one-piece `histmatch+lookup` baseline (up to re-normalization)."
    _, models = classical
    chain = Chain(models, oracle_dir())
    brats = open_dataset(samples_dir('brats'))
    train = [s for s in brats if s.id in set(split_subjects(brats.ids, (0.75, 0.25, 0.0), 0)['train'])]
    whole = fit_baseline('histmatch+lookup', train, 't1', 't2')
    for s in held:
        got = chain.outputs(s, get_strategy('histmatch+lookup').at('t2'))
        assert len(got) == 2 and got[-1].shape == s['t1'].shape and np.allclose(got[-1].affine, s['t1'].affine)
        one = whole(s['t1']).data
        brain = brain_mask(s['t1'])
        np.testing.assert_array_equal(got[-1].data > 0, one > 0)            # the same brain (a 0 between the steps stays brain)
        # the second step re-normalizes the first one's output (as a model would): equal up to that, not bit for bit
        assert np.abs(got[-1].data - one)[brain].mean() < 0.01 and np.corrcoef(got[-1].data[brain], one[brain])[0, 1] > 0.999
        none = chain.outputs(s, get_strategy('none').at('t2'))[-1].data > 0      # (a classical map writes its darkest brain voxels as 0)
        assert not (none & ~brain).any() and none[brain].mean() > 0.99


def test_finished_models_are_reused_and_a_failed_one_is_retried(tmp_path):
    specs = models_needed(CLASSICAL, ['t2'])
    spy = Spy()
    first = ensure_models(specs, tmp_path, train=spy, progress=False)
    assert len(spy.calls) == len(specs) == 3 and all((v/MODEL_METRICS).is_file() for v in first.values())
    assert all(json.loads((v/TRAINED).read_text())['seconds'] >= 0 for v in first.values())   # what the benchmark sums
    again = Spy(); assert ensure_models(specs, tmp_path, train=again, progress=False) == first and again.calls == []
    more = Spy(); ensure_models(models_needed(CLASSICAL, ['t2', 't1ce']), tmp_path, train=more, progress=False)
    assert [str(s) for s in more.calls] == ['lookup t1->t1ce', 'none t1->t1ce']     # histmatch t1 -> t1 serves both targets
    bad = Spy(fail={'lookup'})
    got = ensure_models(models_needed(['lookup'], ['flair']), tmp_path, train=bad, progress=False)
    assert isinstance(got[ModelSpec('lookup', 't1', 'flair')], RuntimeError)
    assert not (tmp_path/model_key(ModelSpec('lookup', 't1', 'flair'), model_config(ModelSpec('lookup', 't1', 'flair')))/MODEL_METRICS).exists()
    retry = Spy(); ensure_models(models_needed(['lookup'], ['flair']), tmp_path, train=retry, progress=False)
    assert retry.calls == [ModelSpec('lookup', 't1', 'flair')]


def test_a_model_another_process_trains_is_waited_for_not_trained_twice(tmp_path):
    "While another process holds a model's run lock, the others are trained first; then the finished one is taken as is."
    specs = models_needed(['histmatch+lookup'], ['t2'])           # histmatch t1->t1, lookup t1->t2
    held_folder = tmp_path/model_key(specs[0], model_config(specs[0]))
    locked, release = threading.Event(), threading.Event()

    def other_process():                                          # (another thread is another run to run_lock)
        with run_lock(held_folder):
            locked.set(); release.wait(10)
            _train(specs[0], model_config(specs[0]), held_folder, False)
    t = threading.Thread(target=other_process); t.start(); locked.wait(10)
    spy = Spy()
    timer = threading.Timer(0.5, release.set); timer.start()
    got = ensure_models(specs, tmp_path, train=spy, progress=False, wait=0.1)
    t.join(); timer.join()
    assert spy.calls == [specs[1]]                                 # only the unlocked one: the locked one was finished by its holder
    assert got[specs[0]] == held_folder and (held_folder/MODEL_METRICS).is_file()


def test_a_failing_stage_fails_only_the_strategies_that_use_it(tmp_path, held, classical):
    _, fitted = classical
    specs = models_needed(['paired', 'lookup'], ['t2'])
    models = ensure_models(specs, tmp_path, train=Spy(fail={'pix2pix'}), progress=False)
    chain = Chain(models, oracle_dir())
    brats = list(open_dataset(samples_dir('brats')))
    bad = score_strategy('paired', chain, held, ['t2'], {}, brats)
    assert set(bad) == {'t2'} and 'pix2pix t1->t2' in bad['t2']['error'] and 'cannot train here' in bad['t2']['error']
    assert 'no real BraTS subjects' in score_strategy('lookup', chain, held, ['t2'])['t2']['error']   # W1 needs the real side
    real = {}
    good = score_strategy('lookup', chain, held, ['t2'], real, brats)
    assert set(real) == {'t2'}                                      # the real BraTS tissue values, kept for the next strategy
    assert 'error' not in good['t2'] and good['t2']['oracle']['ssim'] > 0.5 and good['t2']['tissue_w1']['mean'] < 0.2
    g = good['t2']                                                  # 3D quality per plane (a voxel-wise map: near the truth's)
    assert set(g['consistency']) == set(g['oracle_planes']) == {'axial', 'coronal', 'sagittal'}
    assert g['consistency_excess'] == g['consistency']['axial'] and g['oracle_planes']['axial']['ssim'] == g['oracle_slices']['ssim']
    assert all(abs(np.log(x)) < 0.2 for x in g['consistency'].values()), g['consistency']
    assert g['subjects'][0]['sagittal_excess'] > 0 and g['subjects'][0]['coronal_psnr'] > 10
    with pytest.raises(StrategyError, match='failed to train'): write_strategy_dataset(tmp_path/'ds', 'paired', held, chain, ['t2'], progress=False)
    assert not (tmp_path/'ds'/DATASET_FILE).exists()             # a dataset that failed is not marked finished


def test_a_strategy_dataset_is_a_brats_2021_dataset_with_provenance(tmp_path, hcp, classical):
    _, models = classical
    subjects = list(hcp)[:2]
    out = write_strategy_dataset(tmp_path/'hm', 'histmatch+lookup', subjects, Chain(models, oracle_dir()), ['t2', 't1ce'],
                                 progress=False, seed=0)
    ds = open_dataset(out)
    assert ds.layout.name == 'brats2021' and ds.ids == ['BraTS2021_70000', 'BraTS2021_70001']
    assert ds.scan(['t1', 't2', 't1ce', 'seg'], progress=False) == {}
    s, src = ds[0], subjects[0]
    seg = s.load(['seg'])['seg']
    assert seg.data.dtype == np.uint8 and not seg.data.any()
    for m in ('t1', 't2', 't1ce'):
        v = s.load([m])[m]
        assert v.shape == src['t1'].shape and np.allclose(v.affine, src['t1'].affine)          # the HCP input's own space
        prov = json.loads(sidecar_path(s.path(m)).read_text())
        assert prov['hcp_subject'] == src.id and prov['strategy']['name'] == 'histmatch+lookup' and prov['seed'] == 0
    t1 = json.loads(sidecar_path(s.path('t1')).read_text())
    assert [x['kind'] for x in t1['steps']] == ['histmatch'] and len(t1['steps'][0]['checkpoint_sha256']) == 64   # its own t1: stage 1
    assert [x['kind'] for x in json.loads(sidecar_path(s.path('t2')).read_text())['steps']] == ['histmatch', 'lookup']
    about = json.loads((out/DATASET_FILE).read_text())
    assert about['layout'] == 'brats2021' and about['subjects'] == {subjects[0].id: 'BraTS2021_70000', subjects[1].id: 'BraTS2021_70001'}
    r = brainkit_cli('scan', str(out), '--modalities', 't1', 't2', 't1ce', 'seg')
    assert r.returncode == 0, r.stderr
    from brainkit.strategies import compare_figure, dataset_volume
    np.testing.assert_array_equal(dataset_volume(out, src.id, 't2').data, s.load(['t2'])['t2'].data)
    with pytest.raises(StrategyError, match='holds no translation of HCP subject'): dataset_volume(out, '999999', 't2')
    fig = compare_figure({'histmatch+lookup': out}, src, 't1ce', oracle_dir(), path=tmp_path/'cmp.png')
    assert len(fig.axes) == 3 * 3 and (tmp_path/'cmp.png').is_file()          # input, the dataset's t1ce, the oracle
    none = write_strategy_dataset(tmp_path/'none', 'none', subjects[:1], Chain(models, oracle_dir()), ['t2'], progress=False)
    np.testing.assert_array_equal(open_dataset(none)[0].load(['t1'])['t1'].data, subjects[0]['t1'].data)   # no t1 step: the input


def test_learned_strategies_chain_real_models(tmp_path, held, one_torch_thread):
    "Tiny real trainings: strategy 1 runs CycleGAN then Pix2Pix, reusing strategy 3's Pix2Pix; every output on the input grid."
    specs = models_needed(['hybrid', 'paired', 'upper'], ['t2'])
    models = ensure_models(specs, tmp_path, settings=TINY, progress=False, device='cpu')
    assert len(models) == 2 and all(isinstance(v, Path) for v in models.values()), models
    chain = Chain(models, oracle_dir(), device='cpu')
    s = held[0]
    hybrid, paired = chain.outputs(s, STRATEGIES['hybrid'].at('t2')), chain.outputs(s, STRATEGIES['paired'].at('t2'))
    assert len(hybrid) == 2 and hybrid[-1].shape == paired[-1].shape == s['t1'].shape
    assert not np.allclose(hybrid[-1].data, paired[-1].data)      # the second stage saw the first stage's output, not the input
    upper = chain.outputs(s, STRATEGIES['upper'].at('t2'))[-1]
    oracle_t1 = load_volume(oracle_dir()/s.id/f'{s.id}_t1.nii.gz')
    assert not np.allclose(upper.data, paired[-1].data) and np.allclose(upper.affine, oracle_t1.affine)


def _fake_sweep(folder:Path, runs):
    "A sweep folder with finished runs: params.json, run.json and out/metrics.json per run, as `brainkit sweep` writes them."
    for i, (params, metrics) in enumerate(runs):
        d = folder/f'run{i}'; (d/'out').mkdir(parents=True)
        (d/'params.json').write_text(json.dumps({'params': params}))
        (d/'run.json').write_text(json.dumps({'status': 'done', 'seconds': 1.0}))
        (d/'out'/'metrics.json').write_text(json.dumps(metrics))


def test_table1_and_rank_agreement_from_a_sweep(tmp_path):
    truth = {'hybrid': 0.2, 'unpaired': 0.3, 'paired': 0.1}
    w1 = {'hybrid': 0.02, 'unpaired': 0.01, 'paired': 0.03}        # a distribution metric that ranks them backwards
    runs = [({'strategy': s, 'seed': k}, {'strategy': s, 'seed': k, 'fid_note': 'no FID weights: offline',
              't2': {'oracle': {'mae': truth[s] + 0.01 * k, 'ssim': 0.9 - truth[s]}, 'tissue_w1': {'mean': w1[s] + 1e-3 * k},
                     'consistency_excess': 1.0, 'fid': None}})
            for s in truth for k in range(3)]
    _fake_sweep(tmp_path/'sw', runs)
    r = brainkit_cli('strategies', 'table', str(tmp_path/'sw'))
    assert r.returncode == 0, r.stderr
    assert '| t2 | 0.210 ± 0.010 (3) | 0.310 ± 0.010 (3) | 0.110 ± 0.010 (3) |' in r.stdout
    assert 'fid.fid_64: no values (no FID weights: offline)' in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith('| tissue_w1.mean |'))
    assert 'unpaired > hybrid > paired | no' in line and (tmp_path/'sw'/'table1.md').read_text().strip() in r.stdout
    rows = flat_rows([m for _, m in runs])
    assert rank_agreement(rows, 'oracle.ssim', targets=['t2'])['t2'] == pytest.approx(27 / (36 * 27) ** 0.5)   # tau-b: ties within a strategy
    assert rank_agreement(rows, 'tissue_w1.mean', targets=['t2'])['t2'] < 0
    assert report_conclusion_holds(rows, 'oracle.mae', 't2') and not report_conclusion_holds(rows, 'tissue_w1.mean', 't2')
    assert table1(rows, 'oracle.ssim', ['paired', 'none'], ['t2']).splitlines()[2] == '| t2 | 0.800 ± 0.000 (3) |  |'
    r = brainkit_cli('strategies', 'table', str(tmp_path/'nothing'))
    assert r.returncode == 1 and 'no such folder' in r.stderr


def test_real_data_has_no_oracle_and_still_gets_the_distribution_scores(classical, held, tmp_path):
    "Real HCP has no truth: the oracle scores are left out (not faked), W1 and consistency (against the input) remain."
    _, models = classical
    chain = Chain(models, oracle=None)
    got = score_strategy('histmatch+lookup', chain, held, ['t2'], {}, list(open_dataset(samples_dir('brats'))))['t2']
    assert got['oracle'] is None and got['oracle_slices'] is None and got['tissue_w1']['mean'] > 0 and got['consistency_excess'] > 0
    assert got['oracle_planes'] is None and set(got['consistency']) == {'axial', 'coronal', 'sagittal'}   # against the input
    assert 'no oracle' in score_strategy('upper', Chain({**models}, oracle=None), held, ['t2'], {}, [])['t2']['error']
    from brainkit.strategies import example_slices, three_planes
    fig = example_slices(held[0], ['lookup'], 't2', chain, path=tmp_path/'ex.png')
    assert len(fig.axes) == 3 * 2 and (tmp_path/'ex.png').is_file()            # input and strategy: no oracle column
    assert len(three_planes(held[0], ['lookup'], 't2', chain).axes) == 3
    runs = [({'strategy': s, 'seed': 0}, {'strategy': s, 'seed': 0, 'n_held_out': 2,
              't2': {'oracle': None, 'tissue_w1': {'mean': w}, 'consistency_excess': 1.0}})
            for s, w in (('hybrid', 0.2), ('unpaired', 0.3), ('paired', 0.1))]
    _fake_sweep(tmp_path/'real', runs)
    r = brainkit_cli('strategies', 'table', str(tmp_path/'real'))
    assert r.returncode == 0, r.stderr
    assert 'No oracle scores' in r.stdout and '| t2 | 0.200 (1) | 0.300 (1) | 0.100 (1) |' in r.stdout and '2 held-out HCP brains' in r.stdout


def test_a_chain_is_checked_for_every_target_it_is_asked_for(classical, held, tmp_path):
    _, models = classical
    fixed = Strategy('t2 only', (Step('lookup', 't1', 't2'),))       # valid for t2, wrong for anything else
    with pytest.raises(StrategyError, match='writes t2, not the target flair'): models_needed([fixed], ['t2', 'flair'])
    with pytest.raises(StrategyError, match='writes t2, not the target t1ce'):
        write_strategy_dataset(tmp_path/'x', fixed, held, Chain(models, oracle_dir()), ['t2', 't1ce'], progress=False)
    assert not (tmp_path/'x').exists()                              # refused before anything was written


def test_a_strategy_dataset_folder_is_rewritten_whole_and_a_foreign_one_refused(classical, hcp, tmp_path):
    _, models = classical
    chain, subjects = Chain(models, oracle_dir()), list(hcp)[:3]
    out = write_strategy_dataset(tmp_path/'ds', 'lookup', subjects, chain, ['t2'], progress=False)
    assert open_dataset(out).ids == ['BraTS2021_70000', 'BraTS2021_70001', 'BraTS2021_70002']
    write_strategy_dataset(out, 'lookup', subjects[:1], chain, ['t2'], progress=False)    # fewer subjects this time
    assert open_dataset(out).ids == ['BraTS2021_70000'] and not (out/'.brainkit-writing').exists()
    seg = json.loads(sidecar_path(out/'BraTS2021_70000'/'BraTS2021_70000_seg.nii.gz').read_text())
    assert seg['modality'] == 'seg' and seg['hcp_subject'] == subjects[0].id
    mine = tmp_path/'my_data'; (mine/'BraTS2021_00001').mkdir(parents=True); (mine/'notes.txt').write_text('mine')
    with pytest.raises(StrategyError, match='not a dataset that brainkit wrote'):
        write_strategy_dataset(mine, 'lookup', subjects[:1], chain, ['t2'], progress=False)
    assert (mine/'BraTS2021_00001').is_dir() and (mine/'notes.txt').read_text() == 'mine'
    up = write_strategy_dataset(tmp_path/'up', 'none', subjects[:1], chain, ['t2'], progress=False)
    t1 = json.loads(sidecar_path(up/'BraTS2021_70000'/'BraTS2021_70000_t1.nii.gz').read_text())
    assert t1['input_file'] == str(subjects[0].path('t1'))          # the file the t1 really is


def test_a_dataset_whose_writing_stopped_is_refused_by_the_readers(classical, hcp, tmp_path):
    _, models = classical
    out = write_strategy_dataset(tmp_path/'ds', 'lookup', list(hcp)[:1], Chain(models, oracle_dir()), ['t2'], progress=False)
    (out/'.brainkit-writing').touch()                                # as a killed write leaves it
    from brainkit.io import DatasetLayoutError
    with pytest.raises(DatasetLayoutError, match='writing stopped halfway'): open_dataset(out)
    write_strategy_dataset(out, 'lookup', list(hcp)[:1], Chain(models, oracle_dir()), ['t2'], progress=False)   # rerun: whole again
    assert open_dataset(out).ids == ['BraTS2021_70000']


def test_the_upper_bounds_diagnostic_reads_the_oracle_with_the_brats_sites_noise(held):
    "'oracle+noise': the oracle's t1 with the BraTS-like site's Rician noise (no bias field), the same draw every time, nothing outside the brain."
    chain = Chain({}, oracle_dir())
    (clean_step,), (site_step,) = get_strategy('upper').at('t2'), get_strategy('upper+noise').at('t2')
    assert chain.input_file(held[0], site_step) == chain.input_file(held[0], clean_step)      # (provenance: the oracle's file)
    for s in held:
        clean, a, b = chain.input(s, clean_step).data, chain.input(s, site_step).data, chain.input(s, site_step).data
        np.testing.assert_array_equal(a, b)
        brain = clean > 0
        assert not a[~brain].any() and (a[brain] > 0).all()
        rel = np.abs(a - clean)[brain].mean() / clean[brain].mean()
        assert 0.005 < rel < 0.1, rel                                  # noise of 3.5 % of white matter, no bias field
        assert abs(a[brain].mean() / clean[brain].mean() - 1) < 0.02


def test_strategies_run_sweeps_the_library_function_without_a_notebook(tmp_path):
    "`brainkit strategies run` (a pip install has no notebooks): runs in their own folders, a failed run fails only itself, reruns keep what finished."
    cfg = tmp_path/'mine.yaml'
    cfg.write_text(textwrap.dedent("""\
        function: brainkit.strategies:run_strategy
        out: sweep
        workers: 2
        params: {targets: [t2], models_dir: models, figures: false, progress: false}
        runs:
          - {strategy: none, seed: 0}
          - {strategy: strategy4, seed: 0}
        """))
    r = brainkit_cli('strategies', 'run', '--config', cfg)
    assert r.returncode == 1 and 'seed=0,strategy=strategy4' in r.stderr and 'is not a built-in strategy' in r.stderr, r.stderr
    assert '| oracle.mae ↓ | none' in r.stdout and '1 of 2 runs finished' in r.stdout
    run = tmp_path/'sweep'/'seed=0,strategy=none'
    assert open_dataset(run/'out'/'dataset').layout.name == 'brats2021' and (tmp_path/'sweep'/'table1.md').is_file()
    assert json.loads((run/'params.json').read_text())['function'] == 'brainkit.strategies:run_strategy'
    assert len(list((tmp_path/'models').iterdir())) == 1                   # the models folder is relative to the sweep file
    started = json.loads((run/'run.json').read_text())['started']
    assert brainkit_cli('strategies', 'run', '--config', cfg).returncode == 1
    assert json.loads((run/'run.json').read_text())['started'] == started
    import yaml
    shown = brainkit_cli('strategies', 'run', '--show')
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout) == MAIN_JOB
