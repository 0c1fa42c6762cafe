"""Benchmark: Q-learning env steps per second on the 4x4 gridworld, 1 to 10,000 seeds learned together.

Every seed reads its own random stream (``--num-seeds N`` is N independent runs, each bitwise the run with
its own seed), so this measures the vectorized learner as users run it. The machine's load average is
written beside the figures: the host is shared, and a busy one slows a single-process numpy loop.
"""

from __future__ import annotations

import os
import time

from mlcanon.bench import Row, bench
from mlcanon.rl import exploration as ex
from mlcanon.rl import tabular_learning as tl
from mlcanon.rl.envs import mdp_of

# (seeds, episodes per seed, target in aggregate env steps/s): the target is issue #15's, at 1,000 seeds
CASES = ((1, 2000, None), (100, 200, None), (1000, 200, 1e6), (10_000, 100, None))


def q_learning_steps_per_s(num_seeds: int, episodes: int, seed: int = 0) -> tuple[float, float, int, float]:
    """(aggregate env steps/s, wall seconds, steps, CPU seconds) of vectorized Q-learning on
    mlcanon/GridWorld-v0; the clock runs over ``Learner.run`` (not the setup of the N generators)."""
    L = tl.Learner("q-learning", mdp_of("mlcanon/GridWorld-v0"), episodes=episodes, num_seeds=num_seeds,
                   alpha=0.1, max_episode_steps=100, seed=seed, schedule=ex.ConstantSchedule(0.1))
    t0, c0 = time.perf_counter(), time.process_time()
    L.run()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return L.steps / dt, dt, L.steps, cpu


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


@bench("tabular-q-learning",
       description="Q-learning env steps/s on the 4x4 gridworld, 1 / 100 / 1,000 / 10,000 independent seeds")
def tabular_q_learning() -> list[Row]:
    """Rows: aggregate env steps/s per number of seeds (target >= 1e6 at 1,000 seeds)."""
    rows = []
    for n, ep, ref in CASES:
        load = _load()
        rate, dt, steps, cpu = q_learning_steps_per_s(n, ep)
        rows.append(Row(name=f"q-learning gridworld 4x4, {n} seed(s), env steps/s",
                        command=f"python benchmarks/tabular_learning.py --num-seeds {n} --episodes {ep}",
                        ours=rate, unit="steps/s", reference=ref, reference_label="target" if ref else "",
                        wall_s=dt, notes=f"{steps} steps, {ep} episodes per seed, each seed its own stream; "
                                         f"{steps / cpu:.3g} steps per CPU second; {load} before the row"))
    return rows
