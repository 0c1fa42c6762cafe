"""Forward process: closed form vs iterated steps (in distribution), posterior vs Gaussian conditioning,
parametrizations, schedules."""

import math

import pytest
import torch

from mlcanon.generative.diffusion.schedules import NoiseSchedule, cosine_betas, linear_betas, make_betas


@pytest.mark.parametrize("name", ["linear", "cosine", "custom"])
def test_closed_form_matches_iterated_steps_in_distribution(name):
    """x_t from t one-step draws of q(x_t | x_{t-1}) has the mean sqrt(abar_t) x_0 and variance 1 - abar_t of
    the closed form q(x_t | x_0); checked with N = 200k samples within 5 standard errors."""
    T = 30
    s = NoiseSchedule.make(name, T, (0.02, 0.1, 0.3, 0.05) * 7 + (0.5, 0.2) if name == "custom" else ())
    T = s.T
    g = torch.Generator().manual_seed(0)
    N = 200_000
    x0 = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64).repeat(N, 1)   # three fixed starting points
    x = x0.clone()
    for t in range(T):
        x = s.q_step(x, torch.full((N,), t), torch.randn(x.shape, generator=g, dtype=torch.float64))
        if t in (0, T // 3, T - 1):
            closed = s.q_sample(x0, torch.full((N,), t), torch.randn(x.shape, generator=g, dtype=torch.float64))
            ab = float(s.alphas_cumprod[t])
            m, v = math.sqrt(ab) * x0[0], 1 - ab
            for sample in (x, closed):
                se_mean = math.sqrt(v / N)
                se_var = v * math.sqrt(2 / (N - 1))
                assert (sample.mean(0) - m).abs().max() < 5 * se_mean + 1e-12
                assert (sample.var(0) - v).abs().max() < 5 * se_var + 1e-12


def test_products_of_step_coefficients_are_the_closed_form():
    s = NoiseSchedule(cosine_betas(50))
    # iterating means: prod sqrt(alpha_s) = sqrt(abar_t); variances: v_t = alpha_t v_{t-1} + beta_t
    m, v = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for t in range(50):
        m = m * s.alphas[t].sqrt()
        v = s.alphas[t] * v + s.betas[t]
        torch.testing.assert_close(m, s.sqrt_alphas_cumprod[t], rtol=1e-13, atol=0)
        torch.testing.assert_close(v, 1 - s.alphas_cumprod[t], rtol=1e-12, atol=1e-15)


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) from the joint Gaussian of (x_{t-1}, x_t) given x_0: Var x_{t-1} = 1 - abar_{t-1},
    Cov = sqrt(alpha_t)(1 - abar_{t-1}), Var x_t = 1 - abar_t; mean and variance by the conditioning formula."""
    s = NoiseSchedule(linear_betas(40))
    x0 = torch.tensor([0.7, -0.2], dtype=torch.float64)
    x_t = torch.tensor([0.1, 1.5], dtype=torch.float64)
    for t in range(1, 40):
        ab, ab_prev, a = s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.alphas[t]
        v_prev, v_t, cov = 1 - ab_prev, 1 - ab, a.sqrt() * (1 - ab_prev)
        mean = ab_prev.sqrt() * x0 + cov / v_t * (x_t - ab.sqrt() * x0)
        var = v_prev - cov**2 / v_t
        got_mean, got_var, got_logvar = s.q_posterior(x0[None], x_t[None], torch.tensor([t]))
        torch.testing.assert_close(got_mean[0], mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_var[0, 0], var, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(got_logvar.exp()[0, 0], var, rtol=1e-12, atol=1e-15)
    # t = 1 (index 0): x_0 is known exactly given x_0, so the posterior variance is 0 and the mean is x_0
    mean0, var0, _ = s.q_posterior(x0[None], x_t[None], torch.tensor([0]))
    torch.testing.assert_close(mean0[0], x0)
    assert float(var0) == 0


def test_posterior_matches_regression_of_samples():
    """Draw x_{t-1} ~ q(x_{t-1} | x_0) and x_t ~ q(x_t | x_{t-1}); least squares of x_{t-1} on x_t recovers
    the posterior's x_t coefficient, intercept and residual variance (200k samples, 5 standard errors)."""
    s = NoiseSchedule(linear_betas(20))
    g = torch.Generator().manual_seed(1)
    N, t, x0 = 200_000, 7, 0.8
    prev = s.q_sample(torch.full((N, 1), x0, dtype=torch.float64), torch.full((N,), t - 1),
                      torch.randn(N, 1, generator=g, dtype=torch.float64))
    xt = s.q_step(prev, torch.full((N,), t), torch.randn(N, 1, generator=g, dtype=torch.float64))
    A = torch.cat([xt, torch.ones_like(xt)], 1)
    coef = torch.linalg.lstsq(A, prev).solution[:, 0]
    resid = (prev - A @ coef[:, None]).var()
    c1, c2, var = s.posterior_mean_coef1[t], s.posterior_mean_coef2[t], s.posterior_variance[t]
    se_slope = math.sqrt(var / (N * xt.var()))
    assert abs(coef[0] - c2) < 5 * se_slope
    assert abs(coef[1] - (c1 * x0)) < 5 * se_slope * (1 + float(xt.mean().abs())) + 5 * math.sqrt(var / N)
    assert abs(resid - var) < 5 * var * math.sqrt(2 / N)


def test_parametrizations_round_trip():
    s = NoiseSchedule(cosine_betas(100))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = torch.randint(100, (64,), generator=g)
    x_t = s.q_sample(x0, t, eps)
    torch.testing.assert_close(s.x0_from_eps(x_t, t, eps), x0)
    torch.testing.assert_close(s.eps_from_x0(x_t, t, x0), eps)
    v = s.v_target(x0, t, eps)
    torch.testing.assert_close(s.eps_from_output("v", x_t, t, v), eps)
    torch.testing.assert_close(s.eps_from_output("x0", x_t, t, x0), eps)
    for p in ("eps", "x0", "v"):
        torch.testing.assert_close(s.eps_from_output(p, x_t, t, s.target(p, x0, t, eps)), eps)


def test_schedules():
    lin = linear_betas(1000)
    assert float(lin[0]) == pytest.approx(1e-4) and float(lin[-1]) == pytest.approx(0.02)
    s = NoiseSchedule(lin)
    assert float(s.alphas_cumprod[-1]) < 1e-4                   # x_T is (nearly) pure noise
    cos = NoiseSchedule(cosine_betas(1000))
    # cosine: abar_t = f(t)/f(0) with f(t) = cos^2((t/T + s)/(1 + s) pi/2)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    assert float(cos.alphas_cumprod[499]) == pytest.approx(f(500) / f(0), rel=1e-9)
    assert s.betas.dtype == torch.float64 and "betas" not in s.state_dict()   # float64, not saved weights
    assert NoiseSchedule(make_betas("custom", 0, (0.1, 0.2))).T == 2
    with pytest.raises(ValueError):
        NoiseSchedule([0.1, 1.5])
    with pytest.raises(ValueError):
        s.q_sample(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(3, 2))
