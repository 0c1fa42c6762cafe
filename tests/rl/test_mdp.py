"""MDP dataclass: validation, sparse storage, random_mdp, vectorized sampling tables."""

import numpy as np
import pytest
import scipy.sparse as sp

from mlcanon.errors import UserError
from mlcanon.rl.mdp import MDP, random_mdp


@pytest.mark.parametrize("kw", [{}, {"successors": 3}, {"sparse": True, "successors": 4, "terminal": 2}])
def test_random_mdp_is_valid(kw):
    m = random_mdp(12, 3, seed=0, **kw)
    P = m.dense_P()
    np.testing.assert_allclose(P.sum(-1), 1.0)
    if "successors" in kw:
        live = ~m.terminal
        assert np.all((P[live] > 0).sum(-1) == kw["successors"])
    for t in np.where(m.terminal)[0]:
        assert np.all(P[t, :, t] == 1.0) and np.all(m.R[t] == 0)
    assert m.is_sparse == kw.get("sparse", False)


def test_validation_errors():
    P = np.full((2, 1, 2), 0.5)
    with pytest.raises(UserError, match="sums to"):
        MDP(P=P * 1.5, R=np.zeros((2, 1)), gamma=0.9, terminal=[False, False])
    with pytest.raises(UserError, match="gamma"):
        MDP(P=P, R=np.zeros((2, 1)), gamma=1.5, terminal=[False, False])
    with pytest.raises(UserError, match="S\\*A"):
        MDP(P=sp.csr_matrix(np.full((3, 2), 0.5)), R=np.zeros((2, 1)), gamma=0.9, terminal=[False, False])


def test_sampling_matches_P():
    m = random_mdp(6, 2, successors=3, seed=2, sparse=True)
    rng = np.random.default_rng(0)
    n = 40_000
    s = np.repeat(np.arange(6), 2 * n // 12)
    a = np.tile([0, 1], s.size // 2)
    s2 = m.sample_next(s, a, rng)
    P = m.dense_P()
    for si in range(6):
        for ai in range(2):
            sel = (s == si) & (a == ai)
            freq = np.bincount(s2[sel], minlength=6) / sel.sum()
            assert np.abs(freq - P[si, ai]).max() < 0.03
    _nxt, cum = m.sampling_tables()
    assert np.all(cum[..., -1] == 1.0)
    np.testing.assert_allclose(m.cumulative()[..., -1], 1.0)
    assert np.array_equal(m.to_dense().P, P) and m.to_dense().to_sparse().is_sparse
