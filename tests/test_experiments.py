"""brainkit.experiments with real papermill kernels: run folders, parameter checks before any kernel, sweep files,
parallel sweeps with a failing run, resuming (also after a real SIGKILL of `brainkit sweep`), and the results table."""
import csv, io, json, os, signal, subprocess, sys, time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from brainkit.experiments import (ParameterError, RunError, SweepError, check_parameters, collect_results, kernel_threads, load_sweep,
                                  notebook_parameters, run_name, run_notebook, run_status, run_sweep, sweep_from_dict)

EXE = Path(sys.executable).parent/'brainkit'
PARAMS = "x = 1\nname = 'a'\nratio = 0.5\nfail = False\nsleep = 0.0\ntags = ['t']\nextra = None\nlog = ''\nout_dir = 'out'"


def demo_notebook(path:Path, params:str=PARAMS) -> Path:
    """A tiny experiment notebook: appends 'name x' to the file `log` when it starts (so tests count executions), sleeps,
    fails if asked, and writes out_dir/metrics.json (with its working folder and OMP_NUM_THREADS)."""
    nb = new_notebook(cells=[
        new_markdown_cell('# a demo experiment'),
        new_code_cell(params, metadata={'tags': ['parameters']}),
        new_code_cell("import json, os, time, pathlib\nif log:\n    with open(log, 'a') as f: f.write(f'{name} {x}\\n')\ntime.sleep(sleep)"),
        new_code_cell("if fail: raise ValueError(f'asked to fail (x={x})')"),
        new_code_cell("out = pathlib.Path(out_dir); out.mkdir(parents=True, exist_ok=True)\n"
                      "json.dump({'score': x * 2.0, 'nested': {'a': x, 'b': {'c': ratio}}, 'per_subject': [1, 2], 'label': name,\n"
                      "           'cwd': os.getcwd(), 'threads': os.environ.get('OMP_NUM_THREADS'), 'config': {'x': x}},\n"
                      "          open(out/'metrics.json', 'w'))")])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def executions(log:Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(autouse=True)
def _jupyter_runtime(monkeypatch, tmp_path_factory):
    "Kernel connection files out of $HOME when the caller did not choose a place."
    if 'JUPYTER_RUNTIME_DIR' not in os.environ:
        monkeypatch.setenv('JUPYTER_RUNTIME_DIR', str(tmp_path_factory.mktemp('jupyter-runtime')))


@pytest.fixture
def nb(tmp_path) -> Path:
    return demo_notebook(tmp_path/'nbs'/'demo.ipynb')


def cli(*argv) -> tuple[int, str, str]:
    "`brainkit *argv` in this process: (exit code, stdout, stderr)."
    from brainkit.cli import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err): code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# --- names and parameters (no kernel) ---------------------------------------------------------------------------

def test_run_names_are_stable_safe_and_distinct():
    assert run_name({'seed': 0, 'model': 'pix2pix'}) == run_name({'model': 'pix2pix', 'seed': 0}) == 'model=pix2pix,seed=0'
    assert run_name({}) == 'defaults'
    assert run_name({'lr': 0.001, 'flag': True, 'data': None, 'mods': ['t1', 't2']}) == 'data=None,flag=True,lr=0.001,mods=t1+t2'
    names = {run_name(p) for p in ({'d': '/a/b'}, {'d': '/a_b'}, {'d': 'a,b'}, {'d': 'a=b'}, {'d': ['a+b']}, {'d': ['a', 'b']},
                                    {'d': {'k': 1}}, {'d': '../..'}, {'d': 'x' * 300}, {'d': 'y' * 300})}
    assert len(names) == 10                                   # different parameters never share a folder
    for n in names:
        assert len(n) <= 80 and '/' not in n and n not in ('.', '..') and all(c.isalnum() or c in '._=,+-' for c in n)
    assert run_name({'d': '/a/b'}) == run_name({'d': '/a/b'})   # hashed names are stable too


