"brainkit.networks: parameter-count parity with pytorch-CycleGAN-and-pix2pix, PatchGAN geometry, generators, SegUNet, init, bad input."
import pytest
import torch
from torch import nn

from brainkit.networks import (REFERENCE_COUNTS, NetworkInputError, NLayerDiscriminator, ResnetGenerator, SegUNet,
                               UnetGenerator, build, discriminator, generator, init_weights, n_params, norm_layer,
                               receptive_field, sync_norm, unet_diagram, unet_levels)

# The parameter counts of the reference networks, copied from DESIGN.md's "Reference facts" (total trainable).
# They are written out here on purpose: this is the parity check, so it must not read brainkit's own numbers.
DESIGN_COUNTS = {
    'ResNet-9, 3→3': 11_378_179,
    'ResNet-9, 1→1': 11_365_633,
    'ResNet-6, 3→3': 7_837_699,
    'PatchGAN, 3 ch, instance norm': 2_764_737,
    'PatchGAN, 1 ch, instance norm': 2_762_689,
    'unet_256, 3→3, batch norm': 54_413_955,
    'unet_256, 1→1': 54_407_809,
    'unet_128, 3→3': 41_828_995,
    'pix2pix D, 6 ch, batch norm': 2_768_705,
    'pix2pix D, 2 ch': 2_764_609,
}

# Each row built with brainkit's API at the reference defaults: CycleGAN's resnet G (instance norm, no dropout, ngf 64)
# and 'basic' D (n_layers 3, ndf 64, instance norm); Pix2Pix's unet G (batch norm, dropout) and conditional D (batch norm).
BUILDERS = {
    'ResNet-9, 3→3': lambda: generator('resnet_9blocks', 3, 3, ngf=64, norm='instance', dropout=False),
    'ResNet-9, 1→1': lambda: generator('resnet_9blocks', 1, 1, ngf=64, norm='instance', dropout=False),
    'ResNet-6, 3→3': lambda: generator('resnet_6blocks', 3, 3, ngf=64, norm='instance', dropout=False),
    'PatchGAN, 3 ch, instance norm': lambda: discriminator('basic', 3, ndf=64, norm='instance'),
    'PatchGAN, 1 ch, instance norm': lambda: discriminator('basic', 1, ndf=64, norm='instance'),
    'unet_256, 3→3, batch norm': lambda: generator('unet_256', 3, 3, ngf=64, norm='batch', dropout=True),
    'unet_256, 1→1': lambda: generator('unet_256', 1, 1, ngf=64, norm='batch', dropout=True),
    'unet_128, 3→3': lambda: generator('unet_128', 3, 3, ngf=64, norm='batch', dropout=True),
    'pix2pix D, 6 ch, batch norm': lambda: discriminator('basic', 6, ndf=64, norm='batch'),
    'pix2pix D, 2 ch': lambda: discriminator('basic', 2, ndf=64, norm='batch'),
}


# ---------------------------------------------------------------- parameter-count parity

@pytest.mark.parametrize('label', list(DESIGN_COUNTS))
def test_parameter_count_matches_the_reference_network(label):
    net = BUILDERS[label]()
    assert n_params(net) == DESIGN_COUNTS[label]
    assert sum(p.numel() for p in net.parameters()) == DESIGN_COUNTS[label]   # all of them trainable


def test_reference_counts_table_agrees_with_design():
    assert {label: count for label, _, count in REFERENCE_COUNTS} == DESIGN_COUNTS
    assert [label for label, _, _ in REFERENCE_COUNTS] == list(DESIGN_COUNTS)


