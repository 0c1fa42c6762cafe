"""Finite MDPs (DESIGN.md section 5): ``MDP(P, R, gamma, terminal)``.

``P[s, a, s']`` transition probabilities, ``R[s, a]`` expected immediate reward, ``gamma`` the discount,
``terminal[s]`` True for absorbing states whose value is 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mlcanon.errors import UserError


@dataclasses.dataclass
class MDP:
    P: np.ndarray            # [S, A, S] transition probabilities (dense) or a scipy.sparse matrix [S*A, S]
    R: np.ndarray            # [S, A] expected reward r(s, a) = sum_s' P(s'|s,a) r(s,a,s')
    gamma: float             # discount in [0, 1]
    terminal: np.ndarray     # [S] bool, absorbing states with value 0
    start: np.ndarray | None = None   # [S] initial-state distribution (None: uniform over non-terminal states)

    @property
    def num_states(self) -> int:
        return int(self.R.shape[0])

    @property
    def num_actions(self) -> int:
        return int(self.R.shape[1])

    def __post_init__(self):
        S, A = self.R.shape
        self.terminal = np.asarray(self.terminal, dtype=bool)
        if self.terminal.shape != (S,):
            raise UserError(f"MDP.terminal must have shape [{S}], got {self.terminal.shape}")
        if not 0.0 <= float(self.gamma) <= 1.0:
            raise UserError(f"MDP.gamma must be in [0, 1], got {self.gamma}")
        if self.start is None:
            nonterm = ~self.terminal
            self.start = nonterm / max(1, nonterm.sum()) if nonterm.any() else np.full(S, 1.0 / S)
        self.start = np.asarray(self.start, dtype=np.float64)
        if isinstance(self.P, np.ndarray):
            if self.P.shape != (S, A, S):
                raise UserError(f"MDP.P must have shape [{S}, {A}, {S}], got {self.P.shape}")
            sums = self.P.sum(-1)
            if not np.allclose(sums, 1.0, atol=1e-6):
                bad = np.argwhere(~np.isclose(sums, 1.0, atol=1e-6))[0]
                raise UserError(f"MDP.P[s={bad[0]}, a={bad[1]}] sums to {sums[tuple(bad)]:.6f}, not 1")
        elif _is_sparse(self.P):
            if self.P.shape != (S * A, S):
                raise UserError(f"sparse MDP.P must have shape [S*A, S] = [{S * A}, {S}] (row s*A + a), "
                                f"got {self.P.shape}")
            self.P = self.P.tocsr()
            sums = np.asarray(self.P.sum(axis=1)).ravel()
            if not np.allclose(sums, 1.0, atol=1e-6):
                i = int(np.argmax(~np.isclose(sums, 1.0, atol=1e-6)))
                raise UserError(f"MDP.P[s={i // A}, a={i % A}] (row {i}) sums to {sums[i]:.6f}, not 1")
        else:
            raise UserError(f"MDP.P must be a numpy array [S, A, S] or a scipy.sparse matrix [S*A, S], "
                            f"got {type(self.P).__name__}")
        if self.start.shape != (S,) or not np.isclose(self.start.sum(), 1.0):
            raise UserError(f"MDP.start must be a distribution of shape [{S}] summing to 1")

    # --- helpers shared by dynamic programming and the samplers -------------------------------------

    @property
    def is_sparse(self) -> bool:
        """True when P is stored as a scipy.sparse CSR matrix [S*A, S]."""
        return _is_sparse(self.P)

    def P_matrix(self):
        """P as a 2-D [S*A, S] matrix (row s*A + a): a reshaped view (dense) or the CSR matrix (sparse)."""
        S, A = self.R.shape
        return self.P if self.is_sparse else self.P.reshape(S * A, S)

    def expected_next(self, V: np.ndarray) -> np.ndarray:
        """E[V(s') | s, a] = sum_s' P(s'|s,a) V(s') as an [S, A] array (one mat-vec, dense or sparse)."""
        S, A = self.R.shape
        return np.asarray(self.P_matrix() @ V).reshape(S, A)

    def dense_P(self) -> np.ndarray:
        """P as a dense [S, A, S] array (materializes a sparse P: mind S^2 A memory)."""
        S, A = self.R.shape
        return self.P.toarray().reshape(S, A, S) if self.is_sparse else self.P

    def to_sparse(self) -> MDP:
        """The same MDP with P stored as CSR [S*A, S]."""
        import scipy.sparse as sp
        return dataclasses.replace(self, P=sp.csr_matrix(self.P_matrix()))

    def to_dense(self) -> MDP:
        """The same MDP with P stored dense [S, A, S]."""
        return dataclasses.replace(self, P=np.array(self.dense_P()))

    def with_gamma(self, gamma: float) -> MDP:
        """The same MDP with another discount."""
        return dataclasses.replace(self, gamma=float(gamma))

    def sampling_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(next_states [S, A, K] int64, cum_probs [S, A, K] float64) for vectorized sampling of s' ~ P(.|s,a).

        K is the largest number of successors of any (s, a); rows with fewer successors are padded with
        their last successor and cumulative probability 1. To sample for arrays ``s, a`` and uniforms
        ``u`` in [0, 1): ``k = (u[..., None] >= cum_probs[s, a]).sum(-1)``; ``s' = next_states[s, a, k]``
        (what :meth:`sample_next` does). Works the same for dense and sparse P and for torch tensors.
        """
        if getattr(self, "_tables", None) is None:
            S, A = self.R.shape
            import scipy.sparse as sp
            M = sp.csr_matrix(self.P_matrix())
            M.eliminate_zeros()
            M.sort_indices()
            counts = np.diff(M.indptr)
            K = int(counts.max())
            nxt = np.zeros((S * A, K), dtype=np.int64)
            cum = np.ones((S * A, K), dtype=np.float64)
            for k in range(K):  # loop over successor slots (K is small), not states
                has = counts > k
                idx = np.where(has, M.indptr[:-1] + k, M.indptr[1:] - 1)
                nxt[:, k] = M.indices[idx]
            csum = np.cumsum(M.data)
            row_start = np.concatenate([[0.0], csum])[M.indptr[:-1]]
            for k in range(K):
                has = counts > k
                cum[has, k] = csum[M.indptr[:-1][has] + k] - row_start[has]
            cum[np.arange(S * A), counts - 1] = 1.0   # guard against round-off: the last slot is exactly 1
            cum = np.where(np.arange(K)[None, :] >= counts[:, None], 1.0, cum)
            self._tables = (nxt.reshape(S, A, K), cum.reshape(S, A, K))
        return self._tables

    def cumulative(self) -> np.ndarray:
        """Cumulative transition probabilities [S, A, S] (dense; for small MDPs; see sampling_tables)."""
        return np.cumsum(self.dense_P(), axis=-1)

    def sample_next(self, states, actions, rng: np.random.Generator) -> np.ndarray:
        """Sample s' ~ P(.|s, a) for integer arrays ``states`` and ``actions`` of any common shape."""
        nxt, cum = self.sampling_tables()
        s = np.asarray(states)
        a = np.asarray(actions)
        u = rng.random(np.broadcast(s, a).shape)
        k = (u[..., None] >= cum[s, a]).sum(-1)           # inverse-CDF: first k with u < F_k
        k = np.minimum(k, nxt.shape[-1] - 1)
        return nxt[s, a, k]


def _is_sparse(P) -> bool:
    try:
        import scipy.sparse as sp
    except ModuleNotFoundError:  # scipy comes with scikit-learn; without it only dense MDPs exist
        return False
    return sp.issparse(P)


def random_mdp(S: int, A: int, successors: int | None = None, gamma: float = 0.9, seed: int = 0,
               sparse: bool = False, terminal: int = 0) -> MDP:
    """A random MDP: rewards ~ U(0, 1); P(.|s,a) Dirichlet(1) over all S states (successors=None) or over
    ``successors`` distinct random states. ``sparse=True`` stores P as CSR [S*A, S]; ``terminal`` marks the
    last ``terminal`` states absorbing (self-loop, reward 0)."""
    if S < 1 or A < 1:
        raise UserError(f"random_mdp needs S >= 1 and A >= 1, got S={S}, A={A}")
    if successors is not None and not 1 <= successors <= S:
        raise UserError(f"random_mdp successors must be in [1, S={S}], got {successors}")
    if not 0 <= terminal < S:
        raise UserError(f"random_mdp terminal must be in [0, S={S}), got {terminal}")
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    R = rng.random((S, A))
    term = np.zeros(S, dtype=bool)
    if terminal:
        term[S - terminal:] = True
    if successors is None or successors == S:
        probs = rng.dirichlet(np.ones(S), size=S * A)           # [S*A, S]
        M = sp.csr_matrix(probs) if sparse else probs
    else:
        K = successors
        # K distinct successors per row: argsort of random keys is O(S) per row; use rejection-free trick:
        cols = np.empty((S * A, K), dtype=np.int64)
        for k in range(K):  # sample with replacement, then fix duplicates row-wise below
            cols[:, k] = rng.integers(0, S, size=S * A)
        cols.sort(axis=1)
        dup = np.zeros_like(cols, dtype=bool)
        dup[:, 1:] = cols[:, 1:] == cols[:, :-1]
        while dup.any():   # resample duplicates until every row has K distinct successors (rare)
            cols[dup] = rng.integers(0, S, size=int(dup.sum()))
            cols.sort(axis=1)
            dup[:] = False
            dup[:, 1:] = cols[:, 1:] == cols[:, :-1]
        probs = rng.dirichlet(np.ones(K), size=S * A)
        rows = np.repeat(np.arange(S * A), K)
        M = sp.csr_matrix((probs.ravel(), (rows, cols.ravel())), shape=(S * A, S))
    if terminal:
        t = np.where(term)[0]
        R[t] = 0.0
        M = sp.lil_matrix(M) if sparse or successors not in (None, S) else M
        if isinstance(M, np.ndarray):
            M = M.reshape(S, A, S)
            M[t] = 0.0
            M[t, :, t] = 1.0
            M = M.reshape(S * A, S)
        else:
            for s in t:
                for a in range(A):
                    M.rows[s * A + a] = [int(s)]
                    M.data[s * A + a] = [1.0]
            M = M.tocsr()
    if sparse:
        P = sp.csr_matrix(M)
    else:
        P = M.toarray() if sp.issparse(M) else M
        P = np.asarray(P).reshape(S, A, S)
    return MDP(P=P, R=R, gamma=gamma, terminal=term)
