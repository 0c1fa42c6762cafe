"""CartPole-v1 for N envs at once as torch tensors (CPU or GPU), with gymnasium's dynamics step for step.

The dynamics are gymnasium's ``CartPoleEnv.step`` (Barto, Sutton & Anderson 1983; the corrected equations of
Florian 2007 as gymnasium writes them), in float64 like gymnasium's state, with explicit Euler integration:

    temp       = (F + m_p l theta_dot^2 sin theta) / (m_c + m_p)
    theta_acc  = (g sin theta - cos theta temp) / (l (4/3 - m_p cos^2 theta / (m_c + m_p)))
    x_acc      = temp - m_p l theta_acc cos theta / (m_c + m_p)
    x += tau x_dot;  x_dot += tau x_acc;  theta += tau theta_dot;  theta_dot += tau theta_acc

Reward 1 per step (also on the terminating one), termination when |x| > 2.4 or |theta| > 12 degrees, truncation
after ``max_episode_steps`` (500) steps; observations are the state cast to float32. Autoreset happens in the same
step, with the last observation kept in ``final_obs`` (as :class:`mlcanon.rl.vec_env.VecEnv`). Initial states are
uniform in (-0.05, 0.05)^4 drawn from the env's own ``torch.Generator`` (not gymnasium's numpy stream), so a run is
repeatable but its episodes differ from gymnasium's for the same seed; ``set_state`` lets a test start both from
the same state. The class has the :class:`~mlcanon.rl.vec_env.VecEnv` interface PPO uses (``obs``, ``reset``,
``step``, ``state_dict``), returning tensors.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

__all__ = ["CartPoleTorch"]


class CartPoleTorch:
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masspole + masscart
    polemass_length = masspole * length
    theta_threshold = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(self, num_envs: int, seed: int = 0, device: torch.device | str = "cpu", max_episode_steps: int = 500):
        self.num_envs, self.device, self.max_episode_steps = int(num_envs), torch.device(device), int(max_episode_steps)
        self.env_id = "CartPole-v1"
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.obs_shape = (4,)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.state = torch.zeros(num_envs, 4, dtype=torch.float64, device=self.device)
        self.ep_return = torch.zeros(num_envs, dtype=torch.float64, device=self.device)
        self.ep_length = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.obs: torch.Tensor | None = None

    def _initial(self, n: int) -> torch.Tensor:
        u = torch.rand(n, 4, generator=self.generator, dtype=torch.float64, device=self.device)
        return u * 0.1 - 0.05                                         # uniform(-0.05, 0.05)

    def reset(self) -> torch.Tensor:
        self.state = self._initial(self.num_envs)
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
        a = torch.as_tensor(actions, device=self.device)
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        force = torch.where(a == 1, self.force_mag, -self.force_mag).to(torch.float64)
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot.square() * sin) / self.total_mass
        theta_acc = (self.gravity * sin - cos * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * cos.square() / self.total_mass))
        x_acc = temp - self.polemass_length * theta_acc * cos / self.total_mass
        state = torch.stack([x + self.tau * x_dot, x_dot + self.tau * x_acc,          # explicit Euler
                             theta + self.tau * theta_dot, theta_dot + self.tau * theta_acc], 1)
        x, theta = state[:, 0], state[:, 2]
        terminated = (x < -self.x_threshold) | (x > self.x_threshold) | \
                     (theta < -self.theta_threshold) | (theta > self.theta_threshold)
        reward = torch.ones(self.num_envs, dtype=torch.float64, device=self.device)
        self.ep_return += reward
        self.ep_length += 1
        truncated = (self.ep_length >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        final_obs = state.float()
        info = {"final_obs": final_obs, "episode_return": self.ep_return[done].tolist(),
                "episode_length": self.ep_length[done].tolist()}
        n_done = int(done.sum())
        if n_done:                                                    # same-step autoreset
            state[done] = self._initial(n_done)
            self.ep_return[done] = 0.0
            self.ep_length[done] = 0
        self.state = state
        self.obs = state.float()
        return self.obs, reward, terminated, truncated, info

    def close(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"state": self.state, "ep_return": self.ep_return, "ep_length": self.ep_length,
                "generator": self.generator.get_state(), "started": self.obs is not None}

    def load_state_dict(self, st: dict) -> None:
        self.state = torch.as_tensor(st["state"], dtype=torch.float64).to(self.device).clone()
        self.ep_return = torch.as_tensor(st["ep_return"]).to(self.device).clone()
        self.ep_length = torch.as_tensor(st["ep_length"]).to(self.device).clone()
        self.generator.set_state(torch.as_tensor(st["generator"]))
        self.obs = self.state.float() if st["started"] else None
