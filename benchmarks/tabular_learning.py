"""Standalone: Q-learning env steps/s on mlcanon/GridWorld-v0 (vectorized over seeds).

    python benchmarks/tabular_learning.py [--num-seeds 1 100 1000 10000] [--episodes N] [--threads 1]
"""

import argparse

import torch

from mlcanon.bench.tabular_learning import CASES, q_learning_steps_per_s

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-seeds", type=int, nargs="*", default=[n for n, _, _ in CASES])
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for n in a.num_seeds:
        ep = a.episodes or {c[0]: c[1] for c in CASES}.get(n, 200)
        rate, dt, steps, cpu = q_learning_steps_per_s(n, ep)
        print(f"seeds={n:5d} episodes={ep} steps={steps} wall={dt:.3f}s  {rate:,.0f} env steps/s "
              f"({steps / cpu:,.0f} per CPU second)")
