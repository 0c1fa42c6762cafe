"""Every flow layer: exact inverse, log-det against the autograd Jacobian (float64), inverse log-det = minus
forward log-det, and the layer-specific facts (ActNorm's initialization, LU = P L U, squeeze's layout, ...)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd.functional import jacobian

from mlcanon.generative.flows import layers as L
from mlcanon.generative.flows.autoregressive import IAFLayer, MAFLayer
from mlcanon.generative.flows.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ConvNet,
    HalfAffineCoupling,
    MLPNet,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)

EPS64 = torch.finfo(torch.float64).eps


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its (often identity) initialization so the checks see a generic map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def autograd_logdet(layer, x: torch.Tensor) -> torch.Tensor:
    """log|det dz/dx| per example from the full Jacobian of one example at a time (brute force)."""
    out = []
    for b in range(x.shape[0]):
        J = jacobian(lambda v: layer(v.unsqueeze(0))[0].reshape(-1), x[b])
        J = J.reshape(x[b].numel(), x[b].numel())
        out.append(torch.linalg.slogdet(J)[1])
    return torch.stack(out)


def check_bijection(layer, x: torch.Tensor, tol_scale: float = 1.0) -> None:
    layer = layer.double()
    x = x.double()
    z, ld = layer(x)
    assert z.shape[0] == x.shape[0] and ld.shape == (x.shape[0],)
    xr, ld_inv = layer.inverse(z)
    n = x[0].numel()
    tol = 1e3 * EPS64 * n * tol_scale   # a few hundred ulps per output, scaled by the size of the example
    assert torch.allclose(xr, x, atol=tol, rtol=tol), (xr - x).abs().max()
    assert torch.allclose(ld_inv, -ld, atol=tol), (ld_inv + ld).abs().max()
    assert torch.allclose(ld, autograd_logdet(layer, x), atol=tol), (ld - autograd_logdet(layer, x)).abs().max()


def _bn_eval():
    bn = L.BatchNormFlow(3)
    bn(torch.randn(50, 3) * 2 + 1)      # running statistics away from (0, 1)
    return perturb(bn).eval()


CASES = {
    "affine": (lambda: perturb(L.Affine((3,))), lambda g: torch.randn(4, 3, generator=g)),
    "affine-per-channel": (lambda: perturb(L.Affine((2, 1, 1))), lambda g: torch.randn(3, 2, 2, 2, generator=g)),
    "diagonal-scaling": (lambda: perturb(L.Affine((3,), shift=False)), lambda g: torch.randn(4, 3, generator=g)),
    "planar": (lambda: perturb(L.Planar(3), 1.0), lambda g: torch.randn(4, 3, generator=g)),
    "radial": (lambda: perturb(L.Radial(3), 1.0), lambda g: torch.randn(4, 3, generator=g)),
    "logit": (lambda: L.Logit(0.05), lambda g: torch.rand(3, 1, 2, 2, generator=g)),
    "logit-alpha0": (lambda: L.Logit(0.0), lambda g: 0.05 + 0.9 * torch.rand(3, 4, generator=g)),
    "sigmoid": (lambda: L.Sigmoid(), lambda g: torch.randn(3, 4, generator=g)),
    "batchnorm-eval": (_bn_eval, lambda g: torch.randn(4, 3, generator=g)),
    "actnorm": (lambda: L.ActNorm(2), lambda g: torch.randn(5, 2, 2, 2, generator=g)),
    "conv1x1": (lambda: perturb(L.InvConv1x1(4)), lambda g: torch.randn(2, 4, 2, 2, generator=g)),
    "conv1x1-lu": (lambda: perturb(L.InvConv1x1(4, lu=True)), lambda g: torch.randn(2, 4, 2, 2, generator=g)),
    "linear-lu": (lambda: perturb(L.InvConv1x1(3, lu=True)), lambda g: torch.randn(4, 3, generator=g)),
    "squeeze": (lambda: L.Squeeze(), lambda g: torch.randn(2, 1, 4, 4, generator=g)),
    "reverse": (lambda: L.Reverse(), lambda g: torch.randn(2, 5, generator=g)),
    "reshape": (lambda: L.Reshape((1, 2, 2), (4,)), lambda g: torch.randn(2, 1, 2, 2, generator=g)),
    "additive-coupling": (lambda: perturb(AdditiveCoupling(alternating_mask(4), MLPNet(4, 8, 1))),
                          lambda g: torch.randn(3, 4, generator=g)),
    "affine-coupling": (lambda: perturb(AffineCoupling(alternating_mask(4, 1), MLPNet(4, 8, 2), 4)),
                        lambda g: torch.randn(3, 4, generator=g)),
    "checkerboard-coupling": (lambda: perturb(AffineCoupling(checkerboard_mask(4, 4), ConvNet(1, 4, 2), 1)),
                              lambda g: torch.randn(2, 1, 4, 4, generator=g)),
    "channel-coupling": (lambda: perturb(AffineCoupling(channel_mask(4, 1), ConvNet(4, 4, 2), 4)),
                         lambda g: torch.randn(2, 4, 2, 2, generator=g)),
    "half-coupling": (lambda: perturb(HalfAffineCoupling(4, 4)), lambda g: torch.randn(2, 4, 2, 2, generator=g)),
    "half-coupling-sigmoid": (lambda: perturb(HalfAffineCoupling(4, 4, "sigmoid")),
                              lambda g: torch.randn(2, 4, 2, 2, generator=g)),
    "maf": (lambda: perturb(MAFLayer(4, 8)), lambda g: torch.randn(3, 4, generator=g)),
    "iaf": (lambda: perturb(IAFLayer(4, 8, order="reverse")), lambda g: torch.randn(3, 4, generator=g)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_is_a_bijection_with_the_autograd_logdet(name):
    make, data = CASES[name]
    check_bijection(make(), data(torch.Generator().manual_seed(1)))


@settings(max_examples=8, deadline=None)
@given(dim=st.integers(1, 5), batch=st.integers(1, 4), seed=st.integers(0, 10_000),
       kind=st.sampled_from(["planar", "radial", "affine-coupling", "maf", "iaf", "linear-lu", "bn"]))
def test_vector_layers_property(dim, batch, seed, kind):
    torch.manual_seed(seed)
    if kind == "planar":
        layer = perturb(L.Planar(dim), 1.0, seed)
    elif kind == "radial":
        layer = perturb(L.Radial(dim), 1.0, seed)
    elif kind == "affine-coupling":
        layer = perturb(AffineCoupling(alternating_mask(dim, seed % 2), MLPNet(dim, 6, 2), dim), 0.5, seed)
    elif kind == "maf":
        layer = perturb(MAFLayer(dim, 6, seed=seed), 0.5, seed)
    elif kind == "iaf":
        layer = perturb(IAFLayer(dim, 6, seed=seed), 0.5, seed)
    elif kind == "linear-lu":
        layer = perturb(L.InvConv1x1(dim, lu=True), 0.3, seed)
    else:
        layer = L.BatchNormFlow(dim)
        layer(torch.randn(8, dim))
        layer = perturb(layer, 0.3, seed).eval()
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))
    check_bijection(layer, x, tol_scale=10.0)


def test_planar_constraint_keeps_it_invertible():
    """w^T u_hat > -1 (appendix A.1) even when u points against w, and the log-det stays finite."""
    p = L.Planar(3).double()
    with torch.no_grad():
        p.w.copy_(torch.tensor([1.0, 2.0, -1.0]))
        p.u.copy_(-5 * p.w)
    assert float((p.w @ p.u_hat()).detach()) > -1
    x = torch.randn(100, 3, dtype=torch.float64) * 3
    assert torch.isfinite(p(x)[1]).all()
    # nearly singular where tanh' = 1 (w^T u_hat = -1 + 1e-13): the inverse error there is ~ eps^(1/3)
    assert torch.allclose(p.inverse(p(x)[0])[0], x, atol=1e-4)


def test_batchnorm_train_mode_uses_batch_statistics():
    """Train-mode output standardizes the batch: zero mean / unit variance before the learned affine, and
    the log-det is the one of the affine map with the batch statistics frozen."""
    bn = L.BatchNormFlow(3, momentum=1.0).double()
    x = torch.randn(64, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) + 5
    z, ld = bn(x)
    assert torch.allclose(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4)
    expected = -0.5 * torch.log(x.var(0, unbiased=False) + bn.eps).sum()
    assert torch.allclose(ld, expected.expand(64))
    bn.eval()   # momentum 1: running statistics = this batch's, so eval mode is the same map
    z2, ld2 = bn(x)
    assert torch.allclose(z2, z) and torch.allclose(ld2, ld)


def test_actnorm_initializes_once_and_the_flag_is_saved():
    an = L.ActNorm(3)
    x = torch.randn(256, 3, 4, 4) * torch.tensor([0.5, 2.0, 4.0]).view(1, 3, 1, 1) + 3
    z, _ = an(x)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    state = an.state_dict()
    assert int(state["initialized"]) == 1
    fresh = L.ActNorm(3)
    fresh.load_state_dict(state)
    z2, _ = fresh(torch.randn(8, 3, 4, 4))     # another batch: no re-initialization
    assert torch.equal(fresh.loc, an.loc) and torch.equal(fresh.log_scale, an.log_scale)
    assert z2.abs().mean() > 1                    # the batch is standardized with x's statistics, not its own
    # loading an uninitialized state into a module that has run: the next forward initializes again
    an.load_state_dict(L.ActNorm(3).state_dict())
    z3, _ = an(x * 2)
    assert torch.allclose(z3.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4) and int(an.initialized) == 1


def test_flow_log_prob_is_the_base_distribution_plus_the_log_det():
    from mlcanon.generative.flows.flow import Flow
    flow = Flow([L.ActNorm(3)], (3,)).double()
    x = torch.randn(64, 3, dtype=torch.float64) * 2 + 1
    flow.log_prob(x)                              # initializes ActNorm
    z, ld = flow(x)
    torch.testing.assert_close(flow.log_prob(x), flow.base.log_prob(z) + ld, rtol=0, atol=1e-12)


def test_lu_weight_is_p_l_u_and_logdet_matches_slogdet():
    conv = perturb(L.InvConv1x1(5, lu=True)).double()
    W = conv.weight_matrix()
    Lw = torch.tril(conv.lower, -1) + torch.eye(5, dtype=torch.float64)
    U = torch.triu(conv.upper, 1) + torch.diag(conv.sign_s * conv.log_s.exp())
    assert torch.allclose(W, conv.P @ Lw @ U)
    assert torch.allclose(conv._log_abs_det(), torch.linalg.slogdet(W)[1])
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    assert torch.allclose(conv(x)[1], 9 * torch.linalg.slogdet(W)[1].expand(2))   # H W log|det W|


def test_squeeze_layout():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    z, _ = L.Squeeze()(x)
    assert z.shape == (1, 4, 2, 2)
    # channel (i, j) of the 2x2 block holds pixel (2h + i, 2w + j)
    assert z[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert z[0, :, 1, 1].tolist() == [10.0, 11.0, 14.0, 15.0]


def test_masks():
    cb = checkerboard_mask(3, 3)
    assert cb[0, 0].tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert torch.equal(checkerboard_mask(3, 3, 1), 1 - cb)
    assert channel_mask(4, 0).flatten().tolist() == [1, 1, 0, 0]
    assert channel_mask(4, 1).flatten().tolist() == [0, 0, 1, 1]


def test_coupling_leaves_the_masked_half_unchanged():
    m = checkerboard_mask(4, 4)
    layer = perturb(AffineCoupling(m, ConvNet(1, 4, 2), 1))
    x = torch.randn(2, 1, 4, 4)
    z, _ = layer(x)
    assert torch.equal(z * m, x * m)
    assert not torch.allclose(z * (1 - m), x * (1 - m))


def test_affine_coupling_scale_is_bounded():
    layer = AffineCoupling(alternating_mask(2), MLPNet(2, 4, 2), 2)
    with torch.no_grad():
        layer.net.net[-1].bias.fill_(100.0)          # huge raw log-scale
    _, ld = layer(torch.randn(3, 2))
    assert torch.all(ld <= 1.0 + 1e-6)               # |s| <= c = 1 on the one free dimension


def test_dequantize_stays_in_the_pixel_bin():
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (1000,), generator=g)
    y = L.dequantize(k.float() / 255, g)
    assert torch.equal(torch.floor(y * 256).long(), k)        # y in [k/256, (k+1)/256)
    assert 0 <= float(y.min()) and float(y.max()) < 1


def test_logit_with_alpha_zero_inverts_sigmoid():
    x = torch.randn(5, 3, dtype=torch.float64)
    s, ld_s = L.Sigmoid()(x)
    back, ld_l = L.Logit(0.0)(s)
    assert torch.allclose(back, x) and torch.allclose(ld_l, -ld_s)


def test_maf_is_one_pass_for_density_and_iaf_for_sampling():
    """Count MADE calls: MAF forward 1, inverse D; IAF the opposite (the speed trade-off of the papers)."""
    D = 6
    for cls, fwd_calls, inv_calls in ((MAFLayer, 1, D), (IAFLayer, D, 1)):
        layer = cls(D, 8)
        calls: list[int] = []
        layer.made.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        layer(torch.randn(2, D))
        assert len(calls) == fwd_calls
        calls.clear()
        layer.inverse(torch.randn(2, D))
        assert len(calls) == inv_calls


def test_radial_closed_form_inverse_on_both_signs_of_beta():
    for b in (-3.0, 3.0):
        r = L.Radial(2)
        with torch.no_grad():
            r.a.fill_(0.5)
            r.b.fill_(b)
        x = torch.randn(200, 2, dtype=torch.float64) * 3
        r = r.double()
        assert torch.allclose(r.inverse(r(x)[0])[0], x, atol=1e-10)


def test_per_example_logdet_is_one_value_per_example():
    _, ld = L.Affine((3,))(torch.randn(7, 3))
    assert ld.shape == (7,)
    assert math.isclose(float(ld[0].detach()), 0.0)


@settings(max_examples=8, deadline=None)
@given(c=st.sampled_from([2, 4]), h=st.sampled_from([2, 4]), w=st.sampled_from([2, 4]), batch=st.integers(1, 3),
       seed=st.integers(0, 10_000),
       kind=st.sampled_from(["squeeze", "checkerboard", "channel", "half", "half-sigmoid", "actnorm", "conv1x1-lu",
                              "bn"]))
def test_image_layers_property(c, h, w, batch, seed, kind):
    torch.manual_seed(seed)
    x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))
    if kind == "squeeze":
        layer = L.Squeeze()
    elif kind == "checkerboard":
        layer = perturb(AffineCoupling(checkerboard_mask(h, w, seed % 2), ConvNet(c, 4, 2), c), 0.3, seed)
    elif kind == "channel":
        layer = perturb(AffineCoupling(channel_mask(c, seed % 2), ConvNet(c, 4, 2), c), 0.3, seed)
    elif kind == "half":
        layer = perturb(HalfAffineCoupling(c, 4), 0.3, seed)
    elif kind == "half-sigmoid":
        layer = perturb(HalfAffineCoupling(c, 4, "sigmoid"), 0.3, seed)
    elif kind == "actnorm":
        layer = L.ActNorm(c)
        layer(torch.randn(4, c, h, w) * 2 + 1)
        layer = perturb(layer, 0.3, seed)
    elif kind == "conv1x1-lu":
        layer = perturb(L.InvConv1x1(c, lu=True), 0.3, seed)
    else:
        layer = L.BatchNormFlow(c)
        layer(torch.randn(8, c, h, w) * 3)
        layer = perturb(layer, 0.3, seed).eval()
    check_bijection(layer, x, tol_scale=10.0)


def test_half_coupling_is_the_channel_mask_coupling_with_the_masked_inputs_dropped():
    """Glow 3.3 (net on x_a, (s, t) for x_b only) = RealNVP's channel-mask coupling (net on m x, (s, t) on all C
    channels, zeroed on the kept half) when the masked net's weights on x_a and its outputs for x_b are the half
    net's: the same map and log-det, and x_a passes through bitwise."""
    C, h = 4, 6
    torch.manual_seed(0)
    masked = perturb(AffineCoupling(channel_mask(C), ConvNet(C, h, 2), C)).double()
    half = HalfAffineCoupling(C, h).double()
    a, b = masked.net.net, half.net.net
    free = list(range(C // 2, C)) + list(range(C + C // 2, 2 * C))    # outputs s_b and t_b of the masked net
    with torch.no_grad():
        b[0].weight.copy_(a[0].weight[:, :C // 2])
        b[0].bias.copy_(a[0].bias)
        b[2].load_state_dict(a[2].state_dict())
        b[4].weight.copy_(a[4].weight[free])
        b[4].bias.copy_(a[4].bias[free])
        half.scale_bound.copy_(masked.scale_bound[C // 2:])
    x = torch.randn(3, C, 5, 5, dtype=torch.float64)
    (z1, ld1), (z2, ld2) = masked(x), half(x)
    tol = 1e3 * EPS64 * x[0].numel()
    assert torch.allclose(z1, z2, atol=tol) and torch.allclose(ld1, ld2, atol=tol)
    assert torch.equal(z2[:, :C // 2], x[:, :C // 2])
    assert not torch.allclose(z2[:, C // 2:], x[:, C // 2:])
    assert sum(p.numel() for p in half.net.parameters()) < sum(p.numel() for p in masked.net.parameters())


def test_half_coupling_scale_is_bounded():
    layer = HalfAffineCoupling(2, 4)
    with torch.no_grad():
        layer.net.net[-1].bias.fill_(100.0)                 # huge raw log-scale
    _, ld = layer(torch.randn(3, 2, 3, 3))
    assert torch.all(ld <= 9 * (1.0 + 1e-6))                # |s| <= c = 1 on each of the 1 x 3 x 3 free values


def test_half_coupling_sigmoid_scale_is_glows_and_never_amplifies():
    """scale="sigmoid": (h, t) = NN(x_a), y_b = (x_b + t) sigmoid(h + 2), log|det| = sum log sigmoid(h + 2) (Glow's
    released code), written out here from the net's raw output; the scale is in (0, 1), so |y_b| <= |x_b + t| and
    log|det| < 0 whatever the net outputs, even with huge weights."""
    torch.manual_seed(0)
    layer = perturb(HalfAffineCoupling(4, 6, "sigmoid"), 1.0).double()
    assert not hasattr(layer, "scale_bound")
    x = 3 * torch.randn(5, 4, 3, 3, dtype=torch.float64)
    y, ld = layer(x)
    h, t = layer.net(x[:, :2]).chunk(2, dim=1)
    sig = 1 / (1 + torch.exp(-(h + 2)))
    assert h.abs().max() > 5 and torch.all(sig > 0)             # saturating scales, still a finite log|det|
    tol = 1e3 * EPS64 * float(x.abs().max() + t.abs().max())
    assert torch.allclose(y[:, 2:], (x[:, 2:] + t) * sig, atol=tol)
    assert torch.allclose(ld, torch.log(sig).sum((1, 2, 3)), atol=1e3 * EPS64 * 18)
    assert torch.equal(y[:, :2], x[:, :2])
    assert torch.all(y[:, 2:].abs() <= (x[:, 2:] + t).abs()) and torch.all(ld < 0)
    with pytest.raises(ValueError, match="scale"):
        HalfAffineCoupling(4, 6, "exp")
