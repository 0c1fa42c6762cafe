"""Benchmark entry "tabular-dp": solve MDPs to 1e-6, ours vs pymdptoolbox in the same run, as users call them.

Problems: a 100x100 perfect maze (10,000 states, slip 0.1, -1 per step, sparse) at gamma 0.99 and 0.999,
FrozenLake 8x8 at gamma 0.999 (slow mixing: the algorithm matters), the random dense 1,000-state and sparse
10,000-state MDPs (gamma 0.95, 4 actions, rewards U(0,1); fast mixing) and a random sparse
1,000,000-state MDP (ours alone: the peer's constructors are O(S^2)).

Ours: :func:`mlcanon.rl.dp.solve` (the README's call) and :func:`mlcanon.rl.dp.value_iteration`, both with
tol 1e-6 (their V is certified within 1e-6 of V*). Peer: pymdptoolbox's ValueIteration, ValueIterationGS,
PolicyIteration and PolicyIterationModified (epsilon 1e-6), each run to its own stopping rule; its fastest
is the reference. A peer solver that cannot win is not run to the end: one sweep (GS) or one policy
matrix / dense solve (PI, PIM) is timed as a lower bound of its run() and compared with the best full
run (PI and PIM build a dense S x S policy matrix; PI's dense LU is not even probed beyond 5,000 states). Timing: best of ``repeats`` runs for every solver on both sides; the headline is the
peer's run() alone, its constructor (which computes ValueIteration's iteration bound, O(S^2) for sparse P)
is added in the reference label; a solver whose constructor takes > 2 s is constructed once and run on
copies. Neither side counts building the model arrays. pymdptoolbox's input check is bypassed (its 10-ulp
row-sum tolerance rejects Dirichlet rows; its sparse check materializes S x S).

Accuracy: V* is the exact value of an optimal policy, V_pi = (I - gamma P_pi)^{-1} r_pi by a sparse LU
solve (SuperLU; GMRES with iterative refinement on the random MDPs, whose LU fills in), certified: the residual
bound ||r - (I - gamma P_pi) V|| / (1 - gamma) and the optimality bound ||T V - V|| / (1 - gamma) are both
reported. max|V - V*| is given for both sides.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from mlcanon.bench import Row, bench
from mlcanon.rl import dp
from mlcanon.rl.mdp import MDP, random_mdp

COMMAND = "python benchmarks/tabular_dp.py"
TOL = 1e-6
PEER_SOLVERS = ("ValueIteration", "ValueIterationGS", "PolicyIteration", "PolicyIterationModified")
SLOW_MIXING_TARGET = 5.0     # solve >= 5x the peer's best on the slow-mixing problems
DENSE_TARGET = 2.0           # >= 2x on the dense random MDP (memory-bound)


# ------------------------------------------------------------------------------------------ problems
def maze_mdp(n: int = 100, gamma: float = 0.99, slip: float = 0.1, seed: int = 0) -> MDP:
    """An n x n perfect maze (a uniformly random spanning tree of the grid: the minimum spanning tree under
    random edge weights), sparse P [S*A, S]. Actions up/down/left/right move w.p. 1 - slip, each other
    direction w.p. slip / 3; a wall keeps the agent in place. Reward -1 per step; the bottom-right cell is
    terminal, the start is the top-left cell."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    rng = np.random.default_rng(seed)
    S, A = n * n, 4
    cell = np.arange(S).reshape(n, n)
    edges = np.concatenate([np.stack([cell[:, :-1].ravel(), cell[:, 1:].ravel()]),     # horizontal neighbours
                            np.stack([cell[:-1, :].ravel(), cell[1:, :].ravel()])], 1)  # vertical neighbours
    G = sp.csr_matrix((rng.random(edges.shape[1]) + 1.0, (edges[0], edges[1])), shape=(S, S))
    T = minimum_spanning_tree(G).tocoo()
    passage = sp.csr_matrix((np.ones(2 * T.nnz, dtype=bool), (np.r_[T.row, T.col], np.r_[T.col, T.row])),
                            shape=(S, S))
    rr, cc = np.divmod(np.arange(S), n)
    nxt = np.empty((S, A), dtype=np.int64)                       # where each direction leads
    for b, (dr, dc) in enumerate([(-1, 0), (1, 0), (0, -1), (0, 1)]):
        r2, c2 = rr + dr, cc + dc
        inside = (r2 >= 0) & (r2 < n) & (c2 >= 0) & (c2 < n)
        cand = np.where(inside, np.clip(r2, 0, n - 1) * n + np.clip(c2, 0, n - 1), np.arange(S))
        is_open = inside & np.asarray(passage[np.arange(S), cand]).ravel()
        nxt[:, b] = np.where(is_open, cand, np.arange(S))
    goal = S - 1
    rows = np.concatenate([np.arange(S) * A + a for a in range(A) for _ in range(A)])
    cols = np.concatenate([nxt[:, b] for _ in range(A) for b in range(A)])
    vals = np.concatenate([np.full(S, 1.0 - slip if a == b else slip / 3.0) for a in range(A) for b in range(A)])
    keep = rows // A != goal
    rows = np.r_[rows[keep], goal * A + np.arange(A)]
    cols = np.r_[cols[keep], np.full(A, goal)]                  # the goal absorbs
    vals = np.r_[vals[keep], np.ones(A)]
    P = sp.csr_matrix((vals, (rows, cols)), shape=(S * A, S))   # duplicates (two walls) are summed
    R = -np.ones((S, A))
    R[goal] = 0.0
    term = np.zeros(S, dtype=bool)
    term[goal] = True
    start = np.zeros(S)
    start[0] = 1.0
    return MDP(P=P, R=R, gamma=gamma, terminal=term, start=start)


