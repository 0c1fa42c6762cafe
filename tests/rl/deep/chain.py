"""A deterministic chain MDP for short learning tests (registered as mlcanon-test/Chain-v0).

States 0..L-1, start at 1; action 0 moves left, 1 moves right. Leaving state 0 to the left pays +0.1 and ends
the episode (a myopic trap); reaching state L-1 pays +1 and ends it. Time limit 20 steps. With gamma 0.9 the
optimal policy goes right: return 1 in L-2 steps (discounted 0.9^(L-3) > 0.1).
"""

import gymnasium as gym
import numpy as np


class ChainEnv(gym.Env):
    def __init__(self, length: int = 6):
        self.L = length
        self.observation_space = gym.spaces.Discrete(length)
        self.action_space = gym.spaces.Discrete(2)
        self.s = 1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.s = 1
        return self.s, {}

    def step(self, action):
        if action == 0 and self.s == 0:
            return self.s, 0.1, True, False, {}
        self.s = max(0, self.s - 1) if action == 0 else self.s + 1
        if self.s == self.L - 1:
            return self.s, 1.0, True, False, {}
        return self.s, 0.0, False, False, {}


if "mlcanon-test/Chain-v0" not in gym.registry:
    gym.register("mlcanon-test/Chain-v0", entry_point=ChainEnv, max_episode_steps=20)

OPTIMAL_RETURN = 1.0
__all__ = ["OPTIMAL_RETURN", "ChainEnv", "np"]
