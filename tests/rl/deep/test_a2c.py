"""A2C (and PPO): the numpy greedy action used in evaluation is the policy's mode; CartPole-v1 solved on seeds 0-2 (slow)."""

import numpy as np
import pytest
import torch

from mlcanon.rl.a2c import A2C, A2CConfig
from mlcanon.rl.a2c import train as train_a2c
from mlcanon.rl.ppo import PPO, PPOConfig

PROTOCOL = {"target_return": 475.0, "eval_every": 1000, "eval_episodes": 10, "progress": False, "device": "cpu"}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("cls,config", [(A2C, A2CConfig), (PPO, PPOConfig)])
def test_numpy_greedy_action_is_the_policy_mode(cls, config, activation):
    """A2C's and PPO's evaluation act (ActorCritic.greedy_numpy) is argmax of the torch logits."""
    agent = cls("CartPole-v1", config(device="cpu", progress=False, hidden=(16, 16), activation=activation))
    with torch.no_grad():
        for p in agent.net.actor.parameters():   # logits of O(1) (the 0.01-gain head would make ties likely)
            p.normal_()
    obs = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    with torch.no_grad():
        logits = agent.net.actor(torch.from_numpy(obs)).numpy()
        mode = agent.net.mode(torch.from_numpy(obs)).numpy()
    clear = np.abs(logits[:, 0] - logits[:, 1]) > 1e-4   # float32 rounding cannot flip these
    got = agent.act(obs, deterministic=True)
    assert clear.sum() > 150
    np.testing.assert_array_equal(got[clear], mode[clear])
    assert agent.act(obs[0], deterministic=True) == mode[0]          # one observation


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a2c_solves_cartpole(tmp_runs, seed):
    r = train_a2c(A2CConfig(out_dir=str(tmp_runs), seed=seed, total_steps=500_000, **PROTOCOL))
    assert r["solved_step"] is not None and r["best_eval_return"] >= 475