def test_notebook_parameters_and_a_notebook_without_them(nb, tmp_path):
    p = notebook_parameters(nb)
    assert list(p) == ['x', 'name', 'ratio', 'fail', 'sleep', 'tags', 'extra', 'log', 'out_dir']
    assert (p['x'].default, p['x'].type, p['ratio'].type, p['extra'].type, p['tags'].default) == (1, 'int', 'float', 'NoneType', ['t'])
    plain = tmp_path/'plain.ipynb'
    nbformat.write(new_notebook(cells=[new_code_cell('x = 1')]), plain)
    with pytest.raises(ParameterError, match="has no cell tagged `parameters`") as e: notebook_parameters(plain)
    assert 'plain.ipynb' in str(e.value) and 'Fix:' in str(e.value)
    with pytest.raises(ParameterError, match='no such notebook'): notebook_parameters(tmp_path/'absent.ipynb')


@pytest.mark.parametrize('params,message', [
    ({'nmae': 'b'}, "no parameter 'nmae' (did you mean 'name'?)"),
    ({'x': 1.5}, "x = 1.5 is a float, but its default 1 is an int"),
    ({'x': True}, "x = True is a bool, but its default 1 is an int"),
    ({'fail': 1}, "fail = 1 is an int, but its default False is a bool"),
    ({'name': 3}, "name = 3 is an int, but its default 'a' is a str"),
    ({'tags': 't'}, "tags = 't' is a str, but its default ['t'] is a list"),
    ({'ratio': '0.5'}, "ratio = '0.5' is a str"),
])
def test_wrong_parameters_are_refused_before_any_kernel(nb, tmp_path, params, message):
    with pytest.raises(ParameterError) as e: run_notebook(nb, params, tmp_path/'runs')
    assert message in str(e.value) and str(nb) in str(e.value) and 'Fix:' in str(e.value)
    assert not (tmp_path/'runs').exists()
    sweep = sweep_from_dict({'notebook': 'nbs/demo.ipynb', 'grid': {'extra': [1, 2]}, 'params': params}, tmp_path)
    with pytest.raises(ParameterError) as e: run_sweep(sweep, out=tmp_path/'sweep')
    assert message in str(e.value) and not (tmp_path/'sweep').exists()


def test_accepted_types_follow_the_defaults(nb):
    check_parameters(nb, {'x': 2, 'ratio': 1, 'fail': True, 'name': 'b', 'tags': [], 'extra': {'any': [1, None]}, 'sleep': 0})
    with pytest.raises(ParameterError, match='not plain data'): check_parameters(nb, {'extra': {1, 2}})
    with pytest.raises(ParameterError, match='out_dir is set by brainkit'): run_notebook(nb, {'out_dir': '/tmp/x'})


# --- one run ------------------------------------------------------------------------------------------------------

def test_run_notebook_records_the_run_in_its_folder(nb, tmp_path):
    log = tmp_path/'log.txt'
    folder = run_notebook(nb, {'x': 3, 'log': str(log)}, tmp_path/'runs', threads=1)
    assert folder == (tmp_path/'runs'/run_name({'x': 3, 'log': str(log)})).resolve()
    assert {p.name for p in folder.iterdir()} >= {'demo.ipynb', 'params.json', 'run.json', 'kernel.log', 'out'}
    rec = json.loads((folder/'params.json').read_text())
    assert (rec['params'], rec['out_dir'], rec['notebook']) == ({'x': 3, 'log': str(log)}, 'out', str(nb.resolve()))
    st = run_status(folder)
    assert st['status'] == 'done' and st['seconds'] > 0 and st['finished'] >= st['started']
    m = json.loads((folder/'out'/'metrics.json').read_text())      # out_dir went into the run folder
    assert (m['score'], m['cwd'], m['threads']) == (6.0, str(nb.parent.resolve()), '1')   # kernel in the notebook's folder
    executed = nbformat.read(folder/'demo.ipynb', as_version=4)
    assert any('injected-parameters' in c.metadata.get('tags', []) for c in executed.cells)
    assert executions(log) == ['a 3']
    # same parameters, skip_done: kept, not executed; other parameters into the same name: run again, from a clean folder
    (folder/'out'/'stale.txt').write_text('from before')
    assert run_notebook(nb, {'x': 3, 'log': str(log)}, tmp_path/'runs', skip_done=True) == folder and executions(log) == ['a 3']
    run_notebook(nb, {'x': 4, 'log': str(log)}, tmp_path/'runs', name=folder.name, skip_done=True)
    assert executions(log) == ['a 3', 'a 4'] and not (folder/'out'/'stale.txt').exists()


