"""CartPole-v1 for N envs at once as torch tensors (CPU or GPU), with gymnasium's dynamics step for step.

The dynamics are gymnasium's ``CartPoleEnv.step`` (Barto, Sutton & Anderson 1983; the corrected equations of
Florian 2007 as gymnasium writes them), in float64 like gymnasium's state, with explicit Euler integration:

    temp       = (F + m_p l theta_dot^2 sin theta) / (m_c + m_p)
    theta_acc  = (g sin theta - cos theta temp) / (l (4/3 - m_p cos^2 theta / (m_c + m_p)))
    x_acc      = temp - m_p l theta_acc cos theta / (m_c + m_p)
    x += tau x_dot;  x_dot += tau x_acc;  theta += tau theta_dot;  theta_dot += tau theta_acc

Reward 1 per step (also on the terminating one), termination when |x| > 2.4 or |theta| > 12 degrees, truncation
after ``max_episode_steps`` (500) steps; observations are the state cast to float32. Autoreset happens in the same
step, with the last observation kept in ``final_obs`` (as :class:`mlcanon.rl.vec_env.VecEnv`).

Seeding per episode (as :class:`~mlcanon.rl.vec_env.VecEnv`): the initial state of episode k of env i of seed s is
uniform in (-0.05, 0.05)^4 from a counter-based hash of (s, i, k) (:func:`counter_bits`, splitmix64), not from
gymnasium's numpy stream, so a run is repeatable but its episodes differ from gymnasium's for the same seed;
``set_state`` lets a test start both from the same state. ``seed`` may be a list of S seeds: the env then holds
S blocks of ``num_envs`` envs (seed-major), each block's episodes depending on its own seed only, which is what
PPO's vectorized ``--num-seeds`` needs; :meth:`keep` drops the blocks of seeds that finished. The class has the
:class:`~mlcanon.rl.vec_env.VecEnv` interface PPO uses (``obs``, ``reset``, ``step``, ``state_dict``), returning
tensors.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

__all__ = ["CartPoleTorch", "counter_bits", "counter_uniform"]

# splitmix64 (Steele, Lea & Flood 2014) constants as signed int64 (torch has no uint64 arithmetic)
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical shift right of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer: a bijection of 64-bit words with full avalanche (int64 products wrap mod 2^64)."""
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    return z ^ _srl(z, 31)


def counter_bits(*keys) -> torch.Tensor:
    """64 random bits (int64) per element, a hash of the broadcast integer keys (seed, counter, index, ...).

    Counter-based random numbers (Salmon et al. 2011): the value at (seed, t, i) depends on those integers only, so
    every seed has its own stream whatever else is computed in the same batch."""
    z = None
    for k in keys:
        k = torch.as_tensor(k, dtype=torch.int64)
        z = _mix(k * _GOLDEN + 1) if z is None else _mix((z ^ k) * _GOLDEN + 1)
    return z


