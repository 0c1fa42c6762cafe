"""The fused vector couplings (one autograd node with a hand-written backward for runs of AffineCoupling + MLPNet
[+ ActNorm or BatchNormFlow]): the same log p(x) and gradients as the plain autograd formulas (eq. 9 written out from the module's
own conditioner), torch.autograd.gradcheck in float64, masks of both parities, and the path that
``mlcanon train realnvp --dataset toy2d:moons --norm actnorm`` builds is the fused one."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mlcanon.generative.flows import realnvp
from mlcanon.generative.flows.coupling import AffineCoupling, MLPNet, alternating_mask
from mlcanon.generative.flows.flow import Flow
from mlcanon.generative.flows.layers import ActNorm, BatchNormFlow, Reverse

EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps
LOG_2PI = math.log(2 * math.pi)


def reference_log_prob(flow: Flow, x: torch.Tensor) -> torch.Tensor:
    """log p(x) by plain autograd ops, layer by layer: a coupling as RealNVP eq. 9 from its conditioner's output
    (z = x exp(s) + t with (s, t) zero on the masked half, log|det| = sum s), other layers as their modules."""
    ld = x.new_zeros(x.shape[0])
    for layer in flow.flow.layers:
        if isinstance(layer, AffineCoupling):
            s, t = layer._free_s_t(layer.mask.to(x.dtype) * x)
            x, ld = x * torch.exp(s) + t, ld + s.sum(1)
        else:
            x, d = layer(x)
            ld = ld + d
    return -0.5 * (x * x).sum(1) - 0.5 * x.shape[1] * LOG_2PI + ld


def make_flow(dim: int, blocks: int, hidden: int, norm: str = "actnorm", net_layers: int = 2, extra=None,
              seed: int = 0, dtype=torch.float64) -> Flow:
    """Couplings with alternating masks (both parities), each followed by ``norm``; parameters moved off their
    identity initialization; ActNorm initialized on a first batch, then perturbed too."""
    torch.manual_seed(seed)
    layers = []
    for k in range(blocks):
        layers.append(AffineCoupling(alternating_mask(dim, k % 2), MLPNet(dim, hidden, 2, net_layers), dim))
        layers += {"actnorm": [ActNorm(dim)], "batchnorm": [BatchNormFlow(dim)], "none": []}[norm]
        if extra is not None and k == 0:
            layers.append(extra)
    flow = Flow(layers, (dim,)).to(dtype)
    with torch.no_grad():
        flow.log_prob(torch.randn(64, dim, dtype=dtype))    # ActNorm's data-dependent initialization
        for p in flow.parameters():
            p.add_(0.4 * torch.randn_like(p))
    return flow


def grads(flow: Flow, x: torch.Tensor, log_prob) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_()
    lp = log_prob(x)
    loss = (lp * torch.linspace(-1, 2, len(lp), dtype=lp.dtype)).sum()   # a generic weighting of the examples
    return lp.detach(), torch.autograd.grad(loss, [x, *flow.parameters()])


@pytest.mark.parametrize("dim,norm,net_layers", [(2, "actnorm", 2), (3, "actnorm", 3), (5, "none", 1),
                                                 (4, "batchnorm", 2)])
def test_fused_log_prob_and_gradients_equal_the_autograd_formulas(dim, norm, net_layers):
    flow = make_flow(dim, blocks=4, hidden=16, norm=norm, net_layers=net_layers)
    x = torch.randn(32, dim, dtype=torch.float64)
    lp, g = grads(flow, x, flow.log_prob)
    lp_ref, g_ref = grads(flow, x, lambda v: reference_log_prob(flow, v))
    scale = float(lp_ref.abs().max())
    tol = 1e3 * EPS64 * 16 * 4   # float64: ulps times hidden width times blocks
    assert torch.allclose(lp, lp_ref, rtol=tol, atol=tol * scale), (lp - lp_ref).abs().max()
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max() + 1)), (a - b).abs().max()


@pytest.mark.parametrize("norm", ["actnorm", "batchnorm"])
def test_fused_gradients_pass_gradcheck_in_float64(norm):
    flow = make_flow(3, blocks=2, hidden=5, norm=norm, extra=Reverse())    # fused, a plain layer, fused again
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    params = list(flow.parameters())
    assert torch.autograd.gradcheck(lambda v, *ps: flow.log_prob(v), (x, *params))


def test_fused_batchnorm_updates_the_running_averages_once_and_uses_them_in_eval_mode():
    flow = make_flow(3, blocks=3, hidden=8, norm="batchnorm")
    twin = copy.deepcopy(flow)
    x = 2 + torch.randn(40, 3, dtype=torch.float64)
    flow.log_prob(x)                    # fused: batch statistics, one running-average update per forward
    reference_log_prob(twin, x)         # the modules
    for a, b in zip(flow.buffers(), twin.buffers(), strict=True):
        assert torch.allclose(a, b, rtol=1e3 * EPS64, atol=1e3 * EPS64)
    flow.eval()                         # running averages: constants, so no gradient through the statistics
    lp, g = grads(flow, x, flow.log_prob)
    lp_ref, g_ref = grads(flow, x, lambda v: reference_log_prob(flow, v))
    tol = 1e3 * EPS64 * 8 * 3
    assert torch.allclose(lp, lp_ref, rtol=tol, atol=tol * float(lp_ref.abs().max()))
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max() + 1)), (a - b).abs().max()


def test_float32_fused_path_agrees_with_autograd_within_rounding():
    flow = make_flow(2, blocks=8, hidden=90, dtype=torch.float32)
    x = torch.randn(256, 2)
    lp, g = grads(flow, x, flow.log_prob)
    lp_ref, g_ref = grads(flow, x, lambda v: reference_log_prob(flow, v))
    tol = 10 * EPS32 * 90 * 8    # float32 rounding grows with the width of the products and the depth
    assert torch.allclose(lp, lp_ref, rtol=tol, atol=tol * float(lp_ref.abs().max())), (lp - lp_ref).abs().max()
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max() + 1)), (a - b).abs().max()


def test_realnvp_toy_model_runs_as_one_fused_node_and_stays_a_bijection():
    config = realnvp.RealNVPConfig(dataset="toy2d:moons", couplings=8, hidden=16, norm="actnorm")
    model = realnvp.build(config, (2,), False).double()
    x = torch.randn(50, 2, dtype=torch.float64)
    model.log_prob(x)                         # initializes the ActNorms (unfused on this first call)
    z, ld = model(x)
    assert type(z.grad_fn).__name__ == "_MLPCouplingBlocksBackward"   # 8 couplings + 8 ActNorms: one node
    assert z.grad_fn.next_functions[0][0] is None                    # straight from the data
    xr, ld_inv = model.inverse(z)                                     # the inverse: the plain modules
    tol = 1e3 * EPS64 * 16 * 8
    assert torch.allclose(xr, x, atol=tol) and torch.allclose(ld_inv, -ld, atol=tol)


def test_actnorm_initializes_on_the_first_batch_then_joins_the_fused_node():
    torch.manual_seed(1)
    flow = Flow([perturb_coupling(AffineCoupling(alternating_mask(2, 0), MLPNet(2, 8, 2), 2)), ActNorm(2)], (2,))
    x = 3 + 2 * torch.randn(500, 2)
    z, _ = flow(x)                          # first call: ActNorm sets loc, scale from the coupling's output
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-5) and torch.allclose(z.std(0, unbiased=False),
                                                                                 torch.ones(2), atol=1e-4)
    assert flow.flow.layers[1].ready()
    z2, _ = flow(x)
    assert type(z2.grad_fn).__name__ == "_MLPCouplingBlocksBackward"
    assert torch.allclose(z2, z, atol=1e-5)


def perturb_coupling(layer: AffineCoupling) -> AffineCoupling:
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return layer


def test_no_second_derivative_through_the_fused_node():
    flow = make_flow(2, blocks=1, hidden=4)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(flow.log_prob(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_bf16_autocast_takes_the_autograd_path_and_trains():
    flow = make_flow(2, blocks=2, hidden=8, dtype=torch.float32)
    x = torch.randn(16, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, _ = flow(x)
        loss = -flow.log_prob(x).mean()
    assert type(z.grad_fn).__name__ != "_MLPCouplingBlocksBackward"   # mixed dtypes: the plain modules
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())