def test_build_dispatches_on_kind():
    g = build('G', name='resnet_6blocks', in_ch=2, out_ch=1, ngf=8)
    d = build('D', name='basic', in_ch=3, ndf=8)
    assert isinstance(g, ResnetGenerator) and g.blocks == 6 and g.in_ch == 2
    assert isinstance(d, NLayerDiscriminator) and d.in_ch == 3
    assert g.spec == dict(kind='generator', name='resnet_6blocks', in_ch=2, out_ch=1, ngf=8, norm='instance', dropout=False)
    assert d.spec['kind'] == 'discriminator' and d.spec['n_layers'] == 3


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match='resnet_9blocks'): generator('unet_100')
    with pytest.raises(ValueError, match='basic'): discriminator('global')
    with pytest.raises(ValueError, match='instance'): norm_layer('group')
    with pytest.raises(ValueError): norm_layer('batch', dims=1)


# ---------------------------------------------------------------- PatchGAN geometry

def test_basic_patchgan_maps_256_pixels_to_a_30x30_patch_map():
    net = discriminator('basic', in_ch=3)
    with torch.no_grad(): y = net(torch.randn(1, 3, 256, 256))
    assert y.shape == (1, 1, 30, 30)
    assert receptive_field(net) == 70


def test_receptive_fields_of_the_pix2pix_paper():
    # pix2pix (Isola et al. 2017): PixelGAN 1×1, PatchGANs 16×16, 70×70 and ImageGAN 286×286
    assert receptive_field(discriminator('pixel', ndf=4)) == 1
    assert receptive_field(discriminator('n_layers', ndf=4, n_layers=1)) == 16
    assert receptive_field(discriminator('basic', ndf=4)) == 70
    assert receptive_field(discriminator('n_layers', ndf=4, n_layers=5)) == 286
    assert receptive_field(discriminator('basic', ndf=4, n_layers=5)) == 70     # 'basic' is always 3 layers


def _empirical_receptive_field(net, size):
    """Extent (rows, cols) and area of the input pixels that one central output depends on.
    All weights are made positive and biases 0, so with a positive input every activation is positive, the
    LeakyReLUs are the identity, and the gradient is strictly positive exactly on the receptive field."""
    net = net.double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(m.weight.abs() + 0.01)
                if m.bias is not None: m.bias.zero_()
    x = (torch.rand(1, net.in_ch, size, size, dtype=torch.float64) + 0.5).requires_grad_(True)
    y = net(x)
    i, j = y.shape[2] // 2, y.shape[3] // 2
    y[0, 0, i, j].backward()
    g = x.grad[0].abs().sum(0)
    assert (g >= 0).all()
    support = g > 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < size - 1 and cols.max() < size - 1   # interior: padding not involved
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1), int(support.sum())


@pytest.mark.parametrize('name,n_layers,size,rf', [('basic', 3, 128, 70), ('n_layers', 1, 64, 16), ('pixel', 3, 16, 1)])
def test_receptive_field_is_verified_empirically(name, n_layers, size, rf):
    net = discriminator(name, in_ch=2, ndf=4, n_layers=n_layers, norm='none')
    assert receptive_field(net) == rf
    h, w, area = _empirical_receptive_field(net, size)
    assert (h, w, area) == (rf, rf, rf * rf)


def test_one_input_pixel_changes_only_the_outputs_whose_patch_holds_it():
    net = discriminator('basic', in_ch=1, ndf=4, norm='none').double().eval()
    x = torch.randn(1, 1, 128, 128, dtype=torch.float64)
    x2 = x.clone(); x2[0, 0, 64, 64] += 10.0
    with torch.no_grad(): changed = (net(x2) - net(x)).abs()[0, 0] > 0
    # output o sees input rows [8o - 23, 8o + 46] (stride 8, total padding 23): row 64 is seen by o = 3..10
    want = torch.zeros(14, dtype=torch.bool); want[3:11] = True
    assert changed.shape == (14, 14)
    assert torch.equal(changed, want[:, None] & want[None, :])


# ---------------------------------------------------------------- generators

@pytest.mark.parametrize('name,shape', [('unet_32', (32, 64)), ('unet_64', (64, 64)), ('unet_128', (128, 128)),
                                        ('unet_256', (256, 256)), ('resnet_6blocks', (20, 28)), ('resnet_9blocks', (32, 32))])
