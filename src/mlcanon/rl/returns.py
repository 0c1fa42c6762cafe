"""Pure return estimators of deep RL (torch, time-major: ``[T]`` or ``[T, N]`` for N parallel envs).

Conventions shared by every function here:

- ``rewards[t]`` is r_{t+1}, the reward received after action a_t in state s_t.
- ``terminated[t]``: s_{t+1} is a true terminal state, whose value is 0 - the target does NOT bootstrap.
- ``truncated[t]``: the episode was cut by a time limit after step t (s_{t+1} is not terminal): the target
  bootstraps from V(s_{t+1}) (Pardo et al. 2018, "Time limits in reinforcement learning").
- ``dones = terminated | truncated``: the episode ends after step t, so nothing flows back across it.
- ``next_values[t]`` is V(s_{t+1}) of the TRUE next state (the final observation when the episode ended, before
  the auto-reset), so truncation bootstraps correctly inside a rollout.

References: Sutton & Barto (2018) ch. 3 (returns), 7 (n-step), 12 (lambda-returns); Schulman et al. (2016),
"High-dimensional continuous control using generalized advantage estimation" (GAE); Lillicrap et al. (2016)
(Polyak / soft target updates).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["discounted_return", "gae", "nstep_returns", "polyak_update", "reward_to_go", "td_target"]


def _float(x, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, device=like.device).to(like.dtype)


def discounted_return(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_0 = sum_t gamma^t r_{t+1} of one episode (S&B eq. 3.8), over the first axis ``[T, ...] -> [...]``."""
    T = rewards.shape[0]
    powers = gamma ** torch.arange(T, dtype=torch.float64, device=rewards.device)   # gamma^t
    return (powers.view(T, *([1] * (rewards.dim() - 1))) * rewards.double()).sum(0).to(rewards.dtype)


def reward_to_go(rewards: torch.Tensor, dones: torch.Tensor | None = None, gamma: float = 1.0,
                 last_value: torch.Tensor | float = 0.0) -> torch.Tensor:
    """G_t = r_{t+1} + gamma G_{t+1} (S&B eq. 3.9), backwards, restarting at episode ends.

    ``dones[t]`` ends an episode after step t (its G_{t+1} is 0); after the last step G_T = ``last_value``
    (0 for a complete episode, V(s_T) to bootstrap an unfinished one). Shapes ``[T]`` or ``[T, N]``.
    """
    if dones is None:
        dones = torch.zeros_like(rewards, dtype=torch.bool)
    if dones.shape != rewards.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and dones {tuple(dones.shape)} differ")
    out = torch.empty_like(rewards)
    g = _float(last_value, rewards).expand_as(rewards[0]).clone()
    for t in range(rewards.shape[0] - 1, -1, -1):
        g = rewards[t] + gamma * g * (~dones[t]).to(rewards.dtype)   # G_t = r_{t+1} + gamma G_{t+1}
        out[t] = g
    return out


def td_target(rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
              gamma: float) -> torch.Tensor:
    """One-step TD target y = r + gamma (1 - terminated) V(s') (S&B eq. 6.2); truncation still bootstraps."""
    if not (rewards.shape == next_values.shape == terminated.shape):
        raise ValueError(f"shapes differ: rewards {tuple(rewards.shape)}, next_values "
                         f"{tuple(next_values.shape)}, terminated {tuple(terminated.shape)}")
    return rewards + gamma * (~terminated.bool()).to(rewards.dtype) * next_values


def nstep_returns(rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
                  dones: torch.Tensor, gamma: float, n: int) -> torch.Tensor:
    """n-step targets G_{t:t+n} = sum_{k<m} gamma^k r_{t+k+1} + gamma^m V(s_{t+m}) (S&B eq. 7.1).

    m = min(n, steps to the episode end, steps to the end of the rollout); the bootstrap term is dropped when
    the episode terminated at step t+m-1 (kept on truncation). Shapes ``[T]`` or ``[T, N]``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    T = rewards.shape[0]
    out = torch.empty_like(rewards)
    for t in range(T):
        g = torch.zeros_like(rewards[0])
        disc = torch.ones_like(rewards[0])
        alive = torch.ones_like(rewards[0], dtype=torch.bool)      # the episode of step t still running
        boot = torch.zeros_like(rewards[0])
        for k in range(min(n, T - t)):
            j = t + k
            a = alive.to(rewards.dtype)
            g = g + a * disc * rewards[j]                            # + gamma^k r_{t+k+1}
            disc = torch.where(alive, disc * gamma, disc)
            last = alive & (dones[j] | (k == min(n, T - t) - 1))    # step j is the last one summed
            # + gamma^m V(s_{t+m}), zero when s_{t+m} is terminal
            boot = torch.where(last, disc * (~terminated[j].bool()).to(rewards.dtype) * next_values[j], boot)
            alive = alive & ~dones[j]
        out[t] = g + boot
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        dones: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eqs. 11-16); returns (advantages, returns).

    delta_t = r_{t+1} + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t)           (TD error, eq. 10)
    A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}                          (eq. 16, recursive form)
    returns_t = A_t + V(s_t)   (the lambda-return, the value target)

    lambda = 0 gives the TD(0) advantage delta_t; lambda = 1 the Monte Carlo return minus V(s_t) (bootstrapped at
    the end of the rollout and on truncation). Shapes ``[T]`` or ``[T, N]``.
    """
    if not (rewards.shape == values.shape == next_values.shape == terminated.shape == dones.shape):
        raise ValueError("gae: rewards, values, next_values, terminated and dones must have one shape, got "
                         f"{[tuple(x.shape) for x in (rewards, values, next_values, terminated, dones)]}")
    not_term = (~terminated.bool()).to(rewards.dtype)
    not_done = (~dones.bool()).to(rewards.dtype)
    delta = rewards + gamma * not_term * next_values - values       # delta_t
    adv = torch.empty_like(rewards)
    a = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        a = delta[t] + gamma * lam * not_done[t] * a                 # A_t = delta_t + gamma lambda A_{t+1}
        adv[t] = a
    return adv, adv + values


def explained_variance(returns: torch.Tensor, values: torch.Tensor) -> float | None:
    """1 - Var[y - V] / Var[y] of the value predictions V against the targets y (None when Var[y] = 0)."""
    var_y = returns.var()
    return float(1 - (returns - values).var() / var_y) if var_y > 0 else None


@torch.no_grad()
def polyak_update(target: nn.Module | torch.Tensor, source: nn.Module | torch.Tensor, tau: float) -> None:
    """theta_target <- tau theta + (1 - tau) theta_target (Lillicrap et al. 2016); tau = 1 is a hard copy.

    On two modules (parameters updated, buffers copied) or on two tensors, e.g. flat parameter vectors."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if isinstance(target, torch.Tensor):
        pairs, buffers = [(target, source)], []
    else:
        pairs = list(zip(target.parameters(), source.parameters(), strict=True))
        buffers = list(zip(target.buffers(), source.buffers(), strict=True))
    for pt, ps in pairs:
        if tau == 1.0:
            pt.copy_(ps)
        else:
            pt.lerp_(ps, tau)                                        # pt + tau (ps - pt)
    for bt, bs in buffers:
        bt.copy_(bs)
