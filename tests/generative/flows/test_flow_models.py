"""Every flow model, built by its registered builder: exact inverse, whole-flow log-det against the autograd
Jacobian (float64), log_prob = base log_prob(f(x)) + the layers' log-dets, normalization (the density
integrates to 1 over a grid on 1-D and 2-D toys), a closed-form density, sampling and temperature."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from mlcanon.generative.flows import glow, iaf, maf, nice, planar, realnvp
from mlcanon.generative.flows.common import toy_mass
from mlcanon.generative.flows.flow import Flow
from mlcanon.generative.flows.layers import Affine, Logit, Planar, Radial

EPS64 = torch.finfo(torch.float64).eps


def perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its (often identity) initialization so the checks see a generic map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module

TOY = {
    "planar-flow": (planar.build, planar.PlanarConfig(layers=4, kind="both")),
    "nice": (nice.build, nice.NICEConfig(hidden=8, net_layers=2)),
    "realnvp": (realnvp.build, realnvp.RealNVPConfig(dataset="toy2d:moons", hidden=8, couplings=3)),
    "glow": (glow.build, glow.GlowConfig(dataset="toy2d:moons", hidden=8, steps=2)),
    "maf": (maf.build, maf.MAFConfig(layers=2, hidden=8, batch_norm=True)),
    "iaf": (iaf.build_iaf, iaf.IAFConfig(layers=2, hidden=8)),
}
# tiny 1 x 4 x 4 "images": the same code paths as MNIST (logit, squeeze, masks, multi-scale)
IMAGE = {
    "nice": (nice.build, nice.NICEConfig(dataset="mnist", hidden=8, net_layers=1)),
    "realnvp": (realnvp.build, realnvp.RealNVPConfig(dataset="mnist", hidden=4, levels=2)),
    "realnvp-actnorm": (realnvp.build, realnvp.RealNVPConfig(dataset="mnist", hidden=4, levels=2, norm="actnorm")),
    "glow": (glow.build, glow.GlowConfig(dataset="mnist", hidden=4, levels=2, steps=1)),
    "glow-masked": (glow.build, glow.GlowConfig(dataset="mnist", hidden=4, levels=2, steps=1, coupling="masked")),
    "glow-plain": (glow.build, glow.GlowConfig(dataset="mnist", hidden=4, levels=2, steps=1, lu=False)),
    "glow-no-prior": (glow.build, glow.GlowConfig(dataset="mnist", hidden=4, levels=2, steps=1, learned_prior=False)),
    "maf": (maf.build, maf.MAFConfig(dataset="mnist", layers=2, hidden=20)),
    "iaf": (iaf.build_iaf, iaf.IAFConfig(dataset="mnist", layers=1, hidden=20)),
}


def ready(model: Flow, x: torch.Tensor, seed: int = 0) -> Flow:
    """Float64, data-dependent layers initialized / batch-norm statistics collected, then every parameter
    moved off its identity initialization; eval mode."""
    model = model.double().train()
    model(x.double())
    return perturb(model, 0.2, seed).eval()


def toy_model(name, seed=0):
    build, config = TOY[name]
    torch.manual_seed(seed)
    return ready(build(config, (2,), False), torch.randn(64, 2) * 2, seed)


def image_model(name, seed=0):
    build, config = IMAGE[name]
    torch.manual_seed(seed)
    return ready(build(config, (1, 4, 4), True), torch.rand(64, 1, 4, 4), seed)


def check_model(model: Flow, x: torch.Tensor) -> None:
    x = x.double()
    n = x[0].numel()
    tol = 1e4 * EPS64 * n
    z, ld = model(x)
    xr, ld_inv = model.inverse(z)
    assert torch.allclose(xr, x, atol=tol, rtol=tol), (xr - x).abs().max()
    assert torch.allclose(ld_inv, -ld, atol=tol)
    # brute force: log|det| of the whole flow's Jacobian, one example at a time
    for b in range(x.shape[0]):
        J = jacobian(lambda v: model(v.unsqueeze(0))[0].reshape(-1), x[b]).reshape(n, n)
        assert math.isclose(float(torch.linalg.slogdet(J)[1]), float(ld[b].detach()), abs_tol=tol)
    # log_prob = log N(f(x); 0, I) + sum over the layers of their own log-dets
    h, total = x, torch.zeros(x.shape[0], dtype=torch.float64)
    for layer in model.flow.layers:
        h, l_k = layer(h)
        total = total + l_k
    h = h.reshape(len(h), -1)
    base = -0.5 * (h ** 2).sum(1) - 0.5 * h.shape[1] * math.log(2 * math.pi)   # standard normal, written out
    assert torch.allclose(model.log_prob(x), base + total, atol=tol)


@pytest.mark.parametrize("name", sorted(TOY))
def test_toy_models_are_exact(name):
    check_model(toy_model(name), torch.randn(3, 2, generator=torch.Generator().manual_seed(2)) * 1.5)


@pytest.mark.parametrize("name", sorted(IMAGE))
def test_image_models_are_exact(name):
    x = 0.02 + 0.96 * torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    check_model(image_model(name), x)


@pytest.mark.parametrize("name", sorted(TOY))
def test_toy_density_integrates_to_one(name):
    """exp(log p) summed over a fine grid on [-12, 12]^2 (Riemann sum) is 1 up to the grid error."""
    assert abs(toy_mass(toy_model(name, seed=1), lim=12.0, n=300) - 1) < 2e-2


def test_one_dimensional_density_integrates_to_one():
    torch.manual_seed(0)
    model = perturb(Flow([Affine((1,)), Planar(1), Radial(1), Planar(1)], (1,)), 0.8).double().eval()
    t = torch.linspace(-30, 30, 60001, dtype=torch.float64)[:, None]
    mass = torch.trapezoid(model.log_prob(t).exp(), t[:, 0])
    assert abs(float(mass.detach()) - 1) < 1e-6


def test_sigmoid_flow_density_on_the_unit_interval_integrates_to_one():
    """y = sigmoid(x) with x ~ N(0, 1): a density on (0, 1) (the logit-normal), normalized."""
    model = Flow([Logit(0.0)], (1,)).double()
    t = torch.linspace(1e-9, 1 - 1e-9, 200001, dtype=torch.float64)[:, None]
    mass = torch.trapezoid(model.log_prob(t).exp(), t[:, 0])
    assert abs(float(mass.detach()) - 1) < 1e-6


def test_affine_flow_is_the_gaussian_it_should_be():
    """z = s x + t with z ~ N(0, 1) means x ~ N(-t / s, 1 / s^2): compare with torch's Normal."""
    layer = Affine((1,))
    with torch.no_grad():
        layer.log_scale.fill_(math.log(2.0))
        layer.shift.fill_(3.0)
    model = Flow([layer], (1,))
    x = torch.linspace(-5, 5, 11)[:, None]
    expected = torch.distributions.Normal(-1.5, 0.5).log_prob(x[:, 0])
    assert torch.allclose(model.log_prob(x), expected, atol=1e-5)


