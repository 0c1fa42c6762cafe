"""CartPole-v1 learning tests (slow: minutes each on a CPU core). Run with `pytest -m slow tests/rl/deep`.

Each agent trains with its defaults under issue #16's protocol (10 greedy episodes every 1,000 env steps, stop at
the first mean >= 475) and must reach 475 within its budget.
"""

import pytest

from mlcanon.rl.a2c import A2CConfig
from mlcanon.rl.a2c import train as train_a2c
from mlcanon.rl.decision_transformer import DTConfig
from mlcanon.rl.decision_transformer import train as train_dt
from mlcanon.rl.dqn import DQNConfig
from mlcanon.rl.dqn import train as train_dqn
from mlcanon.rl.ppo import PPOConfig
from mlcanon.rl.ppo import train as train_ppo
from mlcanon.rl.reinforce import ReinforceConfig
from mlcanon.rl.reinforce import train as train_reinforce

PROTOCOL = {"target_return": 475.0, "eval_every": 1000, "eval_episodes": 10, "progress": False, "device": "cpu"}


@pytest.mark.slow
@pytest.mark.parametrize("train,cfg,budget", [
    (train_ppo, PPOConfig, 100_000),
    (train_dqn, DQNConfig, 50_000),
    (train_a2c, A2CConfig, 500_000),
    (train_reinforce, ReinforceConfig, 300_000),
])
def test_agent_solves_cartpole(tmp_runs, train, cfg, budget):
    r = train(cfg(out_dir=str(tmp_runs), total_steps=budget, **PROTOCOL))
    assert r["solved_step"] is not None and r["best_eval_return"] >= 475


@pytest.mark.slow
def test_decision_transformer_follows_the_target_and_beats_the_lower_half_of_its_data(tmp_runs):
    r = train_dt(DTConfig(out_dir=str(tmp_runs), progress=False, device="cpu", generated_episodes=200, epochs=3,
                          target_returns=(500.0, 100.0), eval_episodes=10))
    assert r["return_at_500"] > r["data_return_lower_half_max"]
    assert r["return_at_500"] > r["return_at_100"]
