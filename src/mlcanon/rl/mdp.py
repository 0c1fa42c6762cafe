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