def test_generators_keep_the_image_size_and_end_in_tanh(name, shape):
    torch.manual_seed(0)
    norm = 'batch' if name.startswith('unet') else 'instance'
    net = generator(name, in_ch=2, out_ch=3, ngf=4, norm=norm)
    assert isinstance(list(net.modules())[-1], nn.Tanh)
    x = torch.randn(2, 2, *shape)
    with torch.no_grad(): y = net(x)
    assert y.shape == (2, 3, *shape)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    init_weights(net, 'normal', 1.0)                       # large weights and inputs: the output saturates but stays in [-1, 1]
    with torch.no_grad(): y = net(100 * x)
    assert y.abs().max() <= 1.0 and (y.abs() > 0.99).any()


def test_unet_dropout_is_noise_in_training_only():
    torch.manual_seed(0)
    net = generator('unet_64', 1, 1, ngf=4, norm='batch', dropout=True)
    assert any(isinstance(m, nn.Dropout) for m in net.modules())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        net.train(); a, b = net(x), net(x)
        net.eval(); c, d = net(x), net(x)
    assert not torch.equal(a, b) and torch.equal(c, d)
    assert not any(isinstance(m, nn.Dropout) for m in generator('unet_64', 1, 1, ngf=4, dropout=False).modules())


def test_unet_levels_fit_the_image_size():
    assert [unet_levels(s) for s in (32, 64, 96, 128, 256, 512)] == [5, 6, 5, 7, 8, 9]
    for s in (16, 48, 100, 255):
        with pytest.raises(ValueError, match='32'): unet_levels(s)
    with pytest.raises(ValueError): UnetGenerator(levels=4)


def test_unet_diagram_lists_every_level_down_and_up():
    net = generator('unet_32', in_ch=2, out_ch=1, ngf=4)
    lines = unet_diagram(net, 32).splitlines()
    assert len(lines) == 2 * 5
    assert lines[0].startswith('level 1: 2×32²') and '4×16²' in lines[0]
    assert lines[-1].strip().startswith('level 1') and lines[-1].endswith('1×32²')


# ---------------------------------------------------------------- bad input

def _nets():
    return {
        'unet': (generator('unet_32', in_ch=2, out_ch=1, ngf=4, norm='batch'), (1, 2, 32, 32), 32),
        'resnet': (generator('resnet_6blocks', in_ch=2, out_ch=1, ngf=4), (1, 2, 16, 16), 4),
        'patchgan': (discriminator('basic', in_ch=2, ndf=4), (1, 2, 32, 32), 1),
        'segunet2d': (SegUNet(in_ch=2, out_ch=3, dims=2, base=4, depth=3), (1, 2, 16, 16), 8),
        'segunet3d': (SegUNet(in_ch=2, out_ch=3, dims=3, base=4, depth=2), (1, 2, 8, 8, 8), 4),
    }


def _record_compute(net):
    "Every submodule appends itself to the returned list when it runs."
    calls = []
    for m in net.modules():
        if m is not net: m.register_forward_pre_hook(lambda mod, args: calls.append(mod))
    return calls


def _refused(net, x):
    calls = _record_compute(net)
    with pytest.raises(NetworkInputError) as ei: net(x)
    assert calls == []                                    # refused before any layer ran
    assert isinstance(ei.value, ValueError)
    msg = str(ei.value)
    assert 'Fix:' in msg
    return msg


@pytest.mark.parametrize('which', ['unet', 'resnet', 'patchgan', 'segunet2d', 'segunet3d'])
def test_good_input_runs_every_layer(which):
    net, shape, _ = _nets()[which]
    calls = _record_compute(net)
    with torch.no_grad(): net.eval()(torch.randn(*shape))
    assert len(calls) > 5


