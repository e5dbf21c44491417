"The training engine: atomic checkpoints, safe loading, architecture checks, exact resume, the LR schedule, logs."
import csv, json, os, pickle

import numpy as np
import pytest
import torch
from torch import nn

from brainkit import train as T
from brainkit.io import MissingFileError
from brainkit.losses import ImagePool


def toy(out, seed=0, hidden=16, pool=False):
    T.seed_everything(seed)
    net = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 1))
    net.spec = {'kind': 'toy', 'hidden': hidden}
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    extras = {'pool': ImagePool(4, seed=seed)} if pool else {}
    return T.Run(out, 'toy', {'seed': seed, 'hidden': hidden}, {'net': net}, {'net': opt}, {'net': T.linear_decay(opt, 2, 2)}, extras)


def data(n=48):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    return torch.utils.data.TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5]))


def loader():
    return torch.utils.data.DataLoader(data(), batch_size=8, shuffle=True, generator=torch.Generator())


def stepper(run):
    net, opt, pool = run.nets['net'], run.optims['net'], run.extras.get('pool')
    def step(batch):
        x, y = batch
        out = net(x)[:, 0]
        loss = ((out - y) ** 2).mean()
        if pool is not None: loss = loss + 0 * pool.query(out[:, None].detach()).sum()
        opt.zero_grad(); loss.backward(); opt.step()
        return {'mse': loss.item(), 'noise': float(torch.rand(()))}   # global RNG use, as dropout makes
    return step


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    r = toy(tmp_path/'a', pool=True); full = T.fit(r, loader(), stepper(r), 5, progress=False)
    r = toy(tmp_path/'b', pool=True); T.fit(r, loader(), stepper(r), 2, progress=False)
    r = toy(tmp_path/'b', pool=True); resumed = T.fit(r, loader(), stepper(r), 5, progress=False)
    for k in ('mse', 'noise', 'lr'): assert [h[k] for h in resumed] == [h[k] for h in full], k
    for a, b in zip(r.nets['net'].state_dict().values(), toy(tmp_path/'a', pool=True).load().nets['net'].state_dict().values()):
        assert torch.equal(a, b)


def test_epochs_differ_in_data_order_but_repeat_under_the_same_seed(tmp_path):
    seen = []
    r = toy(tmp_path/'a')
    def step(batch):
        seen.append(batch[1][:3].tolist()); return {'x': 0.0}
    T.fit(r, loader(), step, 2, progress=False)
    per_epoch = len(seen) // 2
    assert seen[:per_epoch] != seen[per_epoch:]                      # reshuffled each epoch
    first = list(seen); seen.clear()
    T.fit(toy(tmp_path/'b'), loader(), step, 2, progress=False)
    assert seen == first


def test_logs_are_trimmed_back_to_the_checkpoint_on_resume(tmp_path):
    r = toy(tmp_path/'run'); T.fit(r, loader(), stepper(r), 2, progress=False)
    it = tmp_path/'run'/'iterations.csv'
    n = len(list(csv.DictReader(it.open())))
    with it.open('a') as f: f.write(f'3,{n + 1},-12345.5,0.1\n')     # logged by a run killed before its next checkpoint
    r = toy(tmp_path/'run'); T.fit(r, loader(), stepper(r), 3, progress=False)
    rows = list(csv.DictReader(it.open()))
    assert [int(x['iteration']) for x in rows] == list(range(1, len(rows) + 1))
    assert '-12345.5' not in it.read_text()                           # (a sentinel no real loss can take)
    hist = json.loads((tmp_path/'run'/'history.json').read_text())
    assert [h['epoch'] for h in hist] == [1, 2, 3]
    assert list(csv.DictReader((tmp_path/'run'/'history.csv').open()))[2]['epoch'] == '3'


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    r = toy(tmp_path/'run'); T.fit(r, loader(), stepper(r), 1, progress=False)
    before = (tmp_path/'run'/'checkpoint.pt').read_bytes()
    def boom(fd): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', boom)
    with pytest.raises(OSError): T.fit(r, loader(), stepper(r), 2, progress=False)
    monkeypatch.undo()
    assert (tmp_path/'run'/'checkpoint.pt').read_bytes() == before
    assert T.load_checkpoint(tmp_path/'run')['epoch'] == 1
    assert not [p for p in (tmp_path/'run').iterdir() if p.name.endswith('.tmp')]