def test_a_failed_run_is_recorded_and_raised(nb, tmp_path):
    with pytest.raises(RunError, match=r"the run failed: ValueError: asked to fail \(x=1\)"):
        run_notebook(nb, {'fail': True}, tmp_path/'runs')
    folder = tmp_path/'runs'/'fail=True'
    st = run_status(folder)
    assert st['status'] == 'failed' and st['error'] == 'ValueError: asked to fail (x=1)'
    assert 'raise ValueError' in st['cell_source'][0] and st['traceback'][-1] == 'ValueError: asked to fail (x=1)'
    assert not (folder/'out'/'metrics.json').exists()
    assert run_notebook(nb, {'fail': True}, tmp_path/'runs', raise_errors=False) == folder.resolve()


def test_a_folder_brainkit_did_not_make_is_never_replaced(nb, tmp_path):
    mine = tmp_path/'runs'/'x=2'
    mine.mkdir(parents=True); (mine/'thesis.tex').write_text('precious')
    with pytest.raises(Exception, match='not a brainkit run folder'): run_notebook(nb, {'x': 2}, tmp_path/'runs')
    assert (mine/'thesis.tex').read_text() == 'precious'


# --- sweep files (no kernel) --------------------------------------------------------------------------------------

def test_sweep_files_in_yaml_and_json(nb, tmp_path, monkeypatch):
    (tmp_path/'sweeps').mkdir()
    y = tmp_path/'sweeps'/'grid.yaml'
    y.write_text("notebook: ../nbs/demo.ipynb\nparams: {ratio: 0.25}\ngrid:\n  x: [1, 2, 3]\n  name: [a, b]\n"
                 "runs:\n  - {x: 9}\nworkers: 2\ncolumns: [score, nested.*]\n")
    monkeypatch.chdir(tmp_path)
    s = load_sweep('sweeps/grid.yaml')
    assert s.notebook == nb.resolve() and s.workers == 2 and s.columns == ['score', 'nested.*']
    assert s.out == (tmp_path/'runs'/'sweeps'/'grid').resolve()        # default: runs/sweeps/<stem> in the current folder
    runs = s.expand()
    assert len(runs) == 3 * 2 + 1
    assert runs[0] == ('name=a,x=1', {'x': 1, 'name': 'a'}, {'ratio': 0.25, 'x': 1, 'name': 'a'})
    assert runs[-1] == ('x=9', {'x': 9}, {'ratio': 0.25, 'x': 9})
    j = tmp_path/'sweeps'/'list.json'
    j.write_text(json.dumps({'notebook': '../nbs/demo.ipynb', 'out': 'here', 'runs': [{'x': 1}, {'x': 2, 'fail': True}]}))
    s = load_sweep(j)
    assert s.out == (tmp_path/'sweeps'/'here').resolve() and [n for n, *_ in s.expand()] == ['x=1', 'fail=True,x=2']
    assert [n for n, *_ in sweep_from_dict({'notebook': 'nbs/demo.ipynb'}, tmp_path).expand()] == ['defaults']


