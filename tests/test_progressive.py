"""Progressive volumetrization (chapter 16) as a user runs it from the command line: later stages trained on BraTS
pairs, applied to a strategy's dataset (one BraTS 2021 dataset per stage, in the input's space, with provenance),
resumed after a stop, a bad subject that fails alone, and the stage tables of a sweep."""
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from brainkit.io import open_dataset, samples_dir, load_volume
from brainkit.progressive import StagedChain, ProgressiveError, apply_stages, ensure_stages, stage_planes, train_stages
from brainkit.strategies import Chain, ensure_models, models_needed, write_strategy_dataset
from brainkit.translate import sidecar_path
from conftest import brainkit_cli

TINY = {'pix2pix': dict(size=32, ngf=4, ndf=4, spacing=4.8)}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "Tiny stages 2 and 3 (ASC, on BraTS pairs) trained by the command, and a paired strategy dataset of three HCP brains."
    root = tmp_path_factory.mktemp('prog')
    r = brainkit_cli('-q', 'progressive', 'train', '--target', 't2', '--order', 'ASC', '--stages', '3',
                     '--settings', json.dumps(TINY), '--models-dir', str(root/'models'), '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    folders = [l.split(': ', 1)[1] for l in r.stdout.splitlines() if l.startswith('t2 stage')]
    assert [Path(f).name.split('_')[0] for f in folders] == ['stage2AS', 'stage3ASC'] and 'brainkit progressive apply' in r.stdout
    chain = Chain(ensure_models(models_needed(['paired'], ['t2']), root/'models', settings=TINY, device='cpu', progress=False), device='cpu')
    hcp = list(open_dataset(samples_dir('hcp')))[:3]
    ds = write_strategy_dataset(root/'paired', 'paired', hcp, chain, ['t2'], progress=False)
    return root, folders, ds, chain, hcp


def test_apply_writes_one_brats_dataset_per_stage_in_the_inputs_space(trained, tmp_path):
    root, folders, ds, chain, hcp = trained
    r = brainkit_cli('-q', 'progressive', 'apply', '--input', str(ds), '--models', *folders, '--out', str(tmp_path), '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path/'stage2'), str(tmp_path/'stage3')]
    first = open_dataset(ds)
    for k in (2, 3):
        out = open_dataset(tmp_path/f'stage{k}')
        assert out.layout.name == 'brats2021' and out.ids == first.ids
        for s in out:
            assert all(s.path(m).is_file() for m in ('t1', 't2', 'seg'))
            v, v1 = load_volume(s.path('t2')), load_volume(first[s.id].path('t2'))
            assert np.array_equal(v.affine, v1.affine) and v.shape == v1.shape
            prov = json.loads(sidecar_path(s.path('t2')).read_text())
            assert [x['plane'] for x in prov['stages']] == ['sagittal', 'coronal'][:k - 1]
            assert all(x['sources'] == ['t1', 't2_prev'] for x in prov['stages'])       # the source and the previous stage
            prev = load_volume((tmp_path/f'stage{k - 1}' if k > 2 else Path(ds))/s.id/f'{s.id}_t2.nii.gz')
            assert np.abs(v.data - prev.data).max() > 1e-3                               # each stage changed its input
    # the command's stage 3 is the library's: the staged chain on the same HCP brain gives the same volume
    staged = StagedChain(chain, {'t2': [Path(f) for f in folders]})
    from brainkit.strategies import get_strategy
    mine = staged.outputs(hcp[0], get_strategy('paired').at('t2'))[-1]
    theirs = load_volume(tmp_path/'stage3'/first.ids[0]/f'{first.ids[0]}_t2.nii.gz')
    assert np.abs(mine.data - theirs.data).max() <= 1e-5 * max(1.0, float(np.abs(mine.data).max()))


def test_a_stopped_apply_resumes_and_a_bad_subject_fails_alone(trained, tmp_path):
    root, folders, ds, chain, hcp = trained
    outs = apply_stages(ds, folders, tmp_path, device='cpu', progress=False)
    ids = open_dataset(ds).ids
    kept = tmp_path/'stage3'/ids[1]/f'{ids[1]}_t2.nii.gz'
    before = kept.stat().st_mtime_ns
    lost = tmp_path/'stage3'/ids[0]/f'{ids[0]}_t2.nii.gz'; lost.unlink()          # as if stopped before it was written
    (tmp_path/'stage2'/'.brainkit-writing').touch()
    apply_stages(ds, folders, tmp_path, device='cpu', progress=False)
    assert lost.is_file() and kept.stat().st_mtime_ns == before                    # only the missing one was made again
    assert open_dataset(tmp_path/'stage2').ids == ids                               # whole again (the writing mark is gone)
    bad = tmp_path/'bad'
    import shutil; shutil.copytree(ds, bad)
    (bad/ids[2]/f'{ids[2]}_t2.nii.gz').unlink()
    r = brainkit_cli('-q', 'progressive', 'apply', '--input', str(bad), '--models', *folders, '--out', str(tmp_path/'o'), '--device', 'cpu')
    assert r.returncode == 1 and ids[2] in r.stderr and 'Fix:' in r.stderr
    assert all((tmp_path/'o'/'stage3'/i/f'{i}_t2.nii.gz').is_file() for i in ids[:2])


def test_bad_orders_models_and_settings_are_clear_errors(trained, tmp_path):
    root, folders, ds, chain, hcp = trained
    r = brainkit_cli('-q', 'progressive', 'train', '--order', 'AAS', '--models-dir', str(tmp_path))
    assert r.returncode == 1 and 'different letters' in r.stderr and 'ASC' in r.stderr
    r = brainkit_cli('-q', 'progressive', 'train', '--settings', '{epochs: 2', '--models-dir', str(tmp_path))
    assert r.returncode == 1 and '--settings' in r.stderr and 'Fix:' in r.stderr
    r = brainkit_cli('-q', 'progressive', 'apply', '--input', str(ds), '--models', str(tmp_path/'nothing'), '--out', str(tmp_path/'o'))
    assert r.returncode == 1 and str(tmp_path/'nothing') in r.stderr and 'Fix:' in r.stderr
    r = brainkit_cli('progressive', 'table', str(tmp_path/'no-such-sweep'))
    assert r.returncode == 1 and 'is not a folder' in r.stderr and 'brainkit sweep' in r.stderr
    with pytest.raises(ProgressiveError, match='start the order with C'):
        train_stages('paired', ['t2'], 'ASC', 2, settings={'pix2pix': {'plane': 'coronal'}}, models_dir=tmp_path)


def test_a_sweep_of_progressive_runs_tables_every_stage(trained, tmp_path):
    root, folders, ds, chain, hcp = trained
    sweep = tmp_path/'p.yaml'
    sweep.write_text(textwrap.dedent(f"""\
        function: brainkit.progressive:run_progressive
        out: {tmp_path/'runs'}
        params: {{targets: [t2], models_dir: {root/'models'}, write_datasets: false, figures: false, progress: false, device: cpu,
                  settings: {json.dumps(TINY)}}}
        runs:
          - {{strategy: paired, order: ASC, seed: 0}}
          - {{strategy: paired, order: A, stages: 1, baseline3d: true, write_datasets: true, seed: 0,
              settings: {{volume3d: {{spacing: 4.8, base: 4, depth: 2, epochs: 1}}}}}}
        """))
    r = brainkit_cli('-q', 'sweep', str(sweep))
    assert r.returncode == 0, r.stderr
    r = brainkit_cli('progressive', 'table', str(tmp_path/'runs'))
    assert r.returncode == 0, r.stderr
    assert '| t2 oracle.mae ↓ | stage 1 | stage 2 | stage 3 |' in r.stdout
    import re
    row = next(l for l in r.stdout.splitlines() if l.startswith('| paired ASC, on brats |') and l.count('|') == 5)
    assert len(re.findall(r'\d\.\d{3} \(1\)', row)) == 3, row                       # a number per stage, one seed each
    row = next(l for l in r.stdout.splitlines() if l.startswith('| paired 3D U-Net (L1) |'))
    assert len(re.findall(r'\d\.\d{3} \(1\)', row)) == 1, row                       # one stage only
    assert (tmp_path/'runs'/'progressive.md').read_text().strip() == r.stdout.strip()
    runs = {m['label']: m for m in (json.loads(p.read_text()) for p in (tmp_path/'runs').glob('*/out/metrics.json'))}
    m = runs['paired ASC, on brats']
    assert [Path(f).name for f in m['stage_models']['t2']] == [Path(f).name for f in folders]   # the trained stages, reused
    v = runs['paired 3D U-Net (L1)']
    assert v['stages'] == 1 and 0 < v['stage1']['t2']['oracle']['mae'] < 1 and list(v['trained_seconds'])[0].startswith('volume3d_t1-t2')
    out = next(p.parent for p in (tmp_path/'runs').glob('*/out/metrics.json') if 'baseline3d' in str(p))/'stage1'
    s = open_dataset(out)[0]
    prov = json.loads(sidecar_path(s.path('t2')).read_text())
    assert prov['steps'][0]['model'] == 'volume3d' and prov['steps'][0]['checkpoint'].startswith(v['volume3d_models']['t2'])
    assert np.array_equal(load_volume(s.path('t2')).affine, load_volume(s.path('t1')).affine)   # the input's space
