"Shared fixtures for brainkit's tests: tiny synthetic NIfTI files in tmp_path, and the bundled samples."
import os

os.environ.setdefault('MPLBACKEND', 'Agg')  # no display in CI; set before anything imports matplotlib
# CI pairs CPU torch with a CUDA torchvision wheel: let brainkit.metrics import pytorch-fid with placeholder op schemas
os.environ.setdefault('BRAINKIT_TORCHVISION_PLACEHOLDER', '1')
import tempfile as _tempfile
# a default slice cache (no `cache=` given) must not land in $HOME during tests
os.environ.setdefault('BRAINKIT_CACHE', os.path.join(_tempfile.gettempdir(), 'brainkit-test-cache'))

import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainkit.io import samples_dir

TESTS_DIR = Path(__file__).resolve().parent
REPO_SAMPLES = TESTS_DIR.parent/'data_samples'
# The tests of the machinery (readers, training, resume, the command line) see the first TEST_BRATS BraTS-like subjects
# of the samples and all of the other sites: nothing they check depends on how many subjects a site has, and their
# trainings get shorter (measured serially: 827 s against 863 s with all 30). The tests of the samples themselves (test_phantom: coverage of every
# position bin, sizes, the tumour-volume distribution, regeneration) use the whole folder: that module's own `samples` fixture.
TEST_BRATS = 8


def _test_samples(full:Path) -> Path:
    "A copy of `full` with only its first TEST_BRATS BraTS-like subjects, and a manifest of what it holds."
    import atexit, json, shutil
    tmp = _tempfile.mkdtemp(prefix='brainkit-test-samples-')
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    dst = Path(tmp)/'data_samples'
    m = json.loads((full/'MANIFEST.json').read_text())
    keep = sorted(p.name for p in (full/'BraTS2021').iterdir() if p.is_dir())[:TEST_BRATS]
    def kept(rel): return not rel.startswith('BraTS2021/') or rel.split('/')[1] in keep
    for rel in filter(kept, m['files']):
        (dst/rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(full/rel, dst/rel)
    for f in full.iterdir():
        if f.is_file() and f.name != 'MANIFEST.json': shutil.copy2(f, dst/f.name)
    m['files'] = {k: v for k, v in m['files'].items() if kept(k)}
    m['content'] = {k: v for k, v in m.get('content', {}).items() if kept(k)}
    m['counts'] = {**m['counts'], 'brats': len(keep)}
    (dst/'MANIFEST.json').write_text(json.dumps(m, indent=1))
    return dst


if 'BRAINKIT_SAMPLES' not in os.environ and (REPO_SAMPLES/'MANIFEST.json').is_file():
    os.environ['BRAINKIT_SAMPLES'] = str(_test_samples(REPO_SAMPLES))  # subprocesses (the `brainkit` command) inherit it


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: a test that takes tens of seconds (still runs by default; deselect with -m "not slow")')


# Seconds per test file (pytest --durations=0 on 2 workers, 2026-12-03). `pytest -n 2 --dist loadfile` hands files to
# the workers in collection order, so the heaviest go first: a long file collected last would leave one worker
# running alone at the end. Files not listed (all under 20 s) follow in their usual order.
FILE_SECONDS = {'test_segment.py': 99, 'test_run_faults.py': 98, 'test_translate.py': 90, 'test_phantom.py': 80,
                'test_translation_models.py': 80, 'test_strategies.py': 78, 'test_experiments.py': 49, 'test_ddp.py': 46,
                'test_metrics.py': 39, 'test_cli.py': 39, 'test_cli_faults.py': 33}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))     # (a stable sort: each file keeps its own order)


def write_nifti(path, data, affine=None, qform_code=1, sform_code=1, dtype=None, descrip=None) -> Path:
    "Write `data` to `path` (.nii or .nii.gz) with nibabel, with explicit qform/sform codes."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    affine = np.eye(4) if affine is None else np.asarray(affine, float)
    img = nib.Nifti1Image(data, affine)
    if dtype is not None: img.set_data_dtype(dtype)
    img.header.set_qform(affine if qform_code else None, code=qform_code)
    img.header.set_sform(affine if sform_code else None, code=sform_code)
    if descrip is not None: img.header['descrip'] = descrip
    nib.save(img, path)
    return path


def write_raw_nifti(path, hdr: nib.Nifti1Header, data: np.ndarray) -> Path:
    "Write a single-file NIfTI-1 by hand (header bytes + Fortran-order voxels), so nibabel cannot rescale it."
    path = Path(path)
    hdr = hdr.copy()
    hdr['vox_offset'] = 352
    hdr['magic'] = b'n+1'
    blob = hdr.binaryblock + b'\0' * 4 + np.asarray(data).tobytes(order='F')
    path.write_bytes(gzip.compress(blob, mtime=0) if path.name.endswith('.gz') else blob)
    return path