def frozenlake_mdp(gamma: float = 0.999) -> MDP:
    """FrozenLake 8x8 (slippery) from gymnasium's table, at the given discount."""
    from mlcanon.rl.envs import mdp_of
    return mdp_of("FrozenLake-v1", map_name="8x8").with_gamma(gamma)


# (key, label, builder, slow mixing, exact V* by LU (else GMRES), peer runs)
CASES = [
    ("maze-0.99", "maze 100x100 (10,000 states, sparse), gamma 0.99",
     lambda: maze_mdp(100, 0.99), True, True, True),
    ("maze-0.999", "maze 100x100 (10,000 states, sparse), gamma 0.999",
     lambda: maze_mdp(100, 0.999), True, True, True),
    ("frozenlake", "FrozenLake 8x8 (64 states), gamma 0.999", lambda: frozenlake_mdp(0.999), True, True, True),
    ("dense-1k", "random dense 1,000 states, gamma 0.95",
     lambda: random_mdp(1000, 4, gamma=0.95, seed=0), False, False, True),
    ("sparse-10k", "random sparse 10,000 states (10 successors, CSR), gamma 0.95",
     lambda: random_mdp(10000, 4, successors=10, gamma=0.95, seed=0, sparse=True), False, False, True),
    ("sparse-1m", "random sparse 1,000,000 states (5 successors, CSR), gamma 0.95",
     lambda: random_mdp(1_000_000, 4, successors=5, gamma=0.95, seed=0, sparse=True), False, False, False),
]


# ------------------------------------------------------------------------------------------ V*
def reference_v_star(mdp: MDP, policy: np.ndarray, direct: bool):
    """(V*, residual bound, optimality bound): the exact value of ``policy`` by a sparse linear solve of
    (I - gamma P_pi) V = r_pi, improved (policy iteration) until T V = V up to round-off. Both bounds are
    sup-norm bounds on |V - V*| (the residual one on |V - V_pi|), by ||(I - gamma P_pi)^{-1}|| <= 1/(1-gamma)
    and ||V - V*|| <= ||TV - V|| / (1 - gamma)."""
    S, A = mdp.num_states, mdp.num_actions
    g = mdp.gamma
    Pm = sp.csr_matrix(mdp.P_matrix())
    live = (~mdp.terminal).astype(np.float64)
    idx = np.arange(S)
    pol = np.asarray(policy, dtype=np.int64)
    for _ in range(50):
        P_pi = sp.diags(live) @ Pm[idx * A + pol]                # terminal rows: V = 0
        r_pi = mdp.R[idx, pol] * live
        M = (sp.identity(S, format="csr") - g * P_pi).tocsr()
        if direct:
            V = spla.spsolve(M.tocsc(), r_pi)
        else:
            V = np.zeros(S)
            for _ in range(4):                                    # GMRES with iterative refinement
                dV, _info = spla.gmres(M, r_pi - M @ V, rtol=1e-10, restart=50, maxiter=50)
                V += dV
        res = float(np.abs(r_pi - M @ V).max()) / (1.0 - g)
        Q = mdp.R + g * (Pm @ V).reshape(S, A)
        Q[mdp.terminal] = 0.0
        TV = Q.max(1)
        opt = float(np.abs(TV - V).max()) / (1.0 - g)
        better = Q.argmax(1)
        improve = Q[idx, better] > Q[idx, pol] + 1e-12 * (1.0 + np.abs(V).max())
        if not improve.any():
            return V, res, opt
        pol = np.where(improve, better, pol)                     # policy iteration step (S&B eq. 4.9)
    raise RuntimeError("reference_v_star: policy iteration did not settle in 50 steps")


