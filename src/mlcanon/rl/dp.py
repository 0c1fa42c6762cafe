"""Dynamic programming on finite MDPs: Bellman operators, policy evaluation, value and policy iteration.

Works on :class:`mlcanon.rl.mdp.MDP` with P dense [S, A, S] or scipy.sparse CSR [S*A, S] (row s*A + a).
Every backup is one matrix-vector product over all (s, a) pairs: no Python loop over states.
Terminal states are absorbing with value 0 (V[terminal] = 0 after every backup).
References: Sutton & Barto (2018) ch. 4 ("S&B"), Puterman (1994) ch. 6 ("Puterman").

Conventions: a policy is an [S, A] probability array or an int [S] array of actions; ``greedy`` breaks
ties to the lowest action index. At ``gamma == 1`` (episodic MDPs) iterative methods stop when the
sup-norm change of V falls below ``tol``. At ``gamma < 1`` value iteration and ``solve`` stop by the
MacQueen-Porteus bounds (Puterman sec. 6.6.3): the V returned is within ``tol`` of V* in sup-norm.
``solve`` is the fastest exact solver here (modified / policy iteration with sparse LU evaluation).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mlcanon.errors import UserError
from mlcanon.rl.mdp import MDP

# y += A x in place for CSR and DIA A: scipy's kernels behind A @ x, without the output allocation and checks
try:
    from scipy.sparse._sparsetools import csr_matvec as _csr_matvec
    from scipy.sparse._sparsetools import dia_matvec as _dia_matvec
except ImportError:                     # a scipy that moved them: A @ x, and no diagonal storage
    _csr_matvec = _dia_matvec = None

__all__ = [
    "VITrace",
    "bellman_expectation",
    "bellman_optimality",
    "greedy",
    "modified_policy_iteration",
    "policy_evaluation",
    "policy_evaluation_exact",
    "policy_iteration",
    "policy_matrix",
    "policy_value_gap",
    "q_from_v",
    "solve",
    "value_iteration",
    "value_iteration_bounds",
    "value_iteration_trace",
]


# --- operators ---------------------------------------------------------------------------------------

def q_from_v(mdp: MDP, V: np.ndarray) -> np.ndarray:
    """Q(s,a) = R(s,a) + gamma * sum_s' P(s'|s,a) V(s')  -> [S, A] (S&B eq. 4.6); 0 at terminal states."""
    V = _check_v(mdp, V)
    Q = mdp.R + mdp.gamma * mdp.expected_next(V)     # Q = r + gamma P V
    Q[mdp.terminal] = 0.0                            # absorbing states have value 0
    return Q


def greedy(Q: np.ndarray) -> np.ndarray:
    """pi(s) = argmax_a Q(s,a) as int [S] (or [..., S] for Q [..., S, A], e.g. one table per seed), ties broken
    to the lowest action index: the one deterministic greedy policy of the package."""
    Q = np.asarray(Q)
    if Q.ndim < 2:
        raise ValueError(f"greedy expects Q of shape [..., S, A], got {Q.shape}")
    return np.argmax(Q, axis=-1).astype(np.int64)    # np.argmax returns the first maximizer


def bellman_optimality(mdp: MDP, V: np.ndarray) -> np.ndarray:
    """(T V)(s) = max_a [R(s,a) + gamma sum_s' P(s'|s,a) V(s')]  (S&B eq. 4.10)."""
    return q_from_v(mdp, V).max(axis=1)


def policy_matrix(mdp: MDP, policy) -> np.ndarray:
    """A policy as an [S, A] probability array (int [S] actions become one-hot rows), validated."""
    S, A = mdp.num_states, mdp.num_actions
    pi = np.asarray(policy)
    if pi.ndim == 1:
        if pi.shape != (S,) or not np.issubdtype(pi.dtype, np.integer):
            raise UserError(f"a deterministic policy must be an int array of shape [{S}], got "
                            f"{pi.dtype} {pi.shape}")
        if pi.min() < 0 or pi.max() >= A:
            raise UserError(f"policy actions must be in [0, {A}), got range [{pi.min()}, {pi.max()}]")
        out = np.zeros((S, A))
        out[np.arange(S), pi] = 1.0
        return out
    if pi.shape != (S, A):
        raise UserError(f"a stochastic policy must have shape [S, A] = [{S}, {A}], got {pi.shape}")
    pi = pi.astype(np.float64)
    if (pi < -1e-12).any() or not np.allclose(pi.sum(1), 1.0, atol=1e-6):
        raise UserError("policy rows must be probability distributions (non-negative, summing to 1)")
    return pi


def _policy_model(mdp: MDP, pi: np.ndarray):
    """(P_pi [S, S] dense or sparse, r_pi [S]) with P_pi(s,s') = sum_a pi(a|s) P(s'|s,a) (S&B eq. 4.4)."""
    S, A = pi.shape
    r_pi = (pi * mdp.R).sum(1)                                        # r_pi(s) = sum_a pi(a|s) R(s,a)
    if mdp.is_sparse:
        import scipy.sparse as sp
        rows = np.repeat(np.arange(S), A)
        Pi = sp.csr_matrix((pi.ravel(), (rows, np.arange(S * A))), shape=(S, S * A))
        P_pi = (Pi @ mdp.P).tocsr()                                  # [S, S*A] @ [S*A, S]
    else:
        P_pi = np.einsum("sa,sat->st", pi, mdp.P)
    return P_pi, r_pi


def bellman_expectation(mdp: MDP, policy, V: np.ndarray) -> np.ndarray:
    """(T_pi V)(s) = sum_a pi(a|s) [R(s,a) + gamma sum_s' P(s'|s,a) V(s')]  (S&B eq. 4.5)."""
    pi = policy_matrix(mdp, policy)
    return (pi * q_from_v(mdp, V)).sum(1)


# --- policy evaluation -------------------------------------------------------------------------------

def policy_evaluation(mdp: MDP, policy, tol: float = 1e-10, max_iter: int = 100_000,
                      V0: np.ndarray | None = None) -> np.ndarray:
    """V_pi by iterating V_{k+1} = r_pi + gamma P_pi V_k until ||V_{k+1} - V_k||_inf < tol (S&B sec. 4.1).

    Works at gamma == 1 on episodic MDPs; raises UserError when V_pi does not exist (gamma == 1 and the
    policy earns non-zero reward forever without reaching a terminal state) or when max_iter is hit.
    """
    _check_tol(tol, max_iter)
    pi = policy_matrix(mdp, policy)
    P_pi, r_pi = _policy_model(mdp, pi)
    live = ~mdp.terminal
    r_pi = np.where(live, r_pi, 0.0)
    if mdp.gamma == 1.0:
        _check_proper(mdp, P_pi, r_pi)
    V = np.zeros(mdp.num_states) if V0 is None else _check_v(mdp, V0).copy()
    V[mdp.terminal] = 0.0
    for _ in range(max_iter):
        V_new = r_pi + mdp.gamma * np.asarray(P_pi @ V).ravel()    # V <- r_pi + gamma P_pi V  (S&B eq. 4.5)
        V_new[mdp.terminal] = 0.0
        delta = np.abs(V_new - V).max()
        V = V_new
        if delta < tol:
            return V
    raise UserError(f"policy_evaluation did not converge in max_iter={max_iter} sweeps (last change "
                    f"{delta:.3g} >= tol={tol}); raise max_iter, loosen tol, or use gamma < 1")


def policy_evaluation_exact(mdp: MDP, policy) -> np.ndarray:
    """V_pi = (I - gamma P_pi)^{-1} r_pi on non-terminal states by a (sparse) linear solve (S&B eq. 4.4).

    Needs gamma < 1, or gamma == 1 with a proper policy (one that reaches a terminal state w.p. 1).
    """
    pi = policy_matrix(mdp, policy)
    P_pi, r_pi = _policy_model(mdp, pi)
    if mdp.gamma == 1.0:
        _check_proper(mdp, P_pi, r_pi, strict=True)
    return _linear_solve(mdp, P_pi, r_pi)


def _linear_solve(mdp: MDP, P_pi, r_pi: np.ndarray) -> np.ndarray:
    live = np.where(~mdp.terminal)[0]
    V = np.zeros(mdp.num_states)
    if live.size == 0:
        return V
    if mdp.is_sparse:
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla
        M = P_pi[live][:, live]
        lhs = (sp.identity(live.size, format="csc") - mdp.gamma * M).tocsc()   # (I - gamma P_pi)
        V[live] = spla.spsolve(lhs, r_pi[live])
    else:
        M = P_pi[np.ix_(live, live)]
        V[live] = np.linalg.solve(np.eye(live.size) - mdp.gamma * M, r_pi[live])   # (I - gamma P_pi) V = r_pi
    return V


def _check_proper(mdp: MDP, P_pi, r_pi: np.ndarray, strict: bool = False) -> None:
    """At gamma == 1: states that cannot reach a terminal state under pi must earn zero reward (else V_pi
    diverges); with strict=True (linear solve) every non-terminal state must reach a terminal state."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import breadth_first_order
    S = mdp.num_states
    G = sp.csr_matrix(P_pi) if not sp.issparse(P_pi) else P_pi
    G = sp.csr_matrix((G > 0).astype(np.int8))
    # reverse graph s' -> s plus a virtual source S linked to every terminal state
    term = np.where(mdp.terminal)[0]
    Gc = G.tocoo()
    rows = np.concatenate([Gc.col, np.full(term.size, S)])          # edge s' -> s for every P_pi(s'|s) > 0
    cols = np.concatenate([Gc.row, term])
    rev = sp.csr_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(S + 1, S + 1))
    reach = np.zeros(S + 1, dtype=bool)
    reach[breadth_first_order(rev, S, directed=True, return_predecessors=False)] = True
    stuck = ~reach[:S] & ~mdp.terminal
    if not stuck.any():
        return
    if strict or np.abs(r_pi[stuck]).max() > 0:
        s = int(np.argmax(stuck))
        raise UserError(f"with gamma=1 the policy never reaches a terminal state from state {s} "
                        f"({int(stuck.sum())} such states) and its value diverges; use gamma < 1 or a "
                        f"policy that terminates (e.g. the uniform random policy)")


# --- value iteration ---------------------------------------------------------------------------------

@dataclasses.dataclass
class VITrace:
    """Result of value iteration with its history: V, greedy policy, per-sweep sup-norm changes
    ||V_{k+1} - V_k||, and ``bound``: the certified max_s |V(s) - V*(s)| (nan at gamma == 1, no bound)."""
    V: np.ndarray
    policy: np.ndarray
    deltas: np.ndarray
    bound: float = float("nan")

    @property
    def n_sweeps(self) -> int:
        """Number of Bellman optimality sweeps performed."""
        return int(self.deltas.size)


def _rowmax(Q: np.ndarray) -> np.ndarray:
    """max_a Q[s, a] by A - 1 elementwise maxima over the columns (numpy's axis-1 reduction over a handful of
    actions is about 10x slower)."""
    m = Q[:, 0].copy()
    for a in range(1, Q.shape[1]):
        np.maximum(m, Q[:, a], out=m)
    return m


def _rowargmax(Q: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """The lowest a with Q[s, a] == max_a Q[s, a] (np.argmax(Q, 1) without its slow reduction over a handful of
    actions: see _rowmax)."""
    m = _rowmax(Q) if m is None else m
    eq = Q == m[:, None]                             # [S, A]: the maximizers of each row
    word = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(Q.shape[1])
    if word is not None and eq.flags.c_contiguous:   # a row of A bools as one little-endian word: the lowest
        x = eq.view(word).ravel()                    # maximizer is the lowest set byte
        low = x & (~x + word(1))                     # the lowest set bit alone
        return (np.bitwise_count(low - word(1)) >> 3).astype(np.int64)     # its bit index / 8
    pol = np.zeros(Q.shape[0], dtype=np.int64)
    for a in range(Q.shape[1] - 1, 0, -1):           # descending, so the lowest maximizer is written last
        np.copyto(pol, a, where=eq[:, a])
    np.copyto(pol, 0, where=eq[:, 0])
    return pol


def _vi_threshold(gamma: float, tol: float) -> float:
    # ||V_{k+1} - V_k|| < eps (1 - gamma) / (2 gamma) => greedy policy eps-optimal (Puterman thm. 6.3.1)
    return tol if gamma == 1.0 else tol * (1.0 - gamma) / (2.0 * gamma) if gamma > 0 else np.inf


def _backup(Pm, R: np.ndarray, g: float, term: np.ndarray, V: np.ndarray):
    """One Bellman optimality backup: (T V [S] with 0 at terminal states, Q [S, A]); V = None means V = 0.
    ``Pm``: P as a [S*A, S] matrix (dense or CSR) or a :class:`_Diagonals`."""
    if isinstance(Pm, _Diagonals) and V is not None:
        Q = Pm.backup(R, g * V)                      # Q = r + P (gamma V), P by diagonals  (S&B eq. 4.6)
    else:
        Q = np.array(R)                              # P 0 = 0: the backup of V = 0 needs no matrix product
        if V is not None:
            _affine(Pm, Q.reshape(-1), g * V, Q.reshape(-1))   # Q = r + P (gamma V)  (S&B eq. 4.6)
    TV = _rowmax(Q)                                  # (T V)(s) = max_a Q(s, a)  (S&B eq. 4.10)
    TV[term] = 0.0
    return TV, Q


def _porteus(TV: np.ndarray, V: np.ndarray, c: float):
    """MacQueen-Porteus bounds (Puterman thm. 6.6.3): with D = TV - V and c = gamma / (1 - gamma),
    TV + c min D <= V* <= TV + c max D, so the midpoint TV + c (max D + min D) / 2 is within c span(D) / 2 of
    V* in sup-norm. Returns (the sup-norm change max|D|, the bound c span(D) / 2, the midpoint shift)."""
    D = TV - V
    lo, hi = float(D.min()), float(D.max())
    return max(hi, -lo), c * (hi - lo) / 2.0, c * (hi + lo) / 2.0


def value_iteration_trace(mdp: MDP, tol: float = 1e-10, max_iter: int = 100_000,
                          V0: np.ndarray | None = None, dtype=np.float64) -> VITrace:
    """Value iteration V_{k+1} = T V_k (S&B eq. 4.10) recording every sweep's sup-norm change.

    Stopping rule, gamma < 1: the MacQueen-Porteus bounds (Puterman sec. 6.6.3, see :func:`_porteus`): stop
    once gamma / (1 - gamma) * span(V_{k+1} - V_k) / 2 <= tol and return the midpoint of the bounds, so that
    max_s |V(s) - V*(s)| <= tol is guaranteed; the greedy policy (of the last backup) is 2 tol-optimal
    (V* - V_pi <= gamma / (1 - gamma) span(V_{k+1} - V_k), Puterman thm. 6.6.6). The span shrinks at least as
    fast as the sup-norm change, often much faster (gamma times the mixing rate of P), so this never takes
    more sweeps than the rule ||V_{k+1} - V_k|| < tol (1 - gamma) / (2 gamma) and often far fewer.
    gamma == 1 (episodic MDPs): stop when ||V_{k+1} - V_k|| < tol; no bound to V* exists in general then.
    ``dtype=np.float32`` halves memory traffic (tol must stay above float32 round-off of |V|).
    """
    _check_tol(tol, max_iter)
    g = mdp.gamma
    c = g / (1.0 - g) if g < 1.0 else 0.0           # (no bound at gamma == 1)
    Pm = mdp.P_matrix().astype(dtype) if dtype != np.float64 else mdp.P_matrix()
    R = mdp.R.astype(dtype)
    term = mdp.terminal
    V = None if V0 is None else _check_v(mdp, V0).astype(dtype)
    if V is not None:
        V[term] = 0
    deltas = []
    for _ in range(max_iter):
        TV, Q = _backup(Pm, R, dtype(g), term, V)             # V_{k+1} = T V_k
        delta, bound, shift = _porteus(TV, np.zeros_like(TV) if V is None else V, c)
        deltas.append(delta)
        if bound <= tol if g < 1.0 else delta < tol:
            pol = _rowargmax(Q)                               # greedy policy of the last backup
            pol[term] = 0
            if g < 1.0:
                TV = TV.astype(np.float64) + shift            # midpoint of the Porteus bounds
                TV[term] = 0.0
            return VITrace(TV.astype(np.float64), pol, np.array(deltas), bound if g < 1.0 else float("nan"))
        if not np.isfinite(delta):
            break
        V = TV
    raise UserError(f"value_iteration did not converge in max_iter={max_iter} sweeps (last change "
                    f"{deltas[-1]:.3g}); raise max_iter, loosen tol, or use gamma < 1 "
                    f"(at gamma=1 every state must be able to reach a terminal state)")


def value_iteration(mdp: MDP, tol: float = 1e-10, max_iter: int = 100_000,
                    return_trace: bool = False):
    """(V, greedy policy) by value iteration (S&B sec. 4.4); ``return_trace=True`` gives a VITrace.

    Guarantee at gamma < 1: max_s |V(s) - V*(s)| <= tol (MacQueen-Porteus bounds, see
    :func:`value_iteration_trace`) and the policy is 2 tol-optimal. At gamma == 1 it stops when the largest
    value change of a sweep is below tol. For the fastest solver of a problem use :func:`solve`.
    """
    tr = value_iteration_trace(mdp, tol=tol, max_iter=max_iter)
    return tr if return_trace else (tr.V, tr.policy)


# --- policy iteration --------------------------------------------------------------------------------

def _improve(Q: np.ndarray, old: np.ndarray | None, atol: float) -> np.ndarray:
    """Greedy improvement pi'(s) = argmax_a Q(s,a) (S&B eq. 4.9), keeping the old action on near-ties
    (prevents cycling between equally good policies)."""
    new = greedy(Q)
    if old is not None:
        q_old = Q[np.arange(Q.shape[0]), old]
        keep = q_old >= Q.max(1) - atol
        new = np.where(keep, old, new)
    return new


def policy_iteration(mdp: MDP, tol: float = 1e-10, max_iter: int = 10_000, policy0=None,
                     eval_max_iter: int = 100_000):
    """(V*, pi*, n_iterations) by policy iteration (S&B sec. 4.3): exact evaluation then greedy improvement
    until the policy is stable. Evaluation is a (sparse) linear solve when gamma < 1 and iterative (warm
    started) at gamma == 1. Starts from ``policy0`` or the uniform random policy (proper on episodic MDPs
    where every state can reach a terminal state).
    """
    _check_tol(tol, max_iter)
    S, A = mdp.num_states, mdp.num_actions
    pi = np.full((S, A), 1.0 / A) if policy0 is None else policy_matrix(mdp, policy0)
    old = None
    V = np.zeros(S)
    for it in range(1, max_iter + 1):
        if mdp.gamma < 1.0:
            P_pi, r_pi = _policy_model(mdp, pi)
            V = _linear_solve(mdp, P_pi, r_pi)                        # V = (I - gamma P_pi)^{-1} r_pi
        else:
            V = policy_evaluation(mdp, pi, tol=tol * 1e-2, max_iter=eval_max_iter, V0=V)
        new = _improve(q_from_v(mdp, V), old, atol=max(tol, 1e-12) * 10)   # pi' = greedy(Q_pi)
        if old is not None and np.array_equal(new, old):
            return V, new, it
        old = new
        pi = policy_matrix(mdp, new)
    raise UserError(f"policy_iteration did not stabilize in max_iter={max_iter} iterations; raise max_iter")


def modified_policy_iteration(mdp: MDP, m: int = 20, tol: float = 1e-10, max_iter: int = 100_000,
                              dtype=np.float64):
    """(V, pi, n_iterations) by modified policy iteration (Puterman sec. 6.5): each iteration does one
    Bellman optimality backup (greedy improvement) and m - 1 partial evaluation sweeps of that policy;
    stops with the value-iteration rule on the optimality backup, so pi is tol-optimal (gamma < 1).
    """
    _check_tol(tol, max_iter)
    if m < 1:
        raise UserError(f"modified_policy_iteration needs m >= 1 evaluation sweeps, got m={m}")
    thr = _vi_threshold(mdp.gamma, tol)
    S, A = mdp.num_states, mdp.num_actions
    Pm = mdp.P_matrix().astype(dtype) if dtype != np.float64 else mdp.P_matrix()
    R = mdp.R.astype(dtype)
    g = dtype(mdp.gamma)
    term = mdp.terminal
    V = np.zeros(S, dtype)
    idx = np.arange(S)
    rows = idx * A
    for it in range(1, max_iter + 1):
        Q = R + g * np.asarray(Pm @ V).reshape(S, A)                # Q = r + gamma P V
        pol = np.argmax(Q, 1)                                        # greedy improvement
        TV = Q[idx, pol]
        TV[term] = 0
        delta = float(np.abs(TV - V).max())
        V = TV
        if delta < thr:
            V = V.astype(np.float64)
            return V, greedy(q_from_v(mdp, V)), it
        if not np.isfinite(delta):
            break
        P_pi = Pm[rows + pol]                                        # rows (s, pi(s)) of P: P_pi [S, S]
        r_pi = np.where(term, 0, R[idx, pol]).astype(dtype)
        for _ in range(m - 1):
            V = r_pi + g * np.asarray(P_pi @ V).ravel()              # V <- T_pi V  (partial evaluation)
            V[term] = 0
    raise UserError(f"modified_policy_iteration did not converge in max_iter={max_iter} iterations; raise "
                    f"max_iter, loosen tol, or use gamma < 1")


def value_iteration_bounds(mdp: MDP, tol: float = 1e-6, max_iter: int = 100_000, m: int = 1,
                           dtype=np.float64):
    """(V, policy, n_backups): value iteration (m = 1) or modified policy iteration (m > 1 partial
    evaluation sweeps per backup) stopped by the MacQueen-Porteus bounds (Puterman sec. 6.6.3), gamma < 1.

    For any V, with D = TV - V:  TV + g/(1-g) min D  <=  V*  <=  TV + g/(1-g) max D, so the midpoint
    V_hat = TV + g/(1-g) (max D + min D)/2 is within g/(1-g) span(D)/2 of V* in sup-norm. We stop once
    that bound is < tol: V_hat is tol-accurate and the policy greedy w.r.t. V 2 tol-optimal. The span of D often
    shrinks much faster than its sup-norm (it contracts at gamma times the mixing rate of P), hence far
    fewer sweeps than the sup-norm rule. Terminal rows act as zero-reward self-loops.
    """
    _check_tol(tol, max_iter)
    if not mdp.gamma < 1.0:
        raise UserError("value_iteration_bounds needs gamma < 1; use value_iteration at gamma == 1")
    if m < 1:
        raise UserError(f"m must be >= 1 evaluation sweeps per backup, got m={m}")
    S, A = mdp.num_states, mdp.num_actions
    Pm = mdp.P_matrix().astype(dtype) if dtype != np.float64 else mdp.P_matrix()
    R = mdp.R.astype(dtype)
    g = dtype(mdp.gamma)
    c = mdp.gamma / (1.0 - mdp.gamma)
    term = mdp.terminal
    idx = np.arange(S)
    V = np.zeros(S, dtype)
    for it in range(1, max_iter + 1):
        Q = R + g * np.asarray(Pm @ V).reshape(S, A)                # Q = r + gamma P V
        pol = np.argmax(Q, 1)
        TV = Q[idx, pol]                                             # T V = max_a Q
        TV[term] = 0
        D = TV - V
        lo, hi = float(D.min()), float(D.max())
        if c * (hi - lo) / 2.0 < tol:                                # g/(1-g) span(TV - V)/2 < tol
            V_hat = TV.astype(np.float64) + c * (hi + lo) / 2.0      # midpoint of the Porteus bounds
            V_hat[term] = 0.0
            # the greedy policy of V (the one that gave T V) is already 2 tol-optimal under this stopping
            # rule (Puterman Thm 6.6.6: span(TV - V) < (1-g)/g * eps => eps-optimal), so no extra backup
            return V_hat, pol, it
        V = TV
        if m > 1:
            P_pi = Pm[idx * A + pol]                                 # rows (s, pi(s)) of P
            r_pi = np.where(term, 0, R[idx, pol]).astype(dtype)
            for _ in range(m - 1):
                V = r_pi + g * np.asarray(P_pi @ V).ravel()          # V <- T_pi V (partial evaluation)
                V[term] = 0
    raise UserError(f"value_iteration_bounds did not converge in max_iter={max_iter} backups; raise "
                    f"max_iter or loosen tol")


# --- the solver users call ---------------------------------------------------------------------------

_DIRECT_DENSE_MAX_S = 4096      # dense LU (S^3 / 3 flops) beyond this: keep iterating instead
_SMALL_DENSE_S = 256            # below this a dense solve is cheaper than a few sweeps: evaluate exactly at once
_VI_FINISH = 50                 # value iteration goes on while its bound projects at most this many sweeps
_EVAL_SWEEPS = 20               # partial evaluation sweeps per iteration of modified policy iteration
_EXACT_AFTER = 200              # a stable policy whose evaluation projects more sweeps: one LU solve instead
_FORCING = 1e-3                 # inexact evaluation: to within this fraction of the current Bellman bound


def _policy_rows(Pm, R: np.ndarray, pol: np.ndarray, term: np.ndarray, sparse: bool):
    """(P_pi [S, S], r_pi [S]) of a deterministic policy: rows (s, pi(s)) of P, terminal rows zeroed."""
    rows = np.arange(R.shape[0]) * R.shape[1] + pol
    r_pi = _policy_rewards(R, pol, term)
    if sparse:
        P_pi = _csr_rows(Pm, rows, ~term if term.any() else None)  # P_pi(s, s') = P(s' | s, pi(s))
    else:
        P_pi = np.take(Pm, rows, axis=0)
        P_pi[term] = 0.0                                           # V(terminal) = 0: no successors
    return P_pi, r_pi


def _policy_rewards(R: np.ndarray, pol: np.ndarray, term: np.ndarray) -> np.ndarray:
    """r_pi(s) = R(s, pi(s)), 0 at terminal states."""
    r_pi = R[np.arange(R.shape[0]), pol]
    r_pi[term] = 0.0
    return r_pi


def _csr_rows(Pm, rows: np.ndarray, keep: np.ndarray | None):
    """The CSR matrix of rows ``rows`` of CSR ``Pm`` (rows with keep == False left empty), gathered by two numpy
    index operations (scipy's row fancy indexing costs about 4x more on a 10,000-row policy)."""
    import scipy.sparse as sp
    indptr = Pm.indptr
    start = indptr[rows]
    lens = indptr[rows + 1] - start
    if keep is not None:
        lens = np.where(keep, lens, 0)
    ptr = np.zeros(rows.size + 1, dtype=indptr.dtype)
    np.cumsum(lens, out=ptr[1:])
    pos = np.repeat(start - ptr[:-1], lens) + np.arange(ptr[-1], dtype=indptr.dtype)   # source index of each entry
    out = sp.csr_matrix((Pm.data[pos], Pm.indices[pos], ptr), shape=(rows.size, Pm.shape[1]))
    out.has_sorted_indices = Pm.has_sorted_indices
    return out


def _affine(P, r: np.ndarray, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = r + P x without temporaries (CSR: one mat-vec accumulating into a copy of r; dense: one gemv).
    ``out`` may be ``r`` itself. Callers pass x = gamma V: r_pi + P_pi (gamma V) needs no scaled copy of P."""
    if (not isinstance(P, np.ndarray) and _csr_matvec is not None and P.indices.dtype == P.indptr.dtype
            and P.data.dtype == x.dtype == out.dtype):
        if out is not r:
            np.copyto(out, r)
        _csr_matvec(P.shape[0], P.shape[1], P.indptr, P.indices, P.data, x, out)   # out += P x
    else:
        np.add(r, P @ x, out=out)                   # (dense: np.dot takes 4x longer than @ here)
    return out


class _Diagonals:
    """P stored by diagonals, one [n_diag, S] band per action (scipy's DIA layout: entry (s, s + d) of P_a at
    data[a, k, s + d] for offset d = offsets[k]), for MDPs whose transitions have few distinct offsets s' - s:
    grid worlds, mazes, chains. A mat-vec then streams n_diag contiguous rows instead of CSR's indirect reads
    (about 2.5x faster on the 100 x 100 maze), and P_pi is one gather of n_diag x S entries. Terminal rows are
    zero, as in _policy_rows."""

    def __init__(self, Pm, S: int, A: int, term: np.ndarray, offsets: np.ndarray, rows: np.ndarray):
        s = rows // A
        a = rows - s * A
        live = ~term[s]                                            # V(terminal) = 0: no successors
        nd = offsets.size
        lut = np.zeros(2 * S, dtype=np.int64)
        lut[offsets + S] = np.arange(nd)
        k = lut[Pm.indices - s + S]                                # the diagonal of each entry
        flat = ((a * nd + k) * S + Pm.indices)[live]               # DIA stores entry (s, s + d) at column s + d
        if Pm.has_canonical_format:                                # no duplicate entries: one scatter
            self.data = np.zeros(A * nd * S)
            self.data[flat] = Pm.data[live]
            self.data = self.data.reshape(A, nd, S)
        else:                                                      # duplicates are summed, as P @ x does
            self.data = np.bincount(flat, weights=Pm.data[live], minlength=A * nd * S).reshape(A, nd, S)
        self.offsets = offsets.astype(Pm.indptr.dtype)
        self.S, self.A, self.nd = S, A, nd
        src_row = np.arange(S)[None, :] - offsets[:, None]          # the row s that entry (k, j) belongs to
        self._src = np.clip(src_row, 0, S - 1)                     # (out of range: data is 0 for every action)
        self._base = np.arange(nd * S).reshape(nd, S)

    @staticmethod
    def offsets_of(Pm, S: int, A: int):
        """(the sorted distinct offsets s' - s of P's entries, the row index of each entry)."""
        rows = np.repeat(np.arange(Pm.shape[0], dtype=Pm.indptr.dtype), np.diff(Pm.indptr))
        seen = np.bincount(Pm.indices - rows // A + S, minlength=2 * S)
        return np.flatnonzero(seen) - S, rows

    def backup(self, R: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Q [S, A] = R + P x: one diagonal mat-vec per action (into rows of Q^T, then laid out as [S, A])."""
        QT = np.array(R.T)
        for a in range(self.A):
            _dia_matvec(self.S, self.S, self.nd, self.S, self.offsets, self.data[a], x, QT[a])   # += P_a x
        return np.ascontiguousarray(QT.T)

    def policy(self, pol: np.ndarray) -> np.ndarray:
        """P_pi as diagonals [n_diag, S]: entry (k, j) from the band of action pi(j - offsets[k])."""
        return self.data.reshape(-1)[pol[self._src] * (self.nd * self.S) + self._base]

    def sweep(self, band: np.ndarray, r: np.ndarray, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out = r + B x for a band B from :meth:`policy` (gamma P_pi once scaled by gamma)."""
        np.copyto(out, r)
        _dia_matvec(self.S, self.S, self.nd, self.S, self.offsets, band, x, out)
        return out


def _policy_operator(P_pi, r_pi: np.ndarray, g: float, W: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = T_pi W = r_pi + P_pi (gamma W) (Puterman eq. 6.5.2's operator), CSR or dense P_pi."""
    return _affine(P_pi, r_pi, g * W, out)


def _exact_evaluation(P_pi, r_pi: np.ndarray, g: float, sparse: bool) -> np.ndarray:
    """V_pi = (I - gamma P_pi)^{-1} r_pi (Puterman eq. 6.4.2): sparse LU (SuperLU) or dense LU.

    I - gamma P_pi is strictly diagonally dominant for gamma < 1, so it is factored with diagonal pivots and a
    symmetric fill-reducing ordering (minimum degree on the pattern of A + A^T)."""
    S = r_pi.size
    if sparse:
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla
        M = (sp.identity(S, format="csr") - g * P_pi).tocsc()
        lu = spla.splu(M, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        V = lu.solve(r_pi)
        return V + lu.solve(r_pi - M @ V)                          # one step of iterative refinement
    M = P_pi * -g
    M[np.diag_indices(S)] += 1.0                                   # I - gamma P_pi
    return np.linalg.solve(M, r_pi)


def _partial_evaluation(apply, g: float, term: np.ndarray, W: np.ndarray, target: float, max_sweeps: int,
                        enough: float = 0.0):
    """Iterate W <- T_pi W = r_pi + gamma P_pi W (the partial evaluation of Puterman sec. 6.5) until the midpoint
    of the Porteus bounds on V_pi (thm. 6.6.3 applied to T_pi) is within ``target`` of V_pi, or the bound is
    below ``enough`` (an inexact evaluation: the iterate is returned without the midpoint shift, which is only as
    good as its bound), at most ``max_sweeps`` sweeps; ``apply(W, out)`` writes T_pi W = r_pi + gamma P_pi W to
    out. Returns
    (W, sweeps, converged to target, projected sweeps still needed to reach target; 0 when converged)."""
    c = g / (1.0 - g)
    first = None
    stop = max(target, enough)
    W, TW = W.copy(), np.empty_like(W)
    for j in range(1, max_sweeps + 1):
        apply(W, TW)                    # T_pi W = r_pi + gamma P_pi W (terminal rows and entries of r_pi are 0)
        if j <= 2 or j & (j - 1) == 0 or j == max_sweeps:        # j = 1, 2, 4, 8, ...: a bound costs half a sweep
            _, bound, shift = _porteus(TW, W, c)                 # the Porteus bounds of T_pi
            if first is None:
                first = bound
            if bound <= stop:
                W, TW = TW, W
                break
        W, TW = TW, W
    if bound > target:                  # plain T_pi^j V, as MPI; the midpoint is only as good as its bound,
        rate = (bound / first) ** (1.0 / max(j - 1, 1)) if first > 0 else 1.0   # loose in absorbing chains
        projected = np.log(target / bound) / np.log(rate) if 0 < rate < 1 else np.inf
        return W, j, False, projected
    W += shift                          # converged: the midpoint of the bounds on V_pi
    W[term] = 0.0
    return W, j, True, 0.0


def solve(mdp: MDP, tol: float = 1e-6, max_iter: int = 10_000, stats: dict | None = None):
    """(V, policy) with max_s |V(s) - V*(s)| <= tol certified, by the fastest exact method here for the problem.

    gamma < 1: modified policy iteration (Puterman sec. 6.5): the policy pi_n greedy in the last backup
    Q_n = r + gamma P V_n is evaluated by up to ``_EVAL_SWEEPS`` partial evaluation sweeps V <- r_pi + gamma P_pi V
    (each about A times cheaper than a backup: P_pi is one row of P per state), to within ``_FORCING`` times the
    current Bellman bound (inexact policy iteration: policy iteration is Newton's method on the Bellman equation,
    Puterman & Brumelle 1979, and an inexact Newton step needs only that much accuracy, Dembo, Eisenstat &
    Steihaug 1982), then one backup. Variants by problem:
      - CSR P: gathering P_pi costs about three backups, so value iteration V_{n+1} = T V_n (Puterman sec. 6.3)
        goes on while its bound projects at most ``_VI_FINISH`` more sweeps (fast-mixing MDPs, e.g. random ones);
      - P whose entries lie on few diagonals (grid worlds, mazes): stored by diagonals (:class:`_Diagonals`),
        whose mat-vec streams contiguous memory (about 2.5x faster than CSR on a 100 x 100 maze);
      - dense P: P_pi is updated in place on the states whose action changed;
      - exact evaluation V_pi = (I - gamma P_pi)^{-1} r_pi by a sparse (SuperLU) or dense LU solve (policy
        iteration, Puterman sec. 6.4, eq. 6.4.2) for tiny dense MDPs, and once the policy holds between two
        backups while its partial evaluation projects more than ``_EXACT_AFTER`` sweeps.
    Every iteration ends with one Bellman optimality backup T V_n and stops by the MacQueen-Porteus bounds
    (Puterman thm. 6.6.3): TV + c min(TV - V) <= V* <= TV + c max(TV - V) with c = gamma / (1 - gamma); once
    c span(TV - V) / 2 <= tol the midpoint is returned, within tol of V* whatever the evaluation's round-off;
    the policy (greedy in that backup) is 2 tol-optimal (thm. 6.6.6). Policy iteration ends in finitely many
    iterations (Puterman thm. 6.4.2), modified policy iteration converges for any evaluation depth (thm. 6.5.5).

    gamma == 1 (episodic MDPs): value iteration (sup-norm stop) for a proper policy, then that policy is
    evaluated exactly and kept when greedy in its own values (TV_pi = V_pi: V_pi = V*); otherwise the value
    iteration answer is returned. ``stats`` (a dict) receives the counts of backups, sweeps and solves.
    """
    _check_tol(tol, max_iter)
    st = {"backups": 0, "eval_sweeps": 0, "solves": 0, "iterations": 0}
    if mdp.gamma == 1.0:
        out = _solve_episodic(mdp, tol, st)
    else:
        out = _solve_discounted(mdp, tol, max_iter, st)
    if stats is not None:
        stats.update(st)
    return out


def _diagonals(Pm, S: int, A: int, term: np.ndarray, sparse: bool):
    """A :class:`_Diagonals` copy of P when its entries lie on few diagonals (padding at most 2x the entries, so
    the contiguous DIA mat-vec wins), else None. Random sparse MDPs are rejected from a sample of their rows."""
    if not sparse or _dia_matvec is None or S < 2:
        return None
    limit = 2 * Pm.nnz // (S * A)                                  # diagonals affordable per action
    head = Pm[: min(S * A, 4096)]
    if _Diagonals.offsets_of(head, S, A)[0].size > limit:
        return None
    offsets, rows = _Diagonals.offsets_of(Pm, S, A)
    return _Diagonals(Pm, S, A, term, offsets, rows) if offsets.size <= limit else None


def _solve_discounted(mdp: MDP, tol: float, max_iter: int, st: dict):
    S, A = mdp.num_states, mdp.num_actions
    Pm, g, term, sparse = mdp.P_matrix(), float(mdp.gamma), mdp.terminal, mdp.is_sparse
    R = np.asarray(mdp.R, dtype=np.float64)
    c = g / (1.0 - g)
    # the evaluation accuracy at which the next backup can certify: if pi is optimal and |V - V_pi| <= e,
    # span(TV - V) <= 2 (1 + gamma) e, so c (1 + gamma) e <= tol / 2 leaves half the budget to round-off
    target = tol / (2.0 * c * (1.0 + g)) if g > 0 else tol
    exact = not sparse and S <= _SMALL_DENSE_S                    # tiny: policy iteration from the start
    can_exact = sparse or S <= _DIRECT_DENSE_MAX_S
    diag = _diagonals(Pm, S, A, term, sparse)                     # grid-like P: stored by diagonals

    backup = functools.partial(_backup, Pm if diag is None else diag, R, g, term)

    # value iteration while its bound projects at most _VI_FINISH more sweeps, where P_pi is costly to gather
    # (CSR: about three backups' worth); dense rows are updated in place, diagonals gathered cheaply: MPI at once
    vi = sparse and diag is None
    V = np.zeros(S)
    prev_bound, pol, P_pi, r_pi = None, None, None, None
    TV, Q = backup(None)                                          # T 0 = max_a R: no matrix product
    for it in range(1, max_iter + 1):
        st["iterations"] = it
        _, bound, shift = _porteus(TV, V, c)
        if bound <= tol:                                          # V* within `bound` of the midpoint
            V_hat = TV + shift
            V_hat[term] = 0.0
            pol = _rowargmax(Q)                                   # greedy in the last backup
            pol[term] = 0
            return V_hat, pol
        if vi and prev_bound is not None:
            rate = bound / prev_bound                             # the span contracts geometrically
            vi = rate < 1.0 and np.log(tol / bound) / np.log(rate) <= _VI_FINISH
        last_bound, prev_bound = prev_bound, bound
        if vi:
            V = TV                                                # value iteration V_{n+1} = T V_n
            TV, Q = backup(V)
            st["backups"] += 1
            continue
        prev_pol, pol = pol, _rowargmax(Q)                        # pi_n greedy in Q_n  (Puterman eq. 6.5.1)
        stable = prev_pol is not None and np.array_equal(pol, prev_pol)
        if exact and stable and bound > 0.5 * last_bound:
            raise UserError(f"solve: tol={tol} is below the round-off of the exact evaluation (the bound "
                            f"stays at {bound:.3g} for |V| ~ {np.abs(TV).max():.3g}); use a larger tol")
        if diag is not None:
            band = diag.policy(pol)                               # P_pi by diagonals,
            band *= g                                             # scaled once: T_pi W = r_pi + (gamma P_pi) W
            r_pi = _policy_rewards(R, pol, term)
            apply = functools.partial(diag.sweep, band, r_pi)
        else:
            if sparse or P_pi is None:
                P_pi, r_pi = _policy_rows(Pm, R, pol, term, sparse)
            elif not stable:                                      # dense: copy only the rows that changed
                s_new = np.flatnonzero(pol != prev_pol)
                P_pi[s_new] = Pm[s_new * A + pol[s_new]]
                r_pi[s_new] = R[s_new, pol[s_new]]
                P_pi[term], r_pi[term] = 0.0, 0.0
            apply = functools.partial(_policy_operator, P_pi, r_pi, g)
        if not exact:                                             # partial evaluation from T V_n (eq. 6.5.2)
            V, n, done, left = _partial_evaluation(apply, g, term, TV, target, _EVAL_SWEEPS, _FORCING * bound)
            st["eval_sweeps"] += n
            # the policy held and its evaluation would take many more sweeps: evaluate it exactly
            exact = not done and stable and can_exact and left > _EXACT_AFTER
        if exact:
            if diag is not None:
                P_pi, r_pi = _policy_rows(Pm, R, pol, term, sparse)
            V = _exact_evaluation(P_pi, r_pi, g, sparse)          # V_pi = (I - gamma P_pi)^{-1} r_pi
            st["solves"] += 1
        TV, Q = backup(V)                                         # T V_n and the next greedy policy
        st["backups"] += 1
    raise UserError(f"solve did not certify tol={tol} in max_iter={max_iter} iterations; raise max_iter or "
                    f"loosen tol (round-off of |V| ~ {np.abs(TV).max():.3g} may exceed it)")


def _solve_episodic(mdp: MDP, tol: float, st: dict):
    """gamma == 1: value iteration, then the exact value of its greedy policy when that policy is proper."""
    tr = value_iteration_trace(mdp, tol=tol)
    st["backups"] += tr.n_sweeps
    pol = tr.policy
    pi = policy_matrix(mdp, pol)
    P_pi, r_pi = _policy_model(mdp, pi)
    try:
        _check_proper(mdp, P_pi, r_pi, strict=True)
    except UserError:
        return tr.V, pol                                          # improper greedy policy: keep VI's answer
    V = _linear_solve(mdp, P_pi, r_pi)                            # V_pi on the live states (S&B eq. 4.4)
    st["solves"] += 1
    Q = q_from_v(mdp, V)
    if np.abs(Q.max(1) - V).max() <= tol and np.all(Q[np.arange(mdp.num_states), pol] >= Q.max(1) - tol):
        return V, pol                                             # T V_pi = V_pi: V_pi is V*
    return tr.V, pol


def policy_value_gap(mdp: MDP, policy, V_star: np.ndarray) -> float:
    """max_s (V*(s) - V_pi(s)): how far a policy is from optimal (0 for an optimal policy)."""
    if mdp.gamma < 1.0:
        V_pi = policy_evaluation_exact(mdp, policy)
    else:
        V_pi = policy_evaluation(mdp, policy)
    return float((np.asarray(V_star) - V_pi).max())


# --- input checks ------------------------------------------------------------------------------------

def _check_v(mdp: MDP, V) -> np.ndarray:
    V = np.asarray(V, dtype=np.float64)
    if V.shape != (mdp.num_states,):
        raise UserError(f"V must have shape [{mdp.num_states}], got {V.shape}")
    return V


def _check_tol(tol: float, max_iter: int) -> None:
    if not tol > 0:
        raise UserError(f"tol must be > 0, got {tol}")
    if max_iter < 1:
        raise UserError(f"max_iter must be >= 1, got {max_iter}")
