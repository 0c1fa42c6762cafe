"""Samplers and guidance against exact denoisers: for Gaussian (mixture) data the optimal eps is known in
closed form, eps*(x_t, t) = -sqrt(1 - abar_t) grad log p_t(x_t), so the samplers can be checked alone."""

import math

import pytest
import torch

from mlcanon.generative.diffusion.model import discretized_gaussian_log_likelihood, normal_kl
from mlcanon.generative.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    classifier_free_eps,
    classifier_guided_eps,
    ddim_timesteps,
)
from mlcanon.generative.diffusion.schedules import NoiseSchedule, cosine_betas, linear_betas

D = 2


def mixture_log_p(s: NoiseSchedule, mus: torch.Tensor, std: float):
    """log p_t(x | k) for data N(mu_k, std^2 I): at step t, N(a mu_k, (a^2 std^2 + 1 - a^2) I), a = sqrt(abar_t)."""
    def log_p(x, t):   # [B, K]
        ab = s.alphas_cumprod[t].to(x.dtype)[:, None]
        var = ab * std**2 + 1 - ab
        d2 = ((x[:, None, :] - ab.sqrt()[:, :, None] * mus[None]) ** 2).sum(-1)
        return -0.5 * d2 / var - 0.5 * D * torch.log(2 * math.pi * var)
    return log_p


def score_eps(s, log_density):
    """eps(x, t) = -sqrt(1 - abar_t) grad_x log_density(x, t) by autograd."""
    def eps(x, t):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(log_density(xg, t).sum(), xg)
        return -s.sqrt_one_minus_alphas_cumprod[t].to(x.dtype)[:, None] * g
    return eps


def gaussian_eps(s, mu, std):
    lp = mixture_log_p(s, mu[None], std)
    return score_eps(s, lambda x, t: lp(x, t)[:, 0])


def randn(n, seed, dim=D):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ddpm_large_variance_is_exact_for_standard_normal_data():
    """Data N(0, I): every marginal is N(0, I) and q(x_{t-1} | x_t) has variance beta_t exactly, so the
    'large' choice samples N(0, I); the 'small' one (beta~_t <= beta_t) is under-dispersed."""
    s = NoiseSchedule(linear_betas(50))
    eps = gaussian_eps(s, torch.zeros(D, dtype=torch.float64), 1.0)
    N = 20_000
    out = {}
    for var in ("large", "small"):
        x = DDPMSampler(s, var).sample(eps, randn(N, 0), torch.Generator().manual_seed(1))
        out[var] = x
    x = out["large"]
    assert x.mean(0).abs().max() < 5 / math.sqrt(N)
    assert (x.var(0) - 1).abs().max() < 5 * math.sqrt(2 / N)
    assert out["small"].var(0).max() < 1 - 10 * math.sqrt(2 / N)


def test_ddpm_small_variance_is_exact_for_a_point_mass():
    """Data = a point mu: x_0^ = mu exactly, each step samples q(x_{t-1} | x_t, x_0 = mu), the last returns mu."""
    s = NoiseSchedule(cosine_betas(40))
    mu = torch.tensor([1.5, -0.5], dtype=torch.float64)
    eps = lambda x, t: s.eps_from_x0(x, t, mu.expand_as(x))
    seen = []
    x = DDPMSampler(s, "small").sample(eps, randn(2000, 2), torch.Generator().manual_seed(3),
                                       record=lambda i, t, x, x0: seen.append((t, x.clone())))
    torch.testing.assert_close(x, mu.expand_as(x), rtol=0, atol=1e-12)
    t, xt = seen[20]                       # an intermediate x_t is distributed as q(x_t | x_0 = mu)
    ab = float(s.alphas_cumprod[t])
    assert (xt.mean(0) - math.sqrt(ab) * mu).abs().max() < 5 * math.sqrt((1 - ab) / 2000)
    assert (xt.var(0) - (1 - ab)).abs().max() < 5 * (1 - ab) * math.sqrt(2 / 2000)


