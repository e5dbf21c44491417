"The `brainkit` command, run as a user runs it: a subprocess, its output and its exit code."
import json, os, shutil, subprocess, sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from brainkit.io import samples_dir

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent/'brainkit'

def brainkit(*args, cwd=None, env=None):
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': os.environ.get('JUPYTER_RUNTIME_DIR', '/tmp/brainkit-jupyter-runtime'), **(env or {})}
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)

def test_entry_point_is_installed():
    r = brainkit('--version')
    assert r.returncode == 0 and r.stdout.startswith('brainkit ')

def test_wrong_command_line_exits_2():
    assert brainkit('scan').returncode == 2
    assert brainkit('no-such-command').returncode == 2

def test_info_reports_orientation_and_labels():
    f = samples_dir('hcp')/'000001'/'T1w'/'T1w_acpc_dc_restore_brain.nii.gz'
    seg = samples_dir('brats')/'BraTS2021_90000'/'BraTS2021_90000_seg.nii.gz'
    r = brainkit('info', '--json', f, seg)
    assert r.returncode == 0, r.stderr
    a, b = map(json.loads, r.stdout.splitlines())
    assert (a['source_orientation'], a['shape'], a['spacing_mm']) == ('LAS', [80, 96, 88], [2.0, 2.0, 2.0])
    assert set(b['labels']) <= {'0', '1', '2', '4'} and b['source_orientation'] == 'LPS'

def test_info_on_a_missing_file_names_it_without_traceback(tmp_path):
    r = brainkit('info', tmp_path/'absent.nii.gz')
    assert r.returncode == 1 and 'absent.nii.gz: no such file' in r.stderr and 'Traceback' not in r.stderr

@pytest.mark.parametrize('name', ['brats', 'hcp', 'ucsf', 'oracle'])
def test_scan_passes_on_the_samples(name):
    r = brainkit('-q', 'scan', samples_dir(name))
    assert r.returncode == 0, r.stderr
    assert 'passed' in r.stdout

def test_scan_lists_every_bad_subject(tmp_path):
    src = samples_dir('brats')
    for sid in ('BraTS2021_90000', 'BraTS2021_90001', 'BraTS2021_90002', 'BraTS2021_90003'):
        shutil.copytree(src/sid, tmp_path/sid)
    (tmp_path/'BraTS2021_90000'/'BraTS2021_90000_flair.nii.gz').unlink()
    t2 = tmp_path/'BraTS2021_90002'/'BraTS2021_90002_t2.nii.gz'
    t2.write_bytes(t2.read_bytes()[:4000])
    r = brainkit('-q', 'scan', tmp_path)
    assert r.returncode == 1
    assert 'BraTS2021_90000_flair.nii.gz' in r.stderr and 'BraTS2021_90002_t2.nii.gz' in r.stderr
    assert '2 of 4 subjects have problems' in r.stderr
    assert '- BraTS2021_90001' not in r.stderr and '- BraTS2021_90003' not in r.stderr
    # headers only: the missing file is found, the truncated voxels are not read
    r = brainkit('-q', 'scan', '--headers-only', tmp_path)
    assert r.returncode == 1 and 'BraTS2021_90000_flair.nii.gz' in r.stderr
    # the fix the messages offer works from the command line: leave the bad subjects out
    r = brainkit('-q', 'scan', tmp_path, '--exclude', 'BraTS2021_90000', 'BraTS2021_90002')
    assert r.returncode == 0 and 'all 2 subjects passed' in r.stdout, r.stderr

def test_scan_of_an_unrecognised_folder_says_what_to_do(tmp_path):
    (tmp_path/'notes.txt').write_text('hello')
    r = brainkit('scan', tmp_path)
    assert r.returncode == 1 and 'matches no known dataset layout' in r.stderr and "dataset=" in r.stderr

