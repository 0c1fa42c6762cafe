"""Benchmark: Q-learning env steps per second on the 4x4 gridworld, 1 seed and 1,000 parallel seeds."""

from __future__ import annotations

import time

from mlcanon.bench import Row, bench


def q_learning_steps_per_s(num_seeds: int, episodes: int, seed: int = 0) -> tuple[float, float, int]:
    """(aggregate env steps/s, wall seconds, steps) of vectorized Q-learning on mlcanon/GridWorld-v0."""
    from mlcanon.rl import exploration as ex
    from mlcanon.rl import tabular_learning as tl
    from mlcanon.rl.envs import mdp_of

    L = tl.Learner("q-learning", mdp_of("mlcanon/GridWorld-v0"), episodes=episodes, num_seeds=num_seeds,
                   alpha=0.1, max_steps=100, seed=seed, schedule=ex.ConstantSchedule(0.1))
    t0 = time.perf_counter()
    L.run()
    dt = time.perf_counter() - t0
    return L.steps / dt, dt, L.steps


@bench("tabular-q-learning", description="Q-learning env steps/s on the 4x4 gridworld (1 and 1,000 seeds)")
def tabular_q_learning() -> list[Row]:
    """Rows: steps/s for 1 seed and for 1,000 parallel seeds (target >= 1e6 aggregate)."""
    rows = []
    for n, ep, ref in ((1, 2000, None), (1000, 200, 1e6)):
        rate, dt, steps = q_learning_steps_per_s(n, ep)
        rows.append(Row(name=f"q-learning gridworld 4x4, {n} seed(s), env steps/s",
                        command=f"python benchmarks/tabular_learning.py --num-seeds {n} --episodes {ep}",
                        ours=rate, unit="steps/s", reference=ref, reference_label="target" if ref else "",
                        wall_s=dt, notes=f"{steps} steps"))
    return rows
