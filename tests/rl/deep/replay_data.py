"""A small replay buffer of random CartPole-shaped transitions, shared by the DQN tests."""

import numpy as np

from mlcanon.rl.buffers import ReplayBuffer


def random_replay_buffer() -> ReplayBuffer:
    """300 transitions (obs N(0, 1), action in {0, 1}, reward N(0, 1), s' = s + 0.1, 10% terminal); the same
    contents and sampling seed at every call."""
    buf = ReplayBuffer(500, (4,), seed=3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        o = rng.normal(size=(1, 4)).astype(np.float32)
        term = rng.random(1) < 0.1
        buf.add(o, rng.integers(0, 2, 1), rng.normal(size=1), o + 0.1, term, term)
    return buf
