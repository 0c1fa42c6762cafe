"""The variational bound (Ho et al. 2020, eq. 5) against its closed form for Gaussian data and the exact denoiser.

Data x_0 ~ N(0, s^2 I). Then x_t ~ N(0, v_t I) with v_t = abar_t s^2 + 1 - abar_t, the optimal noise estimate is
eps*(x_t) = E[eps | x_t] = sqrt(1 - abar_t) x_t / v_t, the implied x_0-estimate is E[x_0 | x_t] = sqrt(abar_t) s^2
x_t / v_t with Var(x_0 | x_t) = s^2 (1 - abar_t) / v_t, and mu~_t is linear in x_0, so the model's mean differs
from the posterior mean by c1_t (x_0 - E[x_0 | x_t]) (c1_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t), eq. 7). Hence
the expected terms, per dimension, derived here without the implementation's formulas:

    E L_T     = ((1 - abar_T) + abar_T s^2 - 1 - log(1 - abar_T)) / 2                 KL(N(., 1 - abar_T) || N(0, 1))
    E L_{t-1} = (log(sp2 / beta~_t) + (beta~_t + c1_t^2 Var(x_0 | x_t)) / sp2 - 1) / 2   sp2 = beta~_t or beta_t
    E L_0     = (log(2 pi sp2_1) + Var(x_0 | x_1) / sp2_1) / 2                       Gaussian decoder at t = 1

and every bound is at least the data entropy H = log(2 pi e s^2) / 2 per dimension (E[-log p_theta] >= H). The
implementation draws x_t and evaluates per-example KLs; its average over many examples must match the closed
form within a few standard errors (computed from the per-example totals, which are independent).
"""

import math

import pytest
import torch
from torch import nn

from mlcanon.generative.diffusion.model import GaussianDiffusion
from mlcanon.generative.diffusion.schedules import NoiseSchedule, linear_betas

S2 = 0.25          # data variance s^2
D = 3              # dimensions
B = 4000           # examples


class OracleEps(nn.Module):
    """eps*(x_t, t) = sqrt(1 - abar_t) x_t / (abar_t s^2 + 1 - abar_t): the exact E[eps | x_t] for N(0, s^2 I)."""

    def __init__(self, abar: torch.Tensor):
        super().__init__()
        self.register_buffer("abar", abar.clone())

    def forward(self, x, t, y=None):
        ab = self.abar[t].to(x.dtype)[:, None]
        return (1 - ab).sqrt() * x / (ab * S2 + 1 - ab)


def closed_form(betas: torch.Tensor, variance: str) -> dict[str, float]:
    """Expected prior / diffusion / decoder terms in nats for the whole D-dimensional example."""
    b = betas.double()
    abar = torch.cumprod(1 - b, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    v = abar * S2 + 1 - abar                                   # Var(x_t)
    var_x0 = S2 * (1 - abar) / v                               # Var(x_0 | x_t)
    post = b * (1 - abar_prev) / (1 - abar)                    # beta~_t
    c1 = abar_prev.sqrt() * b / (1 - abar)
    prior = 0.5 * ((1 - abar[-1]) + abar[-1] * S2 - 1 - torch.log(1 - abar[-1]))
    sp2 = post if variance == "small" else b                   # the model's sigma_t^2 for t >= 2
    kl = 0.5 * (torch.log(sp2 / post) + (post + c1**2 * var_x0) / sp2 - 1)
    diffusion = kl[1:].sum()                                   # paper t = 2..T
    sp2_1 = post[1]                                            # decoder variance: beta~_2 (clipped, as Ho et al.)
    decoder = 0.5 * (torch.log(2 * math.pi * sp2_1) + var_x0[0] / sp2_1)
    out = {"prior": prior, "diffusion": diffusion, "decoder": decoder}
    out = {k: D * float(val) for k, val in out.items()}
    out["total"] = out["prior"] + out["diffusion"] + out["decoder"]
    return out


def model_and_data(T: int, seed: int = 0):
    s = NoiseSchedule(linear_betas(T))
    model = GaussianDiffusion(OracleEps(s.alphas_cumprod.float()), s, (D,), clip=None)
    x0 = math.sqrt(S2) * torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return model, x0


@pytest.mark.parametrize("variance", ["small", "large"])
def test_bound_matches_closed_form_for_gaussian_data(variance):
    T = 100
    model, x0 = model_and_data(T)
    terms = model.variational_bound(x0, variance=variance, decoder="gaussian",
                                    generator=torch.Generator().manual_seed(1))
    expected = closed_form(model.schedule.betas, variance)
    for k in ("prior", "diffusion", "decoder", "total"):
        per = terms[k].double()
        se = float(per.std()) / math.sqrt(B)
        assert abs(float(per.mean()) - expected[k]) < 5 * se + 1e-9 * abs(expected[k]), (k, float(per.mean()),
                                                                                          expected[k], se)
    entropy = D * 0.5 * math.log(2 * math.pi * math.e * S2)
    assert expected["total"] >= entropy        # the bound lies above the data's entropy (cross-entropy >= H)


def test_sampled_timesteps_estimate_is_unbiased():
    """t_samples = k: (T - 1) mean_k L_{t_k - 1} estimates the sum over t; its average matches the closed form."""
    T = 100
    model, x0 = model_and_data(T, seed=2)
    terms = model.variational_bound(x0, t_samples=4, decoder="gaussian", generator=torch.Generator().manual_seed(3))
    expected = closed_form(model.schedule.betas, "small")["diffusion"]
    per = terms["diffusion"].double()
    se = float(per.std()) / math.sqrt(B)
    assert abs(float(per.mean()) - expected) < 5 * se, (float(per.mean()), expected, se)