def test_samples_verify_passes_and_catches_a_modified_file(tmp_path):
    r = brainkit('-q', 'samples', 'verify')
    assert r.returncode == 0 and 'match MANIFEST.json' in r.stdout
    # a copy with one file changed, and its manifest trimmed to the copied files
    root = samples_dir()
    manifest = json.loads((root/'MANIFEST.json').read_text())
    keep = [k for k in manifest['files'] if k.startswith('BraTS2021/BraTS2021_90000/')]
    for k in keep: (tmp_path/k).parent.mkdir(parents=True, exist_ok=True); shutil.copy(root/k, tmp_path/k)
    (tmp_path/'MANIFEST.json').write_text(json.dumps({**manifest, 'files': {k: manifest['files'][k] for k in keep}}))
    f = tmp_path/keep[0]; data = bytearray(f.read_bytes()); data[100] ^= 0xFF; f.write_bytes(bytes(data))
    r = brainkit('-q', 'samples', 'verify', '--dir', tmp_path)
    assert r.returncode == 1 and keep[0].split('/')[-1] in r.stderr and 'brainkit samples generate' in r.stderr

def test_samples_generate_missing_builds_a_small_folder(tmp_path, monkeypatch):
    # the same code path as `--generate-missing`, with fewer subjects to stay fast
    from brainkit.phantom import generate_samples, verify_samples
    m = generate_samples(tmp_path/'s', counts={'brats': 1, 'hcp': 1, 'ucsf': 1}, progress=False)
    # brats: 4 contrasts + seg + tissues; hcp: T1w, T2w + tissues + 4 oracle contrasts; ucsf: 8 + seg + tissues; README
    assert verify_samples(tmp_path/'s') == [] and len(m['files']) == 6 + 7 + 10 + 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')], "temporary folders left behind"

def _notebook(path, code):
    nb = nbformat.v4.new_notebook(); nb.cells = [nbformat.v4.new_code_cell(c) for c in code]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, path)

def test_lessons_run_every_notebook_and_survive_a_failure(tmp_path):
    nbs = tmp_path/'nbs'; nbs.mkdir()
    _notebook(nbs/'00_ok.ipynb', ['x = 1 + 1', 'print("two", x)'])
    _notebook(nbs/'01_broken.ipynb', ['raise ValueError("this lesson is broken")'])
    _notebook(nbs/'02_after.ipynb', ['from pathlib import Path; print(Path.cwd().name)'])
    _notebook(nbs/'index.ipynb', ['raise SystemExit("index is not a lesson")'])
    out = tmp_path/'runs'
    r = brainkit('-q', 'lessons', '--nbs', nbs, '--out', out)
    assert r.returncode == 1 and '01_broken.ipynb' in r.stderr
    summary = json.loads((out/'summary.json').read_text())
    assert {k: v['status'] for k,v in summary.items()} == {'00_ok.ipynb': 'ok', '01_broken.ipynb': 'failed', '02_after.ipynb': 'ok'}
    assert 'this lesson is broken' in summary['01_broken.ipynb']['error']
    assert (out/'01_broken.FAILED.ipynb').exists() and not (out/'01_broken.ipynb').exists()
    assert not list(out.glob('.*')), "a partial notebook was left behind"
    ran = nbformat.read(out/'02_after.ipynb', as_version=4)
    assert ran.cells[0].outputs[0]['text'].strip() == 'nbs'          # run from the notebooks' own folder
    assert str(out.resolve()) in r.stdout                            # says where the outputs are
    r = brainkit('-q', 'lessons', '--nbs', nbs, '--out', out, '--only', '00')
    assert r.returncode == 0 and list(json.loads((out/'summary.json').read_text())) == ['00_ok.ipynb']


def test_lessons_send_an_experiment_notebooks_out_dir_beside_its_executed_copy(tmp_path):
    nbs = tmp_path/'nbs'; nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("out_dir = 'runs/default'", metadata={'tags': ['parameters']}),
                nbformat.v4.new_code_cell("from pathlib import Path; Path(out_dir).mkdir(parents=True); (Path(out_dir)/'metrics.json').write_text('{}')")]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, nbs/'07_experiment.ipynb')
    r = brainkit('-q', 'lessons', '--nbs', nbs, '--out', tmp_path/'runs')
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'runs'/'07_experiment'/'metrics.json').is_file()
    assert not (nbs/'runs').exists()                                  # not into the notebooks' folder