@pytest.mark.parametrize('which', ['unet', 'resnet', 'patchgan', 'segunet2d', 'segunet3d'])
def test_wrong_channel_count_is_refused_with_the_fix(which):
    net, shape, _ = _nets()[which]
    msg = _refused(net, torch.randn(shape[0], 3, *shape[2:]))
    assert 'expects 2 input channel(s), got 3' in msg and 'in_ch=3' in msg


@pytest.mark.parametrize('which,bad', [('unet', (48, 48)), ('unet', (32, 40)), ('resnet', (18, 18)), ('resnet', (16, 14)),
                                       ('segunet2d', (12, 12)), ('segunet2d', (16, 20)), ('segunet3d', (8, 6, 8))])
def test_a_size_the_depth_cannot_divide_is_refused_with_the_fix(which, bad):
    net, shape, multiple = _nets()[which]
    msg = _refused(net, torch.randn(*shape[:2], *bad))
    assert f'divisible by {multiple}' in msg and str(tuple(bad)) in msg and 'crop' in msg


@pytest.mark.parametrize('which', ['unet', 'resnet', 'patchgan', 'segunet2d'])
def test_a_volume_given_to_a_2d_network_is_refused_with_the_fix(which):
    net, shape, _ = _nets()[which]
    msg = _refused(net, torch.randn(shape[0], shape[1], 8, *shape[2:]))
    assert '5-D' in msg and 'slice it' in msg and '3D U-Net' in msg


@pytest.mark.parametrize('which', ['unet', 'resnet', 'patchgan', 'segunet2d', 'segunet3d'])
def test_an_unbatched_image_is_refused_with_the_fix(which):
    net, shape, _ = _nets()[which]
    msg = _refused(net, torch.randn(*shape[1:]))
    assert 'x[None]' in msg
    with torch.no_grad(): net.eval()(torch.randn(*shape[1:])[None])    # the fix works


# ---------------------------------------------------------------- init

def _convs(net):
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear))]


def test_init_normal_gives_std_gain_and_zero_biases():
    net = generator('unet_64', 1, 1, ngf=16, norm='batch')
    with torch.no_grad():
        for p in net.parameters(): p.fill_(5.0)             # so that every value below comes from init_weights
    torch.manual_seed(0)
    assert init_weights(net, 'normal', 0.02) is net
    w = torch.cat([m.weight.flatten() for m in _convs(net)])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    biases = [m.bias for m in _convs(net) if m.bias is not None]
    assert biases and all((b == 0).all() for b in biases)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    bw = torch.cat([m.weight for m in bns])
    assert len(bns) > 5 and abs(bw.mean().item() - 1) < 0.01 and 0.01 < bw.std().item() < 0.03
    assert all((m.bias == 0).all() for m in bns)


def test_init_gain_and_kinds():
    net = discriminator('basic', 1, ndf=16, norm='instance', gain=0.1)
    w = torch.cat([m.weight.flatten() for m in _convs(net)])
    assert abs(w.std().item() - 0.1) < 0.005
    lin = init_weights(nn.Sequential(nn.Linear(64, 32)), 'orthogonal', 1.0)[0]
    torch.testing.assert_close(lin.weight @ lin.weight.T, torch.eye(32), atol=1e-5, rtol=0)
    conv = init_weights(nn.Conv2d(32, 256, 3), 'kaiming')
    assert abs(conv.weight.std().item() - (2 / (32 * 9)) ** 0.5) < 0.005 and (conv.bias == 0).all()
    lin = init_weights(nn.Linear(400, 400), 'xavier', 2.0)
    assert abs(lin.weight.std().item() - 2 * (2 / 800) ** 0.5) < 0.005


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match='normal'): init_weights(nn.Conv2d(1, 1, 3), 'uniform')
    with pytest.raises(ValueError): generator('unet_32', ngf=4, init='he')


# ---------------------------------------------------------------- norms