def counter_uniform(*keys, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniforms in [0, 1) from :func:`counter_bits` (the top 24 bits for float32, 53 for float64: exact)."""
    bits = 24 if dtype == torch.float32 else 53
    return _srl(counter_bits(*keys), 64 - bits).to(dtype) * 2.0 ** -bits


class CartPoleTorch:
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masspole + masscart
    polemass_length = masspole * length
    theta_threshold = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(self, num_envs: int, seed: int | list[int] = 0, device: torch.device | str = "cpu",
                 max_episode_steps: int = 500):
        self.device, self.max_episode_steps = torch.device(device), int(max_episode_steps)
        seeds = [int(seed)] if isinstance(seed, int) else [int(s) for s in seed]
        self.envs_per_seed = int(num_envs)
        self.num_envs = n = len(seeds) * self.envs_per_seed         # seed-major blocks of num_envs envs
        self.env_id = "CartPole-v1"
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.obs_shape = (4,)
        self.seed_of = torch.tensor(seeds, dtype=torch.int64, device=self.device).repeat_interleave(num_envs)
        self.index = torch.arange(num_envs, device=self.device).repeat(len(seeds))   # env index within its seed
        self.episode = torch.zeros(n, dtype=torch.int64, device=self.device)         # running episode of each env
        self.state = torch.zeros(n, 4, dtype=torch.float64, device=self.device)
        self.ep_return = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.ep_length = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.obs: torch.Tensor | None = None

    def _initial(self, envs: torch.Tensor | slice) -> torch.Tensor:
        """Initial states of the running episodes of ``envs``: uniform(-0.05, 0.05)^4 keyed (seed, env, episode)."""
        keys = (self.seed_of[envs, None], self.index[envs, None], self.episode[envs, None],
                torch.arange(4, device=self.device))
        return counter_uniform(*keys, dtype=torch.float64) * 0.1 - 0.05

    def reset(self) -> torch.Tensor:
        """Start (or restart) the current episode of every env."""
        self.state = self._initial(slice(None))
        self.ep_return.zero_()
        self.ep_length.zero_()
        self.obs = self.state.float()
        return self.obs

    def set_state(self, state) -> None:
        """Put every env in the given state(s) [N, 4] or [4] (float64), e.g. a gymnasium env's."""
        self.state = torch.as_tensor(np.asarray(state), dtype=torch.float64, device=self.device).expand(
            self.num_envs, 4).clone()
        self.obs = self.state.float()

    def step(self, actions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """(obs, rewards, terminated, truncated, info) for actions [N] in {0, 1}; same-step autoreset."""
        state, terminated = self.dynamics(self.state, torch.as_tensor(actions, device=self.device))
        reward = torch.ones(self.num_envs, dtype=torch.float64, device=self.device)
        self.ep_return += reward
        self.ep_length += 1
        truncated = (self.ep_length >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        final_obs = state.float()
        info = {"final_obs": final_obs, "episode_return": self.ep_return[done].tolist(),
                "episode_length": self.ep_length[done].tolist()}
        if bool(done.any()):                                          # same-step autoreset
            self.episode += done
            state[done] = self._initial(done)
            self.ep_return[done] = 0.0
            self.ep_length[done] = 0
        self.state = state
        self.obs = state.float()
        return self.obs, reward, terminated, truncated, info

    @classmethod
    def dynamics(cls, state: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gymnasium's CartPole physics, batched: (next state [N, 4] float64, terminated [N]) for actions a in {0, 1}.
        Pure (no episode bookkeeping): the greedy evaluation steps it alone."""
        x, x_dot, theta, theta_dot = state.unbind(1)
        force = torch.where(a == 1, cls.force_mag, -cls.force_mag).to(torch.float64)
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + cls.polemass_length * theta_dot.square() * sin) / cls.total_mass
        theta_acc = (cls.gravity * sin - cos * temp) / (
            cls.length * (4.0 / 3.0 - cls.masspole * cos.square() / cls.total_mass))
        x_acc = temp - cls.polemass_length * theta_acc * cos / cls.total_mass
        state = torch.stack([x + cls.tau * x_dot, x_dot + cls.tau * x_acc,          # explicit Euler
                             theta + cls.tau * theta_dot, theta_dot + cls.tau * theta_acc], 1)
        x, theta = state[:, 0], state[:, 2]
        terminated = (x < -cls.x_threshold) | (x > cls.x_threshold) | \
                     (theta < -cls.theta_threshold) | (theta > cls.theta_threshold)
        return state, terminated

    def keep(self, seeds: torch.Tensor) -> None:
        """Keep only the env blocks of the seeds at positions ``seeds`` (indices into this env's seed list)."""
        E = self.envs_per_seed
        rows = (seeds.to(self.device)[:, None] * E + torch.arange(E, device=self.device)).reshape(-1)
        for k in ("seed_of", "index", "episode", "state", "ep_return", "ep_length"):
            setattr(self, k, getattr(self, k)[rows])
        self.num_envs = len(rows)
        self.obs = None if self.obs is None else self.obs[rows]

    def close(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"state": self.state, "ep_return": self.ep_return, "ep_length": self.ep_length,
                "episode": self.episode, "seed_of": self.seed_of, "index": self.index, "started": self.obs is not None}

    def load_state_dict(self, st: dict) -> None:
        self.state = torch.as_tensor(st["state"], dtype=torch.float64).to(self.device).clone()
        self.ep_return = torch.as_tensor(st["ep_return"]).to(self.device).clone()
        self.ep_length = torch.as_tensor(st["ep_length"]).to(self.device).clone()
        for k in ("episode", "seed_of", "index"):
            setattr(self, k, torch.as_tensor(st[k]).to(self.device).clone())
        self.num_envs = len(self.state)
        self.obs = self.state.float() if st["started"] else None
