"""NADE's blockwise teacher forcing against the plain per-conditional formula (values and gradients), MADE's
direct input -> output connection (autoregressive property, normalization) and the bias initialization from
the training marginals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mlcanon.generative.autoregressive.binary_images import init_bias_to_marginals
from mlcanon.generative.autoregressive.made import BinaryMADE
from mlcanon.generative.autoregressive.nade import NADE, NADELogits


def _nade_logits_by_definition(x, W, c, V, b):
    """logit_i = b_i + V_i . sigmoid(c + sum_{j<i} W_{:,j} x_j), one conditional at a time (O(D^2 H))."""
    D = x.shape[1]
    cols = []
    for i in range(D):
        a_i = c + x[:, :i] @ W[:, :i].T                       # a_i = c + W_{:,<i} x_<i
        cols.append(b[i] + torch.sigmoid(a_i) @ V[i])
    return torch.stack(cols, 1)


def _random_nade(D, H, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=dtype) * s
            for shape, s in (((H, D), 1.0), ((H,), 1.0), ((D, H), 1.0), ((D,), 1.0))]


@pytest.mark.parametrize("block", [1, 4, 7, 15, 40])
def test_nade_blockwise_logits_and_gradients_match_the_definition_float64(block):
    D, H, B = 15, 6, 5
    W, c, V, b = [p.requires_grad_() for p in _random_nade(D, H, torch.float64)]
    x = torch.rand(B, D, dtype=torch.float64, requires_grad=True)   # not only 0/1: dL/dx is checked too
    w = torch.randn(B, D, dtype=torch.float64)                      # a random linear functional of the logits
    fast = NADELogits.apply(x, W, c, V, b, block)
    ref = _nade_logits_by_definition(x, W, c, V, b)
    assert torch.allclose(fast, ref, atol=1e-12, rtol=0)
    g_fast = torch.autograd.grad((fast * w).sum(), (x, W, c, V, b))
    g_ref = torch.autograd.grad((ref * w).sum(), (x, W, c, V, b))
    for name, gf, gr in zip("xWcVb", g_fast, g_ref):
        assert torch.allclose(gf, gr, atol=1e-12, rtol=0), name


def test_nade_blockwise_backward_passes_gradcheck():
    D, H, B = 9, 4, 3
    W, c, V, b = [p.requires_grad_() for p in _random_nade(D, H, torch.float64, seed=1)]
    x = torch.rand(B, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: NADELogits.apply(*a, 4), (x, W, c, V, b), fast_mode=True)


def test_nade_float32_log_prob_and_gradients_match_the_cumsum_formula():
    """At MNIST-like size in float32, the blockwise path agrees with autograd through the [B, D, H] cumsum
    (the previous implementation) to float32 rounding of sums over D * H terms."""
    torch.manual_seed(0)
    D, H, B = 196, 50, 8
    model = NADE((1, 14, 14), H, block=8)
    x = torch.bernoulli(torch.full((B, 1, 14, 14), 0.3))
    lp = model.log_prob(x)
    grads = torch.autograd.grad(lp.sum(), list(model.parameters()))
    xf = x.reshape(B, -1)
    logits_ref = model.logits_cumsum(xf)
    lp_ref = -torch.nn.functional.binary_cross_entropy_with_logits(logits_ref, xf, reduction="none").sum(1)
    grads_ref = torch.autograd.grad(lp_ref.sum(), list(model.parameters()))
    eps = torch.finfo(torch.float32).eps
    assert torch.allclose(lp, lp_ref, atol=eps * D * H, rtol=0)
    for (name, p), gf, gr in zip(model.named_parameters(), grads, grads_ref):
        scale = float(gr.abs().max())
        assert torch.allclose(gf, gr, atol=eps * D * H * max(scale, 1.0), rtol=0), name


def test_nade_log_prob_without_gradients_keeps_no_state():
    """Scoring under no_grad gives the same numbers as with gradients (evaluation path)."""
    torch.manual_seed(1)
    model = NADE((1, 3, 5), 7, block=4).double()
    x = torch.bernoulli(torch.full((6, 1, 3, 5), 0.5, dtype=torch.float64))
    with torch.no_grad():
        a = model.log_prob(x)
    assert torch.allclose(a, model.log_prob(x).detach(), atol=1e-13, rtol=0)


def _sharpen(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 3.0 / math.sqrt(max(p.shape[-1], 1)) if p.dim() > 1 else torch.randn_like(p))
    return model.double().eval()


@pytest.mark.parametrize("order", ["natural", "random"])
def test_made_direct_connection_keeps_the_autoregressive_property(order):
    D = 12
    model = _sharpen(BinaryMADE((1, 3, 4), (20,), order=order, direct=True, seed=3))
    assert model.made.direct is not None and model.made.direct.weight.abs().sum() > 0
    pos = {d: p for p, d in enumerate(model.generation_order.tolist())}
    x = torch.rand(4, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    for i in range(D):
        (g,) = torch.autograd.grad(model.logits(x)[:, i].sum(), x)
        seen = g.reshape(4, D).abs().sum(0)
        for j in range(D):
            if pos[j] >= pos[i]:
                assert seen[j] == 0, (i, j)
        if pos[i] > 0:   # the direct weights alone reach every earlier dim
            assert all(seen[j] > 0 for j in range(D) if pos[j] < pos[i]), i


def test_made_direct_connection_alone_is_an_fvsbn():
    """With the hidden path switched off (V = 0), MADE-with-direct is exactly a fully visible sigmoid belief
    net: logit_d = c_d + sum_{e before d} A_de x_e."""
    model = _sharpen(BinaryMADE((1, 2, 3), (5,), order="reverse", direct=True))
    with torch.no_grad():
        model.made.output.weight.zero_()
    x = torch.bernoulli(torch.full((7, 6), 0.5, dtype=torch.float64))
    A, c = model.made.direct.weight, model.made.output.bias
    expect = torch.stack([sum((A[d, e] * x[:, e] for e in range(d + 1, 6)), c[d].expand(7)) for d in range(6)], 1)
    assert torch.allclose(model.logits(x), expect, atol=1e-12)


@pytest.mark.parametrize("agnostic", [False, True])
def test_made_with_direct_connection_sums_to_one(agnostic):
    model = _sharpen(BinaryMADE((1, 3, 3), (15,), num_masks=3, order_agnostic=agnostic, direct=True, seed=2))
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)), dtype=torch.float64).view(-1, 1, 3, 3)
    with torch.no_grad():
        for masks in (None, 3):
            lp = model.log_prob(xs, masks=masks)
            assert abs(float(torch.logsumexp(lp, 0))) < 1e-10
            assert lp.std() > 0.5


def test_bias_from_marginals_gives_the_independent_pixel_likelihood():
    """With every weight at zero, the initialized model is the product of smoothed marginals:
    log p(x) = sum_d log Bernoulli(x_d; (n_d + 1/2) / (N + 1))."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(50, 1, 2, 3, generator=g) < torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0, 0.3]).view(1, 1, 2, 3)).double()
    p = (x.reshape(50, 6).sum(0) + 0.5) / 51
    expect = (x.reshape(50, 6) * p.log() + (1 - x.reshape(50, 6)) * (1 - p).log()).sum(1)
    made = BinaryMADE((1, 2, 3), (4,), direct=True).double()
    nade = NADE((1, 2, 3), 4).double()
    with torch.no_grad():
        made.made.output.weight.zero_()
        nade.V.zero_()
    init_bias_to_marginals(made.made.output.bias, x)
    init_bias_to_marginals(nade.b, x)
    for model in (made, nade):
        with torch.no_grad():
            assert torch.allclose(model.log_prob(x), expect, atol=1e-12)
    with pytest.raises(ValueError):
        init_bias_to_marginals(torch.zeros(5), x)
