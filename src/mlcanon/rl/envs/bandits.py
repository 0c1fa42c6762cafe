"""Bandit-v0 (k-armed, Gaussian or Bernoulli, stationary or drifting) and RandomRewards-v0 (a baseline env).

Bandit: one observation (always 0). Arm means are fixed per env instance by ``means`` or drawn from
``instance_seed`` (Gaussian: mu_a ~ N(0, 1), the S&B 10-armed testbed, rewards N(mu_a, 1); Bernoulli:
mu_a ~ U(0, 1), rewards in {0, 1}). With ``drift > 0`` the means take a random walk
mu_a <- mu_a + N(0, drift^2) after every pull (S&B sec. 2.5). An episode is one pull (``horizon=1``) or
``horizon`` pulls; the means persist across episodes, and ``reset(seed=...)`` restores the initial means
(a fresh, reproducible run). ``true_means``, ``optimal_arm`` and ``regret(a)`` give what regret needs.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np

from mlcanon.errors import UserError
from mlcanon.rl.mdp import MDP


class BanditEnv(gym.Env):
    """k-armed bandit; ``env.unwrapped.mdp`` is the one-pull MDP (state 0 -> terminal state 1, R = means)."""

    metadata: ClassVar[dict] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, k: int = 10, distribution: str = "gaussian", means=None, reward_std: float = 1.0,
                 drift: float = 0.0, horizon: int = 1, instance_seed: int = 0,
                 render_mode: str | None = None):
        if k < 1:
            raise UserError(f"a bandit needs k >= 1 arms, got {k}")
        if distribution not in ("gaussian", "bernoulli"):
            raise UserError(f"distribution must be 'gaussian' or 'bernoulli', got {distribution!r}")
        if horizon < 1:
            raise UserError(f"horizon must be >= 1 pulls per episode, got {horizon}")
        if drift < 0 or reward_std < 0:
            raise UserError(f"drift and reward_std must be >= 0, got drift={drift}, reward_std={reward_std}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UserError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        if means is None:
            g = np.random.default_rng(instance_seed)
            means = g.normal(0.0, 1.0, k) if distribution == "gaussian" else g.uniform(0.0, 1.0, k)
        means = np.asarray(means, dtype=np.float64)
        if means.shape != (k,):
            raise UserError(f"means must have k={k} entries, got shape {means.shape}")
        if distribution == "bernoulli" and ((means < 0) | (means > 1)).any():
            raise UserError("Bernoulli arm means must be probabilities in [0, 1]")
        self.k, self.distribution, self.reward_std = k, distribution, float(reward_std)
        self.drift, self.horizon = float(drift), int(horizon)
        self.initial_means = means.copy()
        self.true_means = means.copy()
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Discrete(1)
        self.action_space = gym.spaces.Discrete(k)
        self.shape = (1,)
        self.t = 0
        self.last = None

    @property
    def optimal_arm(self) -> int:
        """argmax_a mu_a (lowest index on ties) under the current means."""
        return int(np.argmax(self.true_means))

    def regret(self, action: int) -> float:
        """Expected regret of a pull: max_a mu_a - mu_action."""
        return float(self.true_means.max() - self.true_means[action])

    @property
    def mdp(self) -> MDP:
        """One pull as an MDP: state 0 --any arm--> terminal state 1, R(0, a) = mu_a, gamma 1."""
        P = np.zeros((2, self.k, 2))
        P[:, :, 1] = 1.0
        R = np.zeros((2, self.k))
        R[0] = self.true_means
        return MDP(P=P, R=R, gamma=1.0, terminal=np.array([False, True]), start=np.array([1.0, 0.0]))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """New episode; a seed also restores the initial arm means."""
        super().reset(seed=seed)
        if seed is not None:
            self.true_means = self.initial_means.copy()
        self.t = 0
        return 0, {}

    def step(self, action):
        """Pull arm ``action``: reward ~ N(mu_a, std^2) or Bernoulli(mu_a); then the means drift."""
        if not self.action_space.contains(action):
            raise UserError(f"action must be an arm in [0, {self.k}), got {action!r}")
        a = int(action)
        mu = self.true_means[a]
        if self.distribution == "gaussian":
            r = float(self.np_random.normal(mu, self.reward_std))      # R ~ N(mu_a, sigma^2)
        else:
            r = float(self.np_random.random() < mu)                    # R ~ Bernoulli(mu_a)
        info = {"regret": self.regret(a), "optimal_arm": self.optimal_arm}
        if self.drift > 0:
            self.true_means = self.true_means + self.np_random.normal(0.0, self.drift, self.k)  # random walk
            if self.distribution == "bernoulli":
                self.true_means = np.clip(self.true_means, 0.0, 1.0)
        self.t += 1
        self.last = (a, r)
        return 0, r, self.t >= self.horizon, False, info

    def render(self):
        """Text: the means and the last pull; RGB: a bar chart of the means (last arm highlighted)."""
        if self.render_mode == "ansi":
            last = "" if self.last is None else f"last pull: arm {self.last[0]} -> {self.last[1]:.3f}\n"
            return "means: " + " ".join(f"{m:.2f}" for m in self.true_means) + "\n" + last
        if self.render_mode == "rgb_array":
            h, w = 64, 12 * self.k
            img = np.full((h, w, 3), 255, np.uint8)
            lo, hi = min(0.0, self.true_means.min()), max(1e-9, self.true_means.max())
            zero = int(h * hi / (hi - lo + 1e-12))
            for a, m in enumerate(self.true_means):
                top = int(h * (hi - m) / (hi - lo + 1e-12))
                y0, y1 = sorted((top, zero))
                color = (220, 120, 40) if self.last is not None and self.last[0] == a else (60, 110, 200)
                img[y0:max(y1, y0 + 1), 12 * a + 2:12 * a + 10] = color
            return img
        return None


class RandomRewardsEnv(gym.Env):
    """Every action pays a random reward N(reward_mean, reward_std^2); the episode ends after ``n_steps``.

    Observation = time step t in [0, n_steps]; ``mdp`` is the chain t -> t + 1 with R = reward_mean,
    terminal t = n_steps, so the expected return is n_steps * reward_mean whatever the policy (a baseline
    for checking learners and confidence intervals).
    """

    metadata: ClassVar[dict] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, n_steps: int = 10, n_actions: int = 2, reward_mean: float = 0.0,
                 reward_std: float = 1.0, render_mode: str | None = None):
        if n_steps < 1 or n_actions < 1:
            raise UserError(f"n_steps and n_actions must be >= 1, got {n_steps}, {n_actions}")
        if reward_std < 0:
            raise UserError(f"reward_std must be >= 0, got {reward_std}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UserError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.n_steps, self.reward_mean, self.reward_std = int(n_steps), float(reward_mean), float(reward_std)
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Discrete(n_steps + 1)
        self.action_space = gym.spaces.Discrete(n_actions)
        self.shape = (n_steps + 1,)
        S, A = n_steps + 1, n_actions
        P = np.zeros((S, A, S))
        P[np.arange(n_steps), :, np.arange(1, S)] = 1.0             # t -> t + 1 whatever the action
        P[n_steps, :, n_steps] = 1.0
        R = np.full((S, A), self.reward_mean)
        R[n_steps] = 0.0
        term = np.zeros(S, dtype=bool)
        term[n_steps] = True
        self.mdp = MDP(P=P, R=R, gamma=1.0, terminal=term, start=np.eye(S)[0])
        self.t = 0
        self.last_reward = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Back to t = 0."""
        super().reset(seed=seed)
        self.t = 0
        self.last_reward = None
        return 0, {}

    def step(self, action):
        """Any action: reward ~ N(mean, std^2), t <- t + 1, terminated at t == n_steps."""
        if not self.action_space.contains(action):
            raise UserError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        r = float(self.np_random.normal(self.reward_mean, self.reward_std))
        self.t += 1
        self.last_reward = r
        return self.t, r, self.t >= self.n_steps, False, {}

    def render(self):
        """Text: step and last reward; RGB: a progress bar."""
        if self.render_mode == "ansi":
            last = "" if self.last_reward is None else f", last reward {self.last_reward:.3f}"
            return f"step {self.t}/{self.n_steps}{last}\n"
        if self.render_mode == "rgb_array":
            img = np.full((16, 8 * self.n_steps, 3), 255, np.uint8)
            img[:, : 8 * self.t] = (60, 110, 200)
            return img
        return None
