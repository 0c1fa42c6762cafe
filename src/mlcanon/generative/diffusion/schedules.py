"""The forward (noising) process of a diffusion model: a variance schedule and its closed forms.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM), section 2 and eqs. 4, 6, 7:

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I),      alpha_t = 1 - beta_t
    q(x_t | x_0)     = N(sqrt(abar_t) x_0, (1 - abar_t) I),         abar_t = prod_{s<=t} alpha_s
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)
        mu~_t   = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t

Schedules: ``linear`` (Ho et al.: beta from 1e-4 to 0.02 over T = 1000, scaled by 1000 / T for other T as in
Nichol & Dhariwal 2021, so the last abar_T stays near 0), ``cosine`` (Nichol & Dhariwal 2021, eq. 17:
abar_t = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) pi/2), beta_t = min(1 - abar_t / abar_{t-1}, 0.999)),
and any user-given betas.

Indices: the code's ``t = 0 .. T-1`` is the paper's t = 1 .. T (``t = 0`` is the first noising step); abar of
"t = -1" (the clean data) is 1. Coefficients are computed in float64 and kept as (non-persistent) buffers, so
they move with ``.to(device)`` and the schedule is a pure function of its betas: any trained network pairs
with any sampler over the same schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("linear", "cosine", "custom")
PREDICTIONS = ("eps", "x0", "v")


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020: betas linear from 1e-4 to 0.02 at T = 1000; other T rescale both ends by 1000 / T."""
    scale = 1000.0 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64).clamp(max=0.999)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: abar_t = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)."""
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)   # beta_t = 1 - abar_t / abar_{t-1}, clipped


def make_betas(schedule: str, T: int, betas: tuple[float, ...] | list[float] = ()) -> torch.Tensor:
    """Betas of a named schedule (``custom`` uses ``betas`` as given)."""
    if schedule == "linear":
        return linear_betas(T)
    if schedule == "cosine":
        return cosine_betas(T)
    if schedule == "custom":
        return torch.tensor(list(betas), dtype=torch.float64)
    raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def _at(coef: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """coef[t] for a batch of indices t [B], shaped [B, 1, ..., 1] to broadcast against x, in x's dtype."""
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be [B] = [{x.shape[0]}] indices, got shape {tuple(t.shape)}")
    return coef[t.to(coef.device)].to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))


class NoiseSchedule(nn.Module):
    """Forward-process coefficients of betas [T] (float64 buffers); see the module doc for the equations."""

    def __init__(self, betas: torch.Tensor | list[float] | tuple[float, ...]):
        super().__init__()
        b = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if len(b) < 1 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a non-empty sequence of numbers in (0, 1)")
        a = 1 - b                                                        # alpha_t = 1 - beta_t
        abar = torch.cumprod(a, 0)                                       # abar_t = prod_{s<=t} alpha_s
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])   # abar_{t-1}, abar_0 := 1
        post_var = b * (1 - abar_prev) / (1 - abar)                     # beta~_t (eq. 7)
        # log beta~ with its first entry (0 at t = 1) replaced by the second, as in Ho et al.'s code
        post_var_clipped = torch.cat([post_var[1:2], post_var[1:]]) if len(b) > 1 else b.clone()
        buffers = {
            "betas": b, "alphas": a, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
            "posterior_variance": post_var, "posterior_log_variance_clipped": post_var_clipped.log(),
            # large-variance choice sigma_t^2 = beta_t (its t = 1 entry clipped the same way)
            "large_log_variance": torch.cat([post_var_clipped[:1], b[1:]]).log(),
            "posterior_mean_coef1": abar_prev.sqrt() * b / (1 - abar),       # x_0's coefficient in mu~_t
            "posterior_mean_coef2": a.sqrt() * (1 - abar_prev) / (1 - abar),  # x_t's coefficient in mu~_t
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    @classmethod
    def make(cls, schedule: str, T: int, betas=()) -> NoiseSchedule:
        return cls(make_betas(schedule, T, betas))

    @property
    def T(self) -> int:
        return len(self.betas)

    # -- forward process -----------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4, reparametrized)."""
        return _at(self.sqrt_alphas_cumprod, t, x0) * x0 + _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * eps

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """One noising step x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (eq. 2)."""
        return _at(self.alphas.sqrt(), t, x_prev) * x_prev + _at(self.betas.sqrt(), t, x_prev) * eps

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu~_t, beta~_t, clipped log beta~_t) of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
        mean = _at(self.posterior_mean_coef1, t, x_t) * x0 + _at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _at(self.posterior_variance, t, x_t), _at(self.posterior_log_variance_clipped, t, x_t)

    # -- parametrizations of the network output ------------------------------------------------------
    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (eq. 4 solved for x_0)."""
        return (x_t - _at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _at(self.sqrt_alphas_cumprod, t, x_t)

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return (x_t - _at(self.sqrt_alphas_cumprod, t, x_t) * x0) / _at(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, eq. in section 4)."""
        return _at(self.sqrt_alphas_cumprod, t, x0) * eps - _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v (since a^2 + s^2 = 1 with a = sqrt(abar), s = sqrt(1-abar))."""
        return _at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + _at(self.sqrt_alphas_cumprod, t, x_t) * v

    def target(self, prediction: str, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the network regresses on: eps, x_0 or v."""
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return x0
        if prediction == "v":
            return self.v_target(x0, t, eps)
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")

    def eps_from_output(self, prediction: str, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The noise estimate eps_theta implied by a network output of the given parametrization."""
        if prediction == "eps":
            return out
        if prediction == "x0":
            return self.eps_from_x0(x_t, t, out)
        if prediction == "v":
            return self.eps_from_v(x_t, t, out)
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
