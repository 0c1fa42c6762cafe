"""Side by side with Stable-Baselines3: env steps and wall-clock to the first evaluation reaching 475 on CartPole-v1.

    nice -n 10 python benchmarks/rl_vs_sb3.py --algos ppo,dqn,a2c --seeds 0,1,2

Same protocol on both sides (issue #16): 10 deterministic evaluation episodes every 1,000 env steps, stop at the
first mean >= 475 (SB3: EvalCallback + StopTrainingOnRewardThreshold; ours: --target-return 475). Wall-clock runs
from building the agent to the end of training, in this process, imports aside, with and without evaluation time.
SB3 uses its rl-baselines3-zoo CartPole-v1 hyperparameters; ours its defaults (the same values, except DQN's
training cadence, 32 gradient steps every 64 env steps instead of 128 every 256; the bench entry also runs both
sides at equal values). SB3 is a
bench-only extra (``pip install stable-baselines3``); without it only our side runs. The runners are those of the
bench entry ``deep-rl-cartpole`` (:mod:`mlcanon.bench.deep_rl`).
"""

from __future__ import annotations

import argparse
import json
import os

from mlcanon.bench.deep_rl import OUR_THREADS, SB3_THREADS, median, run_ours, run_sb3, sb3_available


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default="ppo,dqn,a2c")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sides", default="mlcanon,sb3", help="which sides to run (mlcanon, sb3 or both)")
    p.add_argument("--threads-ours", type=int, default=None,
                   help=f"torch threads of our side (default: each algorithm's faster count, {OUR_THREADS})")
    p.add_argument("--threads-sb3", type=int, default=SB3_THREADS, help="torch threads of SB3's side")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sides = args.sides.split(",")
    if "sb3" in sides and not sb3_available():
        print("stable-baselines3 is not installed (pip install stable-baselines3): SB3 side skipped")
        sides.remove("sb3")
    table = {}
    for name in args.algos.split(","):
        for side in sides:
            fn = run_ours if side == "mlcanon" else run_sb3
            threads = (args.threads_ours or OUR_THREADS[name]) if side == "mlcanon" else args.threads_sb3
            runs = []
            for s in seeds:
                runs.append(fn(name, s, threads=threads))
                print(f"  {name} {side} seed {s}: {runs[-1]}  (load {os.getloadavg()[0]:.2f})", flush=True)
            med = {k: median(runs, k) for k in ("steps", "wall_s", "wall_no_eval_s")}
            table[f"{name}/{side}"] = {"median": med, "runs": runs}
            print(f"{name:4s} {side:8s} steps {med['steps']:>9.0f}  wall {med['wall_s']:7.1f} s  "
                  f"without eval {med['wall_no_eval_s']:7.1f} s", flush=True)
        if f"{name}/mlcanon" in table and f"{name}/sb3" in table:
            o, q = table[f"{name}/mlcanon"]["median"], table[f"{name}/sb3"]["median"]
            print(f"{name:4s} ours/SB3: steps {o['steps'] / q['steps']:.2f}, wall {o['wall_s'] / q['wall_s']:.2f}, "
                  f"without eval {o['wall_no_eval_s'] / q['wall_no_eval_s']:.2f}", flush=True)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
