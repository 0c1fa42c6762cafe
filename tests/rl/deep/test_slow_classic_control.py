"""PPO on Acrobot-v1 and Pendulum-v1 with rl-baselines3-zoo's hyper-parameters (slow: minutes on a CPU core).

Run with `pytest -m slow tests/rl/deep/test_slow_classic_control.py`. Protocol: 10 greedy episodes every 10,000 env
steps, stop at the first mean >= the target (Acrobot -100, Pendulum -200; issue #16).
"""

import pytest

from mlcanon.rl.ppo import PPOConfig
from mlcanon.rl.ppo import train as train_ppo

PROTOCOL = {"eval_every": 10_000, "eval_episodes": 10, "progress": False, "device": "cpu"}

# rl-zoo ppo.yml: Acrobot-v1 (normalize, 16 envs x 256 steps, lambda 0.94, 4 epochs, SB3's batch 64 and lr 3e-4)
ACROBOT = {"env": "Acrobot-v1", "num_envs": 16, "num_steps": 256, "gae_lambda": 0.94, "gamma": 0.99,
           "update_epochs": 4, "minibatch_size": 64, "lr": 3e-4, "anneal_lr": False, "anneal_clip": False,
           "ent_coef": 0.0, "normalize_obs": True, "scale_rewards": True}
# rl-zoo ppo.yml: Pendulum-v1 (4 envs x 1024 steps, lambda 0.95, gamma 0.9, 10 epochs, lr 1e-3, clip 0.2, gSDE
# resampled every 4 steps)
PENDULUM = {"env": "Pendulum-v1", "num_envs": 4, "num_steps": 1024, "gae_lambda": 0.95, "gamma": 0.9,
            "update_epochs": 10, "minibatch_size": 64, "lr": 1e-3, "anneal_lr": False, "anneal_clip": False,
            "clip_coef": 0.2, "ent_coef": 0.0, "normalize_obs": True, "scale_rewards": True, "use_sde": True,
            "sde_sample_freq": 4}


@pytest.mark.slow
@pytest.mark.parametrize("cfg,target,budget", [(ACROBOT, -100.0, 300_000), (PENDULUM, -200.0, 200_000)])
def test_ppo_reaches_the_target(tmp_runs, cfg, target, budget):
    r = train_ppo(PPOConfig(out_dir=str(tmp_runs), total_steps=budget, target_return=target, **cfg, **PROTOCOL))
    assert r["solved_step"] is not None and r["best_eval_return"] >= target
