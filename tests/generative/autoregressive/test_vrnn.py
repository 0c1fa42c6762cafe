"""VRNN and the Gaussian LSTM: the ELBO's analytic KL against Monte Carlo, the IWAE bound's order, causality."""

import torch

from mlcanon.generative.autoregressive.vrnn import VRNN, GaussianLSTM


def test_elbo_analytic_kl_matches_the_mean_log_weight():
    torch.manual_seed(0)
    model = VRNN(hidden=8, latent=2, features=8).double()
    x = torch.randn(1, 6, dtype=torch.float64) * 0.5
    K = 20000
    with torch.no_grad():
        lw, elbo = model.log_weights(x.repeat(K, 1))
    # E_q[log w] = ELBO; the analytic-KL ELBO has its own (smaller) noise: compare the two means
    se = float((lw.std() ** 2 / K + elbo.std() ** 2 / K) ** 0.5)
    assert abs(float(lw.mean() - elbo.mean())) < 5 * se


def test_iwae_bound_grows_with_k():
    torch.manual_seed(0)
    model = VRNN(hidden=8, latent=2, features=8).double()
    x = torch.randn(1, 6, dtype=torch.float64) * 0.5
    with torch.no_grad():
        means = [float(model.log_prob_iwae(x.repeat(400, 1), k).mean()) for k in (1, 8, 64)]
        elbo = float(model.elbo(x.repeat(4000, 1)).mean())
    assert means[0] < means[1] < means[2]
    assert means[2] > elbo


def test_gaussian_lstm_is_causal_and_normalized_per_step():
    torch.manual_seed(0)
    model = GaussianLSTM(hidden=6).double()
    T = 7
    x = torch.randn(2, T, dtype=torch.float64, requires_grad=True)
    d = model._dists(x)
    for t in range(T):
        x.grad = None
        (d.loc[:, t].sum() + d.scale[:, t].sum()).backward(retain_graph=True)
        g = x.grad.abs().sum(0)
        assert torch.all(g[t:] == 0) and (t == 0 or g[t - 1] > 0)      # mu_t, sigma_t from x_<t only
    # one step's density integrates to 1 (trapezoid over a wide grid, others fixed)
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    xs = torch.zeros(len(grid), T, dtype=torch.float64)
    xs[:, -1] = grid
    with torch.no_grad():
        p = model.log_prob(xs).exp() / model.log_prob(xs[:1]).exp() * model._dists(xs[:1]).log_prob(
            xs[:1, :, None])[0, -1, 0].exp()
    assert abs(float(torch.trapezoid(p, grid)) - 1.0) < 1e-6


def test_vrnn_step_terms_are_causal():
    """With the noise fixed, changing x_s changes the per-step terms at steps >= s only."""
    torch.manual_seed(0)
    model = VRNN(hidden=8, latent=2, features=8).double()
    x = torch.randn(2, 6, dtype=torch.float64)

    def terms(v):
        torch.manual_seed(1)
        with torch.no_grad():
            return torch.stack(model.step_terms(v))                    # [3, B, T]

    base = terms(x)
    for s in range(6):
        y = x.clone()
        y[:, s] += 1.0
        diff = (terms(y) - base).abs().sum((0, 1))                     # [T]
        assert torch.all(diff[:s] == 0) and torch.all(diff[s:] > 0), (s, diff)
