"brainkit.losses: GAN losses against their closed forms, the gradient penalty, soft Dice, the BraTS Dice rule, the image pool."
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainkit.losses import GANLoss, ImagePool, dice_bce_loss, gradient_penalty, soft_dice_loss


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(2, 1, 30, 30) * 3


# ---------------------------------------------------------------- GAN losses

def test_vanilla_is_bce_with_logits_against_one_and_zero(logits):
    loss = GANLoss('vanilla')
    s = torch.sigmoid(logits)
    torch.testing.assert_close(loss(logits, True), -torch.log(s).mean())
    torch.testing.assert_close(loss(logits, False), -torch.log(1 - s).mean())
    torch.testing.assert_close(loss(logits, True), F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)))
    torch.testing.assert_close(loss(logits, False), F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)))


def test_lsgan_is_mse_against_one_and_zero(logits):
    loss = GANLoss('lsgan')
    torch.testing.assert_close(loss(logits, True), ((logits - 1) ** 2).mean())
    torch.testing.assert_close(loss(logits, False), (logits ** 2).mean())


def test_wgangp_is_minus_mean_for_real_and_mean_for_fake(logits):
    loss = GANLoss('wgangp')
    torch.testing.assert_close(loss(logits, True), -logits.mean())
    torch.testing.assert_close(loss(logits, False), logits.mean())


def test_label_smoothing_is_honored(logits):
    s = torch.sigmoid(logits)
    smooth = GANLoss('vanilla', real_label=0.9)
    torch.testing.assert_close(smooth(logits, True), -(0.9 * torch.log(s) + 0.1 * torch.log(1 - s)).mean())
    torch.testing.assert_close(smooth(logits, False), GANLoss('vanilla')(logits, False))
    ls = GANLoss('lsgan', real_label=0.9, fake_label=0.1)
    torch.testing.assert_close(ls(logits, True), ((logits - 0.9) ** 2).mean())
    torch.testing.assert_close(ls(logits, False), ((logits - 0.1) ** 2).mean())


def test_gan_loss_follows_the_prediction_dtype_and_gives_gradients(logits):
    pred = logits.double().requires_grad_(True)
    out = GANLoss('lsgan')(pred, True)
    assert out.dtype == torch.float64 and out.ndim == 0
    out.backward()
    torch.testing.assert_close(pred.grad, 2 * (pred.detach() - 1) / pred.numel())


def test_unknown_gan_mode_is_refused():
    with pytest.raises(ValueError, match='lsgan'): GANLoss('hinge')


# ---------------------------------------------------------------- gradient penalty

def _linear_critic(shape, seed=0):
    torch.manual_seed(seed)
    n = int(torch.tensor(shape).prod())
    D = nn.Sequential(nn.Flatten(), nn.Linear(n, 1))
    return D, D[1].weight


@pytest.mark.parametrize('kind', ['mixed', 'real', 'fake'])
@pytest.mark.parametrize('weight,constant', [(10.0, 1.0), (3.0, 0.5)])
def test_gradient_penalty_of_a_linear_critic_has_a_closed_form(kind, weight, constant):
    D, w = _linear_critic((2, 4, 4))
    real, fake = torch.randn(5, 2, 4, 4), torch.randn(5, 2, 4, 4)
    gp = gradient_penalty(D, real, fake, kind=kind, constant=constant, weight=weight)
    want = weight * (w.detach().norm() - constant) ** 2          # grad_x D = w at every point
    torch.testing.assert_close(gp, want)
    gp.backward()                                              # differentiable in the critic's weights (create_graph)
    wd = w.detach()
    torch.testing.assert_close(w.grad, 2 * weight * (wd.norm() - constant) * wd / wd.norm())