def test_sample_shapes_and_temperature():
    model = image_model("glow")
    g = torch.Generator().manual_seed(0)
    x = model.sample(5, generator=g)
    assert x.shape == (5, 1, 4, 4) and x.dtype == torch.float64
    x0 = model.sample(3, temperature=0.0)            # T = 0: every sample is f^-1(0)
    assert torch.allclose(x0, x0[:1].expand_as(x0))
    assert torch.allclose(x0[:1], model.inverse(torch.zeros(1, 16, dtype=torch.float64))[0])
    again = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)                     # a seeded generator repeats


def test_image_loss_reports_bits_per_dim_with_the_dequantization_term():
    model = image_model("realnvp")
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    out = model.loss({"x": x})
    nll = float(-model.log_prob(x).mean().detach())
    assert math.isclose(float(out["loss"].detach()), nll, rel_tol=1e-12)
    assert math.isclose(float(out["bits_per_dim"]), (nll + 16 * math.log(256)) / (16 * math.log(2)), rel_tol=1e-12)


def test_multiscale_factors_out_half_per_level():
    model = image_model("glow")
    ms = model.flow.layers[1]
    # level 1: squeeze 1x4x4 -> 4x2x2, factor out 2x2x2; level 2: squeeze 2x2x2 -> 8x1x1, kept
    assert ms.shapes == [((2, 2, 2), (2, 2, 2)), ((0,), (8, 1, 1))]
    model_r = image_model("realnvp")
    assert model_r.flow.layers[1].shapes[0] == ((2, 2, 2), (2, 2, 2))


def test_glow_learned_prior_is_the_conditional_gaussian_of_the_factored_half():
    """log p(x) with the learned prior minus log p(x) with N(0, I) on the factored half equals
    sum log N(z_out; mu(h), sigma(h)) - log N(z_out; 0, I), the densities written with torch.distributions."""
    model = image_model("glow")                                   # perturbed: mu, sigma far from 0, 1
    ms = model.flow.layers[1]
    assert ms.priors is not None and len(ms.priors) == 1
    x = 0.02 + 0.96 * torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with_prior = model.log_prob(x)
    priors, ms.priors = ms.priors, None                           # the same flow with an N(0, I) factored half
    without = model.log_prob(x)
    h0, _ = model.flow.layers[0](x)                               # logit
    h1, _ = ms.levels[0](h0)                                      # level 1 output, before the split
    out, kept = h1.chunk(2, dim=1)
    ms.priors = priors
    mu, log_sigma = priors[0].net(kept).chunk(2, dim=1)
    assert log_sigma.abs().max() > 0.05 and mu.abs().max() > 0.05
    gauss = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(out).flatten(1).sum(1)
    std = torch.distributions.Normal(0.0, 1.0).log_prob(out).flatten(1).sum(1)
    assert torch.allclose(with_prior - without, gauss - std, atol=1e-9)
    zero = glow.build(IMAGE["glow"][1], (1, 4, 4), True)          # zero-initialized: starts as N(0, I)
    assert all(float(p.abs().max()) == 0 for p in zero.flow.layers[1].priors.parameters())
