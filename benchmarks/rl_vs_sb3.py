"""Side by side with Stable-Baselines3: env steps and wall-clock to the first evaluation reaching 475 on CartPole-v1.

    python benchmarks/rl_vs_sb3.py --algos ppo,dqn,a2c --seeds 0,1,2

Same protocol on both sides (issue #16): 10 deterministic evaluation episodes every 1,000 env steps, stop at the
first mean >= 475 (SB3: EvalCallback + StopTrainingOnRewardThreshold; ours: --target-return 475). Wall-clock is
the training call in this process (imports aside), with and without evaluation time. SB3 uses its
rl-baselines3-zoo CartPole-v1 hyperparameters; ours its defaults (the same values). SB3 is a bench-only extra
(``pip install stable-baselines3``); without it only our side runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time

import numpy as np

PROTOCOL = {"target_return": 475.0, "eval_every": 1000, "eval_episodes": 10, "progress": False, "device": "cpu"}

# rl-baselines3-zoo hyperparams/{ppo,dqn,a2c}.yml, CartPole-v1 entries
ZOO = {
    "ppo": {"n_envs": 8, "kw": {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
                                "ent_coef": 0.0, "learning_rate": ("lin", 1e-3), "clip_range": ("lin", 0.2)},
            "budget": 100_000},
    "dqn": {"n_envs": 1, "kw": {"learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000,
                                "learning_starts": 1000, "gamma": 0.99, "target_update_interval": 10,
                                "train_freq": 256, "gradient_steps": 128, "exploration_fraction": 0.16,
                                "exploration_final_eps": 0.04, "policy_kwargs": {"net_arch": [256, 256]}},
            "budget": 50_000},
    "a2c": {"n_envs": 8, "kw": {"ent_coef": 0.0}, "budget": 500_000},
}


def ours(name: str, seed: int) -> dict:
    from mlcanon import registry
    algo = registry.get(name)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = algo.train(algo.config_cls(seed=seed, out_dir=tmp, **PROTOCOL))
        wall = time.perf_counter() - t0
    return {"steps": r["solved_step"], "wall_s": wall, "wall_no_eval_s": wall - r["eval_seconds"]}


def sb3(name: str, seed: int) -> dict:
    import stable_baselines3 as sb
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    z = ZOO[name]
    kw = {k: (lambda p, v=v[1]: p * v) if isinstance(v, tuple) else v for k, v in z["kw"].items()}
    env = make_vec_env("CartPole-v1", n_envs=z["n_envs"], seed=seed)
    model = getattr(sb, name.upper())("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kw)

    class Timed(EvalCallback):
        eval_time = 0.0

        def _on_step(self):
            t = time.perf_counter()
            out = super()._on_step()
            if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
                Timed.eval_time += time.perf_counter() - t
            return out

    stop = StopTrainingOnRewardThreshold(reward_threshold=475, verbose=0)
    cb = Timed(make_vec_env("CartPole-v1", n_envs=1, seed=seed + 1000), callback_on_new_best=stop,
               eval_freq=max(1000 // z["n_envs"], 1), n_eval_episodes=10, deterministic=True, verbose=0)
    t0 = time.perf_counter()
    model.learn(z["budget"], callback=cb)
    wall = time.perf_counter() - t0
    solved = model.num_timesteps if cb.best_mean_reward >= 475 else None
    return {"steps": solved, "wall_s": wall, "wall_no_eval_s": wall - Timed.eval_time}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default="ppo,dqn")
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    have_sb3 = importlib.util.find_spec("stable_baselines3") is not None
    table = {}
    for name in args.algos.split(","):
        for side, fn in (("mlcanon", ours), ("sb3", sb3)):
            if side == "sb3" and not have_sb3:
                print("stable-baselines3 is not installed (pip install stable-baselines3): SB3 side skipped")
                continue
            runs = [fn(name, s) for s in seeds]
            med = {k: float(np.median([r[k] if r[k] is not None else np.inf for r in runs])) for k in runs[0]}
            table[f"{name}/{side}"] = {"median": med, "runs": runs}
            print(f"{name:4s} {side:8s} steps {med['steps']:>9.0f}  wall {med['wall_s']:7.1f} s  "
                  f"without eval {med['wall_no_eval_s']:7.1f} s   runs {runs}")
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