@pytest.fixture
def nifti():
    "The `write_nifti` helper, as a fixture."
    return write_nifti


@pytest.fixture
def raw_nifti():
    "The `write_raw_nifti` helper, as a fixture."
    return write_raw_nifti


@pytest.fixture(scope='session')
def samples() -> Path:
    "The samples folder the tests use (the bundled one with TEST_BRATS BraTS-like subjects), found the way users find it."
    root = samples_dir()
    assert (root/'MANIFEST.json').is_file()
    return root


BRATS21_MODS = ('t1', 't1ce', 't2', 'flair', 'seg')


def make_brats21_subject(root, sid, shape=(4, 5, 6), affine=None, skip=(), overrides=None, seed=0) -> Path:
    """A tiny BraTS 2021 subject folder `root/sid` with every modality (minus `skip`).
    `overrides` maps a modality to (data, affine) replacing the default; images are positive float32,
    the seg holds labels 0/1/2/4."""
    rng = np.random.default_rng(seed)
    affine = np.diag([-1., -1., 1., 1.]) if affine is None else affine
    d = Path(root)/sid
    d.mkdir(parents=True, exist_ok=True)
    overrides = overrides or {}
    for m in BRATS21_MODS:
        if m in skip: continue
        if m in overrides: data, aff = overrides[m]
        elif m == 'seg':
            data, aff = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=shape), affine
        else:
            data, aff = rng.uniform(10, 100, shape).astype(np.float32), affine
        write_nifti(d/f'{sid}_{m}.nii.gz', data, aff)
    return d


@pytest.fixture
def brats_subject():
    "The `make_brats21_subject` helper, as a fixture."
    return make_brats21_subject


@pytest.fixture(scope='module')
def one_torch_thread():
    """One torch thread for a module's tests, as in the `brainkit` subprocesses they start (OMP_NUM_THREADS=1): on a busy
    2-core machine more threads only spin against each other."""
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


EXE = Path(sys.executable).parent/'brainkit'   # the installed command, beside this interpreter
ONE_THREAD = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}


def run_main(argv, env=None, cwd=None):
    """`brainkit.cli.main(argv)` in this process, as `subprocess.run([brainkit, *argv], capture_output=True, text=True)`
    would see it: stdout and stderr captured (prints, progress bars, the command's log lines and Python warnings), the
    exit status of `main` (argparse's exit, 1 and a traceback for an exception that escapes), one math thread, and
    `env` and `cwd` set for the call only.

    Starting a `brainkit` process costs 2-5 s of CPU (Python, torch and the parsers), and the tests start hundreds: so
    the tests of what a command does run it here. The tests of the process itself (the installed entry point, a kill
    with SIGKILL and the resume after it, distributed runs, sweeps' worker processes) start real processes."""
    import contextlib, io, logging, subprocess, traceback, warnings
    import torch
    from brainkit.cli import main
    out, err = io.StringIO(), io.StringIO()
    root, bk = logging.getLogger(), logging.getLogger('brainkit')
    levels, handler = (root.level, bk.level), logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter('%(message)s'))   # as `main`'s logging.basicConfig in a fresh process
    old_env, old_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    def show(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None: os.chdir(cwd)
        torch.set_num_threads(1)
        root.addHandler(handler); root.setLevel(logging.WARNING)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter('default'); warnings.showwarning = show
            try: code = main([str(a) for a in argv])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if isinstance(e.code, str): print(e.code, file=err)
            except BaseException:
                traceback.print_exc(file=err); code = 1
    finally:
        root.removeHandler(handler); root.setLevel(levels[0]); bk.setLevel(levels[1])
        torch.set_num_threads(threads)
        os.chdir(old_cwd)
        os.environ.clear(); os.environ.update(old_env)
    return subprocess.CompletedProcess(['brainkit', *map(str, argv)], code or 0, out.getvalue(), err.getvalue())


def brainkit_cli(*args, env=None, cwd=None, process=False, **kw):
    """The `brainkit` command, quiet, with one math thread: in this process (`run_main`), or in a subprocess, as a
    user starts it, with `process=True` (or any other `subprocess.run` keyword)."""
    import subprocess
    argv = ['-q', *map(str, args)]
    if not process and not kw: return run_main(argv, {**ONE_THREAD, **(env or {})}, cwd)
    return subprocess.run([str(EXE), *argv], capture_output=True, text=True, env={**os.environ, **ONE_THREAD, **(env or {})},
                          cwd=cwd, timeout=600, **kw)


def trained_run(factory, name:str, *argv) -> Path:
    "A run folder trained by `brainkit *argv --out <tmp>/<name>/run` (for module-scoped fixtures); fails on a non-zero exit."
    out = factory.mktemp(name)/'run'
    r = brainkit_cli(*argv, '--out', out)
    assert r.returncode == 0, r.stderr
    return out