# ------------------------------------------------------------------------------------------ timing
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


@contextlib.contextmanager
def _no_iteration_bound(mdp_module):
    """For probes only: skip ValueIteration(GS)'s O(S^2) iteration-bound computation in the constructor."""
    cls = mdp_module.ValueIteration
    saved = cls._boundIter
    cls._boundIter = lambda self, epsilon: None
    try:
        yield
    finally:
        cls._boundIter = saved


def _peer_inputs(mdp: MDP):
    """(P, R) in pymdptoolbox's layout, the same MDP: terminal rows become zero-reward self-loops."""
    A = mdp.num_actions
    term = np.where(mdp.terminal)[0]
    R = np.array(mdp.R, dtype=np.float64)
    R[term] = 0.0
    if mdp.is_sparse:
        Pm = mdp.P_matrix().tolil() if term.size else mdp.P_matrix()
        for s in term:
            for a in range(A):
                Pm.rows[s * A + a], Pm.data[s * A + a] = [int(s)], [1.0]
        Pm = sp.csr_matrix(Pm)
        return [Pm[a::A].tocsr() for a in range(A)], R                # list of A sparse [S, S]
    P = np.array(mdp.P.transpose(1, 0, 2))                             # [A, S, S]
    P[:, term, :] = 0.0
    P[:, term, term] = 1.0
    return P, R


def _peer_construct(peer, name: str, P, R, g: float):
    cls = getattr(peer, name)
    if name in ("ValueIteration", "ValueIterationGS"):
        return cls(P, R, g, epsilon=TOL, max_iter=100_000)
    if name == "PolicyIterationModified":
        return cls(P, R, g, epsilon=TOL)
    return cls(P, R, g, max_iter=10_000)


def _peer_probe(peer, name: str, P, R, g: float) -> float:
    """Seconds of work that any run() of this solver must do at least once (a lower bound of run())."""
    with _no_iteration_bound(peer):
        obj = _peer_construct(peer, name, P, R, g)
    t0 = time.perf_counter()
    if name == "ValueIterationGS":
        obj.max_iter = 1
        obj.run()                                                     # one Gauss-Seidel sweep (+ its policy)
    elif name == "PolicyIteration":
        obj._evalPolicyMatrix()                                       # one dense policy evaluation
    else:
        obj._computePpolicyPRpolicy()                                 # one dense S x S policy matrix
    return time.perf_counter() - t0


def _peer_time(peer, name: str, P, R, g: float, repeats: int):
    """(best run() s, best constructor s, constructions, the object after its last run)."""
    t0 = time.perf_counter()
    proto = _peer_construct(peer, name, P, R, g)
    ctor = time.perf_counter() - t0
    n_ctor = 1
    if ctor < 2.0:
        for _ in range(repeats - 1):
            t0 = time.perf_counter()
            proto = _peer_construct(peer, name, P, R, g)
            ctor = min(ctor, time.perf_counter() - t0)
            n_ctor += 1
    best, obj = np.inf, None
    for _ in range(repeats):
        obj = copy.deepcopy(proto)                                    # a fresh, constructed object per run
        t0 = time.perf_counter()
        obj.run()
        best = min(best, time.perf_counter() - t0)
    return best, ctor, n_ctor, obj


