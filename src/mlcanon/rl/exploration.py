"""Exploration: epsilon schedules and action-selection rules (S&B ch. 2 and 5-6).

Everything here is a small pure function or a stateless (frozen) object that takes the step explicitly.
Action selection is vectorized over a leading seed dimension: ``q`` is ``[N, A]`` (one row per independent
seed) and randomness comes in as uniforms drawn by the caller from each seed's own stream, so that a seed's
actions never depend on the other seeds (DESIGN.md section 5, ``--num-seeds``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mlcanon.errors import UserError


# ------------------------------------------------------------------------------------------- schedules
@dataclasses.dataclass(frozen=True)
class ConstantSchedule:
    """eps(t) = eps."""

    eps: float

    def __post_init__(self):
        _check_prob("epsilon", self.eps)

    def __call__(self, step):
        """Epsilon at ``step`` (a scalar or an array of steps)."""
        return np.full(np.shape(step), float(self.eps)) if np.ndim(step) else float(self.eps)


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
    """eps(t) = max(eps_min, eps_max - (eps_max - eps_min) * t / decay_steps): a straight line, then flat."""

    eps_max: float
    eps_min: float
    decay_steps: float

    def __post_init__(self):
        _check_pair(self.eps_max, self.eps_min)
        if not self.decay_steps > 0:
            raise UserError(f"linear epsilon schedule: decay steps must be > 0, got {self.decay_steps}; "
                            "give --epsilon-decay N (steps from eps-max to eps-min)")

    def __call__(self, step):
        """Epsilon at ``step`` (a scalar or an array of steps)."""
        t = np.asarray(step, dtype=np.float64)
        eps = np.maximum(self.eps_min, self.eps_max - (self.eps_max - self.eps_min) * t / self.decay_steps)
        return eps if eps.ndim else float(eps)


@dataclasses.dataclass(frozen=True)
class ExponentialSchedule:
    """eps(t) = max(eps_min, eps_max * decay**t), a geometric decay with factor ``decay`` in (0, 1] per step."""

    eps_max: float
    eps_min: float
    decay: float

    def __post_init__(self):
        _check_pair(self.eps_max, self.eps_min)
        if not 0.0 < self.decay <= 1.0:
            raise UserError(f"exponential epsilon schedule: decay must be in (0, 1], got {self.decay}; "
                            "give e.g. --epsilon-decay 0.99 (the factor applied per episode)")

    def __call__(self, step):
        """Epsilon at ``step`` (a scalar or an array of steps)."""
        t = np.asarray(step, dtype=np.float64)
        eps = np.maximum(self.eps_min, self.eps_max * np.power(self.decay, t))
        return eps if eps.ndim else float(eps)


def make_schedule(kind: str, eps_max: float, eps_min: float = 0.0, decay: float | None = None,
                  horizon: int | None = None):
    """Build a schedule by name (constant | linear | exp).

    ``decay`` is the number of steps from eps_max to eps_min (linear) or the factor per step (exp);
    ``None`` picks it so that eps_min is reached after half of ``horizon`` steps.
    """
    if kind == "constant":
        return ConstantSchedule(eps_max)
    if kind not in ("linear", "exp"):
        raise UserError(f"unknown epsilon schedule {kind!r}; use one of constant, linear, exp")
    if horizon is None and decay is None:
        raise UserError(f"epsilon schedule {kind!r} needs --epsilon-decay (or a number of episodes)")
    half = max(1.0, (horizon or 2) / 2)
    if kind == "linear":
        return LinearSchedule(eps_max, eps_min, half if decay is None else decay)
    if kind == "exp":
        if decay is None:
            # eps_max * d**half = eps_min  ->  d = (eps_min / eps_max)**(1/half)
            decay = (max(eps_min, 1e-3) / eps_max) ** (1.0 / half) if eps_max > 0 else 1.0
        return ExponentialSchedule(eps_max, eps_min, decay)
    raise UserError(f"unknown epsilon schedule {kind!r}; use one of constant, linear, exp")


def _check_prob(name, p):
    if not 0.0 <= float(p) <= 1.0:
        raise UserError(f"{name} must be in [0, 1], got {p}")


def _check_pair(eps_max, eps_min):
    _check_prob("--epsilon-max", eps_max)
    _check_prob("--epsilon-min", eps_min)
    if eps_min > eps_max:
        raise UserError(f"--epsilon-min ({eps_min}) must be <= --epsilon-max ({eps_max})")


# ------------------------------------------------------------------------------------ action selection
# Each rule takes the uniforms it needs as an argument (``u``, one row per seed), so that every seed's
# actions come from its own random stream (mlcanon.rl.streams.SeedStreams) and the rules stay pure.

def row_max(x: np.ndarray) -> np.ndarray:
    """max over the last axis, as a loop over its few columns (a numpy reduction along a short last axis
    pays per row: for [1000, 4] this is several times faster, and the result is the same)."""
    m = x[..., 0].copy()
    for j in range(1, x.shape[-1]):
        np.maximum(m, x[..., j], out=m)
    return m


def row_sum(x: np.ndarray) -> np.ndarray:
    """sum over the last axis in a fixed order, ((x_0 + x_1) + x_2) + ..., one column at a time (fast for a
    short last axis; every row is summed the same way whatever the number of rows)."""
    t = x[..., 0].copy()
    for j in range(1, x.shape[-1]):
        t += x[..., j]
    return t


def greedy_random_tiebreak(q: np.ndarray, u: np.ndarray) -> np.ndarray:
    """argmax_a q[n, a] per row, ties broken uniformly at random by the uniforms ``u`` [N, A].

    (The deterministic greedy policy, lowest index on ties, is :func:`mlcanon.rl.dp.greedy`.)
    """
    best = q == row_max(q)[..., None]
    return np.where(best, u + 1.0, 0.0).argmax(-1)  # the largest uniform among the tied maxima


def greedy_mask(q: np.ndarray) -> np.ndarray:
    """1/|argmax set| on the maximizing actions of each row, 0 elsewhere: the greedy policy with fair ties."""
    best = (q == row_max(q)[..., None]).astype(np.float64)
    return best / row_sum(best)[..., None]


def epsilon_greedy_probs(q: np.ndarray, eps) -> np.ndarray:
    """pi(a|s) = eps/A + (1 - eps) * [a in argmax q] / |argmax q|   (S&B sec. 5.4, epsilon-soft)."""
    A = q.shape[-1]
    eps = np.asarray(eps, dtype=np.float64)[..., None] if np.ndim(eps) else float(eps)
    return eps / A + (1.0 - eps) * greedy_mask(q)


def epsilon_greedy(q: np.ndarray, eps, u: np.ndarray) -> np.ndarray:
    """With probability eps a uniform random action, else greedy (random ties); one row per seed.

    ``u`` holds A + 2 uniforms per row [N, A + 2]: column 0 decides exploration, column 1 the random action,
    columns 2: break ties.
    """
    N, A = q.shape
    if u.shape != (N, A + 2):
        raise ValueError(f"epsilon_greedy needs uniforms of shape {(N, A + 2)}, got {u.shape}")
    explore = u[:, 0] < eps                                     # explore with probability eps
    rand_a = np.minimum((u[:, 1] * A).astype(np.int64), A - 1)  # uniform over the A actions
    return np.where(explore, rand_a, greedy_random_tiebreak(q, u[:, 2:]))


def softmax_probs(q: np.ndarray, temperature: float) -> np.ndarray:
    """Boltzmann policy pi(a) = exp(q_a / tau) / sum_b exp(q_b / tau), computed with log-sum-exp."""
    if not temperature > 0:
        raise UserError(f"softmax temperature must be > 0, got {temperature}")
    z = np.asarray(q, dtype=np.float64) / temperature
    z = z - z.max(-1, keepdims=True)                            # log-sum-exp shift: exp never overflows
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def sample_categorical(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sample per row: the first a with cumsum(p)[a] > u (``u`` uniforms of shape [N])."""
    c = np.cumsum(probs, -1)
    return np.minimum((u[:, None] >= c).sum(-1), probs.shape[-1] - 1)


def softmax_action(q: np.ndarray, temperature: float, u: np.ndarray) -> np.ndarray:
    """Sample a ~ softmax(q / temperature) per row, by inverse CDF of the uniforms ``u`` [N]."""
    return sample_categorical(softmax_probs(q, temperature), u)


def ucb_scores(q: np.ndarray, counts: np.ndarray, t, c: float) -> np.ndarray:
    """Q(a) + c * sqrt(ln t / N(a))   (S&B eq. 2.10); untried actions (N = 0) score +inf."""
    t = np.asarray(t, dtype=np.float64)
    t = t[..., None] if t.ndim else t
    with np.errstate(divide="ignore", invalid="ignore"):
        bonus = c * np.sqrt(np.log(np.maximum(t, 1.0)) / counts)
    return np.where(counts > 0, q + bonus, np.inf)


def ucb_action(q: np.ndarray, counts: np.ndarray, t, c: float, u: np.ndarray) -> np.ndarray:
    """argmax of the UCB scores per row, ties (e.g. several untried actions) broken by the uniforms ``u`` [N, A]."""
    return greedy_random_tiebreak(ucb_scores(q, counts, t, c), u)
