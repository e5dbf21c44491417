"""A few Pix2Pix and CycleGAN updates, in one process or under `torchrun` (gloo on CPU), for tests/test_ddp.py.

    torchrun --standalone --nproc_per_node 2 tests/_ddp_script.py OUT --batch-size 2 --steps 3
    python tests/_ddp_script.py OUT --batch-size 4 --steps 3          # the same global batch in one process

Each rank writes OUT/rank{r}.pt: {'pix2pix': {net: state_dict}, 'cyclegan': {net: state_dict}, 'world': ...,
'seen': {model: [[item index, ...] per step]}}. The models are the ones whose distributed update is meant to equal
the single-process one: instance norm (CPU DDP has no SyncBatchNorm), no dropout and no image pool (both draw
random numbers that differ between processes by design).

Everything runs in float64 (`DTYPE`: models, batches, gradients, the all-reduce). The claim under test is exact math:
the average of the ranks' gradients is the gradient of the global batch. In float32 the two runs' weights part at
rounding level (~1e-7, reduction order), and a ReLU network's gradient is discontinuous: once one of the ~480,000
ReLU inputs of a CycleGAN step lies within that noise of 0, its mask flips in one run only, the generator's gradient
jumps by a few percent and Adam carries it into the weights (issue 14: 7.6e-4 in G_A after 3 steps, on the phantom
v2 samples; no flip on v1's). Whether that happens is chance, set by the sample data; in float64 the noise is ~1e-16
and it does not. The float32 path under torchrun is what `brainkit train` runs (test_ddp.py's whole-run tests)."""
import argparse, sys
from pathlib import Path

import torch

from brainkit.cyclegan import CycleGAN, CycleGANConfig
from brainkit.data import PairedSlices, UnpairedSlices, make_loader
from brainkit.io import open_dataset, samples_dir
from brainkit.pix2pix import Pix2Pix, Pix2PixConfig
from brainkit.preprocess import Normalizer
from brainkit.train import distributed_sampler, init_distributed, seed_everything

SIZE = 32
DTYPE = torch.float64
P2P = dict(size=SIZE, ngf=4, ndf=4, norm='instance', dropout=False, device='cpu')
CYC = dict(size=SIZE, ngf=4, ndf=4, pool_size=0, lambda_identity=0.5, device='cpu')


def indexed(ds):
    "Batches that also say which dataset items they hold."
    class I(torch.utils.data.Dataset):
        def __len__(self): return len(ds)
        def __getitem__(self, j): return {**ds[j], 'index': j}
        def set_epoch(self, e): ds.set_epoch(e)
    return I()


def run(model, ds, d, batch_size, steps, seed=0):
    sampler = distributed_sampler(ds, d, seed)
    sampler.set_epoch(0)
    loader = make_loader(ds, batch_size, shuffle=True, seed=seed, workers=0, device='cpu', sampler=sampler)
    seen = []
    for i, batch in enumerate(loader):
        if i == steps: break
        model.step({k: v.to(DTYPE) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()})
        seen.append(batch['index'].tolist())
    assert len(seen) == steps, f"only {len(seen)} batches"
    return {k: {n: v.detach().clone() for n, v in net.state_dict().items()} for k, net in model.nets.items()}, seen


def main():
    p = argparse.ArgumentParser()
    p.add_argument('out'); p.add_argument('--batch-size', type=int, required=True); p.add_argument('--steps', type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(DTYPE)                             # the models are built in it
    d, dev = init_distributed('cpu')
    brats = list(open_dataset(samples_dir('brats')))[:2]
    hcp = list(open_dataset(samples_dir('hcp')))[:2]
    out = {'world': d.world}
    seen = {}
    # --- Pix2Pix: t1 -> t2 on two BraTS-like subjects
    seed_everything(0)
    ds = indexed(PairedSlices(brats, ['t1'], 't2', plane='axial', size=SIZE, normalizer={'t1': Normalizer(), 't2': Normalizer()},
                              min_brain=0.6, progress=False, spacing=4.8))
    cfg = Pix2PixConfig(**P2P)
    seed_everything(cfg.seed)
    out['pix2pix'], seen['pix2pix'] = run(Pix2Pix(cfg, dev, d), ds, d, a.batch_size, a.steps)
    # --- CycleGAN: HCP-like t1 <-> BraTS-like t1
    ds = indexed(UnpairedSlices(hcp, 't1', brats, 't1', plane='axial', size=SIZE, a_normalizer=Normalizer(), b_normalizer=Normalizer(),
                                pairing='random', min_brain=0.6, progress=False, spacing=4.8))
    cfg = CycleGANConfig(**CYC)
    seed_everything(cfg.seed)
    out['cyclegan'], seen['cyclegan'] = run(CycleGAN(cfg, dev, d), ds, d, a.batch_size, a.steps)
    out['seen'] = seen
    Path(a.out).mkdir(parents=True, exist_ok=True)
    torch.save(out, Path(a.out)/f'rank{d.rank}.pt')
    if d.on:
        import torch.distributed as tdist
        tdist.barrier(); tdist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