def _peer_all(peer, mdp: MDP, repeats: int, V_star: np.ndarray) -> dict:
    """Every peer solver: full runs for those that can be fastest; probes (lower bounds) for the others."""
    P, R = _peer_inputs(mdp)
    g = mdp.gamma
    S = mdp.num_states
    out: dict = {}
    best = np.inf
    with _peer_without_check(peer):
        for name in PEER_SOLVERS:
            if name != "ValueIteration":
                if name == "PolicyIteration" and S > 5000:
                    out[name] = {"skipped": f"each iteration is a dense {S} x {S} LU ({S ** 3 / 3:.1e} flops)"}
                    continue
                try:
                    lb = _peer_probe(peer, name, P, R, g)
                except TypeError as e:                            # GS's float(row @ V) on sparse rows
                    out[name] = {"skipped": f"fails on sparse P with numpy {np.__version__} ({e})"}
                    continue
                if lb >= best:
                    what = "one sweep" if name == "ValueIterationGS" else (
                        "one dense policy evaluation" if name == "PolicyIteration" else "one dense P_pi")
                    out[name] = {"skipped": f"{what} alone takes {lb * 1e3:.4g} ms >= the best run()"}
                    continue
            run, ctor, n_ctor, obj = _peer_time(peer, name, P, R, g, repeats)
            V = np.asarray(obj.V, dtype=np.float64)
            out[name] = {"run": run, "ctor": ctor, "n_ctor": n_ctor, "iter": int(obj.iter),
                         "err": float(np.abs(V - V_star).max()), "policy": np.asarray(obj.policy)}
            best = min(best, run)
    return out


