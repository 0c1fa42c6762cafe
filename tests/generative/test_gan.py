"""GAN theory (Goodfellow et al. 2014): the optimal discriminator, the value -log 4 + 2 JSD, the non-saturating
gradient; the WGAN-GP penalty, the unrolled look-ahead, mode coverage, and the Algorithm-1 loop (k D-steps,
weight clipping, both optimizers checkpointed)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlcanon.data import toy2d
from mlcanon.generative.gan import (
    GAN,
    GANConfig,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    mode_coverage,
    train_gan,
    unrolled_d_params,
)
from mlcanon.runs import load_checkpoint

P_DATA = torch.distributions.Normal(0.0, 1.0)
P_MODEL = torch.distributions.Normal(1.5, 0.7)


def _d_star(x):
    pd, pm = P_DATA.log_prob(x).exp(), P_MODEL.log_prob(x).exp()
    return pd / (pd + pm)                       # Prop. 1


def _jsd() -> float:
    """JSD(p_data || p_model) by quadrature on a fine grid (float64)."""
    x = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    pd = torch.exp(torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0).log_prob(x))
    pm = torch.exp(torch.distributions.Normal(torch.tensor(1.5, dtype=torch.float64), 0.7).log_prob(x))
    m = (pd + pm) / 2
    kl = lambda p: torch.trapezoid(torch.where(p > 0, p * torch.log(p / m), torch.zeros_like(p)), x)
    return float((kl(pd) + kl(pm)) / 2)


@pytest.fixture(scope="module")
def trained_d():
    """A small MLP discriminator trained on the two densities with our discriminator loss."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(D.parameters(), lr=1e-2)
    for _ in range(400):
        xr, xf = P_DATA.sample((2048, 1)), P_MODEL.sample((2048, 1))
        loss = discriminator_loss(D(xr).squeeze(1), D(xf).squeeze(1))     # -V(D, G)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return D


def test_optimal_discriminator_is_density_ratio(trained_d):
    x = torch.linspace(-1.0, 2.5, 36)[:, None]
    with torch.no_grad():
        d = torch.sigmoid(trained_d(x)).squeeze(1)
    assert torch.allclose(d, _d_star(x.squeeze(1)), atol=0.05), (d, _d_star(x.squeeze(1)))


def test_value_at_optimum_is_minus_log4_plus_2jsd(trained_d):
    torch.manual_seed(1)
    n = 200_000
    xr, xf = P_DATA.sample((n,)), P_MODEL.sample((n,))
    logit = lambda x: torch.logit(_d_star(x))
    v_star = -discriminator_loss(logit(xr), logit(xf)).item()
    assert v_star == pytest.approx(-math.log(4) + 2 * _jsd(), abs=0.01)    # Thm. 1 (MC error ~ 2e-3)
    with torch.no_grad():
        v_trained = -discriminator_loss(trained_d(xr[:, None]).squeeze(1), trained_d(xf[:, None]).squeeze(1)).item()
    assert v_trained <= v_star + 0.01 and v_trained == pytest.approx(v_star, abs=0.02)   # D* maximizes V
    # p_model = p_data: D* = 1/2 everywhere and V = -log 4 for any sample
    same = P_DATA.sample((1000,))
    half = torch.zeros_like(same)                                          # logit(1/2) = 0
    assert -discriminator_loss(half, half).item() == pytest.approx(-math.log(4), abs=1e-6)


def test_non_saturating_gradient_larger_near_zero():
    logits = torch.tensor([-8.0, -5.0, -3.0], requires_grad=True)           # D(G(z)) ~ 3e-4 .. 5e-2
    (g_mm,) = torch.autograd.grad(generator_loss(logits, "minimax"), logits)
    (g_ns,) = torch.autograd.grad(generator_loss(logits, "non-saturating"), logits)
    n = len(logits)
    s = torch.sigmoid(logits.detach())
    assert torch.allclose(g_mm, -s / n, atol=1e-7)                           # d/dl log(1 - sigmoid(l)) = -sigmoid(l)
    assert torch.allclose(g_ns, -(1 - s) / n, atol=1e-7)                     # d/dl -log sigmoid(l) = -(1 - sigmoid(l))
    assert torch.all(g_ns.abs() > 10 * g_mm.abs())


def test_gradient_penalty_linear_critic():
    w = torch.tensor([0.6, 0.8, 2.0])                                        # ||w|| = sqrt(5)
    critic = lambda x: x @ w
    real, fake = torch.randn(16, 3), torch.randn(16, 3)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx((math.sqrt(5) - 1) ** 2, rel=1e-6)


def test_mode_coverage_on_exact_and_collapsed_samples():
    g = torch.Generator().manual_seed(0)
    centers, sigma = toy2d._gauss_centers(), toy2d.DEFAULT_NOISE["8gaussians"]
    x = toy2d.sample("8gaussians", 20000, generator=g)
    out = mode_coverage(x, centers, sigma)
    p = 1 - math.exp(-4.5)                       # P(||eps|| <= 3 sigma) for a 2-D Gaussian (chi^2_2)
    assert out["modes_covered"] == 8
    assert out["high_quality_fraction"] == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / 20000) + 1e-3)
    one = centers[3].float() + sigma * torch.randn(5000, 2, generator=g)
    assert mode_coverage(one, centers, sigma)["modes_covered"] == 1