def test_ddpm_step_unclipped_is_eq_11():
    """mu~(x_0^, x_t) = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) (Ho et al. eq. 11)."""
    s = NoiseSchedule(linear_betas(100))
    x, e = randn(8, 0), randn(8, 1)
    for t in (1, 50, 99):
        got, _ = DDPMSampler(s).step(e, t, t - 1, x, torch.zeros_like(x))
        want = (x - s.betas[t] / s.sqrt_one_minus_alphas_cumprod[t] * e) / s.alphas[t].sqrt()
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_ddim_eta1_all_steps_is_ddpm_small_variance():
    s = NoiseSchedule(cosine_betas(30))
    eps = gaussian_eps(s, torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3)
    x_T = randn(64, 5)
    a = DDPMSampler(s, "small").sample(eps, x_T, torch.Generator().manual_seed(9))
    b = DDIMSampler(s, steps=30, eta=1.0).sample(eps, x_T, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_ddim_deterministic_maps_noise_to_the_data_distribution():
    """eta = 0: the same x_T gives the same x_0 whatever the generator. With the exact eps of N(mu, std^2 I)
    every update is affine in x, so the sampler is x_0 = A x_T + b, and the probability-flow ODE it discretizes
    has A = std I, b = mu (up to abar_T > 0); A converges to std as the steps shrink."""
    s = NoiseSchedule(cosine_betas(1000))
    mu, std = torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5
    eps = gaussian_eps(s, mu, std)
    x_T = randn(100, 11)
    sampler = DDIMSampler(s, steps=20, eta=0.0)
    torch.testing.assert_close(sampler.sample(eps, x_T, torch.Generator().manual_seed(1)),
                               sampler.sample(eps, x_T, torch.Generator().manual_seed(2)), rtol=0, atol=0)
    probe = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    errs = []
    for steps in (20, 100, 1000):
        x = DDIMSampler(s, steps=steps, eta=0.0).sample(eps, probe)
        A, b = (x[1:] - x[0]).T, x[0]
        torch.testing.assert_close(A - torch.diag(A.diag()), torch.zeros(2, 2, dtype=torch.float64), rtol=0,
                                   atol=1e-12)
        errs.append(float((A.diag() - std).abs().max()))
        assert (b - mu).abs().max() < 1e-3
    assert errs[0] > errs[1] > errs[2] and errs[2] < 2e-3, errs


def test_ddim_encode_decode_round_trip():
    """Encoding runs the eta = 0 update forward in time; decoding it again returns the data up to the
    discretization error, which shrinks with more steps."""
    s = NoiseSchedule(cosine_betas(1000))
    mus = torch.tensor([[2.0, 0.0], [-2.0, 1.0]], dtype=torch.float64)
    lp = mixture_log_p(s, mus, 0.4)
    eps = score_eps(s, lambda x, t: torch.logsumexp(lp(x, t), 1))   # exact eps of the 2-component mixture
    x0 = mus[torch.arange(200) % 2] + 0.4 * randn(200, 4)
    errs = []
    for steps in (50, 200):
        sampler = DDIMSampler(s, steps=steps, eta=0.0)
        z = sampler.encode(eps, x0)
        assert z.std() > 0.7                         # the codes look like noise, not like the data
        back = sampler.sample(eps, z)
        errs.append(float((back - x0).abs().max()))
    assert errs[1] < 0.05 and errs[1] < errs[0] / 3, errs   # first order: 4x the steps, ~1/4 the error


def test_classifier_guidance_of_the_exact_classifier_gives_the_conditional_eps():
    """grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x): with scale 1, classifier guidance of the
    marginal eps by the exact posterior p_t(y | x_t) is the class-conditional eps; and classifier-free guidance
    with weight w equals classifier guidance with scale 1 + w (both are grad of (1+w) log p(x|y) - w log p(x))."""
    s = NoiseSchedule(linear_betas(100))
    mus = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, -2.0]], dtype=torch.float64)
    lp = mixture_log_p(s, mus, 0.3)
    marginal = score_eps(s, lambda x, t: torch.logsumexp(lp(x, t), 1))
    y = torch.tensor([0, 1, 2, 0, 2])
    conditional = score_eps(s, lambda x, t: lp(x, t).gather(1, y[:, None]).squeeze(1))
    log_post = lambda x, t: torch.log_softmax(lp(x, t), 1).gather(1, y[:, None]).squeeze(1)
    x = randn(5, 3)
    for t_idx in (3, 40, 99):
        t = torch.full((5,), t_idx)
        guided = classifier_guided_eps(marginal, log_post, s, 1.0)(x, t)
        torch.testing.assert_close(guided, conditional(x, t), rtol=1e-9, atol=1e-9)

        def eps_cu(x, t, labels):
            return marginal(x, t) if labels is None else conditional(x, t)
        w = 2.5
        torch.testing.assert_close(classifier_free_eps(eps_cu, y, w)(x, t),
                                   classifier_guided_eps(marginal, log_post, s, 1 + w)(x, t), rtol=1e-9, atol=1e-9)


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1000) == list(range(1000))
    ts = ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 0 and ts[-1] == 999
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)


def test_discretized_gaussian_is_a_distribution_over_the_256_levels():
    levels = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1            # 8-bit values in [-1, 1]
    for mean, logvar in ((0.0, -3.0), (0.93, -9.0), (-1.2, 0.5), (0.2, -12.0)):
        lp = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean),
                                                 torch.full_like(levels, logvar))
        assert torch.isfinite(lp).all()
        torch.testing.assert_close(lp.exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-9)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, l1, l2 = (torch.randn(100, generator=g, dtype=torch.float64) for _ in range(4))
    want = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * l1).exp()),
                                             torch.distributions.Normal(m2, (0.5 * l2).exp()))
    torch.testing.assert_close(normal_kl(m1, l1, m2, l2), want, rtol=1e-12, atol=1e-12)