@pytest.mark.parametrize('text,message', [
    ("notebook: a.ipynb\ngrids: {x: [1]}\n", "unknown setting(s) 'grids' (did you mean 'grid'?)"),
    ("notebook: a.ipynb\ngrid: {x: 1}\n", "grid: x is 1, not a list of values"),
    ("notebook: a.ipynb\ngrid: {x: []}\n", "grid: x is [], not a list of values"),
    ("notebook: a.ipynb\nruns: {x: 1}\n", "runs is not a list of mappings"),
    ("notebook: a.ipynb\nworkers: 0\n", "workers is 0"),
    ("notebook: a.ipynb\nruns: [{x: 1}, {x: 1}]\n", "runs 1 and 2 have the same parameters"),
    ("grid: {x: [1]}\n", "names no notebook"),
    ("notebook: a.ipynb\ngrid: {x: [1, 2\n", "is not valid YAML"),
    ("- just\n- a list\n", "holds a list, not a mapping of settings"),
])
def test_bad_sweep_files_say_what_to_fix(tmp_path, text, message):
    f = tmp_path/'s.yaml'
    f.write_text(text)
    with pytest.raises(SweepError) as e: load_sweep(f).expand()
    assert message in str(e.value) and 's.yaml' in str(e.value) and 'Fix:' in str(e.value)


