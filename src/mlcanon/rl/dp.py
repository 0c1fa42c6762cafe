"""Dynamic programming on finite MDPs: Bellman operators, policy evaluation, value and policy iteration.

Works on :class:`mlcanon.rl.mdp.MDP` with P dense [S, A, S] or scipy.sparse CSR [S*A, S] (row s*A + a).
Every backup is one matrix-vector product over all (s, a) pairs: no Python loop over states.
Terminal states are absorbing with value 0 (V[terminal] = 0 after every backup).
References: Sutton & Barto (2018) ch. 4 ("S&B"), Puterman (1994) ch. 6 ("Puterman").

Conventions: a policy is an [S, A] probability array or an int [S] array of actions; ``greedy`` breaks
ties to the lowest action index. At ``gamma == 1`` (episodic MDPs) iterative methods stop when the
sup-norm change of V falls below ``tol``; at ``gamma < 1`` value iteration uses the epsilon-optimal rule
||V_{k+1} - V_k|| < tol (1 - gamma) / (2 gamma) (Puterman thm. 6.3.1), so its greedy policy is tol-optimal.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mlcanon.errors import UserError
from mlcanon.rl.mdp import MDP

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
    """Result of value iteration with its history: V, greedy policy, per-sweep deltas ||V_{k+1}-V_k||."""
    V: np.ndarray
    policy: np.ndarray
    deltas: np.ndarray

    @property
    def n_sweeps(self) -> int:
        """Number of Bellman optimality sweeps performed."""
        return int(self.deltas.size)


def _vi_threshold(gamma: float, tol: float) -> float:
    # ||V_{k+1} - V_k|| < eps (1 - gamma) / (2 gamma) => greedy policy eps-optimal (Puterman thm. 6.3.1)
    return tol if gamma == 1.0 else tol * (1.0 - gamma) / (2.0 * gamma) if gamma > 0 else np.inf


def value_iteration_trace(mdp: MDP, tol: float = 1e-10, max_iter: int = 100_000,
                          V0: np.ndarray | None = None, dtype=np.float64) -> VITrace:
    """Value iteration V_{k+1} = T V_k (S&B eq. 4.10) recording every sweep's sup-norm change.

    ``dtype=np.float32`` halves memory traffic (tol must stay above float32 round-off of |V|).
    """
    _check_tol(tol, max_iter)
    thr = _vi_threshold(mdp.gamma, tol)
    S, A = mdp.num_states, mdp.num_actions
    Pm = mdp.P_matrix().astype(dtype) if dtype != np.float64 else mdp.P_matrix()
    R = mdp.R.astype(dtype)
    term = mdp.terminal
    g = dtype(mdp.gamma)
    V = np.zeros(S, dtype) if V0 is None else _check_v(mdp, V0).astype(dtype)
    V[term] = 0
    deltas = []
    for _ in range(max_iter):
        Q = R + g * np.asarray(Pm @ V).reshape(S, A)                # Q = r + gamma P V
        V_new = Q.max(1)                                             # V_{k+1} = max_a Q  (S&B eq. 4.10)
        V_new[term] = 0
        delta = float(np.abs(V_new - V).max())
        deltas.append(delta)
        V = V_new
        if delta < thr:
            V = V.astype(np.float64)
            return VITrace(V, greedy(q_from_v(mdp, V)), np.array(deltas))
        if not np.isfinite(delta):
            break
    raise UserError(f"value_iteration did not converge in max_iter={max_iter} sweeps (last change "
                    f"{deltas[-1]:.3g}, need < {thr:.3g}); raise max_iter, loosen tol, or use gamma < 1 "
                    f"(at gamma=1 every state must be able to reach a terminal state)")


def value_iteration(mdp: MDP, tol: float = 1e-10, max_iter: int = 100_000,
                    return_trace: bool = False):
    """(V*, greedy policy) by value iteration (S&B sec. 4.4); ``return_trace=True`` gives a VITrace."""
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


def solve(mdp: MDP, tol: float = 1e-6):
    """The fastest solver here to a sup-norm accuracy tol: value iteration with Porteus bounds when
    gamma < 1 (see value_iteration_bounds), plain value iteration at gamma == 1. Returns (V, policy)."""
    if mdp.gamma < 1.0:
        V, pi, _ = value_iteration_bounds(mdp, tol=tol)
        return V, pi
    return value_iteration(mdp, tol=tol)


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