def test_gradient_penalty_uses_each_samples_own_gradient_norm():
    D = lambda x: 0.5 * (x ** 2).flatten(1).sum(1)             # grad_x D = x
    real = torch.randn(4, 1, 3, 3) * torch.tensor([0.1, 1.0, 2.0, 5.0])[:, None, None, None]
    fake = torch.randn(4, 1, 3, 3)
    want = lambda x: 7.0 * ((x.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(gradient_penalty(D, real, fake, 'real', weight=7.0), want(real))
    torch.testing.assert_close(gradient_penalty(D, real, fake, 'fake', weight=7.0), want(fake))
    # interpolates between identical batches are that batch, whatever the random mixing weights
    torch.testing.assert_close(gradient_penalty(D, real, real.clone(), 'mixed', weight=7.0), want(real))
    assert real.grad is None and not real.requires_grad        # the caller's tensors are left alone


def test_gradient_penalty_refuses_unknown_points():
    D, _ = _linear_critic((1, 2, 2))
    with pytest.raises(ValueError, match='mixed'): gradient_penalty(D, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), kind='both')


# ---------------------------------------------------------------- soft Dice

@pytest.fixture
def masks():
    torch.manual_seed(1)
    return (torch.rand(2, 3, 8, 8) > 0.5).float()


def test_soft_dice_is_zero_for_a_perfect_confident_prediction(masks):
    assert soft_dice_loss((2 * masks - 1) * 50, masks).item() == pytest.approx(0, abs=1e-6)


def test_soft_dice_is_about_one_for_a_totally_wrong_prediction(masks):
    loss = soft_dice_loss((1 - 2 * masks) * 50, masks).item()
    # no overlap: each channel scores 1 - smooth / (all voxels + smooth), 2*8*8 = 128 voxels per channel
    assert loss == pytest.approx(1 - 1 / 129, abs=1e-6)
    assert soft_dice_loss((1 - 2 * masks) * 50, masks, smooth=0).item() == pytest.approx(1, abs=1e-6)


def test_soft_dice_hand_computed_at_half_probability():
    t = torch.zeros(1, 2, 2, 2); t[0, 0, 0, 0] = 1; t[0, 1] = 1          # channel 0: 1 of 4 voxels; channel 1: all 4
    loss = soft_dice_loss(torch.zeros(1, 2, 2, 2), t)                    # p = 0.5 everywhere
    ch0 = 1 - (2 * 0.5 + 1) / (2 + 1 + 1)                                # inter 0.5, sum p 2, sum t 1
    ch1 = 1 - (2 * 2 + 1) / (2 + 4 + 1)                                  # inter 2, sum p 2, sum t 4
    assert loss.item() == pytest.approx((ch0 + ch1) / 2)


def test_soft_dice_of_empty_truth_and_confident_empty_prediction_is_zero():
    t = torch.zeros(2, 1, 4, 4, 4)
    assert soft_dice_loss(torch.full_like(t, -50.0), t).item() == pytest.approx(0, abs=1e-6)
    assert soft_dice_loss(torch.full_like(t, 50.0), t).item() == pytest.approx(1 - 1 / 129, abs=1e-6)


def test_soft_dice_refuses_a_target_of_another_shape():
    # a (N, 1, ...) target against (N, 3, ...) logits must not be broadcast into a plausible-looking loss
    with pytest.raises((ValueError, RuntimeError)):
        soft_dice_loss(torch.randn(1, 3, 8, 8), torch.ones(1, 1, 8, 8))


def test_dice_bce_is_dice_plus_weighted_bce(masks):
    torch.manual_seed(2)
    x = torch.randn_like(masks, requires_grad=True)
    bce = F.binary_cross_entropy_with_logits(x, masks)
    torch.testing.assert_close(dice_bce_loss(x, masks, bce_weight=0.0), soft_dice_loss(x, masks))
    torch.testing.assert_close(dice_bce_loss(x, masks, bce_weight=2.0), soft_dice_loss(x, masks) + 2 * bce)
    dice_bce_loss(x, masks.bool()).backward()                            # boolean masks are accepted
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------- image pool

def _ids(batch):
    "The id of each image made by `_images`."
    return [int(v) for v in batch.flatten(1)[:, 0]]


def _images(start, n):
    "n images (1, 2, 2) whose pixels all hold their id, start .. start + n - 1."
    return torch.arange(start, start + n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 2, 2).clone()


def test_pool_of_size_zero_passes_images_through():
    pool = ImagePool(0)
    x = _images(0, 3)
    assert pool.query(x) is x and pool.images == []
    with pytest.raises(ValueError): ImagePool(-1)


def test_pool_fills_first_then_mixes_old_and_new():
    pool = ImagePool(4, seed=0)
    x = _images(0, 3).requires_grad_(True)
    out = pool.query(x)
    assert _ids(out) == [0, 1, 2] and not out.requires_grad and len(pool.images) == 3
    assert _ids(pool.query(_images(3, 2))) == [3, 4] and len(pool.images) == 4   # filled with id 3, then full
    seen, returned_old, n_old, n = set(range(5)), set(), 0, 0
    for step in range(100):
        new = 5 + 2 * step
        for i in _ids(pool.query(_images(new, 2))):
            n += 1
            if i >= new: continue                                     # the new image itself
            n_old += 1
            assert i in seen and i not in returned_old                # an earlier image, handed back once only
            returned_old.add(i)
        seen.update((new, new + 1))
        assert len(pool.images) == 4
    assert 0.35 < n_old / n < 0.65                                    # about half the time


def _run(pool, start, steps=30):
    return torch.cat([pool.query(_images(start + 3 * k, 3)) for k in range(steps)])


def test_pool_state_reproduces_the_future_exactly():
    pool = ImagePool(5, seed=3)
    _run(pool, 0, 4)                                                  # fill it and mix a little
    state = pool.state_dict()
    buf = io.BytesIO(); torch.save(state, buf); buf.seek(0)
    saved = torch.load(buf, weights_only=True)                        # a checkpoint can hold it
    future = _run(pool, 100)                                          # the original pool moves on after state_dict()
    fresh = ImagePool(5, seed=99)
    fresh.load_state_dict(saved)
    again = _run(fresh, 100)
    assert torch.equal(again, future)
    assert not torch.equal(_run(ImagePool(5, seed=99), 100), future)  # not an accident of the inputs
    pool.load_state_dict(state)                                       # the state itself was not changed by the run
    assert torch.equal(_run(pool, 100), future)


def test_pool_of_another_size_refuses_the_state():
    pool = ImagePool(5)
    _run(pool, 0, 2)
    with pytest.raises(ValueError, match='size 5'): ImagePool(4).load_state_dict(pool.state_dict())