def test_one_sweep_at_a_time_per_folder(nb, tmp_path):
    import fcntl
    (tmp_path/'sweep').mkdir()
    with open(tmp_path/'sweep'/'.sweep.lock', 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(Exception, match='is in use by another sweep'):
            run_sweep(sweep_from_dict({'notebook': 'nbs/demo.ipynb'}, tmp_path), out=tmp_path/'sweep')
    assert [p.name for p in (tmp_path/'sweep').iterdir()] == ['.sweep.lock']


# --- sweeps with kernels ------------------------------------------------------------------------------------------

def test_sweep_runs_in_parallel_records_a_failure_and_resumes(nb, tmp_path):
    log = tmp_path/'log.txt'
    f = tmp_path/'grid.yaml'
    f.write_text(f"notebook: nbs/demo.ipynb\nout: sweep\nparams:\n  log: {log}\n  sleep: 0.5\n"
                 "grid:\n  x: [1, 2]\nruns:\n  - {x: 3, fail: true}\nworkers: 2\ncolumns: [score, nested.*, label]\n")
    res = run_sweep(f, progress=False)
    out = tmp_path/'sweep'
    assert res.folder == out.resolve()
    assert [r['run'] for r in res.rows] == ['x=1', 'x=2', 'fail=True,x=3']
    assert [r['status'] for r in res.rows] == ['done', 'done', 'failed']
    assert res.params == ['x', 'fail'] and [r['fail'] for r in res.rows] == [False, False, True]   # defaults fill in
    assert res.metrics == ['score', 'nested.a', 'nested.b.c', 'label']
    assert [r['score'] for r in res.rows] == [2.0, 4.0, None] and res.rows[0]['nested.b.c'] == 0.5
    assert res.rows[2]['error'] == 'ValueError: asked to fail (x=3)'
    assert sorted(executions(log)) == ['a 1', 'a 2', 'a 3']
    threads = {json.loads((out/n/'out'/'metrics.json').read_text())['threads'] for n in ('x=1', 'x=2')}
    assert threads == {str(kernel_threads(2))}                       # the cores shared out between the 2 workers
    rows = list(csv.DictReader((out/'results.csv').open()))
    assert [r['status'] for r in rows] == ['done', 'done', 'failed'] and rows[1]['score'] == '4.0'
    assert rows[2]['error'] == 'ValueError: asked to fail (x=3)' and rows[2]['score'] == ''
    md = (out/'results.md').read_text()
    assert md.startswith('| run | x | fail | status | seconds | score | nested.a | nested.b.c | label |')
    assert '- `fail=True,x=3`: failed: ValueError: asked to fail (x=3)' in md
    assert (out/'results.png').read_bytes()[:4] == b'\x89PNG'
    assert json.loads((out/'sweep.json').read_text())['swept'] == ['x', 'fail']
    # rerun: the finished runs are skipped, the failed one runs again (and fails again)
    done_at = {n: run_status(out/n)['started'] for n in ('x=1', 'x=2')}
    res2 = run_sweep(f, progress=False)
    assert sorted(executions(log)) == ['a 1', 'a 2', 'a 3', 'a 3']
    assert {n: run_status(out/n)['started'] for n in done_at} == done_at and res2.rows[:2] == res.rows[:2]
    # `brainkit results` rebuilds the files from the run folders; a failed run makes the exit code 1
    for p in out.glob('results.*'): p.unlink()
    code, stdout, stderr = cli('results', out)
    assert code == 1 and stdout.startswith('| run | x | fail |') and '| x=2 | 2 | False | done |' in stdout
    assert 'failed: fail=True,x=3: ValueError: asked to fail (x=3)' in stderr
    assert {p.name for p in out.glob('results.*')} == {'results.csv', 'results.md', 'results.png'}


def test_results_of_runs_made_one_by_one(nb, tmp_path):
    for x in (1, 2): run_notebook(nb, {'x': x, 'ratio': 0.25}, tmp_path/'runs')
    res = collect_results(tmp_path/'runs', write=False)
    assert res.params == ['x'] and [r['score'] for r in res.rows] == [2.0, 4.0]
    assert res.metrics == ['score', 'nested.a', 'nested.b.c']          # numeric, not config.*, not lists or strings
    one = collect_results(tmp_path/'runs'/'ratio=0.25,x=2')
    assert one.params == ['x', 'ratio'] and (tmp_path/'runs'/'ratio=0.25,x=2'/'results.md').is_file()


# --- the command --------------------------------------------------------------------------------------------------

def test_sweep_command_errors_name_the_file_and_the_fix(nb, tmp_path):
    def check(text, message, name='s.yaml'):
        f = tmp_path/name
        f.write_text(text)
        code, out, err = cli('-q', 'sweep', f, '--out', tmp_path/'out')
        assert code == 1 and err.startswith('error: ') and message in err and 'Fix:' in err and 'Traceback' not in err, err
        assert not (tmp_path/'out').exists()
    check("notebook: nbs/demo.ipynb\ngrid: {x: [1, 2]}\nparams: {nmae: b}\n", "no parameter 'nmae' (did you mean 'name'?)")
    check("notebook: nbs/demo.ipynb\ngrid: {x: [1, 2.5]}\n", "x = 2.5 is a float, but its default 1 is an int (run x=2.5)")
    check("notebook: nbs/demo.ipynb\ngrid: {x: [1, 2\n", "is not valid YAML")
    check('{"notebook": "nbs/demo.ipynb", "grid": {"x": [1,]}}', "is not valid JSON", 's.json')
    check("notebook: nbs/nothing.ipynb\n", "nothing.ipynb: no such notebook")
    code, out, err = cli('sweep', tmp_path/'absent.yaml')
    assert code == 1 and 'absent.yaml: no such sweep file' in err
    code, out, err = cli('results', tmp_path/'nowhere')
    assert code == 1 and 'nowhere: no such folder' in err and 'Fix:' in err
    code, out, err = cli('results', tmp_path)
    assert code == 1 and 'holds no runs' in err


def test_a_killed_sweep_resumes_with_only_the_missing_runs(nb, tmp_path):
    "`brainkit sweep` is SIGKILLed (with its whole process group) in the middle of a run; the rerun completes only what is missing."
    log = tmp_path/'log.txt'
    f = tmp_path/'kill.yaml'
    f.write_text(f"notebook: nbs/demo.ipynb\nout: sweep\nparams:\n  log: {log}\n  sleep: 2.5\ngrid:\n  x: [1, 2, 3, 4]\nworkers: 1\n")
    out = tmp_path/'sweep'
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    cmd = [str(EXE), '-q', 'sweep', str(f)]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = {n: run_status(out/n) for n in ('x=1', 'x=2', 'x=3', 'x=4')}
            done = [n for n, s in st.items() if s['status'] == 'done']
            running = [n for n, s in st.items() if s['status'] == 'running' and 'kernel_pid' in s]
            if done and running and f'a {running[0][2:]}' in executions(log): break   # a run is mid-sleep
            assert p.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.1)
        else: pytest.fail(f"no run finished in time: {st}")
    finally: os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    interrupted, orphan = running[0], st[running[0]]['kernel_pid']
    # never taken for a finished run, nor (issue 13) for one still running: its process is gone
    killed = run_status(out/interrupted)
    assert killed['status'] == 'interrupted' and f'the process {p.pid} ended without recording a result' in killed['error']
    assert json.loads((out/interrupted/'run.json').read_text())['status'] == 'running'    # (reading changes nothing)
    code, table, err = cli('results', out)
    assert code == 1 and f'interrupted: {interrupted}: the process {p.pid} ended' in err, err
    before = executions(log)
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = executions(log)
    assert after[:len(before)] == before
    rerun = after[len(before):]
    assert sorted(rerun) == sorted(f'a {n[2:]}' for n in st if n not in done)          # only the missing runs ...
    assert f'a {interrupted[2:]}' in rerun and all(f'a {n[2:]}' not in rerun for n in done)   # ... the interrupted one again
    res = collect_results(out, write=False)
    assert [r['status'] for r in res.rows] == ['done'] * 4 and [r['score'] for r in res.rows] == [2.0, 4.0, 6.0, 8.0]
    assert '| x=4 | 4 | done |' in r.stdout
    assert not Path(f'/proc/{orphan}').exists() or b'ipykernel' not in Path(f'/proc/{orphan}/cmdline').read_bytes()