def test_instance_norm_has_no_affine_params_and_batch_norm_does():
    inst = norm_layer('instance')(8)
    assert isinstance(inst, nn.InstanceNorm2d) and list(inst.parameters()) == [] and not inst.track_running_stats
    assert isinstance(norm_layer('instance', 3)(8), nn.InstanceNorm3d)
    bn = norm_layer('batch')(8)
    assert isinstance(bn, nn.BatchNorm2d) and sum(p.numel() for p in bn.parameters()) == 16
    assert isinstance(norm_layer('none')(8), nn.Identity)
    d = discriminator('basic', 1, ndf=8, norm='instance')
    norms = [m for m in d.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 and all(m.weight is None and m.bias is None for m in norms)
    assert n_params(d) == sum(p.numel() for m in _convs(d) for p in m.parameters())


def test_sync_norm_converts_every_batch_norm_and_keeps_weights():
    torch.manual_seed(0)
    net = generator('unet_32', 1, 1, ngf=4, norm='batch').eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad(): y = net(x)
    net = sync_norm(net)
    assert n_bn > 0 and sum(isinstance(m, nn.SyncBatchNorm) for m in net.modules()) == n_bn
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in net.modules())
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad(): torch.testing.assert_close(net.eval()(x), y)
    seg = sync_norm(SegUNet(2, 3, dims=3, base=4, depth=2, norm='batch'))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in seg.modules())
    assert not any(isinstance(m, nn.BatchNorm3d) for m in seg.modules())


# ---------------------------------------------------------------- SegUNet

@pytest.mark.parametrize('dims,depth,shape', [(2, 4, (32, 48)), (3, 2, (8, 12, 16))])
def test_segunet_output_shape(dims, depth, shape):
    net = SegUNet(in_ch=4, out_ch=3, dims=dims, base=4, depth=depth)
    y = net(torch.randn(2, 4, *shape))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, *shape)


def test_segunet_channels_are_capped():
    net = SegUNet(in_ch=4, out_ch=3, base=32, depth=5, max_ch=320)
    assert [[m for m in b if isinstance(m, nn.Conv2d)][-1].out_channels for b in net.down] == [32, 64, 128, 256, 320, 320]
    assert net.head.in_channels == 32
    with pytest.raises(ValueError): SegUNet(dims=4)


@pytest.mark.parametrize('dims,depth,shape', [(2, 4, (32, 32)), (3, 3, (16, 16, 8))])
def test_segunet_deep_supervision_only_while_training(dims, depth, shape):
    torch.manual_seed(0)
    net = SegUNet(in_ch=2, out_ch=3, dims=dims, base=4, depth=depth, deep_supervision=True)   # instance norm, no dropout
    x = torch.randn(2, 2, *shape)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == depth
    for k, o in enumerate(outs):                           # full resolution first, then each coarser level
        assert o.shape == (2, 3, *[s // 2 ** k for s in shape])
    with torch.no_grad(): y = net.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, *shape)
    torch.testing.assert_close(y, outs[0].detach())        # same network: the main output is the eval output


@pytest.mark.parametrize('dims,deep,norm', [(2, True, 'instance'), (2, False, 'batch'), (3, True, 'batch'), (3, False, 'instance')])
def test_segunet_gradients_reach_every_parameter(dims, deep, norm):
    torch.manual_seed(0)
    net = SegUNet(in_ch=2, out_ch=3, dims=dims, base=4, depth=2, norm=norm, dropout=0.1, deep_supervision=deep).train()
    shape = (16, 16) if dims == 2 else (8, 8, 8)
    out = net(torch.randn(2, 2, *shape))
    outs = out if isinstance(out, list) else [out]
    assert len(outs) == (2 if deep else 1)
    sum((o ** 2).mean() for o in outs).backward()
    params = dict(net.named_parameters())
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values()), \
        [n for n, p in params.items() if p.grad is None or p.grad.abs().sum() == 0]