def _profile(mdp: MDP, V: np.ndarray, stats: dict) -> str:
    """Where solve's time goes: counts of backups / evaluation sweeps / LU solves times their unit cost, in the
    storage solve used (P by diagonals for grid-like MDPs, else CSR or dense)."""
    Pm, R, g, term = mdp.P_matrix(), mdp.R, mdp.gamma, mdp.terminal
    S, A = R.shape
    t_d, diag = _best(lambda: dp._diagonals(Pm, S, A, term, mdp.is_sparse), 5)
    x = g * V
    if diag is not None:
        t_b, Q = _best(lambda: diag.backup(R, x), 5)
        pol = dp._rowargmax(Q)
        t_g, band = _best(lambda: diag.policy(pol), 5)
        out = np.empty(S)
        t_e, _ = _best(lambda: diag.sweep(band, R[np.arange(S), pol], x, out), 5)
        P_pi, r_pi = dp._policy_rows(Pm, R, pol, term, True)
    else:
        t_b, (_, Q) = _best(lambda: dp._backup(Pm, R, g, term, V), 5)
        pol = dp._rowargmax(Q)
        t_g, (P_pi, r_pi) = _best(lambda: dp._policy_rows(Pm, R, pol, term, mdp.is_sparse), 5)
        out = np.empty(S)
        t_e, _ = _best(lambda: dp._affine(P_pi, r_pi, x, out), 5)
    parts = [f"P by {len(diag.offsets)} diagonals per action (built in {t_d * 1e3:.3g} ms)" if diag is not None
             else f"P {'CSR' if mdp.is_sparse else 'dense'}",
             f"{stats['backups']} backups x {t_b * 1e3:.3g} ms"]
    if stats["eval_sweeps"]:
        parts.append(f"{stats['eval_sweeps']} evaluation sweeps x {t_e * 1e3:.3g} ms")
    if stats["eval_sweeps"] or stats["solves"]:
        parts.append(f"policy rows x {t_g * 1e3:.3g} ms each iteration")
    if stats["solves"]:
        t_s, _ = _best(lambda: dp._exact_evaluation(P_pi, r_pi, g, mdp.is_sparse), 3)
        parts.append(f"{stats['solves']} LU solves x {t_s * 1e3:.3g} ms")
    return "profile: " + ", ".join(parts)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load avg {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


# ------------------------------------------------------------------------------------------ rows
class TargetRow(Row):
    """A Row whose ``met`` is the stated target: speed-up ratio >= ``target`` with our error <= TOL."""

    def __init__(self, *args, target: float | None = None, accurate: bool = True, **kw):
        super().__init__(*args, **kw)
        self.target = target
        self.accurate = accurate

    @property
    def met(self) -> bool | None:
        if self.reference is None or self.target is None:
            return None
        return bool(self.accurate and self.ratio is not None and self.ratio >= self.target)


def measure(repeats: int = 3, cases=None) -> list[Row]:
    """Measure every case (``cases``: keys of CASES, default all); returns the rows of the report."""
    try:
        import mdptoolbox
        import mdptoolbox.mdp as peer
        peer_label = f"pymdptoolbox {getattr(mdptoolbox, '__version__', '4.0b3')}"
    except ModuleNotFoundError:
        peer, peer_label = None, "pymdptoolbox not installed"
    chosen = [c for c in CASES if cases is None or c[0] in cases]
    rows: list[Row] = []
    for key, label, build, slow, direct, with_peer in chosen:
        t_start = time.perf_counter()
        load0 = _load()
        mdp = build()
        stats: dict = {}
        t_solve, (V, pol) = _best(lambda m=mdp, st=stats: dp.solve(m, TOL, stats=st), repeats)
        V_star, res_b, opt_b = reference_v_star(mdp, pol, direct)
        err = float(np.abs(V - V_star).max())
        ref_note = f"V* certified to {max(res_b, opt_b):.1e}"
        prof = _profile(mdp, V, stats)
        algo = ("policy iteration (LU solves)" if stats["solves"] and not stats["eval_sweeps"] else
                "modified policy iteration" if stats["eval_sweeps"] else "value iteration")
        ours_note = (f"ours: solve chose {algo}: {stats['iterations']} iterations, {stats['backups']} backups (+ the free one of V = 0), "
                     f"{stats['eval_sweeps']} evaluation sweeps, {stats['solves']} LU solves; "
                     f"max|V-V*| {err:.1e}; {prof}")
        target = SLOW_MIXING_TARGET if slow else (DENSE_TARGET if not mdp.is_sparse else None)
        if peer is None or not with_peer:
            why = "ours alone (the peer's constructors are O(S^2))" if peer is not None else peer_label
            rows.append(TargetRow(f"tabular-dp {label}: solve to 1e-6 (ms)", COMMAND, t_solve * 1e3, "ms",
                                  None, why, higher_is_better=False, wall_s=time.perf_counter() - t_start,
                                  notes=f"{ours_note}; {ref_note}; {load0}"))
            continue
        t_vi, tr = _best(lambda m=mdp: dp.value_iteration(m, TOL, return_trace=True), repeats)
        err_vi = float(np.abs(tr.V - V_star).max())
        peers = _peer_all(peer, mdp, repeats, V_star)
        ran = {k: v for k, v in peers.items() if "run" in v}
        best_name = min(ran, key=lambda k: ran[k]["run"])
        b = ran[best_name]
        peer_notes = "; ".join(
            f"{k}: run() {v['run'] * 1e3:.4g} ms, {v['iter']} iterations, max|V-V*| {v['err']:.1e}, "
            f"constructor {v['ctor'] * 1e3:.4g} ms" + (" (timed once)" if v["n_ctor"] == 1 else "")
            if "run" in v else f"{k}: not run to the end, {v['skipped']}" for k, v in peers.items())
        ctor_ratio = (b["run"] + b["ctor"]) / t_solve
        rows.append(TargetRow(
            f"tabular-dp {label}: solve to 1e-6 (ms)", COMMAND, t_solve * 1e3, "ms", b["run"] * 1e3,
            f"{peer_label} {best_name}.run(), the peer's fastest, same run; constructor + run "
            f"{(b['run'] + b['ctor']) * 1e3:.4g} ms = {ctor_ratio:.3g}x", higher_is_better=False,
            target=target, accurate=err <= TOL,
            notes=(f"target >= {target:g}x with max|V-V*| <= 1e-6; " if target else "no target; ")
            + f"{ours_note}; peer: {peer_notes}; {ref_note}; {load0}, {_load()} after"))
        vi = peers["ValueIteration"]
        rows.append(TargetRow(
            f"tabular-dp {label}: value_iteration to 1e-6 (ms)", COMMAND, t_vi * 1e3, "ms", vi["run"] * 1e3,
            f"{peer_label} ValueIteration.run(), same run; constructor + run "
            f"{(vi['run'] + vi['ctor']) * 1e3:.4g} ms = {(vi['run'] + vi['ctor']) / t_vi:.3g}x",
            higher_is_better=False, target=1.0, accurate=err_vi <= TOL,
            notes=(f"target: never slower than the peer's ValueIteration; ours: {tr.n_sweeps} sweeps "
                   f"(MacQueen-Porteus stop), max|V-V*| {err_vi:.1e}; peer: {vi['iter']} sweeps (span rule: "
                   f"an epsilon-optimal policy, V not certified), max|V-V*| {vi['err']:.1e}")))
        rows[-1].wall_s = rows[-2].wall_s = time.perf_counter() - t_start
    return rows


@bench("tabular-dp", suites=("quick", "full"),
       description="dp.solve and dp.value_iteration to 1e-6 on mazes, FrozenLake and random MDPs vs "
                   "pymdptoolbox's fastest solver")
def tabular_dp() -> list[Row]:
    """The bench entry: every case, best of 3 for every solver on both sides."""
    return measure(repeats=3)
