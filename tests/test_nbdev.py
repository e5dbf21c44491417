"The notebooks are the source of truth: the library, the notebooks' clean form and README.md must all follow from them."
import shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def _copy_project(tmp: Path) -> Path:
    "A copy of what nbdev reads (settings.ini and nbs/) in `tmp`."
    shutil.copy(ROOT/'settings.ini', tmp/'settings.ini')
    shutil.copytree(ROOT/'nbs', tmp/'nbs', ignore=shutil.ignore_patterns('.ipynb_checkpoints', '__pycache__'))
    return tmp

def _py_files(lib: Path) -> dict:
    return {p.relative_to(lib).as_posix(): p.read_text(encoding='utf-8') for p in sorted(lib.rglob('*.py'))
            if '__pycache__' not in p.parts}

def test_library_is_exactly_what_nbdev_export_makes(tmp_path):
    proj = _copy_project(tmp_path)
    subprocess.run([str(BIN/'nbdev_export')], cwd=proj, check=True, capture_output=True)
    made, have = _py_files(proj/'brainkit'), _py_files(ROOT/'brainkit')
    assert made, "nbdev_export made no modules"
    assert sorted(made) == sorted(have), "brainkit/ and the notebooks' exports list different modules: run `make export`"
    for name in made:
        assert made[name] == have[name], f"brainkit/{name} differs from what nbdev_export makes from nbs/: edit the notebook, then run `make export`"

def test_nbdev_clean_leaves_notebooks_unchanged(tmp_path):
    proj = _copy_project(tmp_path)
    before = {p.name: p.read_bytes() for p in sorted((proj/'nbs').glob('*.ipynb'))}
    subprocess.run([str(BIN/'nbdev_clean')], cwd=proj, check=True, capture_output=True)
    after = {p.name: p.read_bytes() for p in sorted((proj/'nbs').glob('*.ipynb'))}
    changed = [n for n in before if before[n] != after[n]]
    assert not changed, f"nbdev_clean changes {changed}: run `make export` (or nbdev_clean) and commit the result"

def test_cleaning_keeps_the_papermill_parameters_tag(tmp_path):
    import json
    proj = _copy_project(tmp_path)
    nb = json.loads((proj/'nbs'/'00_io.ipynb').read_text())
    nb['cells'].insert(1, {'cell_type': 'code', 'id': 'feedc0de', 'metadata': {'tags': ['parameters']},
                           'source': ['out_dir = "runs"'], 'outputs': [], 'execution_count': None})
    (proj/'nbs'/'00_io.ipynb').write_text(json.dumps(nb))
    subprocess.run([str(BIN/'nbdev_clean'), '--fname', 'nbs/00_io.ipynb'], cwd=proj, check=True, capture_output=True)
    cleaned = json.loads((proj/'nbs'/'00_io.ipynb').read_text())
    assert cleaned['cells'][1]['metadata'] == {'tags': ['parameters']}

def test_readme_is_rendered_from_index_notebook():
    r = subprocess.run([sys.executable, str(ROOT/'.ci'/'readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

def test_settings_keep_the_nbdev2_layout():
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    d = cfg['DEFAULT']
    assert d['update_pyproject'] == 'False' and 'tags' in d['allowed_cell_metadata_keys'].split()
    assert not (ROOT/'pyproject.toml').exists(), "nbdev 3 layout (pyproject.toml) would break the nbdev 2 setup"
    assert 'torch==2.13.0' in (ROOT/'constraints.txt').read_text().split()
