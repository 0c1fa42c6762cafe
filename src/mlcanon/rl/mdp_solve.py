"""CLI entry ``mdp-solve``: V* and pi* of an env's MDP by :func:`mlcanon.rl.dp.solve`, the fastest exact solver.

``solve`` picks the method for the problem (value iteration when it is about to finish, modified policy
iteration, policy iteration with sparse LU evaluation; Puterman sec. 6.4-6.6) and certifies its answer by the
MacQueen-Porteus bounds: max_s |V(s) - V*(s)| <= tol at gamma < 1. The run folder holds the same files as
``value-iteration`` (values.png, policy.png, result.json, a checkpoint with V and the policy), so
``mlcanon eval`` and ``mlcanon sample`` work the same way.
"""

from __future__ import annotations

import dataclasses
import time

from mlcanon.config import option, validate
from mlcanon.errors import UserError
from mlcanon.registry import register
from mlcanon.rl import dp, plots
from mlcanon.rl.tabular_cli import (
    DPConfig,
    TabularEvalOptions,
    _evaluate_dp,
    _load_tables,
    _mdp,
    _sample_tabular,
    _shape,
)
from mlcanon.runs import Run


@dataclasses.dataclass
class MDPSolveConfig(DPConfig):
    """dp.solve: the fastest exact solver here, V certified within tol of V* (gamma < 1)."""

    tol: float = option(1e-6, "sup-norm accuracy: the V returned is within tol of V* (MacQueen-Porteus bounds; "
                              "at gamma = 1 the largest change of the last value-iteration sweep)", min=0.0)
    max_iter: int = option(10_000, "iterations before giving up (each: one backup and one evaluation)", min=1)


def train(config: MDPSolveConfig, run=None) -> dict:
    """Solve, log the method's counts, save V and the policy; writes values.png, policy.png, result.json."""
    validate(config)
    if not config.tol > 0:
        raise UserError(f"--tol must be > 0, got {config.tol}")
    mdp = _mdp(config.env, config.gamma)
    if mdp is None:
        raise UserError(f"mdp-solve needs an env with a tabular model; {config.env} has none. Use one of ours "
                        "(mlcanon/GridWorld-v0, ...) or FrozenLake-v1, CliffWalking-v1, Taxi-v4")
    if run is None:
        run = Run.create("mdp-solve", config)
        run.log_hparams(config)
    stats: dict = {}
    t0 = time.perf_counter()
    V, pi = dp.solve(mdp, tol=config.tol, max_iter=config.max_iter, stats=stats)
    seconds = time.perf_counter() - t0
    iters = int(stats["iterations"])
    run.log(iters, {"train/iterations": float(iters), "train/backups": float(stats["backups"]),
                    "train/eval_sweeps": float(stats["eval_sweeps"]), "train/lu_solves": float(stats["solves"]),
                    "perf/solve_s": seconds})
    run.save({"V": V, "policy": pi}, iters)
    out = {"run_dir": str(run.dir), "iterations": iters, "backups": int(stats["backups"]),
           "eval_sweeps": int(stats["eval_sweeps"]), "lu_solves": int(stats["solves"]), "solve_s": seconds,
           "dp_optimum": float(V @ mdp.start), "env": config.env, "gamma": mdp.gamma, "tol": config.tol}
    if run.enabled:
        shape = _shape(config.env, mdp.num_states)
        plots.plot_values(V, shape, run.dir / "values.png", title="mdp-solve: V*", terminal=mdp.terminal)
        plots.plot_policy(pi, shape, run.dir / "policy.png", V=V, terminal=mdp.terminal, title="mdp-solve: pi*")
    run.finish(out)
    return {**out, "V": V, "policy": pi}


def evaluate(run_dir, options: TabularEvalOptions | None = None) -> dict:
    """Greedy episodes of the solved policy: mean return and its 95% interval."""
    return _evaluate_dp(run_dir, options)


def sample(run_dir, n: int = 64, out=None, options=None):
    """The policy over the values (samples.png) and a text rollout of up to n greedy steps."""
    return _sample_tabular(run_dir, n, out, options)


register("mdp-solve", family="rl-tabular", config=MDPSolveConfig,
         description="V* and pi* of an env's MDP by dp.solve: fastest exact method, certified to tol "
                     "(Puterman 6.4-6.6)",
         evaluate=evaluate, sample=sample, load=_load_tables, eval_options=TabularEvalOptions,
         one_shot=True)(train)