def test_a_metric_named_like_a_parameter_keeps_both(tmp_path):
    "Review finding: metrics.json may record a parameter (seed, epochs); the table keeps the parameter and renames the metric."
    nb = demo_notebook(tmp_path/'nb'/'demo.ipynb', PARAMS + "\nscore = -1.0")
    for s in (0.5, 1.5): run_notebook(nb, {'score': s}, tmp_path/'runs')
    res = collect_results(tmp_path/'runs', write=False)
    assert res.params == ['score'] and [r['score'] for r in res.rows] == [0.5, 1.5]
    assert 'metrics.score' in res.metrics and [r['metrics.score'] for r in res.rows] == [2.0, 2.0]
    assert res.markdown().splitlines()[0].count('| score |') == 1


def test_a_run_whose_process_ended_reads_interrupted(tmp_path):
    "Issue 13: a SIGKILLed sweep's runs stayed `running`, with 'no error recorded', in `brainkit results`."
    import socket
    from datetime import datetime, timezone
    ended = subprocess.Popen([sys.executable, '-c', 'pass']); ended.wait()          # a real process, ended
    now, here = datetime.now(timezone.utc).isoformat(timespec='seconds'), socket.gethostname()
    for x, host, pid in ((1, here, ended.pid), (2, 'gpu-node-7', ended.pid), (3, here, os.getpid())):
        d = tmp_path/'sweep'/f'x={x}'; d.mkdir(parents=True)
        (d/'params.json').write_text(json.dumps({'notebook': 'demo.ipynb', 'params': {'x': x}}))
        (d/'run.json').write_text(json.dumps({'status': 'running', 'started': now, 'host': host, 'pid': pid}))
    st = run_status(tmp_path/'sweep'/'x=1')
    assert st['status'] == 'interrupted' and st['recorded'] == 'running'
    assert f'the process {ended.pid} ended without recording a result' in st['error'] and 'rerun the sweep' in st['error']
    elsewhere = run_status(tmp_path/'sweep'/'x=2')                                  # another machine: cannot tell from here
    assert elsewhere['status'] == 'running' and 'gpu-node-7' in elsewhere['note']
    assert run_status(tmp_path/'sweep'/'x=3')['status'] == 'running'               # this very process: alive
    code, out, err = cli('results', tmp_path/'sweep')
    assert code == 1 and '| x=1 | 1 | interrupted |' in out, out
    assert f'interrupted: x=1: the process {ended.pid} ended' in err and 'running: x=2: running on gpu-node-7' in err
    assert 'no error recorded' not in err


