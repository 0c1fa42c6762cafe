"""Benchmark entry "tabular-dp": time to solve random MDPs to 1e-6, ours vs pymdptoolbox in the same run.

MDPs (seed 0, 4 actions, gamma 0.95, rewards U(0,1)): dense 1,000 states (Dirichlet rows over all
states) and sparse 10,000 states (10 successors per state-action, stored CSR). Ours:
``dp.value_iteration_bounds`` (value iteration stopped by the MacQueen-Porteus bounds; its V is within
1e-6 of V* in sup-norm) and one ``dp.bellman_optimality`` backup for the per-sweep time. Peer: pymdptoolbox
``ValueIteration(epsilon=1e-6)`` (its own span-based rule: an epsilon-optimal policy, but V itself off by
a constant) and, on the dense MDP, ``PolicyIteration`` (exact V). Times are best of ``repeats`` runs
(one for the sparse peer, whose constructor alone takes tens of seconds): ours = the solver call, the
peer = its constructor (which computes ValueIteration's iteration bound) plus ``run()``; the run()-only
time is in the notes. Neither side counts building the model arrays; pymdptoolbox's input check is
bypassed (its 10-ulp row-sum tolerance rejects Dirichlet rows; its sparse check materializes S x S).
V* for the error columns comes from the bounds solver at 1e-10.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from mlcanon.bench import Row, bench
from mlcanon.rl import dp
from mlcanon.rl.mdp import MDP, random_mdp

COMMAND = "python benchmarks/tabular_dp.py"
GAMMA = 0.95
TOL = 1e-6


def _best(fn, repeats: int):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


@contextlib.contextmanager
def _peer_without_check(mdp_module):
    util = mdp_module._util
    saved = util.check
    util.check = lambda P, R: None
    try:
        yield
    finally:
        util.check = saved


def _peer_inputs(mdp: MDP):
    A = mdp.num_actions
    Pm = mdp.P_matrix()
    if mdp.is_sparse:
        return [Pm[a::A].tocsr() for a in range(A)], mdp.R            # list of A sparse [S, S]
    return np.ascontiguousarray(mdp.P.transpose(1, 0, 2)), mdp.R      # [A, S, S]


def _peer_run(cls, *args, **kw):
    """(end-to-end s: constructor, which computes the peer's iteration bound, plus run; run-only s; obj)."""
    t0 = time.perf_counter()
    obj = cls(*args, **kw)
    t1 = time.perf_counter()
    obj.run()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1, obj


def measure(repeats: int = 3, cases=None) -> list[Row]:
    """Measure every case; returns Rows (end-to-end seconds, per-sweep milliseconds, accuracy notes)."""
    try:
        import mdptoolbox
        import mdptoolbox.mdp as peer
        peer_label = f"pymdptoolbox {getattr(mdptoolbox, '__version__', '4.0b3')}"
    except ModuleNotFoundError:
        peer = None
        peer_label = ""
    cases = cases or [("dense", 1000, None, False), ("sparse", 10000, 10, True)]
    rows: list[Row] = []
    for kind, S, succ, sparse in cases:
        t_start = time.perf_counter()
        mdp = random_mdp(S, 4, successors=succ, gamma=GAMMA, seed=0, sparse=sparse)
        V_star = dp.value_iteration_bounds(mdp, tol=1e-10)[0]          # rigorous bound: |V - V*| < 1e-10
        t_ours, (V, pol, n_ours) = _best(lambda m=mdp: dp.value_iteration_bounds(m, tol=TOL), repeats)
        err_ours = float(np.abs(V - V_star).max())
        sweep_ours, _ = _best(lambda m=mdp, v=V: dp.bellman_optimality(m, v), 10 * repeats)   # one VI sweep
        n_plain = int(np.ceil(np.log(TOL * (1 - GAMMA) / (2 * GAMMA)) / np.log(GAMMA)))
        label = f"{kind} {S}-state MDP" + (f" ({succ} successors, CSR)" if sparse else "")
        ref = ref_sweep = None
        notes = f"ours: VI + Porteus bounds, {n_ours} sweeps, max|V-V*|={err_ours:.1e}"
        if peer is not None:
            P_in, R_in = _peer_inputs(mdp)
            with _peer_without_check(peer):
                # the sparse constructor's iteration bound takes tens of seconds: one run there
                runs = [_peer_run(peer.ValueIteration, P_in, R_in, GAMMA, epsilon=TOL, max_iter=100_000)
                        for _ in range(1 if sparse else repeats)]
            ref, ref_run, obj = min(runs, key=lambda r: r[0])
            V_peer = np.asarray(obj.V, dtype=np.float64)
            pol_peer = np.asarray(obj.policy)
            gap = dp.policy_value_gap(mdp, pol_peer, V_star) if not sparse else float("nan")
            ref_sweep = ref_run / obj.iter
            notes += (f"; peer ValueIteration: {obj.iter} sweeps (span rule), run() alone {ref_run:.4f} s "
                      f"(ratio {ref_run / t_ours:.2f}x), max|V_ours-V_peer|="
                      f"{np.abs(V - V_peer).max():.2e}, max|V_peer-V*|={np.abs(V_peer - V_star).max():.2e}, "
                      f"policies equal: {bool(np.array_equal(pol, pol_peer))}"
                      + (f", peer policy gap {gap:.1e}" if not sparse else ""))
        wall = time.perf_counter() - t_start
        rows.append(Row(f"tabular-dp {label}: solve to 1e-6 (s)", COMMAND, t_ours, "s", ref,
                        f"{peer_label} ValueIteration (same run)" if peer else "pymdptoolbox not installed",
                        higher_is_better=False, wall_s=wall, notes=notes))
        rows.append(Row(f"tabular-dp {label}: time per value-iteration sweep (ms)", COMMAND,
                        sweep_ours * 1e3, "ms", None if ref_sweep is None else ref_sweep * 1e3,
                        f"{peer_label} ValueIteration (same run)" if peer else "pymdptoolbox not installed",
                        higher_is_better=False,
                        notes=f"one Bellman optimality backup T V; the sup-norm rule would need about {n_plain} sweeps"))
        if peer is not None and not sparse:
            # the peer's exact solver (a dense linear solve per iteration): V exact, comparable accuracy
            with _peer_without_check(peer):
                runs = [_peer_run(peer.PolicyIteration, P_in, R_in, GAMMA, max_iter=1000)
                        for _ in range(repeats)]
            ref_pi, _, obj = min(runs, key=lambda r: r[0])
            rows.append(Row(f"tabular-dp {label}: solve to 1e-6 vs exact policy iteration (s)", COMMAND,
                            t_ours, "s", ref_pi, f"{peer_label} PolicyIteration (same run)",
                            higher_is_better=False,
                            notes=f"peer: {obj.iter} iterations, max|V_ours-V_peer|="
                                  f"{np.abs(V - np.asarray(obj.V)).max():.2e}"))
    return rows


@bench("tabular-dp", suites=("quick", "full"),
       description="value iteration to 1e-6 on dense 1k / sparse 10k random MDPs vs pymdptoolbox")
def tabular_dp() -> list[Row]:
    """The bench entry: dense 1,000-state and sparse 10,000-state MDPs, best of 3."""
    return measure(repeats=3)
