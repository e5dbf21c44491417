"""Benchmark brainkit's GAN models: a CycleGAN and a Pix2Pix training iteration against the same iteration written
plainly, and volume translation batched against a per-slice loop.

Writes `bench/results/gan.json`. Run: `.venv/bin/python bench/bench_gan.py [--quick]` (or `make bench`).

1. One training iteration, batch 1, one grayscale channel, reference settings (ngf = ndf = 64, Adam lr 2e-4,
   beta1 0.5): `CycleGAN.step` (ResNet-9 generators, 70x70 PatchGANs, instance norm, LSGAN, lambda 10/10, identity
   0.5, pool of 50) at 128² and 256², and `Pix2Pix.step` (unet_256, batch norm, dropout, PatchGAN on 2 channels,
   vanilla GAN, L1 x 100) at 256². The baseline is the reference's `optimize_parameters`
   (pytorch-CycleGAN-and-pix2pix's cycle_gan_model.py / pix2pix_model.py) written out in this file: the same networks
   (built with `brainkit.networks.generator` / `discriminator`, brainkit's initial weights loaded), inline Adam
   optimizers, MSE / BCE-with-logits / L1 losses, `requires_grad` toggling, and, for CycleGAN, the reference's
   50-image pool (Python's `random`). Before timing, both run the same iterations from the same weights and dropout
   seed; their losses and weights must agree. brainkit and baseline iterations then alternate (order reversed every
   round) and rounds during which other processes used the CPUs are set aside (the quiet-round logic of
   `bench_networks.py`). Target: the median over quiet rounds of the per-round ratio brainkit/plain <= 1.05.
2. Translation of a BraTS-sized volume (240x240x155, `bench_io.synthetic_brain`; `--quick`: its middle 31 slices) with a
   ResNet-9 generator (ngf 64, eval mode, random weights: time does not depend on them): `translate_volume` (brain
   mask, percentile normalization, padding to a multiple of 4 (none at 240), `translate_slices` in batches of 16,
   denormalization) against the same work written as a per-slice loop (`G(slice[None, None])` under
   `torch.no_grad()`). Target: at least 2x faster on the CPU. Also `translate_slices` at batch sizes 1, 2, 4, 8, 16, 32
   (and the plain per-slice loop) on 32 normalized slices: the cost per slice as the batch grows.
3. Where CUDA is available, the same measurements on the GPU with AMP off ('none') and on ('bf16', 'fp16'); otherwise
   they are skipped, and the JSON says so.
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check, format_checks, stats, write_result  # noqa: E402
from bench_io import LPS_AFFINE, synthetic_brain  # noqa: E402
from bench_networks import QUIET_FRACTION, MatmulProbe, count_flops, interleaved, loadavg, quiet, timed, wait_quiet  # noqa: E402

import brainkit.networks as bn  # noqa: E402
from brainkit.cyclegan import CycleGAN, CycleGANConfig  # noqa: E402
from brainkit.io import make_volume  # noqa: E402
from brainkit.pix2pix import Pix2Pix, Pix2PixConfig  # noqa: E402
from brainkit.preprocess import Normalizer, brain_mask  # noqa: E402
from brainkit.networks import generator_spec  # noqa: E402
from brainkit.translate import translate_slices, translate_volume  # noqa: E402

RATIO_TARGET = 1.05      # brainkit / plain, one training iteration
SPEEDUP_TARGET = 2.0     # per-slice loop / brainkit's batched translate_volume, CPU
BATCHES = (1, 2, 4, 8, 16, 32)
SWEEP_SLICES = 32        # slices translated at each batch size
VOLUME_BATCH = 16        # translate_volume's default batch size
AMPS_CUDA = ('none', 'bf16', 'fp16')
LOSS_RTOL = 1e-4         # equivalence: losses within this relative difference
WEIGHT_ATOL = 1e-6       # equivalence: weights within this, except (see `compare_nets`) biases a norm layer cancels


# --- 1. plain training iterations (the reference's optimize_parameters, written out) ------------------------------

def set_requires_grad(nets, flag:bool):
    for net in nets:
        for p in net.parameters(): p.requires_grad = flag


class RefImagePool:
    "The reference's ImagePool (util/image_pool.py): fill up to `size`, then half the time swap with a random stored image."
    def __init__(self, size:int, rng:random.Random):
        self.size, self.rng, self.n, self.images = size, rng, 0, []

    def query(self, images):
        if self.size == 0: return images
        out = []
        for image in images:
            image = torch.unsqueeze(image.data, 0)
            if self.n < self.size:
                self.n += 1; self.images.append(image); out.append(image)
            elif self.rng.uniform(0, 1) > 0.5:
                k = self.rng.randint(0, self.size - 1)
                tmp = self.images[k].clone(); self.images[k] = image; out.append(tmp)
            else: out.append(image)
        return torch.cat(out, 0)


class RefGANLoss(nn.Module):
    "The reference's GANLoss for 'lsgan' (MSE) and 'vanilla' (BCE with logits): target labels expanded to the prediction."
    def __init__(self, mode:str):
        super().__init__()
        self.register_buffer('real_label', torch.tensor(1.0)); self.register_buffer('fake_label', torch.tensor(0.0))
        self.loss = nn.MSELoss() if mode == 'lsgan' else nn.BCEWithLogitsLoss()

    def forward(self, pred, real:bool):
        return self.loss(pred, (self.real_label if real else self.fake_label).expand_as(pred))


class _PlainAmp:
    "autocast for the forward passes and, under fp16, one GradScaler per optimizer (the reference has no AMP)."
    def __init__(self, amp:str, device:torch.device):
        self.dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp) if device.type == 'cuda' else None
        self.device = device
        self.scalers = {k: torch.amp.GradScaler('cuda') for k in ('G', 'D')} if self.dtype == torch.float16 else {}

    def autocast(self): return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
    def backward(self, loss, name): (self.scalers[name].scale(loss) if self.scalers else loss).backward()
    def step(self, opt, name):
        if self.scalers: self.scalers[name].step(opt); self.scalers[name].update()
        else: opt.step()


class PlainCycleGAN:
    "cycle_gan_model.py's optimize_parameters, written out on the given networks."
    def __init__(self, G_A, G_B, D_A, D_B, cfg:CycleGANConfig, device):
        self.device = torch.device(device)
        self.G_A, self.G_B, self.D_A, self.D_B, self.c = G_A, G_B, D_A, D_B, cfg
        self.opt_G = torch.optim.Adam(itertools.chain(G_A.parameters(), G_B.parameters()), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        self.opt_D = torch.optim.Adam(itertools.chain(D_A.parameters(), D_B.parameters()), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        self.fake_A_pool, self.fake_B_pool = RefImagePool(cfg.pool_size, random.Random(0)), RefImagePool(cfg.pool_size, random.Random(1))
        self.criterionGAN, self.criterionCycle, self.criterionIdt = RefGANLoss(cfg.gan_mode).to(self.device), nn.L1Loss(), nn.L1Loss()
        self.amp = _PlainAmp(cfg.amp, self.device)

    def backward_D_basic(self, netD, real, fake):
        with self.amp.autocast():
            loss_D_real = self.criterionGAN(netD(real), True)
            loss_D_fake = self.criterionGAN(netD(fake.detach()), False)
            loss_D = (loss_D_real + loss_D_fake) * 0.5
        self.amp.backward(loss_D, 'D')
        return loss_D

    def step(self, batch) -> dict:
        c = self.c
        real_A, real_B = batch['A'].to(self.device), batch['B'].to(self.device)
        with self.amp.autocast():                                   # forward()
            fake_B = self.G_A(real_A); rec_A = self.G_B(fake_B)
            fake_A = self.G_B(real_B); rec_B = self.G_A(fake_A)
        set_requires_grad([self.D_A, self.D_B], False)              # G_A and G_B
        self.opt_G.zero_grad()
        with self.amp.autocast():                                   # backward_G()
            lambda_idt, lambda_A, lambda_B = c.lambda_identity, c.lambda_A, c.lambda_B
            if lambda_idt > 0:
                idt_A = self.G_A(real_B); loss_idt_A = self.criterionIdt(idt_A, real_B) * lambda_B * lambda_idt
                idt_B = self.G_B(real_A); loss_idt_B = self.criterionIdt(idt_B, real_A) * lambda_A * lambda_idt
            else: loss_idt_A = loss_idt_B = 0
            loss_G_A = self.criterionGAN(self.D_A(fake_B), True)
            loss_G_B = self.criterionGAN(self.D_B(fake_A), True)
            loss_cycle_A = self.criterionCycle(rec_A, real_A) * lambda_A
            loss_cycle_B = self.criterionCycle(rec_B, real_B) * lambda_B
            loss_G = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B
        self.amp.backward(loss_G, 'G')
        self.amp.step(self.opt_G, 'G')
        set_requires_grad([self.D_A, self.D_B], True)               # D_A and D_B
        self.opt_D.zero_grad()
        loss_D_A = self.backward_D_basic(self.D_A, real_B, self.fake_B_pool.query(fake_B))
        loss_D_B = self.backward_D_basic(self.D_B, real_A, self.fake_A_pool.query(fake_A))
        self.amp.step(self.opt_D, 'D')
        return {'D_A': loss_D_A, 'G_A': loss_G_A, 'cycle_A': loss_cycle_A, 'idt_A': loss_idt_A,
                'D_B': loss_D_B, 'G_B': loss_G_B, 'cycle_B': loss_cycle_B, 'idt_B': loss_idt_B}


class PlainPix2Pix:
    "pix2pix_model.py's optimize_parameters, written out on the given networks."
    def __init__(self, G, D, cfg:Pix2PixConfig, device):
        self.device = torch.device(device)
        self.netG, self.netD, self.c = G, D, cfg
        self.optimizer_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        self.optimizer_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        self.criterionGAN, self.criterionL1 = RefGANLoss(cfg.gan_mode).to(self.device), nn.L1Loss()
        self.amp = _PlainAmp(cfg.amp, self.device)

    def step(self, batch) -> dict:
        real_A, real_B = batch['source'].to(self.device), batch['target'].to(self.device)
        with self.amp.autocast(): fake_B = self.netG(real_A)        # forward()
        set_requires_grad([self.netD], True)                        # update D
        self.optimizer_D.zero_grad()
        with self.amp.autocast():                                   # backward_D()
            fake_AB = torch.cat((real_A, fake_B), 1)
            loss_D_fake = self.criterionGAN(self.netD(fake_AB.detach()), False)
            real_AB = torch.cat((real_A, real_B), 1)
            loss_D_real = self.criterionGAN(self.netD(real_AB), True)
            loss_D = (loss_D_fake + loss_D_real) * 0.5
        self.amp.backward(loss_D, 'D')
        self.amp.step(self.optimizer_D, 'D')
        set_requires_grad([self.netD], False)                       # update G
        self.optimizer_G.zero_grad()
        with self.amp.autocast():                                   # backward_G()
            fake_AB = torch.cat((real_A, fake_B), 1)
            loss_G_GAN = self.criterionGAN(self.netD(fake_AB), True)
            loss_G_L1 = self.criterionL1(fake_B, real_B) * self.c.lambda_l1
            loss_G = loss_G_GAN + loss_G_L1
        self.amp.backward(loss_G, 'G')
        self.amp.step(self.optimizer_G, 'G')
        return {'G_GAN': loss_G_GAN, 'G_L1': loss_G_L1, 'D_real': loss_D_real, 'D_fake': loss_D_fake}


def build_cyclegan(size:int, device, amp:str):
    "brainkit's CycleGAN at the reference settings, and the plain iteration on fresh networks holding its initial weights."
    cfg = CycleGANConfig(netG='resnet_9blocks', ngf=64, ndf=64, size=size, amp=amp, device=str(device))
    torch.manual_seed(0)
    bk = CycleGAN(cfg, device)
    G = lambda: bn.generator(cfg.netG, 1, 1, cfg.ngf, cfg.norm, cfg.dropout, cfg.init).to(device)
    D = lambda: bn.discriminator(cfg.netD, 1, cfg.ndf, cfg.n_layers_D, cfg.norm, cfg.init).to(device)
    nets = {'G_A': G(), 'G_B': G(), 'D_A': D(), 'D_B': D()}
    for k, net in nets.items(): net.load_state_dict(bk.nets[k].state_dict())
    g = torch.Generator().manual_seed(size)
    batch = {'A': torch.rand(1, 1, size, size, generator=g)*2 - 1, 'B': torch.rand(1, 1, size, size, generator=g)*2 - 1}
    return cfg, bk, PlainCycleGAN(nets['G_A'], nets['G_B'], nets['D_A'], nets['D_B'], cfg, device), nets, batch


def build_pix2pix(size:int, device, amp:str):
    "brainkit's Pix2Pix at the reference settings (unet_256), and the plain iteration on networks holding its initial weights."
    cfg = Pix2PixConfig(netG=f'unet_{size}', ngf=64, ndf=64, size=size, amp=amp, device=str(device))
    torch.manual_seed(0)
    bk = Pix2Pix(cfg, device)
    nets = {'G': bn.generator(cfg.netG, 1, 1, cfg.ngf, cfg.norm, cfg.dropout, cfg.init).to(device),
            'D': bn.discriminator(cfg.netD, 2, cfg.ndf, cfg.n_layers_D, cfg.norm, cfg.init).to(device)}
    for k, net in nets.items(): net.load_state_dict(bk.nets[k].state_dict())
    g = torch.Generator().manual_seed(size)
    batch = {'source': torch.rand(1, 1, size, size, generator=g)*2 - 1, 'target': torch.rand(1, 1, size, size, generator=g)*2 - 1}
    return cfg, bk, PlainPix2Pix(nets['G'], nets['D'], cfg, device), nets, batch


def _cancelled_biases(net:nn.Module) -> set[str]:
    """Names of conv biases followed directly by an instance norm: the norm subtracts them again, so their gradient is
    zero up to rounding, and Adam's first steps (about lr x sign(grad)) turn that rounding into updates of up to lr.
    Their values do not change any output."""
    out, mods = set(), list(net.named_modules())
    for (n1, m1), (_, m2) in zip(mods, mods[1:]):
        if isinstance(m1, (nn.Conv2d, nn.ConvTranspose2d)) and m1.bias is not None and isinstance(m2, nn.InstanceNorm2d):
            out.add(f'{n1}.bias')
    return out


def compare_nets(a:dict, b:dict) -> dict:
    "Largest absolute difference of parameters and buffers, with the biases an instance norm cancels counted apart."
    worst, worst_cancel, identical = 0.0, 0.0, True
    for k in a:
        skip = _cancelled_biases(a[k])
        sa, sb = a[k].state_dict(), b[k].state_dict()
        for n in sa:
            if not sa[n].is_floating_point(): identical &= bool(torch.equal(sa[n], sb[n])); continue
            d = float((sa[n].float() - sb[n].float()).abs().max())
            identical &= d == 0
            if n in skip: worst_cancel = max(worst_cancel, d)
            else: worst = max(worst, d)
    return {'identical_weights': identical, 'max_abs_weight_diff': worst, 'max_abs_cancelled_bias_diff': worst_cancel}


def equivalence(bk, pl, nets:dict, batch:dict, iters:int, strict:bool) -> dict:
    """`iters` iterations of each from the same weights (dropout seeded alike): losses and resulting weights.
    `strict` (float32): the agreement is a target; otherwise (AMP, GPU) it is reported only."""
    losses, rel = [], 0.0
    for i in range(iters):
        torch.manual_seed(1000 + i); lb = bk.step(batch)
        torch.manual_seed(1000 + i); lp = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in pl.step(batch).items()}
        rel = max([rel] + [abs(lb[k] - lp[k])/max(abs(lp[k]), 1e-12) for k in lb])
        losses.append({'brainkit': lb, 'plain': {k: lp[k] for k in lb}})
    exact_losses = all(l['brainkit'][k] == l['plain'][k] for l in losses for k in l['brainkit'])
    w = compare_nets(bk.nets, nets)
    ok = rel <= LOSS_RTOL and w['max_abs_weight_diff'] <= WEIGHT_ATOL
    return {'iterations': iters, 'losses': losses, 'identical_losses': exact_losses, 'max_rel_loss_diff': rel, **w,
            'loss_rtol': LOSS_RTOL, 'weight_atol': WEIGHT_ATOL, 'strict': strict, 'equivalent': bool(ok)}


def _sync(device):
    return (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == 'cuda' else (lambda: None)


def measure_training(kind:str, size:int, device, amp:str, plan:dict) -> dict:
    "Equivalence first (also the warm-up), then alternating timed iterations of brainkit and the plain baseline."
    t_case = time.perf_counter()
    load0 = loadavg()
    cfg, bk, pl, nets, batch = (build_cyclegan if kind == 'cyclegan' else build_pix2pix)(size, device, amp)
    strict = torch.device(device).type == 'cpu' and amp == 'none'
    eq = equivalence(bk, pl, nets, batch, plan['eq_iters'], strict)
    sync = _sync(device)
    def bk_step(): bk.step(batch); sync()                 # brainkit returns the losses as floats (it syncs on them)
    def pl_step(): pl.step(batch); sync()                 # the reference reads losses only when it prints them
    for _ in range(plan.get('warmup', 0)): bk_step(); pl_step()
    waited = wait_quiet(min(30.0, plan['cap_s']/4))
    rounds = interleaved({'brainkit': bk_step, 'plain': pl_step}, plan['rmin'], plan['rmax'], plan['budget_s'], plan['cap_s'])
    q = [r for r in rounds if r['quiet']]
    use = q if len(q) >= 3 else rounds
    ta, tb = [r['calls']['brainkit']['ms'] for r in use], [r['calls']['plain']['ms'] for r in use]
    a, b = stats(ta), stats(tb)
    paired = [x/y for x, y in zip(ta, tb)]
    ratio = statistics.median(paired)
    params = {k: bn.n_params(n) for k, n in bk.nets.items()}
    return {'model': kind, 'size': size, 'device': str(device), 'amp': amp, 'batch': 1, 'input_shape': [1, 1, size, size],
            'config': {k: getattr(cfg, k) for k in ('netG', 'netD', 'ngf', 'ndf', 'norm', 'dropout', 'gan_mode', 'lr', 'beta1',
                                                    *(('lambda_A', 'lambda_B', 'lambda_identity', 'pool_size') if kind == 'cyclegan'
                                                      else ('lambda_l1',)))},
            'params': params, 'loadavg_before': load0, 'equivalence': eq,
            'cap_s': plan['cap_s'], 'waited_s': round(waited + sum(r.get('waited_s', 0) for r in rounds), 1),
            'rounds': len(rounds), 'quiet_rounds': len(q), 'from_quiet_rounds': use is q,
            'brainkit_iteration': a, 'plain_iteration': b,
            'ratio_median_of_paired': round(ratio, 4), 'ratio_of_medians': round(a['median_ms']/b['median_ms'], 4),
            'paired_ratios': [round(r, 4) for r in paired], 'target_ratio': RATIO_TARGET, 'target_met': ratio <= RATIO_TARGET,
            'all_rounds': [{'brainkit_ms': round(r['calls']['brainkit']['ms'], 2), 'plain_ms': round(r['calls']['plain']['ms'], 2),
                            'other_ticks': [r['calls'][n]['other_ticks'] for n in ('brainkit', 'plain')],
                            'quiet': r['quiet'], 'waited_s_after': r.get('waited_s', 0)} for r in rounds],
            'case_wall_s': round(time.perf_counter() - t_case, 1)}


def _train_line(key:str, r:dict) -> str:
    a, b, e = r['brainkit_iteration']['median_ms'], r['plain_iteration']['median_ms'], r['equivalence']
    return (f"{key:<28} brainkit {a:9.1f} ms  plain {b:9.1f} ms  ratio {r['ratio_median_of_paired']:.3f} "
            f"(of medians {a/b:.3f}; {r['quiet_rounds']}/{r['rounds']} rounds quiet{'' if r['from_quiet_rounds'] else ', ALL used'})  "
            f"equivalent={e['equivalent']} (loss rel {e['max_rel_loss_diff']:.1e}, weights {e['max_abs_weight_diff']:.1e})  "
            f"{'OK' if r['target_met'] else 'MISSED'}")


# --- 2. translation ---------------------------------------------------------------------------------------------

def make_translator(device):
    "A ResNet-9 generator (ngf 64, instance norm, eval mode) and the `info` dict `load_translator` would return for it."
    torch.manual_seed(0)
    G = bn.generator('resnet_9blocks', 1, 1, 64, 'instance').to(device).eval()
    info = {'model': 'cyclegan', 'direction': 'AtoB', 'sources': ['t1'], 'target': 't2', 'plane': 'axial', 'size': 240,
            'spacing': None, 'normalizers': {'t1': Normalizer('percentile').to_dict()}, 'network': G.spec}
    return G, info


def naive_translate_volume(G:nn.Module, info:dict, vol):
    """The same work as `translate_volume` written as the natural loop: brain mask, normalization, for each axial slice
    pad (to a multiple of 4 and at least info['size'], value -1), `G(slice[None, None])` under `torch.no_grad()`, crop,
    then denormalize and zero the background."""
    dev = next(G.parameters()).device
    norm = Normalizer.from_dict(info['normalizers'][info['sources'][0]])
    mask = brain_mask(vol)
    x, st = norm.apply(vol, mask)                                    # (X, Y, Z), background -1
    X, Y, Z = x.shape
    mult = generator_spec(info['network']['name']).multiple
    H, W = (max(info['size'], -(-n // mult) * mult) for n in (X, Y))
    px, py = -((X - H) // 2), -((Y - W) // 2)                        # where brainkit's CropPad puts the slice
    out = np.empty(x.shape, np.float32)
    with torch.no_grad():
        for z in range(Z):
            s = np.full((H, W), -1, np.float32); s[px:px + X, py:py + Y] = x[:, :, z]
            y = G(torch.from_numpy(s)[None, None].to(dev))
            out[:, :, z] = y[0, 0, px:px + X, py:py + Y].float().cpu().numpy()
    return vol.with_data(np.where(mask, norm.invert(out, st), np.float32(0)).astype(np.float32))


def naive_translate_slices(G:nn.Module, x:torch.Tensor) -> np.ndarray:
    "The per-slice loop on already normalized slices (D, 1, H, W): `G(x[i:i+1])` under `torch.no_grad()`."
    dev = next(G.parameters()).device
    out = np.empty((len(x), 1, *x.shape[2:]), np.float32)
    with torch.no_grad():
        for i in range(len(x)): out[i] = G(x[i:i + 1].to(dev))[0].float().cpu().numpy()
    return out


def fixed_rounds(fns:dict, n_rounds:int, wait_s:float, deadline:float, reserve:float=0.0) -> list[dict]:
    """Up to `n_rounds` rounds of one call of each fn (order reversed every round), each after waiting (at most `wait_s`)
    for quiet; at least one round, and another only if (1 + `reserve`) x the last round's time still fits before
    `deadline` (perf_counter)."""
    names, rounds = list(fns), []
    for i in range(n_rounds):
        if rounds and time.perf_counter() + (1 + reserve)*rounds[-1]['round_s'] + wait_s > deadline: break
        waited = wait_quiet(wait_s)
        t0 = time.perf_counter()
        r = {n: timed(fns[n]) for n in (names if i % 2 == 0 else names[::-1])}
        rounds.append({'calls': {n: r[n] for n in names}, 'quiet': quiet(list(r.values())), 'waited_before_s': round(waited, 1),
                       'round_s': time.perf_counter() - t0})
    return rounds


def _amp_ctx(device, amp:str):
    dt = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp)
    return (lambda: torch.autocast(torch.device(device).type, dtype=dt)) if dt is not None else nullcontext


def measure_volume(G, info, vol, device, amp:str, n_rounds:int, wait_s:float, deadline:float, reserve:float=0.0) -> dict:
    """translate_volume (batch 16) against the per-slice loop on the whole volume, in rounds; the outputs of the first
    round are compared. Warm-up: one batch of 16 slices, and one slice alone (the volume is too long to translate twice more)."""
    ctx, sync = _amp_ctx(device, amp), _sync(device)
    out = {}
    def bk():
        with ctx(): r = translate_volume(G, info, vol, batch_size=VOLUME_BATCH)
        sync(); out.setdefault('brainkit', r.data)
    def loop():
        with ctx(): r = naive_translate_volume(G, info, vol)
        sync(); out.setdefault('loop', r.data)
    t0 = time.perf_counter()
    dev = next(G.parameters()).device
    with torch.inference_mode(), ctx():
        G(torch.zeros(VOLUME_BATCH, 1, 240, 240, device=dev)); G(torch.zeros(1, 1, 240, 240, device=dev)); sync()
    warm_s = time.perf_counter() - t0
    rounds = fixed_rounds({'brainkit': bk, 'loop': loop}, n_rounds, wait_s, deadline, reserve)
    diff = float(np.abs(out['brainkit'] - out['loop']).max())
    scale = float(np.abs(out['loop']).max())
    del out
    q = [r for r in rounds if r['quiet']]
    use = q or rounds
    ta, tb = [r['calls']['brainkit']['ms'] for r in use], [r['calls']['loop']['ms'] for r in use]
    sp = statistics.median([y/x for x, y in zip(ta, tb)])
    nz = vol.shape[2]
    return {'device': str(device), 'amp': amp, 'volume_shape': list(vol.shape), 'slices': nz, 'plane': 'axial',
            'slice_size_after_padding': [max(info['size'], -(-n // 4) * 4) for n in vol.shape[:2]],
            'brainkit_call': f'translate_volume(G, info, vol, batch_size={VOLUME_BATCH})',
            'loop_call': 'naive_translate_volume(G, info, vol): mask, normalize, per slice G(s[None, None]) under no_grad, denormalize',
            'amp_note': None if amp == 'none' else 'translate has no AMP setting: both ran inside torch.autocast',
            'max_abs_output_diff': diff, 'max_abs_output': scale, 'outputs_close': diff <= 1e-3*max(scale, 1.0),
            'warmup_s': round(warm_s, 1), 'rounds_planned': n_rounds,
            'rounds': len(rounds), 'quiet_rounds': len(q), 'from_quiet_rounds': bool(q),
            'brainkit': stats(ta), 'loop': stats(tb),
            'brainkit_ms_per_slice': round(statistics.median(ta)/nz, 2), 'loop_ms_per_slice': round(statistics.median(tb)/nz, 2),
            'speedup_median_of_paired': round(sp, 4), 'speedup_of_medians': round(statistics.median(tb)/statistics.median(ta), 4),
            'all_rounds': [{'brainkit_ms': round(r['calls']['brainkit']['ms'], 1), 'loop_ms': round(r['calls']['loop']['ms'], 1),
                            'other_ticks': [r['calls'][n]['other_ticks'] for n in ('brainkit', 'loop')],
                            'quiet': r['quiet'], 'waited_before_s': r['waited_before_s']} for r in rounds]}


def measure_sweep(G, x:torch.Tensor, device, amp:str, n_rounds:int, wait_s:float, deadline:float) -> dict:
    """translate_slices at each batch size, and the per-slice no_grad loop, on the same normalized slices: ms per slice.
    Warm-up: one batch of each size; the outputs of the first round are compared with the loop's."""
    ctx, sync = _amp_ctx(device, amp), _sync(device)
    out = {}
    def run_bs(b):
        def f():
            with ctx(): r = translate_slices(G, x, b)
            sync(); out.setdefault(f'batch_{b}', r)
        return f
    def loop():
        with ctx(): r = naive_translate_slices(G, x)
        sync(); out.setdefault('loop_no_grad', r)
    fns = {**{f'batch_{b}': run_bs(b) for b in BATCHES}, 'loop_no_grad': loop}
    t0 = time.perf_counter()
    for b in BATCHES:
        with ctx(): translate_slices(G, x[:b], b)
    warm_s = time.perf_counter() - t0
    rounds = fixed_rounds(fns, n_rounds, wait_s, deadline)
    same = {n: float(np.abs(out[n] - out['loop_no_grad']).max()) for n in fns if n != 'loop_no_grad'}
    del out
    n = len(x)
    res = {}
    for name in fns:
        calls = [r['calls'][name] for r in rounds]
        qc = [c for c in calls if quiet([c])]
        st = stats([c['ms'] for c in (qc or calls)])
        res[name] = {**st, 'quiet_calls': len(qc), 'from_quiet_calls': bool(qc), 'ms_per_slice': round(st['median_ms']/n, 2),
                     'other_ticks': [c['other_ticks'] for c in calls]}
    base = res['batch_1']['ms_per_slice']
    loop_ms = res['loop_no_grad']['ms_per_slice']
    for name in fns:
        res[name]['speedup_vs_batch_1'] = round(base/res[name]['ms_per_slice'], 3)
        res[name]['speedup_vs_loop'] = round(loop_ms/res[name]['ms_per_slice'], 3)
    best = min(BATCHES, key=lambda b: res[f'batch_{b}']['ms_per_slice'])
    return {'device': str(device), 'amp': amp, 'slices': n, 'slice_shape': list(x.shape[1:]), 'warmup_s': round(warm_s, 1),
            'rounds_planned': n_rounds, 'rounds': len(rounds), 'max_abs_diff_vs_loop': same, 'by_batch': res, 'best_batch': best,
            'best_speedup_vs_loop': res[f'batch_{best}']['speedup_vs_loop']}