# --- found by review ---

def test_info_describes_4d_files_atlases_and_nan_volumes_and_keeps_going(tmp_path):
    import nibabel as nib, numpy as np
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4)), tmp_path/'series.nii.gz')
    atlas = np.zeros((6, 6, 6), np.int16); atlas[1:3] = 2035; atlas[3:5] = 17
    nib.save(nib.Nifti1Image(atlas, np.eye(4)), tmp_path/'aparc+aseg.nii.gz')
    nan = np.ones((4, 4, 4), np.float32); nan[0, 0, :2] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path/'nan.nii.gz')
    r = brainkit('info', '--json', tmp_path/'series.nii.gz', tmp_path/'missing.nii.gz', tmp_path/'aparc+aseg.nii.gz',
                 tmp_path/'nan.nii.gz')
    assert r.returncode == 1 and 'missing.nii.gz: no such file' in r.stderr      # reported, and the others still described
    series, atlas_d, nan_d = map(json.loads, r.stdout.splitlines())
    assert series['shape'] == [4, 4, 4, 3] and '3 volumes' in series['note']
    assert atlas_d['labels'] == {'0': 72, '17': 72, '2035': 72}
    assert nan_d['nonfinite_voxels'] == 2


def test_lessons_run_in_this_interpreter_even_if_another_python3_kernel_is_registered(tmp_path):
    nbs = tmp_path/'nbs'; nbs.mkdir()
    _notebook(nbs/'00_which.ipynb', ['import sys; print(sys.prefix)'])
    decoy = tmp_path/'jupyter'/'kernels'/'python3'; decoy.mkdir(parents=True)
    (decoy/'kernel.json').write_text(json.dumps({'argv': ['/usr/bin/false', '{connection_file}'], 'display_name': 'decoy',
                                                 'language': 'python'}))
    r = brainkit('-q', 'lessons', '--nbs', nbs, '--out', tmp_path/'runs', env={'JUPYTER_PATH': str(tmp_path/'jupyter')})
    assert r.returncode == 0, r.stderr
    ran = nbformat.read(tmp_path/'runs'/'00_which.ipynb', as_version=4)
    assert ran.cells[0].outputs[0]['text'].strip() == sys.prefix          # this environment, not the decoy
    assert 'without encryption' not in r.stderr


def test_generate_missing_does_not_touch_a_folder_of_other_files(tmp_path):
    (tmp_path/'keep.txt').write_text('mine')
    r = brainkit('-q', 'samples', 'verify', '--dir', tmp_path, '--generate-missing')
    assert r.returncode == 1 and 'refusing to replace' in r.stderr and (tmp_path/'keep.txt').read_text() == 'mine'


# --- issue 12: checked against other tools (nibabel, FSL, ITK-SNAP) ---

def _scaled_int16(write_raw_nifti, path, raw, slope, inter, intent=None):
    "An int16 file whose header really stores scl_slope/scl_inter (written by hand, so nibabel cannot rescale it)."
    import nibabel as nib
    hdr = nib.Nifti1Header(); hdr.set_data_shape(raw.shape); hdr.set_data_dtype(np.int16)
    hdr.set_qform(np.eye(4), 1); hdr.set_sform(np.eye(4), 1)
    hdr['scl_slope'], hdr['scl_inter'] = slope, inter
    if intent: hdr.set_intent(intent)
    return write_raw_nifti(path, hdr, raw.astype(np.int16))


def _info_json(*files):
    r = brainkit('info', '--json', *files)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_info_reports_the_scaling_nibabel_moves_onto_the_data(tmp_path, raw_nifti):
    raw = np.arange(60).reshape(3, 4, 5) % 7
    scaled, = _info_json(_scaled_int16(raw_nifti, tmp_path/'scaled.nii.gz', raw, 2.0, 5.0))
    assert scaled['scaling'] == [2.0, 5.0]
    plain, = _info_json(samples_dir('brats')/'BraTS2021_90000'/'BraTS2021_90000_t1.nii.gz')
    assert plain['scaling'] == [1.0, 0.0]


