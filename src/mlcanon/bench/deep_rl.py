"""Benchmark: env steps and wall-clock to the first evaluation with mean return >= 475 on CartPole-v1.

Protocol (issue #16, the same on both sides): 10 deterministic episodes every 1,000 env steps, stop at the first
mean >= 475 (``--target-return 475``, as SB3's StopTrainingOnRewardThreshold); seeds 0-2, median. The wall-clock
is that of ``train(config)`` in this process (interpreter start and imports aside), with and without the
evaluation time. The peer figures are Stable-Baselines3's with its rl-baselines3-zoo hyperparameters, as
measured in issue #16 (``benchmarks/rl_vs_sb3.py`` measures both sides in one run when SB3 is installed).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from mlcanon.bench import Row, bench

# SB3 figures quoted by issue #16 (seeds 0-2, median): env steps, wall-clock s (with evaluation)
SB3 = {"ppo": (15_000, 12.6), "dqn": (15_000, 22.2)}
PROTOCOL = {"target_return": 475.0, "eval_every": 1000, "eval_episodes": 10, "progress": False, "device": "cpu"}


def steps_to_475(name: str, seed: int, out_dir: str) -> dict:
    """One run of ``mlcanon train NAME --target-return 475 --eval-every 1000 --eval-episodes 10 --seed SEED``."""
    from mlcanon import registry
    algo = registry.get(name)
    config = algo.config_cls(seed=seed, out_dir=out_dir, **PROTOCOL)
    return algo.train(config)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


@bench("deep-rl-cartpole", suites=("full",),
       description="PPO, DQN: env steps and wall-clock to eval return 475 on CartPole-v1 (seeds 0-2, median)")
def deep_rl_cartpole() -> list[Row]:
    rows = []
    for name in ("ppo", "dqn"):
        load = _load()
        with tempfile.TemporaryDirectory() as tmp:
            res = [steps_to_475(name, s, tmp) for s in range(3)]
        solved = [r["solved_step"] for r in res]
        steps = float(np.median([s if s is not None else np.inf for s in solved]))
        wall = float(np.median([r["wall_seconds"] for r in res]))
        train_only = float(np.median([r["train_seconds"] for r in res]))
        cmd = f"mlcanon train {name} --env CartPole-v1 --target-return 475 --eval-every 1000 --eval-episodes 10"
        note = (f"seeds 0-2 solved at {solved} env steps; {load}; SB3 figures quoted from issue #16 "
                "(rl-zoo hyperparameters, same protocol)")
        rows.append(Row(name=f"{name} CartPole-v1 env steps to eval return 475 (median of 3 seeds)", command=cmd,
                        ours=steps, unit="steps", reference=SB3[name][0], reference_label="SB3 (issue #16)",
                        higher_is_better=False, notes=note))
        rows.append(Row(name=f"{name} CartPole-v1 wall-clock to 475, s (without evaluation: {train_only:.1f} s)",
                        command=cmd, ours=wall, unit="s", reference=0.25 * SB3[name][1],
                        reference_label="target: 0.25x SB3's (issue #16)", higher_is_better=False, wall_s=wall,
                        notes=note))
    return rows