def _sweep_lines(r:dict) -> str:
    out = []
    for name, v in r['by_batch'].items():
        out.append(f"  {name:<14} {v['ms_per_slice']:8.1f} ms/slice  x{v['speedup_vs_loop']:.2f} vs loop  {v.get('gflop_per_s', 0):6.1f} GFLOP/s"
                   + (f" = {v['fraction_of_matmul_rate']:.2f} of matmul" if 'fraction_of_matmul_rate' in v else '')
                   + f"  ({v['quiet_calls']}/{r['rounds']} calls quiet)")
    return '\n'.join(out)


# --- main -----------------------------------------------------------------------------------------------------

def plans(quick:bool, device_type:str) -> dict:
    "Per training case: equivalence iterations, quiet rounds (min, max), seconds of quiet timed iterations, time cap."
    if device_type == 'cuda':
        p = dict(eq_iters=2, warmup=2, rmin=10, rmax=30, budget_s=6.0, cap_s=40.0)
        return {k: dict(p) for k in ('cyclegan@128', 'cyclegan@256', 'pix2pix@256')}
    if quick:
        return {'cyclegan@128': dict(eq_iters=2, rmin=3, rmax=5, budget_s=12.0, cap_s=30.0),
                'cyclegan@256': dict(eq_iters=1, warmup=1, rmin=3, rmax=3, budget_s=40.0, cap_s=60.0),
                'pix2pix@256': dict(eq_iters=2, rmin=3, rmax=7, budget_s=5.0, cap_s=15.0)}
    return {'cyclegan@128': dict(eq_iters=2, rmin=7, rmax=25, budget_s=40.0, cap_s=70.0),
            'cyclegan@256': dict(eq_iters=1, warmup=1, rmin=5, rmax=9, budget_s=90.0, cap_s=150.0),
            'pix2pix@256': dict(eq_iters=2, rmin=7, rmax=41, budget_s=20.0, cap_s=45.0)}