def test_info_says_a_volume_is_oblique_and_what_axial_means_then(tmp_path):
    import nibabel as nib
    t = np.radians(10)
    aff = np.eye(4); aff[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    nib.save(nib.Nifti1Image(np.random.default_rng(0).uniform(1, 2, (6, 7, 8)).astype(np.float32), aff), tmp_path/'obl.nii.gz')
    t1 = samples_dir('brats')/'BraTS2021_90000'/'BraTS2021_90000_t1.nii.gz'
    obl, straight = _info_json(tmp_path/'obl.nii.gz', t1)
    assert abs(obl['obliquity_deg'] - 10) < 0.01 and 'axial' in obl['oblique'] and 'voxel grid' in obl['oblique']
    assert straight['obliquity_deg'] == 0 and 'oblique' not in straight
    r = brainkit('info', tmp_path/'obl.nii.gz')
    assert r.returncode == 0 and '  oblique: ' in r.stdout and '10.0' in r.stdout


def test_info_tells_an_intensity_image_from_a_label_map(tmp_path):
    import nibabel as nib
    rng = np.random.default_rng(0)
    # an int16 T1 with 200 distinct values (a low-dynamic-range export), and an intent-label parcellation with 300 labels
    t1 = np.zeros((20, 20, 20), np.int16); t1[2:18, 2:18, 2:18] = rng.integers(100, 300, (16, 16, 16))
    nib.save(nib.Nifti1Image(t1, np.eye(4)), tmp_path/'t1.nii.gz')
    parc = nib.Nifti1Image(np.arange(8000, dtype=np.int16).reshape(20, 20, 20) % 300, np.eye(4))
    parc.header.set_intent('label'); nib.save(parc, tmp_path/'parc.nii.gz')
    # a FreeSurfer aseg-like map: 49 codes (up to 255), no intent -> unsure: both summaries, every code listed
    codes = np.r_[0, 2:15, 16:19, 24, 26, 28, 30, 31, 41:55, 58, 60, 62, 63, 72, 77, 80, 85, 251:256].astype(np.int16)
    aseg = rng.choice(codes, (20, 20, 20))
    nib.save(nib.Nifti1Image(aseg, np.eye(4)), tmp_path/'aseg.nii.gz')
    seg = samples_dir('brats')/'BraTS2021_90000'/'BraTS2021_90000_seg.nii.gz'
    t1_d, parc_d, aseg_d, seg_d = _info_json(tmp_path/'t1.nii.gz', tmp_path/'parc.nii.gz', tmp_path/'aseg.nii.gz', seg)
    assert t1_d['kind'] == 'intensities' and 'labels' not in t1_d and t1_d['distinct_values'] == 201
    assert 100 <= t1_d['intensity_percentiles_nonzero']['50'] <= 300
    assert parc_d['kind'] == 'label map' and parc_d['intent'] == 'label' and len(parc_d['labels']) == 300
    assert len(codes) == 49 and aseg_d["kind"] == "could be a label map" and len(aseg_d["labels"]) == 49
    assert 'intensity_percentiles_nonzero' in aseg_d                 # unsure: both summaries
    assert seg_d['kind'] == 'label map' and set(seg_d['labels']) <= {'0', '1', '2', '4'}
    assert 'intensity_percentiles_nonzero' not in seg_d


# --- issue 13: nothing silent, every message clear ---

def test_global_options_may_follow_any_command(tmp_path):
    "`brainkit scan DIR -q` was refused (exit 2): -q had to come first. Every command, nested ones too, takes it anywhere."
    r = brainkit('scan', samples_dir('brats'), '-q')
    assert r.returncode == 0 and 'passed' in r.stdout and 'subjects' not in r.stderr, r.stderr   # no progress bar
    r = brainkit('samples', 'verify', '-q')
    assert r.returncode == 0, r.stderr
    r = brainkit('info', samples_dir('brats')/'BraTS2021_90000'/'BraTS2021_90000_seg.nii.gz', '--quiet')
    assert r.returncode == 0, r.stderr
    from brainkit.cli import _subparsers, parser
    p = parser()
    assert [sp.prog for sp in _subparsers(p) if not any('-q' in a.option_strings for a in sp._actions)] == []
    assert p.parse_args(['-q', 'samples', 'verify']).quiet is True          # given first: not undone by the command's copy
    assert p.parse_args(['samples', 'verify']).quiet is False


def test_info_shows_intensities_of_an_integer_image_with_many_values(tmp_path):
    "An int16 T1 with ~200 grey levels spread over its range printed a 200-entry label histogram."
    import nibabel as nib
    rng = np.random.default_rng(1)
    levels = np.unique(rng.choice(np.arange(1, 4000), 200, replace=False))      # sparse: 200 values over 0..4000
    t1 = np.zeros((20, 20, 20), np.int16); t1[2:18, 2:18, 2:18] = rng.choice(levels, (16, 16, 16))
    nib.save(nib.Nifti1Image(t1, np.eye(4)), tmp_path/'t1.nii.gz')
    seg = np.zeros((20, 20, 20), np.uint8); seg[5:15, 5:15, 5:15] = rng.choice(np.array([1, 2, 4], np.uint8), (10, 10, 10))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), tmp_path/'seg.nii.gz')
    t1_d, seg_d = _info_json(tmp_path/'t1.nii.gz', tmp_path/'seg.nii.gz')
    assert t1_d['kind'] == 'intensities' and 'labels' not in t1_d and t1_d['distinct_values'] == 201
    assert 1 <= t1_d['intensity_percentiles_nonzero']['50'] <= 4000
    assert seg_d['kind'] == 'label map' and set(seg_d['labels']) == {'0', '1', '2', '4'}
    assert 'intensity_percentiles_nonzero' not in seg_d
    r = brainkit('info', tmp_path/'t1.nii.gz')                               # the text form: a few lines, no histogram
    assert r.returncode == 0 and 'labels' not in r.stdout and len(r.stdout.splitlines()) < 20, r.stdout


