"""gSDE (rl/sde.py): the likelihood against the closed-form Gaussian and against Monte Carlo samples of
phi^T theta_eps, the noise held between resamples, the gradient of log sigma against its closed form."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from mlcanon.rl.sde import StateDependentNoise

EPS32 = torch.finfo(torch.float32).eps


def _noise_module(latent=5, act=3, m=1, seed=0):
    torch.manual_seed(seed)
    sde = StateDependentNoise(latent, act, m, epsilon=1e-6)
    with torch.no_grad():
        sde.log_std.copy_(torch.randn(latent, act) * 0.5)           # sigma_ij all different
    return sde


def test_log_prob_is_the_closed_form_gaussian():
    sde = _noise_module()
    B, L, A = 7, 5, 3
    phi, mu, a = torch.randn(B, L), torch.randn(B, A), torch.randn(B, A)
    with torch.no_grad():
        logp, ent = sde.log_prob_entropy(mu, phi, a)
    sigma = sde.log_std.detach().double().exp()
    for b in range(B):   # covariance built entry by entry: v_j = sum_i phi_i^2 sigma_ij^2 (+ epsilon)
        v = [sum(float(phi[b, i]) ** 2 * float(sigma[i, j]) ** 2 for i in range(L)) + 1e-6 for j in range(A)]
        ref = MultivariateNormal(mu[b].double(), covariance_matrix=torch.diag(torch.tensor(v, dtype=torch.float64)))
        tol = 1e3 * EPS32 * (1 + abs(float(ref.log_prob(a[b].double()))))
        assert float(logp[b]) == pytest.approx(float(ref.log_prob(a[b].double())), abs=tol)
        assert float(ent[b]) == pytest.approx(float(ref.entropy()), abs=1e3 * EPS32 * (1 + abs(float(ref.entropy()))))


def test_noise_matches_its_distribution_by_monte_carlo():
    """M exploration matrices applied to one phi: the samples phi^T theta_eps have mean 0, variance v_j and
    independent components, within sampling error (5 standard errors)."""
    M, L, A = 40_000, 6, 2
    sde = _noise_module(L, A, M, seed=1)
    phi = torch.randn(1, L)
    sde.resample()
    eps = sde.noise(phi.expand(M, L)).double()                       # [M, A], one theta per row
    v = (sde.variance(phi)[0] - sde.epsilon).detach().double()                # sum_i phi_i^2 sigma_ij^2
    mean, var = eps.mean(0), eps.var(0)
    assert torch.all(mean.abs() < 5 * torch.sqrt(v / M))
    assert torch.all((var - v).abs() < 5 * v * math.sqrt(2 / (M - 1)))
    cov = ((eps[:, 0] - mean[0]) * (eps[:, 1] - mean[1])).mean()
    assert abs(float(cov)) < 5 * math.sqrt(float(v[0] * v[1]) / M)
    # and the log-likelihood of the samples is that of N(0, diag v) in expectation: E[log p] = -H
    with torch.no_grad():
        logp, ent = sde.log_prob_entropy(torch.zeros(M, A), phi.expand(M, L), eps.float())
    assert abs(float(logp.double().mean() + ent[0])) < 5 * math.sqrt(A * 0.5 / M)    # Var[log N] = A / 2


def test_noise_is_constant_between_resamples_and_changes_after():
    sde = _noise_module(4, 2, m=3, seed=2)
    phi = torch.randn(3, 4)
    sde.resample()
    e1, e2 = sde.noise(phi), sde.noise(phi)
    assert torch.equal(e1, e2)                                       # same state, same matrix: same action
    assert not torch.equal(sde.theta[0], sde.theta[1])               # one matrix per env
    sde.resample()
    e3 = sde.noise(phi)
    assert torch.all(e3 != e1)
    # a resample replays from the global RNG state (what the training checkpoint restores)
    state = torch.get_rng_state()
    sde.resample()
    t1 = sde.theta.clone()
    torch.set_rng_state(state)
    sde.resample()
    assert torch.equal(t1, sde.theta)
    # the state-dependence: eps(s) is linear in phi(s)
    assert torch.allclose(sde.noise(2 * phi), 2 * sde.noise(phi), atol=10 * EPS32 * float(e1.abs().max() + 1))


def test_log_std_gradient_matches_closed_form_and_features_get_none():
    sde = _noise_module(5, 2, seed=3)
    B = 9
    phi = torch.randn(B, 5, requires_grad=True)
    mu, a = torch.randn(B, 2), torch.randn(B, 2)
    logp, _ = sde.log_prob_entropy(mu, phi, a)
    logp.sum().backward()
    g = sde.log_std.grad
    assert g is not None and torch.all(g != 0)
    assert phi.grad is None                                         # learn_features=False: phi is detached
    # d/d log sigma_ij sum_b log N(a_bj; mu_bj, v_bj) = sum_b (-1/(2v) + (a-mu)^2/(2v^2)) * 2 phi_bi^2 sigma_ij^2
    p2 = phi.detach().double() ** 2
    s2 = sde.log_std.detach().double().exp() ** 2
    v = p2 @ s2 + 1e-6
    dv = -0.5 / v + (a - mu).double() ** 2 / (2 * v ** 2)              # [B, A]
    ref = torch.einsum("bi,ij,bj->ij", 2 * p2, s2, dv)
    assert torch.allclose(g.double(), ref, rtol=1e3 * EPS32, atol=1e3 * EPS32 * float(ref.abs().max()))


def test_shape_errors():
    sde = StateDependentNoise(4, 1)
    with pytest.raises(ValueError):
        sde.noise(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        sde.log_prob_entropy(torch.zeros(2, 1), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError):
        StateDependentNoise(0, 1)
