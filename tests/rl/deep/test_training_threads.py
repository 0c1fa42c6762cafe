"""``--threads``: the deep agents train on that many torch threads (default one) and give the process its
thread count back afterwards; 0 leaves torch's setting alone."""

import pytest
import torch

from mlcanon.rl.agent import train_agent
from mlcanon.rl.dqn import DQN, DQNConfig

TINY = {"env": "CartPole-v1", "total_steps": 120, "learning_starts": 40, "train_every": 20, "gradient_steps": 2,
        "batch_size": 8, "buffer_size": 200, "eval_every": 0, "eval_episodes": 1, "max_episode_steps": 30,
        "hidden": (8,), "progress": False, "device": "cpu"}


@pytest.mark.parametrize("threads, during", [(1, 1), (3, 3), (0, 2)])
def test_training_runs_on_threads_and_restores(tmp_path, monkeypatch, threads, during):
    seen, learn = [], DQN.learn

    def recording_learn(self, total_steps=None, run=None):
        seen.append(torch.get_num_threads())
        return learn(self, total_steps, run)

    monkeypatch.setattr(DQN, "learn", recording_learn)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train_agent(DQN, DQNConfig(**TINY, threads=threads, out_dir=str(tmp_path)))
        assert seen == [during]
        assert torch.get_num_threads() == 2              # the caller's count is back
    finally:
        torch.set_num_threads(before)


def test_threads_is_a_cli_option_with_default_one():
    assert DQNConfig().threads == 1