def test_training_commands_take_every_config_field_and_exclude(tmp_path):
    "A tuple field with an empty default (TrainConfig.exclude) becomes `--exclude ID...`; every config field is an option."
    import dataclasses
    from brainkit.cli import _config_from, parser
    from brainkit.gan import translators
    from brainkit.segment import SegConfig
    p = parser()
    a = p.parse_args(['segment', 'train', '--out', 'x', '--exclude', 'BraTS2021_90001', 'BraTS2021_90005'])
    assert _config_from(a, SegConfig).exclude == ('BraTS2021_90001', 'BraTS2021_90005')
    for name, model in translators().items():
        a = p.parse_args(['train', name, '--out', 'x', '--exclude', 'A', 'B'])
        assert _config_from(a, model.Config).exclude == ('A', 'B'), name
        assert _config_from(p.parse_args(['train', name, '--out', 'x']), model.Config) == model.Config()   # defaults kept
    cmds = p._subparsers._group_actions[0].choices
    trains = {'segment train': (cmds['segment']._subparsers._group_actions[0].choices['train'], SegConfig),
              **{f'train {n}': (cmds['train']._subparsers._group_actions[0].choices[n], m.Config) for n, m in translators().items()}}
    for what, (sp, cls) in trains.items():
        opts = {o for a in sp._actions for o in a.option_strings}
        assert {'--' + f.name.replace('_', '-') for f in dataclasses.fields(cls)} <= opts, what
        assert '--exclude' in opts and '--split-file' in opts, what          # (cyclegan's split_file: the lead's field)
    r = brainkit('train', 'cyclegan', '--help')
    assert r.returncode == 0 and '--exclude ID [ID ...]' in r.stdout and '(default none)' in r.stdout
