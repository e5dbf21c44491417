"""Benchmark `brainkit.networks`: training-step time against plainly written baselines, FLOPs, and 3D U-Net memory.

Writes `bench/results/networks.json`. Run: `.venv/bin/python bench/bench_networks.py [--quick]` (or `make bench`).

1. Forward+backward time (batch 1, one grayscale channel; the Pix2Pix D takes 2) of each reference network at 128²
   and 256² on the CPU: ResNet-9 and ResNet-6 (instance norm, ngf 64), unet_128 at 128² / unet_256 at 256² (batch norm,
   dropout), PatchGAN 'basic' (instance norm, 1 ch), the Pix2Pix D (batch norm, 2 ch) and the PixelGAN. Each is
   compared with the same architecture written as plainly as possible in this file (nn.Sequential, a two-line
   residual and skip module, a recursive U-Net; no brainkit import). The baseline must have brainkit's parameter
   count and, after brainkit's state dict is copied into it by position, give bit-identical outputs and gradients.
   brainkit and baseline steps alternate (order reversed every round) after 2 untimed steps each; rounds during which
   other processes used the CPUs are recorded but set aside (see `timed`). Target: the median over quiet rounds of
   the per-round ratio brainkit/baseline <= 1.05 (the ratio of the medians is reported too).
2. FLOPs of one forward and of one forward+backward (torch.utils.flop_counter.FlopCounterMode: convolutions and
   matmuls; norms and activations are not counted), the GFLOP/s a training step achieves, and that as a fraction
   of a 2048x2048 float32 matmul's GFLOP/s on the same machine (sampled before, between and after the networks).
3. Peak memory of one forward+backward of SegUNet(4, 3, dims=3) at the quick configuration (base 16, depth 3, input
   1x4x64x96x96) and a full BraTS crop (base 32, depth 4, input 1x4x128^3), each in a fresh subprocess: peak RSS minus
   the RSS after import and model/input build, with autograd's saved tensors summed, FLOPs and the step's time.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import check, format_checks, stats, write_result  # noqa: E402

import brainkit.networks as bn  # noqa: E402

RATIO_TARGET = 1.05          # brainkit / plain baseline, forward+backward time
SIZES = (128, 256)
MATMUL_N = 2048
REFERENCE_PARAMS = {  # pytorch-CycleGAN-and-pix2pix's counts for these configurations (DESIGN.md, "Reference facts")
    'resnet_9blocks': 11_365_633, 'unet_256': 54_407_809, 'patchgan_basic': 2_762_689, 'pix2pix_D': 2_764_609}
SEG3D = {  # name: SegUNet kwargs and input shape (N, C, D, H, W)
    'quick': dict(net=dict(in_ch=4, out_ch=3, dims=3, base=16, depth=3), input=(1, 4, 64, 96, 96)),
    'brats_128': dict(net=dict(in_ch=4, out_ch=3, dims=3, base=32, depth=4), input=(1, 4, 128, 128, 128)),
}


# --- the plain baselines (written independently of brainkit) --------------------------------------------------

class Residual(nn.Module):
    "x + f(x)."
    def __init__(self, *layers): super().__init__(); self.f = nn.Sequential(*layers)
    def forward(self, x): return x + self.f(x)


class SkipCat(nn.Module):
    "cat(x, f(x)) along channels."
    def __init__(self, *layers): super().__init__(); self.f = nn.Sequential(*layers)
    def forward(self, x): return torch.cat([x, self.f(x)], 1)


def plain_resnet(in_ch:int, out_ch:int, blocks:int, ngf:int=64) -> nn.Module:
    "CycleGAN's ResNet generator with instance norm (no affine, no running stats: PyTorch's defaults), convs with biases."
    IN = nn.InstanceNorm2d
    def res(c): return Residual(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), IN(c), nn.ReLU(True),
                                nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), IN(c))
    return nn.Sequential(
        nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7), IN(ngf), nn.ReLU(True),
        nn.Conv2d(ngf, 2*ngf, 3, 2, 1), IN(2*ngf), nn.ReLU(True),
        nn.Conv2d(2*ngf, 4*ngf, 3, 2, 1), IN(4*ngf), nn.ReLU(True),
        *[res(4*ngf) for _ in range(blocks)],
        nn.ConvTranspose2d(4*ngf, 2*ngf, 3, 2, 1, output_padding=1), IN(2*ngf), nn.ReLU(True),
        nn.ConvTranspose2d(2*ngf, ngf, 3, 2, 1, output_padding=1), IN(ngf), nn.ReLU(True),
        nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh())


def plain_unet(in_ch:int, out_ch:int, levels:int, ngf:int=64, dropout:bool=True) -> nn.Module:
    "Pix2Pix's U-Net with batch norm (no conv bias before a norm), written recursively; dropout where 8ngf meets 8ngf."
    c = [min(ngf * 2**k, 8*ngf) for k in range(levels)]   # channels after each halving
    def level(k):   # takes c[k] channels, returns 2*c[k] (input concatenated to the decoded output)
        down = [nn.LeakyReLU(0.2, True), nn.Conv2d(c[k], c[k+1], 4, 2, 1, bias=False)]
        if k + 1 == levels - 1:   # innermost: no norm after the down conv
            return SkipCat(*down, nn.ReLU(True), nn.ConvTranspose2d(c[k+1], c[k], 4, 2, 1, bias=False), nn.BatchNorm2d(c[k]))
        drop = [nn.Dropout(0.5)] if dropout and c[k] == c[k+1] else []
        return SkipCat(*down, nn.BatchNorm2d(c[k+1]), level(k + 1),
                       nn.ReLU(True), nn.ConvTranspose2d(2*c[k+1], c[k], 4, 2, 1, bias=False), nn.BatchNorm2d(c[k]), *drop)
    return nn.Sequential(nn.Conv2d(in_ch, c[0], 4, 2, 1, bias=False), level(0),
                         nn.ReLU(True), nn.ConvTranspose2d(2*c[0], out_ch, 4, 2, 1), nn.Tanh())


def plain_patchgan(in_ch:int, ndf:int=64, norm:str='instance') -> nn.Module:
    "The 70x70 PatchGAN (3 layers); batch norm (with affine and running stats) or instance norm."
    Norm, bias = (nn.InstanceNorm2d, True) if norm == 'instance' else (nn.BatchNorm2d, False)
    return nn.Sequential(
        nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf, 2*ndf, 4, 2, 1, bias=bias), Norm(2*ndf), nn.LeakyReLU(0.2, True),
        nn.Conv2d(2*ndf, 4*ndf, 4, 2, 1, bias=bias), Norm(4*ndf), nn.LeakyReLU(0.2, True),
        nn.Conv2d(4*ndf, 8*ndf, 4, 1, 1, bias=bias), Norm(8*ndf), nn.LeakyReLU(0.2, True),
        nn.Conv2d(8*ndf, 1, 4, 1, 1))


def plain_pixelgan(in_ch:int, ndf:int=64) -> nn.Module:
    "The PixelGAN (1x1 convs) with instance norm."
    return nn.Sequential(nn.Conv2d(in_ch, ndf, 1), nn.LeakyReLU(0.2, True),
                         nn.Conv2d(ndf, 2*ndf, 1), nn.InstanceNorm2d(2*ndf), nn.LeakyReLU(0.2, True),
                         nn.Conv2d(2*ndf, 1, 1))


def cases() -> list[dict]:
    "Every (network, size): how brainkit builds it, how the baseline is built, input channels."
    out = []
    for s in SIZES:
        lv = int(math.log2(s))
        out += [
            dict(name='resnet_9blocks', size=s, ch=1, desc='ResNet-9 generator, instance norm, ngf 64, 1->1',
                 bk=lambda: bn.generator('resnet_9blocks', 1, 1, norm='instance'), plain=lambda: plain_resnet(1, 1, 9)),
            dict(name='resnet_6blocks', size=s, ch=1, desc='ResNet-6 generator, instance norm, ngf 64, 1->1',
                 bk=lambda: bn.generator('resnet_6blocks', 1, 1, norm='instance'), plain=lambda: plain_resnet(1, 1, 6)),
            dict(name=f'unet_{s}', size=s, ch=1, desc=f'unet_{s} generator, batch norm, dropout, ngf 64, 1->1',
                 bk=lambda s=s: bn.generator(f'unet_{s}', 1, 1, norm='batch', dropout=True),
                 plain=lambda lv=lv: plain_unet(1, 1, lv)),
            dict(name='patchgan_basic', size=s, ch=1, desc="PatchGAN 'basic' (3 layers, 70x70), instance norm, 1 ch",
                 bk=lambda: bn.discriminator('basic', 1, norm='instance'), plain=lambda: plain_patchgan(1, norm='instance')),
            dict(name='pix2pix_D', size=s, ch=2, desc="Pix2Pix D: PatchGAN 'basic', batch norm, 2 ch (input + output)",
                 bk=lambda: bn.discriminator('basic', 2, norm='batch'), plain=lambda: plain_patchgan(2, norm='batch')),
            dict(name='pixelgan', size=s, ch=1, desc="PixelGAN ('pixel'), instance norm, 1 ch",
                 bk=lambda: bn.discriminator('pixel', 1, norm='instance'), plain=lambda: plain_pixelgan(1)),
        ]
    return out


# --- helpers --------------------------------------------------------------------------------------------------

def n_params(net:nn.Module) -> int: return sum(p.numel() for p in net.parameters() if p.requires_grad)


def copy_by_position(src:nn.Module, dst:nn.Module) -> bool:
    "Copy `src`'s state dict into `dst` entry by entry in order (names differ); False if the shapes do not line up."
    a, b = src.state_dict(), dst.state_dict()
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a.values(), b.values())): return False
    dst.load_state_dict(dict(zip(b.keys(), [v.clone() for v in a.values()])))
    return True


def train_step(net:nn.Module, x:torch.Tensor):
    "One forward+backward (no optimizer step): gradients of mean(net(x)) into fresh .grad tensors."
    net.zero_grad(set_to_none=True)
    net(x).mean().backward()


def equivalence(bk:nn.Module, pl:nn.Module, x:torch.Tensor) -> dict:
    "Outputs and gradients of both networks on `x`, train mode, same dropout seed: equal? (also a first warm-up)."
    res = {}
    outs, grads = [], []
    for net in (bk, pl):
        torch.manual_seed(1)
        net.zero_grad(set_to_none=True)
        y = net(x); y.mean().backward()
        outs.append(y.detach()); grads.append([p.grad for p in net.parameters()])
    res['output_shape'] = list(outs[0].shape)
    res['same_output_shape'] = outs[0].shape == outs[1].shape
    res['identical_output'] = bool(torch.equal(outs[0], outs[1]))
    res['max_abs_output_diff'] = float((outs[0] - outs[1]).abs().max()) if res['same_output_shape'] else None
    res['identical_grads'] = len(grads[0]) == len(grads[1]) and all(torch.equal(g, h) for g, h in zip(*grads))
    return res


def count_flops(build, shape:tuple) -> dict:
    "FlopCounterMode totals for one forward and one forward+backward (train mode) of `build()`, on the meta device (shapes only)."
    with torch.device('meta'):
        net, x = build().train(), torch.empty(*shape)
        with FlopCounterMode(display=False) as fc: net(x)
        fwd = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc: train_step(net, x)
        tot = fc.get_total_flops()
    return {'forward_gflop': round(fwd/1e9, 4), 'fwd_bwd_gflop': round(tot/1e9, 4),
            'fwd_bwd_over_forward': round(tot/fwd, 4) if fwd else None,
            'fwd_bwd_by_op_gflop': {str(k): round(v/1e9, 4) for k, v in fc.get_flop_counts()['Global'].items()}}


class MatmulProbe:
    "The float32 2048x2048 @ 2048x2048 matmul, sampled at several times of the run (quiet calls are pooled)."
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.a, self.b = torch.randn(MATMUL_N, MATMUL_N, generator=g), torch.randn(MATMUL_N, MATMUL_N, generator=g)
        self.samples = []   # (when, call)
        self.t0 = time.perf_counter()

    def sample(self, repeats:int, cap_s:float):
        "Up to `repeats` quiet calls (or `cap_s` spent) after one warm-up call."
        when = round(time.perf_counter() - self.t0, 1)
        self.samples += [(when, c) for c in quiet_samples(lambda: torch.mm(self.a, self.b), repeats, cap_s, warmup=1)]

    def result(self) -> dict:
        "GFLOP/s from the median of the quiet calls (of all calls if fewer than 3 were quiet)."
        q = [c['ms'] for _, c in self.samples if quiet([c])]
        st = stats(q if len(q) >= 3 else [c['ms'] for _, c in self.samples])
        return {'shape': f'{MATMUL_N}x{MATMUL_N} @ {MATMUL_N}x{MATMUL_N} float32', 'gflop': round(2*MATMUL_N**3/1e9, 3),
                **{k: v for k, v in st.items() if k != 'times_ms'}, 'from_quiet_calls': len(q) >= 3,
                'calls': len(self.samples), 'quiet_calls': len(q),
                'gflop_per_s': round(2*MATMUL_N**3/(st['median_ms']/1e3)/1e9, 2),
                'all_calls': [{'t_s': w, 'ms': round(c['ms'], 3), 'quiet': quiet([c])} for w, c in self.samples]}


def loadavg() -> list[float]|None:
    try: return [round(v, 2) for v in os.getloadavg()]
    except OSError: return None


# --- timing that notices other processes ------------------------------------------------------------------------
# On a 2-core machine shared with other jobs, a second busy process makes torch's 2 OpenMP threads wait on each
# other: a step then takes 3-10x longer (measured while writing this benchmark). Each timed call therefore also
# records the CPU time that *other* processes used meanwhile (all CPUs' busy ticks from /proc/stat minus this
# process's own from /proc/self/stat); a round counts as quiet when that stays under QUIET_FRACTION of the CPU time
# available (plus one tick of rounding). Targets use the quiet rounds; every round is kept in the JSON.

TCK = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
NCPU = os.cpu_count() or 1
QUIET_FRACTION = 0.05


def _ticks() -> tuple[int, int]|None:
    "(busy ticks of all CPUs, this process's user+system ticks), or None where /proc is missing."
    try:
        with open('/proc/stat') as f: v = [int(t) for t in f.readline().split()[1:9]]
        with open('/proc/self/stat') as f: st = f.read().rsplit(')', 1)[1].split()
    except (OSError, ValueError): return None
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], int(st[11]) + int(st[12])  # user nice system irq softirq steal


def timed(fn) -> dict:
    "One call of `fn`: wall ms and the ticks other processes were busy meanwhile (garbage collected before)."
    gc.collect()
    a, t0 = _ticks(), time.perf_counter()
    fn()
    dt, b = time.perf_counter() - t0, _ticks()
    other = None if a is None or b is None else max(0, (b[0] - a[0]) - (b[1] - a[1]))
    return {'ms': dt*1e3, 'other_ticks': other, 'avail_ticks': dt*TCK*NCPU}


def quiet(calls:list[dict]) -> bool:
    "Whether other processes used less than QUIET_FRACTION of the CPUs during these calls (True if unknown)."
    other = [c['other_ticks'] for c in calls]
    if any(o is None for o in other): return True
    return sum(other) <= 1 + QUIET_FRACTION*sum(c['avail_ticks'] for c in calls)


def wait_quiet(max_s:float, window_s:float=0.5) -> float:
    "Sleep until other processes use < QUIET_FRACTION of the CPUs over `window_s`, for at most `max_s`; seconds waited."
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        a = _ticks()
        time.sleep(window_s)
        b = _ticks()
        if a is None or b is None: break
        if (b[0] - a[0]) - (b[1] - a[1]) <= QUIET_FRACTION*window_s*TCK*NCPU: break
    return time.perf_counter() - t0


def interleaved(fns:dict, rmin:int, rmax:int, budget_s:float, cap_s:float, rfloor:int=3) -> list[dict]:
    """Rounds of one call of each fn (order reversed every round) until `rmax` quiet rounds, or `rmin` quiet rounds and
    `budget_s` of quiet timed calls, or `cap_s` spent (and at least `rfloor` rounds). After a round that was not quiet,
    wait (within `cap_s`) for the other processes to stop: a step timed beside them takes 3-20x longer and is not used."""
    names, rounds, spent, t0 = list(fns), [], 0.0, time.perf_counter()
    while True:
        if rounds and not rounds[-1]['quiet']:
            rounds[-1]['waited_s'] = round(wait_quiet(max(0.0, cap_s - (time.perf_counter() - t0))), 1)
        order = names if len(rounds) % 2 == 0 else names[::-1]
        r = {n: timed(fns[n]) for n in order}
        r = {n: r[n] for n in names}
        rounds.append({'calls': r, 'quiet': quiet(list(r.values()))})
        nq = sum(x['quiet'] for x in rounds)
        if r and rounds[-1]['quiet']: spent += sum(c['ms'] for c in r.values())/1e3
        if nq >= rmax or (nq >= rmin and spent >= budget_s): break
        if time.perf_counter() - t0 >= cap_s and len(rounds) >= rfloor: break
    return rounds


def quiet_samples(fn, repeats:int, cap_s:float, warmup:int=2) -> list[dict]:
    "Calls of `fn` until `repeats` quiet ones or `cap_s` spent (at least `repeats` calls), after `warmup` calls."
    for _ in range(warmup): fn()
    out, t0 = [], time.perf_counter()
    while sum(quiet([c]) for c in out) < repeats and (time.perf_counter() - t0 < cap_s or len(out) < repeats):
        out.append(timed(fn))
    return out


# --- 1 and 2: 2D networks --------------------------------------------------------------------------------------

def measure_case(c:dict, budget_s:float, rmin:int, rmax:int, cap_s:float) -> dict:
    "Build brainkit's network and the plain one, check them against each other, time them alternately, count FLOPs."
    key = f"{c['name']}@{c['size']}"
    load0 = loadavg()
    torch.manual_seed(0)
    bk, pl = c['bk']().train(), c['plain']().train()
    np_bk, np_pl = n_params(bk), n_params(pl)
    assert np_bk == np_pl, f"{key}: baseline has {np_pl:,} parameters, brainkit {np_bk:,}"
    copied = copy_by_position(bk, pl)
    x = torch.randn(1, c['ch'], c['size'], c['size'], generator=torch.Generator().manual_seed(0))
    eq = equivalence(bk, pl, x)   # also the first (untimed) step of each
    assert eq['same_output_shape'], f"{key}: output shapes differ"
    train_step(bk, x); train_step(pl, x)   # one more untimed warm-up step each
    waited = wait_quiet(min(30.0, cap_s/2))
    rounds = interleaved({'brainkit': lambda: train_step(bk, x), 'plain': lambda: train_step(pl, x)},
                         rmin, rmax, budget_s, cap_s)
    q = [r for r in rounds if r['quiet']]
    use = q if len(q) >= 3 else rounds
    ta, tb = [r['calls']['brainkit']['ms'] for r in use], [r['calls']['plain']['ms'] for r in use]
    a, b = stats(ta), stats(tb)
    paired = [p/r for p, r in zip(ta, tb)]
    ratio = statistics.median(paired)
    fl = count_flops(c['bk'], tuple(x.shape))
    gfs = fl['fwd_bwd_gflop']/(a['median_ms']/1e3)
    same = bool(np_bk == np_pl == REFERENCE_PARAMS.get(c['name'], np_bk) and eq['identical_output'] and eq['identical_grads'])
    return {'network': c['name'], 'description': c['desc'], 'input_shape': list(x.shape), 'loadavg_before': load0,
            'params_brainkit': np_bk, 'params_plain': np_pl, 'params_reference': REFERENCE_PARAMS.get(c['name']),
            'state_dict_copied_by_position': copied, **eq, 'params_match_and_identical': same,
            'cap_s': round(cap_s, 1), 'waited_s': round(waited + sum(r.get('waited_s', 0) for r in rounds), 1),
            'rounds': len(rounds), 'quiet_rounds': len(q), 'from_quiet_rounds': use is q,
            'brainkit_fwd_bwd': a, 'plain_fwd_bwd': b,
            'ratio_median_of_paired': round(ratio, 4), 'ratio_of_medians': round(a['median_ms']/b['median_ms'], 4),
            'paired_ratios': [round(r, 4) for r in paired],
            'target_ratio': RATIO_TARGET, 'target_met': ratio <= RATIO_TARGET,
            'all_rounds': [{'brainkit_ms': round(r['calls']['brainkit']['ms'], 3), 'plain_ms': round(r['calls']['plain']['ms'], 3),
                            'other_ticks': [r['calls'][n]['other_ticks'] for n in ('brainkit', 'plain')],
                            'quiet': r['quiet'], 'waited_s_after': r.get('waited_s', 0)} for r in rounds],
            'flops': fl, 'brainkit_step_gflop_per_s': round(gfs, 2)}


def _line(key:str, r:dict) -> str:
    a, b = r['brainkit_fwd_bwd']['median_ms'], r['plain_fwd_bwd']['median_ms']
    return (f"{key:<22} brainkit {a:8.1f} ms  plain {b:8.1f} ms  ratio {r['ratio_median_of_paired']:.3f} "
            f"(of medians {a/b:.3f}; {r['quiet_rounds']}/{r['rounds']} rounds quiet{'' if r['from_quiet_rounds'] else ', ALL used'})  "
            f"{r['flops']['fwd_bwd_gflop']:6.1f} GFLOP  {r['brainkit_step_gflop_per_s']:6.1f} GFLOP/s  "
            f"identical={r['params_match_and_identical']}  {'OK' if r['target_met'] else 'MISSED'}")


def bench_2d(budget_s:float, rmin:int, rmax:int, deadline:float, only:str, mm:MatmulProbe, mm_repeats:int) -> tuple[dict, list[dict]]:
    """Every case of `cases()`; each may take up to 2.5x `budget_s`, less when needed to end by `deadline` (perf_counter).
    Then, while time is left, cases with fewer than `rmin` quiet rounds are measured again (the attempt with more
    quiet rounds, then more rounds, is kept)."""
    res = {}
    todo = [c for c in cases() if not only or only in f"{c['name']}@{c['size']}"]
    for i, c in enumerate(todo):
        key = f"{c['name']}@{c['size']}"
        cap_s = min(2.5*budget_s, max(0.5*budget_s, (deadline - time.perf_counter())/(len(todo) - i)))
        res[key] = measure_case(c, budget_s, rmin, rmax, cap_s)
        res[key]['attempts_quiet_rounds'] = [res[key]['quiet_rounds']]
        mm.sample(mm_repeats, 3.0)   # the matmul reference, between cases
        print(_line(key, res[key]), flush=True)
    for c in todo:   # second chance for the cases measured while other processes were busy
        key = f"{c['name']}@{c['size']}"
        left = deadline - time.perf_counter()
        if res[key]['quiet_rounds'] >= rmin or left < budget_s: continue
        r = measure_case(c, budget_s, rmin, rmax, min(2.5*budget_s, left))
        attempts = res[key]['attempts_quiet_rounds'] + [r['quiet_rounds']]
        if (r['quiet_rounds'], r['rounds']) > (res[key]['quiet_rounds'], res[key]['rounds']): res[key] = r
        res[key]['attempts_quiet_rounds'] = attempts
        mm.sample(mm_repeats, 3.0)
        print('again: ' + _line(key, res[key]), flush=True)
    checks = []
    for key, r in res.items():
        checks.append(check(f'{key}: fwd+bwd brainkit/plain', r['ratio_median_of_paired'], RATIO_TARGET, 'x'))
        checks.append({'name': f'{key}: params match plain and reference; output and grads identical',
                       'value': int(r['params_match_and_identical']), 'unit': '', 'target': '== 1',
                       'met': r['params_match_and_identical']})
    return res, checks


# --- 3: 3D segmentation U-Net memory (fresh subprocess each) ---------------------------------------------------

def _status_kb(key:str) -> int|None:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'): return int(line.split()[1])
    return None


def _reset_hwm() -> bool:
    "Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return True
    except OSError: return False


def seg3d_child(cfg:dict) -> dict:
    "In a fresh process: build the 3D SegUNet, run 2 forward+backward steps, report memory, time and saved tensors."
    torch.set_num_threads(cfg['threads'])
    rss_import = _status_kb('VmRSS')
    torch.manual_seed(0)
    net = bn.SegUNet(**cfg['net']).train()
    x = torch.randn(*cfg['input'])
    rss_built = _status_kb('VmRSS')
    with torch.device('meta'):   # FLOPs from shapes only (no compute)
        mnet, mx = bn.SegUNet(**cfg['net']).train(), torch.empty(*cfg['input'])
        with FlopCounterMode(display=False) as fc: out_shape = list(mnet(mx).shape)
        fwd_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc: mnet(mx).mean().backward()
        tot_flops = fc.get_total_flops()
    del mnet, mx
    keep = {t.untyped_storage().data_ptr() for t in (*net.parameters(), x)}
    saved, n_saved = {}, [0]
    def pack(t):   # record each saved tensor's storage once (activations only: not parameters or the input)
        n_saved[0] += 1
        s = t.untyped_storage()
        if s.data_ptr() not in keep: saved[s.data_ptr()] = max(saved.get(s.data_ptr(), 0), s.nbytes())
        return t
    steps = []
    while True:   # step 1: memory (and saved tensors); then warm steps until one is quiet (at most cfg['max_warm'])
        i = len(steps)
        net.zero_grad(set_to_none=True)
        reset = _reset_hwm()
        a, t0 = _ticks(), time.perf_counter()
        if i == 0:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): loss = net(x).mean()
        else: loss = net(x).mean()
        t1 = time.perf_counter()
        loss.backward()
        t2, b = time.perf_counter(), _ticks()
        call = {'ms': (t2 - t0)*1e3, 'avail_ticks': (t2 - t0)*TCK*NCPU,
                'other_ticks': None if a is None or b is None else max(0, (b[0] - a[0]) - (b[1] - a[1]))}
        steps.append({'step': i + 1, 'forward_s': round(t1 - t0, 3), 'backward_s': round(t2 - t1, 3),
                      'fwd_bwd_s': round(t2 - t0, 3), 'other_ticks': call['other_ticks'], 'quiet': quiet([call]),
                      'hwm_reset_before': reset, 'peak_rss_kb_vmhwm': _status_kb('VmHWM'),
                      'ru_maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'rss_after_kb': _status_kb('VmRSS')})
        del loss
        if i >= 1 and (steps[-1]['quiet'] or i >= cfg['max_warm']): break
    p_bytes = sum(p.numel()*p.element_size() for p in net.parameters())
    return {'rss_after_import_kb': rss_import, 'rss_after_build_kb': rss_built, 'steps': steps,
            'params': n_params(net), 'params_mb': round(p_bytes/2**20, 2), 'grads_mb': round(p_bytes/2**20, 2),
            'input_mb': round(x.numel()*x.element_size()/2**20, 2),
            'output_shape': out_shape,
            'saved_tensors': n_saved[0], 'saved_activation_storages': len(saved),
            'saved_activations_mb': round(sum(saved.values())/2**20, 1),
            'forward_gflop': round(fwd_flops/1e9, 2), 'fwd_bwd_gflop': round(tot_flops/1e9, 2), 'threads': torch.get_num_threads()}


def run_seg3d(name:str, threads:int) -> dict:
    cfg = {**SEG3D[name], 'threads': threads, 'max_warm': 3}
    waited = wait_quiet(60.0)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, '--seg3d-child', json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"3D U-Net child '{name}' failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    base = r['rss_after_build_kb']
    s1, warm = r['steps'][0], r['steps'][1:]
    s2 = next((s for s in warm if s['quiet']), min(warm, key=lambda s: s['fwd_bwd_s']))
    peak = s1['peak_rss_kb_vmhwm'] if s1['hwm_reset_before'] else s1['ru_maxrss_kb']
    res = {'call': f"SegUNet({', '.join(f'{k}={v!r}' for k, v in cfg['net'].items())}), train mode; "
                   f"x = torch.randn{tuple(cfg['input'])}; net(x).mean().backward()",
           'input_shape': list(cfg['input']), **r,
           'peak_rss_mb': round(peak/1024, 1),
           'peak_minus_after_build_mb': round((peak - base)/1024, 1),
           'ru_maxrss_minus_after_build_mb': round((s1['ru_maxrss_kb'] - base)/1024, 1),
           'warm_step_peak_minus_after_build_mb': round((s2['peak_rss_kb_vmhwm'] - base)/1024, 1) if s2['hwm_reset_before'] else None,
           'fwd_bwd_s_first': s1['fwd_bwd_s'], 'fwd_bwd_s_warm': s2['fwd_bwd_s'], 'warm_step_quiet': s2['quiet'],
           'warm_step_gflop_per_s': round(r['fwd_bwd_gflop']/s2['fwd_bwd_s'], 2), 'child_wall_s': round(time.perf_counter() - t0, 1),
           'waited_for_quiet_before_s': round(waited, 1)}
    print(f"3D SegUNet {name:<10} input {tuple(cfg['input'])}  peak - after build {res['peak_minus_after_build_mb']:8.1f} MB "
          f"(ru_maxrss: {res['ru_maxrss_minus_after_build_mb']:.1f} MB; saved activations {r['saved_activations_mb']:.1f} MB)  "
          f"step {s1['fwd_bwd_s']:.1f} s first, {s2['fwd_bwd_s']:.1f} s warm  {res['warm_step_gflop_per_s']:.1f} GFLOP/s",
          flush=True)
    return res


# --- main -----------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer repeats, 3D quick configuration only (for a smoke test)')
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: the CPUs this process may use)')
    ap.add_argument('--budget', type=float, default=None, help='seconds of timed steps per network and size (both nets)')
    ap.add_argument('-k', default='', help='only the 2D cases whose key (e.g. resnet_9blocks@256) contains this')
    ap.add_argument('--no-3d', action='store_true', help='skip the 3D U-Net memory measurements')
    ap.add_argument('--max-s', type=float, default=None, help='aim to finish within this many seconds (default 570; quick 150)')
    ap.add_argument('--seg3d-child', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.seg3d_child:
        print(json.dumps(seg3d_child(json.loads(a.seg3d_child)))); return 0

    t0 = time.perf_counter()
    default_threads = torch.get_num_threads()
    try: usable = len(os.sched_getaffinity(0))
    except AttributeError: usable = os.cpu_count()
    threads = a.threads or usable
    torch.set_num_threads(threads)
    budget = a.budget if a.budget is not None else (4.0 if a.quick else 16.0)
    if a.max_s is None: a.max_s = 150.0 if a.quick else 570.0
    rmin, rmax = (3, 5) if a.quick else (7, 41)
    load = {'start': loadavg()}
    # 3D first: the children's ru_maxrss can include this process's high-water mark, kept small until then
    seg3d = {} if a.no_3d else {n: run_seg3d(n, threads) for n in (('quick',) if a.quick else SEG3D)}
    load['after_3d'] = loadavg()
    mm = MatmulProbe()
    mm.sample(15, 10 if a.quick else 20)
    deadline = t0 + a.max_s - 15   # leave time for the last matmul samples and writing
    nets, checks = bench_2d(budget, rmin, rmax, deadline, a.k, mm, 3 if a.quick else 5)
    load['after_2d'] = loadavg()
    mm.sample(15, 10 if a.quick else 20)
    load['end'] = loadavg()
    mmr = mm.result()
    mm_gfs = mmr['gflop_per_s']
    for r in nets.values(): r['fraction_of_matmul_rate'] = round(r['brainkit_step_gflop_per_s']/mm_gfs, 3)
    for r in seg3d.values(): r['fraction_of_matmul_rate'] = round(r['warm_step_gflop_per_s']/mm_gfs, 3)
    print(f"matmul {MATMUL_N}^3 float32: {mm_gfs:.1f} GFLOP/s (median of {mmr['quiet_calls'] if mmr['from_quiet_calls'] else mmr['calls']}"
          f" {'quiet' if mmr['from_quiet_calls'] else 'NOT quiet'} calls, {mmr['median_ms']:.1f} ms)", flush=True)
    for k, r in nets.items(): print(f"  {k:<22} {r['brainkit_step_gflop_per_s']:6.1f} GFLOP/s = {r['fraction_of_matmul_rate']:.2f} of matmul")
    for k, r in seg3d.items(): print(f"  3D SegUNet {k:<11} {r['warm_step_gflop_per_s']:6.1f} GFLOP/s = {r['fraction_of_matmul_rate']:.2f} of matmul")

    path = write_result('networks', {
        'description': 'brainkit.networks: fwd+bwd time vs plainly written baselines, FLOPs and GFLOP/s vs a matmul, '
                       '3D SegUNet peak memory',
        'settings': {'quick': a.quick, 'torch_threads': torch.get_num_threads(), 'torch_threads_default': default_threads,
                     'torch_interop_threads': torch.get_num_interop_threads(), 'cpus_usable': usable,
                     'mkldnn': torch.backends.mkldnn.is_available(), 'budget_s_per_case': budget,
                     'quiet_rounds_min_max': [rmin, rmax], 'max_s': a.max_s,
                     'cap_s_per_case': f'min(2.5 x budget, max(0.5 x budget, time left to max_s - 15 s / cases left)); at least 3 rounds',
                     'rounds': 'until max quiet rounds, or min quiet rounds and the budget of quiet timed steps, or the cap',
                     'quiet': f'other processes used <= {QUIET_FRACTION:.0%} of all CPUs (+1 tick) during both steps of a round '
                              '(/proc/stat busy ticks minus this process\'s); medians and ratios use the quiet rounds '
                              '(all rounds if fewer than 3 were quiet)',
                     'warmup': 'untimed: 1 equivalence step + 1 warm-up step of each network',
                     'order': 'brainkit and plain alternate, order reversed every round', 'batch': 1, 'mode': 'train',
                     'step': 'net.zero_grad(set_to_none=True); net(x).mean().backward()  (no optimizer step)',
                     'ratio': 'median over the quiet rounds of brainkit_ms/plain_ms of the same round (target); ratio of medians also given',
                     'flops': 'torch.utils.flop_counter.FlopCounterMode, counted for the forward and for forward+backward '
                              '(convolutions and matmuls only; 1 FLOP = 1 multiply or 1 add)',
                     'loadavg': load},
        'matmul': mmr,
        'networks': nets, 'seg3d_memory': seg3d, 'checks': checks,
        'all_targets_met': all(c['met'] for c in checks),
        'wall_s': round(time.perf_counter() - t0, 1)})
    print(f"\nbench_networks: {sum(c['met'] for c in checks)}/{len(checks)} targets met "
          f"({time.perf_counter() - t0:.1f} s) -> {path}")
    print(format_checks(checks))
    return 0


if __name__ == '__main__':
    sys.exit(main())
