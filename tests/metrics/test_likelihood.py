"""Likelihood metrics: bits/dim against models whose discrete likelihood is known exactly, the logit log-det
against autograd and a closed form, and the IWAE bound on a linear Gaussian model where log p(x) is exact."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from mlcanon.metrics import likelihood as L

EPS64 = np.finfo(np.float64).eps


def test_uniform_model_is_8_bits_per_dim_on_any_scale():
    # a uniform density on the data interval gives every 8-bit image probability 256^-D: exactly 8 bits/dim
    D = 784
    assert L.bits_per_dim(0.0, D) == pytest.approx(8.0, rel=1e-14)                        # [0, 1]: density 1
    # [-1, 1]: density 2^-D
    assert L.bits_per_dim(D * math.log(2.0), D, data_range=2.0) == pytest.approx(8.0, rel=1e-14)
    assert L.bits_per_dim(D * math.log(256.0), D, data_range=256.0) == pytest.approx(8.0, rel=1e-14)
    assert L.bits_per_dim(0.0, 3, bits=5) == pytest.approx(5.0, rel=1e-14)


def test_histogram_model_discrete_nll_is_exact():
    # a density constant on each dequantization bin makes Jensen's bound tight: P(x) = p(y) / 256 for any u
    rng = np.random.default_rng(0)
    pi = rng.dirichlet(np.ones(256))                     # P(x = j)
    x = rng.integers(0, 256, size=50)
    u = rng.random(50)
    y = (x + u) / 256                                    # dequantized, in [0, 1)
    density = 256 * pi[np.floor(y * 256).astype(int)]    # the histogram density on [0, 1]
    nll_cont = -np.log(density)
    np.testing.assert_allclose(L.discrete_nll(nll_cont, 1), -np.log(pi[x]), rtol=0, atol=64 * EPS64)
    np.testing.assert_allclose(L.bits_per_dim(nll_cont, 1), -np.log2(pi[x]), rtol=0, atol=64 * EPS64)


def test_unit_conversions_round_trip_and_validate():
    nll = torch.tensor([100.0, 2000.0], dtype=torch.float64)
    bpd = L.nats_to_bits_per_dim(nll, 784)
    torch.testing.assert_close(bpd, nll / (784 * math.log(2)))
    torch.testing.assert_close(L.bits_per_dim_to_nats(bpd, 784), nll)
    with pytest.raises(ValueError):
        L.nats_to_bits_per_dim(1.0, 0)
    with pytest.raises(ValueError):
        L.dequantization_offset(10, data_range=0.0)


def test_logit_logdet_matches_autograd_and_inverts():
    torch.manual_seed(0)
    y = torch.rand(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    z, logdet = L.logit_transform(y, alpha=0.05)
    (grad,) = torch.autograd.grad(z.sum(), y)            # elementwise map: the Jacobian is diagonal
    torch.testing.assert_close(logdet, grad.abs().log().flatten(1).sum(1))
    torch.testing.assert_close(L.logit_inverse(z.detach(), alpha=0.05), y.detach())


def test_logit_of_uniform_is_standard_logistic():
    # alpha = 0: z = logit(y) of y ~ U(0, 1) has the logistic density, so log p(z) + logdet = log 1 = 0
    y = torch.linspace(0.01, 0.99, 99, dtype=torch.float64).reshape(1, -1)
    z, logdet = L.logit_transform(y, alpha=0.0)
    log_logistic = (-z - 2 * torch.nn.functional.softplus(-z)).sum(1)
    torch.testing.assert_close(log_logistic + logdet, torch.zeros(1, dtype=torch.float64), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------- IWAE
def test_iwae_bound_brute_force_chunks_and_shift():
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(5000, 7, generator=g, dtype=torch.float64) * 2
    brute = torch.from_numpy(np.log(np.mean(np.exp(lw.numpy()), axis=0)))   # direct, safe at this scale
    torch.testing.assert_close(L.iwae_bound(lw), brute, rtol=0, atol=1e-12)
    torch.testing.assert_close(L.iwae_bound(lw, chunk=333), brute, rtol=0, atol=1e-12)
    torch.testing.assert_close(L.iwae_bound(lw.T, dim=1, chunk=100), brute, rtol=0, atol=1e-12)
    # log-weights of -1e4 underflow exp; the bound is shift-equivariant and stays finite
    torch.testing.assert_close(L.iwae_bound(lw - 1e4, chunk=128), brute - 1e4, rtol=0, atol=1e-9)
    assert L.iwae_bound(lw.float()).dtype == torch.float32


def test_iwae_driver_chunks_equal_one_block():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(5000, 3, generator=g, dtype=torch.float64) - 50
    pos = [0]

    def fn(x, n):                                         # hands out the table's rows in order
        out = table[pos[0]:pos[0] + n]
        pos[0] += n
        return out

    got = L.iwae_log_prob(fn, torch.zeros(3), k=5000, chunk=128)
    assert pos[0] == 5000
    torch.testing.assert_close(got, torch.logsumexp(table, 0) - math.log(5000), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        L.iwae_log_prob(lambda x, n: torch.zeros(n + 1, 3), torch.zeros(3), k=10, chunk=4)


class LinearGaussian:
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D): p(x) = N(b, W W^T + s^2 I) and the posterior are exact."""

    def __init__(self, d=2, D=5, s=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, d, generator=g, dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.s, self.d, self.D = s, d, D
        self.prec = torch.eye(d, dtype=torch.float64) + self.W.T @ self.W / s**2   # posterior precision
        self.post_cov = torch.linalg.inv(self.prec)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.D, dtype=torch.float64)
        return MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def sample_x(self, n, g):
        z = torch.randn(n, self.d, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.s * torch.randn(n, self.D, generator=g, dtype=torch.float64)

    def log_w_fn(self, widen: float, g):
        """q(z|x) = N(posterior mean, widen^2 posterior covariance); log w = log p(x, z) - log q(z|x)."""
        C = widen * torch.linalg.cholesky(self.post_cov)                        # q's covariance = C C^T
        log_det_C = float(torch.log(torch.diagonal(C)).sum())
        half_log_2pi = 0.5 * math.log(2 * math.pi)

        def fn(x, n):
            mean = (x - self.b) @ self.W @ self.post_cov / self.s**2            # posterior mean [B, d]
            eps = torch.randn(n, len(x), self.d, generator=g, dtype=torch.float64)
            z = mean + eps @ C.T                                                # [n, B, d]
            log_q = -0.5 * (eps**2).sum(-1) - log_det_C - self.d * half_log_2pi
            log_pz = -0.5 * (z**2).sum(-1) - self.d * half_log_2pi
            r = (x - z @ self.W.T - self.b) / self.s
            log_px_z = -0.5 * (r**2).sum(-1) - self.D * (math.log(self.s) + half_log_2pi)
            return log_pz + log_px_z - log_q
        return fn


def test_iwae_exact_with_true_posterior():
    m, g = LinearGaussian(), torch.Generator().manual_seed(2)
    x = m.sample_x(20, g)
    # q = p(z|x): every weight equals p(x), so the bound is exact already at k = 1
    torch.testing.assert_close(L.iwae_log_prob(m.log_w_fn(1.0, g), x, k=3, chunk=2), m.log_px(x),
                               rtol=0, atol=1e-10)


def test_iwae_rises_with_k_toward_log_px():
    m, g = LinearGaussian(), torch.Generator().manual_seed(3)
    N, w = 1000, 2.5                                      # proposal w times as wide as the posterior
    x = m.sample_x(N, g)
    exact = m.log_px(x)
    fn = m.log_w_fn(w, g)
    gaps = [float((exact - L.iwae_log_prob(fn, x, k=k, chunk=500)).mean()) for k in (1, 10, 100, 5000)]
    # k = 1 is the ELBO: gap = KL(q || p(z|x)) = d/2 (w^2 - 1 - ln w^2); log w = const - (w^2 - 1)|e|^2 / 2
    # with |e|^2 ~ chi^2_2, so one draw has sd (w^2 - 1); the mean over N examples gets 4 standard errors
    kl = w**2 - 1 - math.log(w**2)
    assert gaps[0] == pytest.approx(kl, abs=4 * (w**2 - 1) / math.sqrt(N))
    # later gaps ~ Var(w)/(2k), Var(w) = w^(2d)/(2w^2 - 1)^(d/2) - 1 = 2.4: 0.12, 0.012, 2.4e-4; the standard
    # error of the mean over N examples at k = 100 is sqrt(Var(w)/k / N) = 0.005
    assert all(a > b for a, b in itertools.pairwise(gaps)), gaps
    assert abs(gaps[-1]) < 0.005, gaps
