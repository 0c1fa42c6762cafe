"""Reverse-process samplers and guidance, apart from any network: they see only ``eps_fn(x_t, t) -> eps``.

A sampler is a small stateless object over a :class:`~mlcanon.generative.diffusion.schedules.NoiseSchedule`:
``timesteps()`` lists the (t, t_prev) pairs it visits and ``step(eps, t, t_prev, x, noise)`` moves x_t to
x_{t_prev}; :meth:`Sampler.sample` runs the loop. Any trained model (eps-, x0- or v-prediction, turned into an
eps estimate by the model) pairs with any sampler.

- :class:`DDPMSampler` - ancestral sampling (Ho et al. 2020, Algorithm 2) in posterior form:
  x_0^ = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (optionally clipped to the data range),
  x_{t-1} = mu~_t(x_0^, x_t) + sigma_t z with sigma_t^2 = beta~_t ("small") or beta_t ("large"), z = 0 at the
  last step. Unclipped, mu~_t(x_0^, x_t) = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) (eq. 11).
- :class:`DDIMSampler` - Song et al. 2021, eq. 12, on a sub-sequence of ``steps`` timesteps:
  x_s = sqrt(abar_s) x_0^ + sqrt(1 - abar_s - sigma^2) eps + sigma z,
  sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s).
  eta = 0 is deterministic (the probability-flow ODE's discretization), so :meth:`DDIMSampler.encode` inverts
  it; eta = 1 with every step is DDPM with the small variance.
- Guidance (wrappers of ``eps_fn``): classifier guidance (Dhariwal & Nichol 2021, eq. 14 / Algorithm 2)
  eps^ = eps - s sqrt(1 - abar_t) grad_x log p_phi(y | x_t); classifier-free guidance (Ho & Salimans 2022,
  eq. 6) eps* = (1 + w) eps(x_t, y) - w eps(x_t).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mlcanon.generative.diffusion.schedules import NoiseSchedule, _at

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: record(i, t, x_t, x0_hat): called after each step with the new x (x_{t_prev}) and the x_0 estimate used
Record = Callable[[int, int, torch.Tensor, torch.Tensor], None]
VARIANCES = ("small", "large")


class Sampler:
    """Base: the loop shared by the samplers (one network call per visited timestep)."""

    schedule: NoiseSchedule
    clip: tuple[float, float] | None

    def timesteps(self) -> list[tuple[int, int]]:
        raise NotImplementedError

    def step(self, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, noise: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def stochastic(self) -> bool:
        return True

    def x0_hat(self, x: torch.Tensor, tt: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x0 = self.schedule.x0_from_eps(x, tt, eps)
        return x0.clamp(*self.clip) if self.clip is not None else x0

    @torch.no_grad()
    def sample(self, eps_fn: EpsFn, x_T: torch.Tensor, generator: torch.Generator | None = None,
               record: Record | None = None) -> torch.Tensor:
        """Run the reverse process from x_T (e.g. ``torch.randn``); returns x_0."""
        x = x_T
        B = x.shape[0]
        for i, (t, t_prev) in enumerate(self.timesteps()):
            tt = torch.full((B,), t, dtype=torch.long, device=x.device)
            eps = eps_fn(x, tt)
            noise = None
            if self.stochastic and t_prev >= 0:   # z ~ N(0, I), drawn where the generator lives
                dev = generator.device if generator is not None else x.device
                noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
            x, x0 = self.step(eps, t, t_prev, x, noise)
            if record is not None:
                record(i, t_prev, x, x0)
        return x


class DDPMSampler(Sampler):
    """Ancestral sampling over all T steps; ``variance`` "small" (beta~_t) or "large" (beta_t)."""

    def __init__(self, schedule: NoiseSchedule, variance: str = "small", clip: tuple[float, float] | None = None):
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.schedule, self.variance, self.clip = schedule, variance, clip

    def timesteps(self) -> list[tuple[int, int]]:
        return [(t, t - 1) for t in range(self.schedule.T - 1, -1, -1)]

    def step(self, eps, t, t_prev, x, noise):
        s = self.schedule
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = self.x0_hat(x, tt, eps)
        mean, post_var, _ = s.q_posterior(x0, x, tt)               # mu~_t(x_0^, x_t)
        if noise is None:                                          # last step: x_0 = mu_theta(x_1, 1)
            return mean, x0
        var = post_var if self.variance == "small" else _at(s.betas, tt, x)   # sigma_t^2
        return mean + var.sqrt() * noise, x0                       # x_{t-1} = mu + sigma_t z


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps spread evenly over 0..T-1 (both ends included), increasing."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..T={T}, got {steps}")
    if steps == 1:
        return [T - 1]
    return sorted({round(i * (T - 1) / (steps - 1)) for i in range(steps)})


class DDIMSampler(Sampler):
    """DDIM on ``steps`` evenly spaced timesteps with stochasticity ``eta`` (0: deterministic)."""

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0,
                 clip: tuple[float, float] | None = None):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule, self.eta, self.clip = schedule, float(eta), clip
        self.ts = ddim_timesteps(schedule.T, steps)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def timesteps(self) -> list[tuple[int, int]]:
        down = self.ts[::-1]
        return list(zip(down, down[1:] + [-1]))

    def _abar(self, t: int, x: torch.Tensor) -> torch.Tensor:
        if t < 0:
            return torch.ones((), dtype=x.dtype, device=x.device)   # abar of clean data
        return self.schedule.alphas_cumprod[t].to(device=x.device, dtype=x.dtype)

    def step(self, eps, t, t_prev, x, noise):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = self.x0_hat(x, tt, eps)
        if self.clip is not None:   # the eps consistent with the clipped x_0 (as in the DDIM code)
            eps = self.schedule.eps_from_x0(x, tt, x0)
        a_t, a_s = self._abar(t, x), self._abar(t_prev, x)
        sigma = self.eta * ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()     # eq. 16
        x_s = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps          # eq. 12
        if noise is not None and self.eta > 0:
            x_s = x_s + sigma * noise
        return x_s, x0

    @torch.no_grad()
    def encode(self, eps_fn: EpsFn, x0: torch.Tensor) -> torch.Tensor:
        """Invert the deterministic (eta = 0) sampler: run eq. 12 forward in time over the same timesteps,
        x_{t_next} = sqrt(abar_next) x_0^(x_t) + sqrt(1 - abar_next) eps(x_t, t) (Song et al. 2021, sec. 4.3).

        Each step evaluates eps at the point it starts from (decoding evaluates it at the point it starts from
        too, one step later), so decode(encode(x)) = x up to the ODE discretization error, which vanishes as
        the steps shrink."""
        if self.eta != 0:
            raise ValueError("encode inverts the deterministic sampler: use eta = 0")
        x = x0
        B = x.shape[0]
        up = self.ts
        # first move: from the data (abar = 1) to t_0, with eps evaluated at t_0 on the data itself
        prev = [up[0]] + up[:-1]
        for t_from, t_to in zip(prev, up):
            tt = torch.full((B,), t_from, dtype=torch.long, device=x.device)
            eps = eps_fn(x, tt)
            x0_hat = self.schedule.x0_from_eps(x, tt, eps) if t_from != t_to else x
            a_next = self._abar(t_to, x)
            x = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps
        return x


def make_sampler(name: str, schedule: NoiseSchedule, *, steps: int = 0, eta: float = 0.0, variance: str = "small",
                 clip: tuple[float, float] | None = None) -> Sampler:
    """``ddpm`` (all T steps, ``variance``) or ``ddim`` (``steps``, 0 = all T; ``eta``)."""
    if name == "ddpm":
        return DDPMSampler(schedule, variance, clip)
    if name == "ddim":
        return DDIMSampler(schedule, steps or schedule.T, eta, clip)
    raise ValueError(f"unknown sampler {name!r}; use ddpm or ddim")


# ---------------------------------------------------------------------------------------------- guidance
def classifier_free_eps(eps_cond_uncond: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
                        y: torch.Tensor, w: float) -> EpsFn:
    """eps*(x_t) = (1 + w) eps(x_t, y) - w eps(x_t, null) (Ho & Salimans 2022, eq. 6); w = 0 is conditional.

    ``eps_cond_uncond(x, t, y)`` is the model's eps with labels y (None = the null label)."""
    if w == 0:
        return lambda x, t: eps_cond_uncond(x, t, y)

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (1 + w) * eps_cond_uncond(x, t, y) - w * eps_cond_uncond(x, t, None)
    return eps


def classifier_guided_eps(eps_fn: EpsFn, log_prob_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          schedule: NoiseSchedule, scale: float) -> EpsFn:
    """eps^(x_t) = eps(x_t) - s sqrt(1 - abar_t) grad_x log p_phi(y | x_t) (Dhariwal & Nichol 2021, eq. 14).

    ``log_prob_fn(x_t, t) -> [B]`` is the noisy classifier's log p(y | x_t) for the wanted labels. As a score,
    -eps / sqrt(1 - abar_t) = grad log p_t(x), so this samples from p_t(x) p_t(y | x)^s."""
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob_fn(xg, t).sum(), xg)
        return eps_fn(x, t) - scale * _at(schedule.sqrt_one_minus_alphas_cumprod, t, x) * grad
    return eps
