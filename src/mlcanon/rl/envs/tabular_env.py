"""A gymnasium env that samples its steps from an explicit finite MDP (the base of our grid worlds).

The env and its model can never disagree: ``step`` draws s' ~ P(.|s,a) from ``self.mdp`` and pays
r(s,a,s') from a reward table whose expectation is ``mdp.R`` (R(s,a) = sum_s' P(s'|s,a) r(s,a,s')).
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np

from mlcanon.errors import UserError
from mlcanon.rl.mdp import MDP

# actions of the grid worlds, in this order everywhere (envs, plots, policies)
UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])   # (d_row, d_col) of up, down, left, right
ARROWS = "^v<>"


class TabularEnv(gym.Env):
    """Discrete env stepping an MDP: obs = state index, s' ~ P(.|s,a), reward r(s,a,s'), terminated on
    terminal states. Subclasses set ``mdp``, ``reward_table`` [S, A, S] and drawing hooks."""

    metadata: ClassVar[dict] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def _setup(self, mdp: MDP, reward_table: np.ndarray, render_mode: str | None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UserError(f"render_mode must be one of {self.metadata['render_modes']} or None, "
                            f"got {render_mode!r}")
        self.mdp = mdp
        self.reward_table = reward_table                     # r(s, a, s')
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Discrete(mdp.num_states)
        self.action_space = gym.spaces.Discrete(mdp.num_actions)
        self.state = 0
        self.last_action: int | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start state s0 ~ mdp.start (``options={"state": s}`` starts from a given state)."""
        super().reset(seed=seed)
        if options and "state" in options:
            s = int(options["state"])
            if not 0 <= s < self.mdp.num_states:
                raise UserError(f"reset state must be in [0, {self.mdp.num_states}), got {s}")
            self.state = s
        else:
            self.state = int(self.np_random.choice(self.mdp.num_states, p=self.mdp.start))
        self.last_action = None
        return self.state, {}

    def step(self, action):
        """s' ~ P(.|s,a) (S&B eq. 3.2), reward r(s,a,s'), terminated when s' is terminal."""
        if not self.action_space.contains(action):
            raise UserError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        a = int(action)
        s = self.state
        s2 = int(self.mdp.sample_next(np.array(s), np.array(a), self.np_random))
        r = float(self.reward_table[s, a, s2])
        self.state = s2
        self.last_action = a
        return s2, r, bool(self.mdp.terminal[s2]), False, {}

    def render(self):
        """Text ("ansi") or an RGB image ("rgb_array") of the current state."""
        if self.render_mode == "ansi":
            return self._render_text()
        if self.render_mode == "rgb_array":
            return self._render_rgb()
        return None

    def _render_text(self) -> str:
        return f"state {self.state}\n"

    def _render_rgb(self) -> np.ndarray:
        img = np.full((64, 64, 3), 255, np.uint8)
        return img


def reward_table_from(P: np.ndarray, R: np.ndarray) -> np.ndarray:
    """r(s,a,s') = R(s,a) for every s' (state-action rewards)."""
    return np.broadcast_to(R[:, :, None], P.shape).copy()


def fill(img: np.ndarray, r0: int, c0: int, r1: int, c1: int, color) -> None:
    """Paint the pixel box [r0, r1) x [c0, c1) of an RGB image."""
    img[r0:r1, c0:c1] = np.asarray(color, np.uint8)


def disc(img: np.ndarray, cy: float, cx: float, radius: float, color) -> None:
    """Paint a filled disc centred at (cy, cx)."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = np.asarray(color, np.uint8)