def test_checkpoints_hold_plain_data_only(tmp_path):
    r = toy(tmp_path/'run', pool=True); T.fit(r, loader(), stepper(r), 1, progress=False)
    ck = torch.load(tmp_path/'run'/'checkpoint.pt', weights_only=True)   # would raise on any other object
    assert (ck['kind'], ck['epoch'], ck['config']['hidden']) == ('toy', 1, 16)
    assert set(ck) >= {'brainkit', 'nets', 'optims', 'scheds', 'extras', 'rng', 'specs', 'history', 'meta'}


def test_unsafe_truncated_foreign_and_missing_checkpoints_are_refused(tmp_path):
    class Evil:
        def __reduce__(self): return (os.system, ('touch ' + str(tmp_path/'pwned'),))
    with open(tmp_path/'evil.pt', 'wb') as f: pickle.dump({'brainkit': 1, 'nets': {}, 'x': Evil()}, f)
    torch.save({'brainkit': '0', 'nets': {}, 'x': Evil()}, tmp_path/'evil2.pt')
    for p in ('evil.pt', 'evil2.pt'):
        with pytest.raises(T.CheckpointError, match='would run code|truncated or damaged'): T.load_checkpoint(tmp_path/p)
    assert not (tmp_path/'pwned').exists()
    r = toy(tmp_path/'run'); T.fit(r, loader(), stepper(r), 1, progress=False)
    blob = (tmp_path/'run'/'checkpoint.pt').read_bytes()
    (tmp_path/'cut.pt').write_bytes(blob[:len(blob) // 2])
    with pytest.raises(T.CheckpointError, match='truncated or damaged'): T.load_checkpoint(tmp_path/'cut.pt')
    torch.save({'state_dict': {}}, tmp_path/'plain.pt')
    with pytest.raises(T.CheckpointError, match='not a brainkit checkpoint'): T.load_checkpoint(tmp_path/'plain.pt')
    with pytest.raises(T.CheckpointError, match="is a 'toy' checkpoint, but a 'segment'"): T.load_checkpoint(tmp_path/'run', 'segment')
    with pytest.raises(MissingFileError, match='no such checkpoint'): T.load_checkpoint(tmp_path/'absent.pt')


def test_another_architecture_is_refused_by_spec_and_by_weights(tmp_path):
    r = toy(tmp_path/'run'); T.fit(r, loader(), stepper(r), 1, progress=False)
    wide = toy(tmp_path/'run', hidden=32)
    with pytest.raises(T.CheckpointError, match="hidden 16 in the checkpoint, 32 here"): wide.load()
    del wide.nets['net'].spec                                            # no spec: the weights' shapes still decide
    with pytest.raises(T.CheckpointError, match='does not match'): wide.load()
    with pytest.raises(T.CheckpointError, match='does not match|another architecture'):
        T.fit(toy(tmp_path/'run', hidden=32), loader(), stepper(r), 2, progress=False)


def test_resume_false_refuses_to_overwrite_a_run(tmp_path):
    r = toy(tmp_path/'run'); T.fit(r, loader(), stepper(r), 1, progress=False)
    with pytest.raises(T.CheckpointError, match='resume=False'):
        T.fit(toy(tmp_path/'run'), loader(), stepper(r), 2, resume=False, progress=False)


def test_linear_decay_matches_the_reference_rule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = T.linear_decay(opt, 3, 4)
    lrs = []
    for _ in range(7): lrs.append(opt.param_groups[0]['lr']); opt.step(); s.step()
    assert lrs == pytest.approx([1, 1, 1, 4 / 5, 3 / 5, 2 / 5, 1 / 5])


def test_rng_state_round_trip():
    T.seed_everything(5)
    st = T.rng_state()
    a = (np.random.rand(), torch.rand(()).item(), __import__('random').random())
    T.seed_everything(99); T.set_rng_state(st)
    assert (np.random.rand(), torch.rand(()).item(), __import__('random').random()) == a


def test_pick_device():
    assert T.pick_device('cpu').type == 'cpu'
    if not torch.cuda.is_available():
        assert T.pick_device('auto').type in ('cpu', 'mps')
        with pytest.raises(Exception, match='no usable CUDA'): T.pick_device('cuda')


# --- found by review ---

def test_resume_refuses_changed_settings_but_allows_a_longer_schedule(tmp_path):
    r = toy(tmp_path/'run'); T.fit(r, loader(), stepper(r), 2, progress=False)
    other = toy(tmp_path/'run'); other.config['seed'] = 5
    with pytest.raises(T.CheckpointError, match="seed 0 there, 5 now"): other.load()
    longer = toy(tmp_path/'run'); longer.config['epochs'] = 9               # a mutable key
    longer.load()


def test_an_extended_schedule_resumes_at_its_new_rate(tmp_path):
    def run(out, decay):
        T.seed_everything(0)
        net = nn.Linear(3, 1); opt = torch.optim.SGD(net.parameters(), lr=1.0)
        return T.Run(out, 'toy', {}, {'net': net}, {'net': opt}, {'net': T.linear_decay(opt, 1, decay)})
    step = lambda r: (lambda b: {'x': 0.0})
    r = run(tmp_path/'a', 1); T.fit(r, loader(), step(r), 2, progress=False)   # finished: its rate reached 0
    assert r.optims['net'].param_groups[0]['lr'] == 0.0
    r = run(tmp_path/'a', 3); h = T.fit(r, loader(), step(r), 4, progress=False)  # extended: 1 + 3 epochs
    # epochs 1-2 trained under the old schedule (1, 1/2); epochs 3-4 at the new one's rates for them, not at 0
    assert [x['lr'] for x in h] == pytest.approx([1.0, 0.5, 0.5, 0.25])


def test_a_row_cut_short_by_a_crash_is_dropped_on_resume(tmp_path):
    r = toy(tmp_path/'run'); T.fit(r, loader(), stepper(r), 1, progress=False)
    it = tmp_path/'run'/'iterations.csv'
    n = len(list(__import__('csv').DictReader(it.open())))
    with it.open('a') as f: f.write(f'2,{n + 1}')                          # no losses, no newline
    r = toy(tmp_path/'run'); T.fit(r, loader(), stepper(r), 2, progress=False)
    rows = list(__import__('csv').DictReader(it.open()))
    assert [int(x['iteration']) for x in rows] == list(range(1, len(rows) + 1)) and all(x['mse'] for x in rows)


def test_the_pool_stores_copies_not_views_of_the_batch():
    pool = ImagePool(2)
    batch = torch.zeros(8, 1, 4, 4)
    pool.query(batch[:2])
    assert all(i.untyped_storage().nbytes() == 16 * 4 for i in pool.images)


def test_tensorboard_without_the_package_warns_and_trains(tmp_path, caplog, monkeypatch):
    import builtins, sys
    real_import = builtins.__import__
    def no_tb(name, *a, **k):
        if name.startswith('torch.utils.tensorboard'): raise ImportError('no tensorboard here')
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', no_tb)
    monkeypatch.delitem(sys.modules, 'torch.utils.tensorboard', raising=False)
    r = toy(tmp_path/'run')
    with caplog.at_level('WARNING', logger='brainkit.train'):
        hist = T.fit(r, loader(), stepper(r), 2, progress=False, tensorboard=True)
    assert len(hist) == 2 and (tmp_path/'run'/'checkpoint.pt').is_file()
    assert 'tensorboard package is not installed' in caplog.text
    assert not (tmp_path/'run'/'tb').exists()


def test_sample_grids_every_n_iterations_and_jsonl_log_trimmed_on_resume(tmp_path):
    r = toy(tmp_path/'run')
    vis = lambda: {'x': torch.zeros(2, 1, 8, 8), 'y': torch.ones(2, 1, 8, 8)}
    T.fit(r, loader(), stepper(r), 2, progress=False, visuals=vis, sample_every=4)     # 6 iterations per epoch
    assert sorted(p.name for p in (tmp_path/'run'/'samples').iterdir()) == [f'iter_{i:07d}.png' for i in (4, 8, 12)]
    lines = (tmp_path/'run'/'iterations.jsonl').read_text().splitlines()
    assert [json.loads(l)['iteration'] for l in lines] == list(range(1, 13))
    # a killed run logged iterations past its last checkpoint: resume trims both logs back to it
    ck = T.load_checkpoint(tmp_path/'run'); assert ck['iteration'] == 12
    with open(tmp_path/'run'/'iterations.jsonl', 'a') as f: f.write(json.dumps({'epoch': 3, 'iteration': 13, 'mse': 1.0}) + '\n{"epoch": 3, "itera')
    r2 = toy(tmp_path/'run')
    T.fit(r2, loader(), stepper(r2), 3, progress=False)
    its = [json.loads(l)['iteration'] for l in (tmp_path/'run'/'iterations.jsonl').read_text().splitlines()]
    assert its == list(range(1, 19))


def test_precision_is_float32_off_cuda_and_refuses_unknown_modes():
    p = T.Precision('fp16', 'cpu')
    assert p.amp == 'none' and p.dtype is None
    with pytest.raises(ValueError, match='amp must be one of'): T.Precision('fp8')
    net = nn.Linear(2, 1); opt = torch.optim.SGD(net.parameters(), 0.1)
    with p.autocast(): loss = net(torch.ones(1, 2)).sum()
    assert loss.dtype == torch.float32
    p.step(loss, opt, 'net'); assert p.state_dict() == {}