def run_device(device:str, amps, a, vol_full:np.ndarray, deadline:float) -> tuple[dict, dict, list[dict]]:
    """Every measurement on one device, for each AMP setting; returns (training, translation, checks). Training cases get
    their planned time cap, less when needed to leave the translation its time before `deadline` (perf_counter)."""
    dt = torch.device(device).type
    training, translation, checks = {}, {}, []
    pl = {k: v for k, v in plans(a.quick, dt).items() if not a.k or a.k in k} if not a.no_train else {}
    do_translate = not a.no_translate and (not a.k or a.k in 'translate')
    n_train = len(pl) * len(amps)
    # seconds kept for translation: about 2 volume rounds + a sweep round + warm-ups at ~0.45 s a slice on this CPU
    per_amp_reserve = (0.45*(2*2*vol_full.shape[2] + 8*SWEEP_SLICES + 80) if dt == 'cpu' else 60.0) if do_translate else 0.0
    done = 0
    for ai, amp in enumerate(amps):
        tag = f'{dt}/{amp}'
        for key, plan in pl.items():
            kind, size = key.split('@')
            reserve = per_amp_reserve*(len(amps) - ai)
            left = (deadline - time.perf_counter() - reserve)/max(1, n_train - done)
            plan = {**plan, 'cap_s': round(min(plan['cap_s'], max(0.4*plan['cap_s'], left)), 1)}
            r = measure_training(kind, int(size), device, amp, plan)
            done += 1
            training[f'{key}/{tag}'] = r
            print(_train_line(f'{key} {tag}', r), flush=True)
            checks.append(check(f'{key} {tag}: iteration brainkit/plain', r['ratio_median_of_paired'], RATIO_TARGET, 'x'))
            if r['equivalence']['strict']:
                e = r['equivalence']
                checks.append({'name': f'{key} {tag}: same losses (rel <= {LOSS_RTOL:g}) and weights (<= {WEIGHT_ATOL:g}) '
                                       f'as the plain iteration after {e["iterations"]} iteration(s)',
                               'value': int(e['equivalent']), 'unit': '', 'target': '== 1', 'met': e['equivalent']})
        if not do_translate: continue
        G, info = make_translator(device)
        vol = make_volume(vol_full, LPS_AFFINE)
        quick_cpu = a.quick and dt == 'cpu'
        rounds, wait_s = (3, 5.0) if dt == 'cuda' else ((2, 10.0) if quick_cpu else (2, 20.0))
        # the deadline of this AMP setting's translation: its share of the time left
        dl = time.perf_counter() + (deadline - time.perf_counter())/(len(amps) - ai)
        tv = measure_volume(G, info, vol, device, amp, rounds, wait_s, dl, reserve=0.9)   # keep ~a sweep round
        print(f"translate {tag}: volume {tuple(vol.shape)}  brainkit (batch {VOLUME_BATCH}) {tv['brainkit']['median_ms']/1e3:.1f} s "
              f"({tv['brainkit_ms_per_slice']:.0f} ms/slice)  loop {tv['loop']['median_ms']/1e3:.1f} s ({tv['loop_ms_per_slice']:.0f} ms/slice)  "
              f"speedup x{tv['speedup_median_of_paired']:.2f} ({tv['quiet_rounds']}/{tv['rounds']} rounds quiet; "
              f"max |diff| {tv['max_abs_output_diff']:.2e})", flush=True)
        if dt == 'cpu':
            checks.append(check(f'translate_volume {tag}: per-slice loop / batched brainkit ({tv["slices"]} slices)',
                                tv['speedup_median_of_paired'], SPEEDUP_TARGET, 'x', higher_is_better=True))
            checks.append({'name': f'translate_volume {tag}: same output as the per-slice loop (max |diff| <= 1e-3 x max |output|)',
                           'value': int(tv['outputs_close']), 'unit': '', 'target': '== 1', 'met': tv['outputs_close']})
        # the sweep: the middle slices, normalized as translate_volume does (240 needs no padding)
        norm = Normalizer.from_dict(info['normalizers']['t1'])
        xn, _ = norm.apply(vol, brain_mask(vol))
        zc = xn.shape[2] // 2
        lo = max(0, min(zc - SWEEP_SLICES//2, xn.shape[2] - SWEEP_SLICES))
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(xn[:, :, lo:lo + SWEEP_SLICES], 2, 0)[:, None]))
        if x.shape[0] < SWEEP_SLICES:   # a volume with fewer slices: repeat some
            x = x.repeat(-(-SWEEP_SLICES // x.shape[0]), 1, 1, 1)[:SWEEP_SLICES].contiguous()
        sw = measure_sweep(G, x, device, amp, 1 if quick_cpu else (3 if dt == 'cuda' else 2), wait_s/2, dl)
        # how close a slice already comes to the machine's arithmetic rate (why batching cannot help much on a CPU)
        gf = count_flops(lambda: bn.generator('resnet_9blocks', 1, 1, 64, 'instance'), (1, 1, *x.shape[2:]))['forward_gflop']
        sw['forward_gflop_per_slice'] = gf
        for v in sw['by_batch'].values(): v['gflop_per_s'] = round(gf/(v['ms_per_slice']/1e3), 1)
        if dt == 'cpu':
            mm = MatmulProbe(); mm.sample(10, 10.0)
            sw['matmul'] = {k: v for k, v in mm.result().items() if k != 'all_calls'}
            for v in sw['by_batch'].values(): v['fraction_of_matmul_rate'] = round(v['gflop_per_s']/sw['matmul']['gflop_per_s'], 3)
        print(f"translate_slices {tag}: {SWEEP_SLICES} slices {tuple(x.shape[1:])}, {gf:.1f} GFLOP each, ms per slice by batch size"
              + (f" (matmul {sw['matmul']['gflop_per_s']:.0f} GFLOP/s)" if 'matmul' in sw else '') + ":\n" + _sweep_lines(sw), flush=True)
        translation[tag] = {'volume': tv, 'batch_sweep': sw}
        del G, x, xn
    return training, translation, checks


def translation_note(translation:dict) -> str|None:
    "Why the CPU translation target was missed, from the measured numbers (None when it was met or not measured)."
    v = translation.get('cpu/none')
    if not v or v['volume']['speedup_median_of_paired'] >= SPEEDUP_TARGET: return None
    vol, sw = v['volume'], v['batch_sweep']
    b, mm = sw['by_batch'], sw.get('matmul', {}).get('gflop_per_s')
    per = ', '.join(f"{k.removeprefix('batch_')}: {b[k]['ms_per_slice']:.0f}" for k in b if k.startswith('batch_'))
    frac = b['batch_1'].get('fraction_of_matmul_rate')
    return (f"target missed: translate_volume (batch {VOLUME_BATCH}) took {vol['brainkit']['median_ms']/1e3:.1f} s for {vol['slices']} "
            f"slices ({vol['brainkit_ms_per_slice']:.0f} ms/slice), the per-slice loop {vol['loop']['median_ms']/1e3:.1f} s "
            f"({vol['loop_ms_per_slice']:.0f} ms/slice): x{vol['speedup_median_of_paired']:.2f}. A 240x240 ResNet-9 slice is "
            f"{sw['forward_gflop_per_slice']:.1f} GFLOP of convolutions; at batch 1 it already runs at {b['batch_1']['gflop_per_s']:.0f} GFLOP/s"
            + (f" ({frac:.2f} of this CPU's {mm:.0f} GFLOP/s float32 matmul)" if frac is not None and mm else '')
            + f", so batching has almost no per-call overhead to amortize: ms per slice by batch size {per} (batch 32 is slower: "
            "its activations are 32x larger). Twice as fast would need about twice the rate batch 1 reaches"
            + (f", {2*frac:.2f}x the matmul's" if frac is not None and mm else '')
            + ". Batching can pay where one slice does not fill the device (typically a GPU), not on this CPU.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer rounds, a 31-slice volume (for a smoke test)')
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: the CPUs this process may use)')
    ap.add_argument('-k', default='', help="only the training cases whose key (e.g. 'cyclegan@128') contains this, "
                                           "or 'translate' for translation only")
    ap.add_argument('--no-train', action='store_true', help='skip the training iterations')
    ap.add_argument('--no-translate', action='store_true', help='skip the translation measurements')
    ap.add_argument('--no-cuda', action='store_true', help='skip the GPU measurements even where CUDA is available')
    ap.add_argument('--max-s', type=float, default=None, help='aim to finish the CPU part within this many seconds (default 840; quick 420)')
    ap.add_argument('--cuda-s', type=float, default=420.0, help='seconds allowed for the GPU part, where CUDA is available')
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    default_threads = torch.get_num_threads()
    try: usable = len(os.sched_getaffinity(0))
    except AttributeError: usable = os.cpu_count()
    torch.set_num_threads(a.threads or usable)
    load = {'start': loadavg()}

    vol_full = synthetic_brain()                               # 240 x 240 x 155 int16 (LPS order, as written to disk)
    if a.quick: vol_full = np.ascontiguousarray(vol_full[:, :, 62:93])   # the middle 31 slices
    if a.max_s is None: a.max_s = 420.0 if a.quick else 840.0
    training, translation, checks = run_device('cpu', ('none',), a, vol_full, t0 + a.max_s - 10)
    load['after_cpu'] = loadavg()

    cuda = {'available': torch.cuda.is_available(), 'measured': False}
    if cuda['available'] and not a.no_cuda:
        dev = 'cuda'
        cuda.update(measured=True, device_name=torch.cuda.get_device_name(0), cuda_version=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), amps=list(AMPS_CUDA),
                    amp_note="brainkit's amp setting ('bf16', 'fp16' with a GradScaler per optimizer); the plain iteration "
                             "uses torch.autocast and, for fp16, a GradScaler per optimizer; translation runs inside "
                             "torch.autocast (translate has no AMP setting). Equivalence on the GPU is reported, not a target.")
        tr, tl, ch = run_device(dev, AMPS_CUDA, a, vol_full, time.perf_counter() + a.cuda_s)
        training.update(tr); translation.update(tl); checks += ch
        load['after_cuda'] = loadavg()
    elif not cuda['available']:
        cuda['skipped'] = ('no CUDA device on this machine: the GPU figures (training iterations and translation with '
                           f"AMP {', '.join(AMPS_CUDA)}) were not measured; they run where torch.cuda.is_available()")
    else: cuda['skipped'] = '--no-cuda'

    wall = round(time.perf_counter() - t0, 1)
    path = write_result('gan', {
        'description': 'brainkit CycleGAN / Pix2Pix training iterations vs the reference iteration written plainly; '
                       'volume translation batched vs a per-slice loop, and cost per slice by batch size',
        'settings': {'quick': a.quick, 'mode': 'quick' if a.quick else 'full',
                     'torch_threads': torch.get_num_threads(), 'torch_threads_default': default_threads, 'cpus_usable': usable,
                     'mkldnn': torch.backends.mkldnn.is_available(), 'max_s': a.max_s, 'cuda_s': a.cuda_s,
                     'training_plans_cpu': plans(a.quick, 'cpu'),
                     'training_plans_cuda': plans(a.quick, 'cuda'),
                     'rounds': 'until max quiet rounds, or min quiet rounds and budget_s of quiet timed iterations, or cap_s '
                               '(at least 3 rounds); translation: a fixed number of rounds, each after waiting for quiet',
                     'quiet': f'other processes used <= {QUIET_FRACTION:.0%} of all CPUs (+1 tick) during the calls '
                              "(/proc/stat busy ticks minus this process's); training medians and ratios use the quiet rounds "
                              '(all rounds if fewer than 3 were quiet); translation uses the quiet rounds if any',
                     'order': 'brainkit and plain alternate, order reversed every round',
                     'ratio': 'median over rounds of brainkit_ms/plain_ms of the same round (target); ratio of medians also given',
                     'equivalence': f'before timing, the same iterations from the same weights and dropout seed: losses within '
                                    f'rel {LOSS_RTOL:g}, weights within {WEIGHT_ATOL:g} (conv biases cancelled by a following '
                                    'instance norm are reported apart: their gradient is rounding noise that Adam scales up)',
                     'volume': f"bench_io.synthetic_brain {'middle 31 slices' if a.quick else 'full'}, LPS affine, "
                               'brainkit.io.make_volume; ResNet-9 ngf 64 instance norm, random weights, eval mode; '
                               "info['size'] 240 (no padding)",
                     'sweep': f'translate_slices(G, x, batch_size) on {SWEEP_SLICES} normalized 240x240 slices for batch sizes '
                              f'{list(BATCHES)}, and the per-slice no_grad loop',
                     'loadavg': load},
        'cuda': cuda,
        'training': training, 'translation': translation, 'translation_cpu_note': translation_note(translation),
        'checks': checks,
        'all_targets_met': all(c['met'] for c in checks),
        'wall_s': wall})
    print(f"\nbench_gan ({'quick' if a.quick else 'full'}): {sum(c['met'] for c in checks)}/{len(checks)} targets met "
          f"({wall:.1f} s) -> {path}")
    if not cuda['measured']: print(f"  GPU: {cuda.get('skipped')}")
    if note := translation_note(translation): print(f"  translation: {note}")
    print(format_checks(checks))
    return 0


if __name__ == '__main__':
    sys.exit(main())
