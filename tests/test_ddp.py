"""Distributed training on CPU, as users start it: `torchrun` with 2 processes and the gloo backend. Both ranks must
hold identical weights after a few steps, the result must equal a single-process run on the same global batch (up to
float tolerance), and `brainkit train` under torchrun must log and checkpoint once (rank 0)."""
import json, math, os, subprocess, sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _ddp_script import CYC, DTYPE, P2P, SIZE  # noqa: E402

from brainkit.cyclegan import CycleGAN, CycleGANConfig
from brainkit.pix2pix import Pix2Pix, Pix2PixConfig
from brainkit.train import seed_everything

BIN = Path(sys.executable).parent
SCRIPT = Path(__file__).parent/'_ddp_script.py'
ENV = {**{k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')},
       'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
STEPS, B = 3, 2                                                  # 3 updates; per-rank batch 2, global batch 4


pytestmark = pytest.mark.usefixtures('one_torch_thread')   # (conftest.py)


def sh(*args, timeout=300):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "The same few updates twice: torchrun with 2 processes (batch B each), and one plain process (batch 2B)."
    out = tmp_path_factory.mktemp('ddp')
    r = sh(BIN/'torchrun', '--standalone', '--nproc_per_node', 2, SCRIPT, out/'ddp', '--batch-size', B, '--steps', STEPS)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = sh(sys.executable, SCRIPT, out/'single', '--batch-size', 2 * B, '--steps', STEPS)
    assert r.returncode == 0, r.stderr[-3000:]
    load = lambda p: torch.load(p, weights_only=True)
    return load(out/'ddp'/'rank0.pt'), load(out/'ddp'/'rank1.pt'), load(out/'single'/'rank0.pt')


def build(model):
    "The model the script trains, freshly initialized from its seed and in its dtype (as every process does)."
    seed_everything(0)
    dtype = torch.get_default_dtype(); torch.set_default_dtype(DTYPE)
    try: return Pix2Pix(Pix2PixConfig(**P2P)) if model == 'pix2pix' else CycleGAN(CycleGANConfig(**CYC))
    finally: torch.set_default_dtype(dtype)


def test_the_ranks_share_the_global_batch_of_the_single_process(runs):
    r0, r1, single = runs
    assert (r0['world'], r1['world'], single['world']) == (2, 2, 1)
    for model in ('pix2pix', 'cyclegan'):
        a, b, s = r0['seen'][model], r1['seen'][model], single['seen'][model]
        assert all(len(x) == B for x in a + b) and all(len(x) == 2 * B for x in s)
        for step in range(STEPS):
            assert not set(a[step]) & set(b[step])                 # each rank its own share of the batch ...
            assert sorted(a[step] + b[step]) == sorted(s[step])    # ... and together the single process's batch


@pytest.mark.parametrize('model', ['pix2pix', 'cyclegan'])
def test_both_ranks_hold_identical_weights(runs, model):
    r0, r1, _ = runs
    assert set(r0[model]) == set(build(model).nets)
    init = {k: n.state_dict() for k, n in build(model).nets.items()}
    for net in r0[model]:
        for k in r0[model][net]:
            assert torch.equal(r0[model][net][k], r1[model][net][k]), (net, k)   # bitwise: gradients were all-reduced
        # and they trained: the weights moved away from the (seeded, shared) initialization
        assert any(not torch.equal(r0[model][net][k], init[net][k]) for k in r0[model][net]), net


@pytest.mark.parametrize('model', ['pix2pix', 'cyclegan'])
def test_ddp_equals_one_process_on_the_same_global_batch(runs, model):
    """Weights and outputs on a fixed input agree to float64 rounding, far below what any lost or mis-scaled gradient
    share would move them (Adam steps of up to lr = 5e-4 and 1e-3 here).

    The runs are in float64 (tests/_ddp_script.py says why: in float32 one ReLU input within rounding noise of 0 can
    flip its mask in one run only, a chance the sample data sets). Measured (phantom v1 and v2 samples): weight
    matrices differ by <= 4e-14. Biases differ more, <= 2.2e-9: a conv bias directly before an InstanceNorm has
    (mathematically) zero gradient, the norm subtracts the per-channel mean; its rounding noise (~1e-13 in float64,
    ~1e-9 in float32) differs between one process and an all-reduced average of two, and Adam divides by the
    gradient's own magnitude plus eps = 1e-8, so each step moves it by up to lr * noise / eps (in float32, where noise
    >> eps, by +-lr: those biases then needed a bound of ~2 * lr * steps). Tolerances: 1e-10 for matrices and
    outputs, 1e-6 for biases (< lr / 100)."""
    r0, _, single = runs
    for net in r0[model]:
        for k, w in r0[model][net].items():
            s = single[model][net][k]
            assert w.dtype == s.dtype == DTYPE, (net, k, w.dtype)
            if w.ndim > 1: torch.testing.assert_close(w, s, rtol=0, atol=1e-10, msg=f'{model} {net} {k}')
            else: torch.testing.assert_close(w, s, rtol=0, atol=1e-6, msg=f'{model} {net} {k}')
    g = torch.Generator().manual_seed(7)
    a, b = build(model), build(model)
    for n in a.nets.values(): n.eval()
    for n in b.nets.values(): n.eval()
    for name in a.nets:
        a.nets[name].load_state_dict(r0[model][name]); b.nets[name].load_state_dict(single[model][name])
        in_ch = a.nets[name].spec['in_ch']
        x = torch.rand(3, in_ch, SIZE, SIZE, generator=g, dtype=DTYPE) * 2 - 1
        with torch.no_grad(): ya, yb = a.nets[name](x), b.nets[name](x)
        assert ya.abs().max() > 1e-3                                 # a real output, not a dead network
        torch.testing.assert_close(ya, yb, rtol=0, atol=1e-10, msg=f'{model} {name} outputs')


def torchrun_cyclegan(out, *extra):
    return sh(BIN/'torchrun', '--standalone', '--nproc_per_node', 2, '--no-python', BIN/'brainkit', '-q', 'train', 'cyclegan',
              '--out', out, '--size', 32, '--ngf', 4, '--ndf', 4, '--batch-size', 4, '--sample-every', 0, '--device', 'cpu',
              '--min-brain', 0.6, '--spacing', 4.8, *extra)


@pytest.fixture(scope='module')
def whole_run(tmp_path_factory):
    "Two epochs of a 2-process CycleGAN run in one go (image pools on: each process has its own)."
    out = tmp_path_factory.mktemp('torchrun')/'run'
    r = torchrun_cyclegan(out, '--epochs', 1, '--epochs-decay', 1)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


def test_a_distributed_run_resumes_exactly_with_every_process_s_pools_and_random_states(whole_run, tmp_path):
    out, _ = whole_run
    r = torchrun_cyclegan(tmp_path/'run', '--epochs', 1, '--epochs-decay', 0)           # stopped after epoch 1 ...
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp_path/'run'/'checkpoint.pt', weights_only=True)
    assert len(ck['ranks']) == 2 and all(len(x['extras']['pool_A']['images']) > 0 for x in ck['ranks'])
    assert not torch.equal(ck['ranks'][0]['rng']['torch'], ck['ranks'][1]['rng']['torch'])   # each process its own draws
    r = torchrun_cyclegan(tmp_path/'run', '--epochs', 1, '--epochs-decay', 1)           # ... and continued to epoch 2
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(out/'checkpoint.pt', weights_only=True)
    b = torch.load(tmp_path/'run'/'checkpoint.pt', weights_only=True)
    for net in a['nets']:
        for k in a['nets'][net]: assert torch.equal(a['nets'][net][k], b['nets'][net][k]), (net, k)
    assert [h['cycle_A'] for h in a['history']] == [h['cycle_A'] for h in b['history']]


def test_brainkit_train_under_torchrun_logs_and_checkpoints_once(whole_run):
    out, r = whole_run
    assert r.stdout.count('trained 2 epochs on 2 process(es)') == 1            # rank 0 reports, rank 1 stays quiet
    m = json.loads((out/'metrics.json').read_text())
    assert m['processes'] == 2 and m['epochs'] == 2 and m['config']['batch_size'] == 4
    assert sorted(p.name for p in out.iterdir() if p.suffix == '.pt') == ['checkpoint.pt']
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]
    # each process sees ceil(n / 2) items an epoch, in batches of 4; only rank 0 writes a row per iteration
    n = max(m['train_slices']['A'], m['train_slices']['B'])
    per_epoch = math.ceil(math.ceil(n / 2) / 4)
    rows = (out/'iterations.csv').read_text().splitlines()
    assert [int(l.split(',')[1]) for l in rows[1:]] == list(range(1, 2 * per_epoch + 1))
    assert len((out/'iterations.jsonl').read_text().splitlines()) == 2 * per_epoch
    hist = json.loads((out/'history.json').read_text())
    assert [h['epoch'] for h in hist] == [1, 2] and all(math.isfinite(h['cycle_A']) for h in hist)
    ck = torch.load(out/'checkpoint.pt', weights_only=True)
    assert ck['kind'] == 'cyclegan' and ck['iteration'] == 2 * per_epoch
    assert not any(k.startswith('module.') for k in ck['nets']['G_A'])          # plain weights, not DDP's wrapper
    assert 0 < m['oracle']['psnr'] < 60 and -1 <= m['oracle']['ssim'] <= 1