def test_a_sweep_over_seeds_reports_mean_and_sd_per_group(tmp_path):
    "Issue 14: a results table shows the spread over seeds; a group of one seed shows a bare mean; failed runs are not pooled."
    nb = tmp_path/'nbs'/'seeded.ipynb'; nb.parent.mkdir()
    cells = [new_code_cell("model = 'a'\nseed = 0\nout_dir = 'out'", metadata={'tags': ['parameters']}),
             new_code_cell("import json, pathlib\nif seed == 9: raise ValueError('bad seed')\n"
                           "out = pathlib.Path(out_dir); out.mkdir(parents=True, exist_ok=True)\n"
                           "json.dump({'score': seed + (10.0 if model == 'b' else 0.0)}, open(out/'metrics.json', 'w'))")]
    book = new_notebook(cells=cells); book.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(book, nb)
    f = tmp_path/'seeds.yaml'
    f.write_text("notebook: nbs/seeded.ipynb\nout: sweep\nworkers: 2\nruns:\n  - {model: a, seed: 0}\n  - {model: a, seed: 2}\n"
                 "  - {model: a, seed: 9}\n  - {model: b, seed: 0}\n")
    code, stdout, stderr = cli('sweep', f, '-q')
    assert code == 1 and 'bad seed' in stderr                      # the failed run is reported, the others are summarized
    summary = (tmp_path/'sweep'/'summary.md').read_text().splitlines()
    assert summary[0].startswith('| model | n | seconds |') and summary[0].endswith('| score |')
    assert summary[2].startswith('| a | 2 |') and summary[2].endswith('| 1 ± 1.4 |')     # seeds 0 and 2: mean 1, sd sqrt(2)
    assert summary[3].startswith('| b | 1 |') and summary[3].endswith('| 10 |')          # one seed: no sd
    assert 'mean ± sd over seeds' in stdout and '| a | 2 |' in stdout


FUNCS = '''\
import json, os, time
from pathlib import Path

def run(x:int=1, mode:str='ok', out_dir:str='out'):
    "ok: write metrics.json (with the threads and folder it ran in); sleep; exit: end the process without a word; raise."
    if mode == 'sleep': time.sleep(60)
    if mode == 'exit': os._exit(3)
    if mode == 'raise': raise RuntimeError(f'x={x} raised')
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir)/'metrics.json').write_text(json.dumps({'score': 2 * x, 'cwd': os.getcwd(), 'threads': os.environ.get('OMP_NUM_THREADS')}))
'''


def test_a_sweep_of_a_function_records_how_each_run_ended(tmp_path):
    "A function's runs (each its own process, in the sweep file's folder): done, raised, died without a word, timed out."
    (tmp_path/'funcs_demo.py').write_text(FUNCS)
    (tmp_path/'s.yaml').write_text("function: funcs_demo:run\nout: sw\nworkers: 2\ngrid:\n  mode: [ok, raise, exit, sleep]\n")
    t0 = time.monotonic()
    res = run_sweep(tmp_path/'s.yaml', progress=False, timeout=8)
    assert time.monotonic() - t0 < 45
    by = {r['mode']: r for r in res.rows}
    assert by['ok']['status'] == 'done' and by['ok']['score'] == 2
    m = json.loads((tmp_path/'sw'/'mode=ok'/'out'/'metrics.json').read_text())
    assert Path(m['cwd']) == tmp_path and m['threads'] == str(kernel_threads(2))
    assert by['raise']['error'] == 'RuntimeError: x=1 raised'
    assert 'exit code 3' in by['exit']['error'] and 'timed out after 8 s' in by['sleep']['error']
    assert all(by[k]['status'] == 'failed' for k in ('raise', 'exit', 'sleep'))
    with pytest.raises(ParameterError, match="x = 'two' is a str"):
        run_sweep(sweep_from_dict({'function': 'funcs_demo:run', 'params': {'x': 'two'}}, base=tmp_path), progress=False)
    with pytest.raises(SweepError, match='names a notebook and a function'):
        sweep_from_dict({'function': 'funcs_demo:run', 'notebook': 'x.ipynb'})
    with pytest.raises(SweepError, match="write it as `function: module:function`"):
        sweep_from_dict({'function': 'funcs_demo.run'})