def test_unrolled_look_ahead_is_sgd_and_differentiable():
    torch.manual_seed(0)
    cfg = GANConfig(hidden=8, latent=3, unroll=1, unroll_lr=0.1)
    m = GAN(cfg, (2,))
    real = torch.randn(32, 2)
    torch.manual_seed(5)
    params = unrolled_d_params(m, cfg, real, None)
    # the same step by hand (same noise): theta1 = theta0 - 0.1 grad L_D
    torch.manual_seed(5)
    z, _ = m.noise(32, "cpu")
    loss = discriminator_loss(m.D(real), m.D(m.G(z)))
    grads = torch.autograd.grad(loss, list(m.D.parameters()))
    for (name, p0), g in zip(m.D.named_parameters(), grads):
        assert torch.allclose(params[name], p0 - 0.1 * g, atol=1e-6)
    # theta^1 depends on G: the generator's loss against it has a second-order term
    out = m.g_loss(16, "cpu", d_params=params)["g_loss"]
    gG = torch.autograd.grad(out, list(m.G.parameters()))
    assert all(torch.isfinite(t).all() for t in gG) and sum(t.abs().sum() for t in gG) > 0


def test_algorithm1_loop_k_steps_clipping_and_checkpoint(tmp_runs):
    cfg = GANConfig(loss="wasserstein", clip=0.01, d_steps=3, optimizer="rmsprop", lr=5e-5, hidden=8, latent=2,
                    max_steps=4, batch_size=16, train_subset=256, out_dir=str(tmp_runs), progress=False)
    out = train_gan("gan", cfg)
    ck, step = load_checkpoint(out["run_dir"])
    assert step == 4
    assert all(float(v.abs().max()) <= 0.01 for k, v in ck["discriminator"].items() if "running" not in k)
    d_steps = {int(s["step"]) for s in ck["opt_d"]["state"].values()}
    g_steps = {int(s["step"]) for s in ck["opt_g"]["state"].values()}
    assert d_steps == {12} and g_steps == {4}                                # k = 3 D-steps per G-step


def test_mlp_generator_batch_norm_on_images_only():
    """--g-norm auto: batch norm in the MLP generator on images (Radford et al. 2016, sec. 3: it keeps the
    generator from collapsing all samples to one point, which the plain MLP GAN did on MNIST), none on toy2d,
    whose weight names stay those of the plain network (older runs still load)."""
    toy = GAN(GANConfig(hidden=8, latent=2), (2,))
    assert [n for n, _ in toy.G.named_parameters()] == [f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in toy.G.modules())
    img = GAN(GANConfig(dataset="mnist", hidden=8, latent=2), (1, 28, 28))
    bns = [m for m in img.G.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 2
    assert GAN(GANConfig(hidden=8, latent=2, g_norm="on"), (2,)).G.net[1].__class__ is nn.BatchNorm1d
    assert not any(isinstance(m, nn.BatchNorm1d)
                   for m in GAN(GANConfig(hidden=8, latent=2, g_norm="off"), (1, 28, 28)).G.modules())
    # in training mode each hidden unit is standardized over the batch before its ReLU: mean 0, variance 1
    torch.manual_seed(0)
    acts = []
    hook = bns[0].register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    img.G.train()
    x = img.G(torch.randn(256, 2)).detach()
    hook.remove()
    h = acts[0].double()
    assert x.shape == (256, 1, 28, 28) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.allclose(h.mean(0), torch.zeros(8, dtype=torch.double), atol=1e-5)
    assert torch.allclose(h.var(0, unbiased=False), torch.ones(8, dtype=torch.double), atol=1e-3)


def test_toy_noise_sets_the_data_and_the_high_quality_radius(tmp_runs, monkeypatch):
    """--toy-noise s: the training points are mu_k + s eps (per-coordinate std s around their mode), and the
    evaluation's high-quality radius is 3 s; the default keeps the set's own noise; bad uses are refused."""
    from mlcanon.config import validate
    from mlcanon.errors import UserError
    from mlcanon.generative.gan import evaluate, load_data
    x, _ = load_data(GANConfig(toy_noise=0.02))
    dev = x - toy2d._gauss_centers()[torch.cdist(x.double(), toy2d._gauss_centers().double()).argmin(1)].float()
    assert dev.std(0).tolist() == pytest.approx([0.02, 0.02], rel=0.05)      # ~20,000 points: sd of s^ ~0.5% of s
    x0, _ = load_data(GANConfig())
    assert float(x0.std()) > 1.0 and not torch.equal(x0, x)
    # evaluation scores the samples against the run's own sigma: 3 sigma = 0.06 is the high-quality radius
    import mlcanon.generative.gan as gan_module
    seen = []
    monkeypatch.setattr(gan_module, "mode_coverage", lambda s, c, sigma, **kw: seen.append(sigma) or {})
    for noise in (0.02, 0.0):
        out = train_gan("gan", GANConfig(toy_noise=noise, hidden=8, latent=2, max_steps=1, batch_size=16,
                                         train_subset=64, out_dir=str(tmp_runs), progress=False))
        evaluate(out["run_dir"])
    assert seen == [0.02, toy2d.DEFAULT_NOISE["8gaussians"]]
    for bad in (GANConfig(dataset="mnist", toy_noise=0.1), GANConfig(dataset="toy2d:checkerboard", toy_noise=0.1)):
        with pytest.raises(UserError, match="--toy-noise"):
            validate(bad)
