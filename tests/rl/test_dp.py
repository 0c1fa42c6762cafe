"""Dynamic programming: S&B Example 4.1, contraction, fixed points, VI == PI, sparse == dense, gamma == 1."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcanon.bench.tabular import TargetRow, maze_mdp, reference_v_star
from mlcanon.errors import UserError
from mlcanon.registry import _REGISTRY
from mlcanon.rl import dp, mdp_solve
from mlcanon.rl.envs import mdp_of
from mlcanon.rl.mdp import random_mdp


@pytest.fixture(scope="module")
def sb():
    return mdp_of("mlcanon/SuttonBartoGrid-v0")


def test_sutton_barto_random_policy_values(sb):
    V = dp.policy_evaluation(sb, np.full((16, 4), 0.25))
    book = np.array([[0, -14, -20, -22], [-14, -18, -20, -20], [-20, -20, -18, -14], [-22, -20, -14, 0]])
    np.testing.assert_allclose(V.reshape(4, 4), book, atol=1e-6)   # S&B Figure 4.1, k = infinity


def test_sutton_barto_optimal_values(sb):
    V, pi = dp.value_iteration(sb)
    rr, cc = np.divmod(np.arange(16), 4)
    dist = np.minimum(rr + cc, 6 - rr - cc)                         # Manhattan distance to nearest corner
    np.testing.assert_allclose(V, -dist, atol=1e-9)
    assert dp.policy_value_gap(sb, pi, V) < 1e-9


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.floats(0.0, 0.999))
def test_bellman_contraction(seed, gamma):
    m = random_mdp(8, 3, gamma=gamma, seed=seed)
    rng = np.random.default_rng(seed)
    V1, V2 = rng.normal(size=8) * 10, rng.normal(size=8) * 10
    lhs = np.abs(dp.bellman_optimality(m, V1) - dp.bellman_optimality(m, V2)).max()
    assert lhs <= gamma * np.abs(V1 - V2).max() + 1e-9             # ||TV - TV'|| <= gamma ||V - V'||
    pi = rng.dirichlet(np.ones(3), size=8)
    lhs = np.abs(dp.bellman_expectation(m, pi, V1) - dp.bellman_expectation(m, pi, V2)).max()
    assert lhs <= gamma * np.abs(V1 - V2).max() + 1e-9


def test_policy_evaluation_fixed_point_and_linear_solve():
    m = random_mdp(30, 4, gamma=0.9, seed=1, terminal=2)
    pi = np.random.default_rng(0).dirichlet(np.ones(4), size=30)
    V = dp.policy_evaluation(m, pi, tol=1e-12)
    np.testing.assert_allclose(dp.bellman_expectation(m, pi, V), V, atol=1e-10)   # V = T_pi V
    P = m.P
    P_pi = np.einsum("sa,sat->st", pi, P)
    r_pi = (pi * m.R).sum(1)
    live = ~m.terminal
    V_ls = np.zeros(30)
    V_ls[live] = np.linalg.solve(np.eye(live.sum()) - 0.9 * P_pi[np.ix_(live, live)], r_pi[live])
    np.testing.assert_allclose(V, V_ls, atol=1e-9)
    np.testing.assert_allclose(dp.policy_evaluation_exact(m, pi), V_ls, atol=1e-9)
    det = np.arange(30) % 4
    np.testing.assert_allclose(dp.policy_evaluation(m, det), dp.policy_evaluation_exact(m, det), atol=1e-9)


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99])
def test_value_and_policy_iteration_agree(gamma):
    m = random_mdp(40, 3, successors=5, gamma=gamma, seed=3)
    V_vi, pi_vi = dp.value_iteration(m, tol=1e-9)
    V_pi, pi_pi, n_pi = dp.policy_iteration(m)
    V_mpi, pi_mpi, _ = dp.modified_policy_iteration(m, m=10, tol=1e-9)
    V_b, pi_b, _ = dp.value_iteration_bounds(m, tol=1e-9)
    for V in (V_vi, V_mpi, V_b):
        np.testing.assert_allclose(V, V_pi, atol=1e-8)
    for pi in (pi_vi, pi_pi, pi_mpi, pi_b):                          # optimal policies have equal values
        assert dp.policy_value_gap(m, pi, V_pi) < 1e-7
    tr = dp.value_iteration(m, tol=1e-9, return_trace=True)
    assert n_pi < tr.n_sweeps                                        # PI: fewer iterations than VI sweeps
    assert tr.bound <= 1e-9                                          # the certified MacQueen-Porteus bound
    assert np.abs(tr.V - V_pi).max() <= 1e-9 + 1e-12 * np.abs(V_pi).max()   # ... holds (+ round-off)


def test_vi_deltas_contract():
    m = random_mdp(20, 3, gamma=0.8, seed=4)
    tr = dp.value_iteration_trace(m, tol=1e-8)
    assert np.all(tr.deltas[1:] <= 0.8 * tr.deltas[:-1] + 1e-12)   # ||V_{k+1}-V_k|| <= gamma ||V_k-V_{k-1}||


def test_sparse_equals_dense():
    m = random_mdp(60, 4, successors=6, gamma=0.95, seed=5, terminal=3)
    ms = m.to_sparse()
    assert ms.is_sparse and not m.is_sparse
    np.testing.assert_allclose(dp.value_iteration(ms)[0], dp.value_iteration(m)[0], atol=1e-12)
    np.testing.assert_allclose(dp.policy_iteration(ms)[0], dp.policy_iteration(m)[0], atol=1e-9)
    pi = np.full((60, 4), 0.25)
    np.testing.assert_allclose(dp.policy_evaluation(ms, pi), dp.policy_evaluation(m, pi), atol=1e-12)
    np.testing.assert_allclose(dp.q_from_v(ms, np.arange(60.0)), dp.q_from_v(m, np.arange(60.0)), atol=1e-12)
    np.testing.assert_allclose(dp.value_iteration_bounds(ms)[0], dp.value_iteration(m, tol=1e-9)[0], atol=1e-6)
    assert np.array_equal(dp.modified_policy_iteration(ms)[1], dp.modified_policy_iteration(m)[1])


def test_gamma_one_episodic(sb):
    V_pi, pi, _ = dp.policy_iteration(sb)
    assert dp.policy_value_gap(sb, pi, V_pi) < 1e-8
    V_vi, _ = dp.value_iteration(sb)
    np.testing.assert_allclose(V_pi, V_vi, atol=1e-8)
    always_up = np.zeros(16, dtype=int)                            # never terminates from the top row
    with pytest.raises(UserError, match="never reaches a terminal"):
        dp.policy_evaluation(sb, always_up)


def test_q_greedy_ties_and_bad_input(sb):
    assert np.array_equal(dp.greedy(np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])), [0, 1])
    V = np.arange(16.0)
    Q = dp.q_from_v(sb, V)
    s, a = 5, 3                                                    # right from (1,1) -> (1,2) = state 6
    assert Q[s, a] == pytest.approx(-1.0 + V[6])
    with pytest.raises(UserError):
        dp.policy_evaluation(sb, np.full((16, 4), 0.3))
    with pytest.raises(UserError):
        dp.q_from_v(sb, np.zeros(5))
    with pytest.raises(UserError):
        dp.value_iteration(sb, tol=0)


# --- solve and the certified stop of value iteration ---------------------------------------------------

def _v_star(m):
    """V* independently of solve/value_iteration: policy iteration (exact linear solves), then checked by the
    Bellman optimality equation: ||T V - V|| <= eps gives ||V - V*|| <= eps / (1 - gamma)."""
    V, _, _ = dp.policy_iteration(m)
    resid = np.abs(dp.bellman_optimality(m, V) - V).max()
    assert resid <= 1e-12 * (1 + np.abs(V).max())
    return V


def _maze(n, gamma):
    return maze_mdp(n, gamma, seed=1)


def _roundoff(V):
    return 1e-12 * (1 + np.abs(V).max())                            # float64 sums of |V|-sized terms


@pytest.mark.parametrize("gamma", [0.99, 0.999])
def test_solve_and_value_iteration_certified_on_mazes(gamma):
    m = _maze(30, gamma)                                            # 900 states, paths of hundreds of steps
    V_star = _v_star(m)
    for tol in (1e-6, 1e-9):
        st = {}
        V, pi = dp.solve(m, tol, stats=st)
        assert np.abs(V - V_star).max() <= tol + _roundoff(V_star)
        assert dp.policy_value_gap(m, pi, V_star) <= 2 * tol + _roundoff(V_star)   # 2 tol-optimal
        assert st["eval_sweeps"] > 0                                # slow mixing: modified policy iteration
        tr = dp.value_iteration(m, tol, return_trace=True)
        assert tr.bound <= tol
        assert np.abs(tr.V - V_star).max() <= tol + _roundoff(V_star)
        plain = np.log(tol * (1 - gamma) / (2 * gamma) / 1.0) / np.log(gamma)
        assert tr.n_sweeps <= plain                                 # never more than the sup-norm rule


def test_solve_on_random_mdps_dense_sparse_terminal():
    cases = [random_mdp(300, 4, gamma=0.95, seed=0),                               # dense, fast mixing
             random_mdp(600, 3, successors=5, gamma=0.99, seed=1, sparse=True),    # sparse
             random_mdp(100, 3, successors=4, gamma=0.999, seed=2, terminal=5),    # small dense: PI + LU
             random_mdp(500, 2, successors=3, gamma=0.9, seed=3, terminal=10).to_sparse()]
    for m in cases:
        V_star = _v_star(m)
        st = {}
        V, pi = dp.solve(m, 1e-6, stats=st)
        assert np.abs(V - V_star).max() <= 1e-6 + _roundoff(V_star)
        assert np.all(V[m.terminal] == 0)
        assert dp.policy_value_gap(m, pi, V_star) <= 2e-6
    assert st["backups"] >= 1
    small = cases[2]
    st = {}
    dp.solve(small, 1e-6, stats=st)
    assert st["solves"] >= 1 and st["eval_sweeps"] == 0              # tiny dense: policy iteration


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
       S=st.integers(1, 30), A=st.integers(1, 4), sparse=st.booleans())
def test_solve_matches_policy_iteration(seed, gamma, S, A, sparse):
    m = random_mdp(S, A, successors=min(S, 3), gamma=gamma, seed=seed, sparse=sparse)
    V_star = dp.policy_iteration(m)[0]
    V, pi = dp.solve(m, 1e-8)
    assert np.abs(V - V_star).max() <= 1e-8 + _roundoff(V_star)
    assert pi.shape == (S,) and pi.dtype == np.int64


def test_solve_gamma_one_episodic(sb):
    V, pi = dp.solve(sb, 1e-8)
    rr, cc = np.divmod(np.arange(16), 4)
    np.testing.assert_allclose(V, -np.minimum(rr + cc, 6 - rr - cc), atol=1e-12)   # exact: PI polish
    assert dp.policy_value_gap(sb, pi, V) < 1e-9
    lake = mdp_of("FrozenLake-v1")                                  # gamma 1, reward only at the goal
    V_l, _ = dp.solve(lake, 1e-8)
    V_vi, _ = dp.value_iteration(lake, 1e-12)
    np.testing.assert_allclose(V_l, V_vi, atol=1e-8)


def test_solve_bad_input(sb):
    with pytest.raises(UserError, match="tol"):
        dp.solve(sb, tol=0)
    with pytest.raises(UserError, match="round-off"):
        dp.solve(random_mdp(20, 2, gamma=0.999, seed=0), tol=1e-16)


def test_mdp_solve_cli_entry(tmp_runs):
    algo = _REGISTRY["mdp-solve"]                                    # (registry.get imports every family)
    r = algo.train(algo.config_cls(out_dir=str(tmp_runs), env="FrozenLake-v1", gamma=0.95, progress=False))
    assert algo.train is mdp_solve.train
    V_vi, _ = dp.value_iteration(mdp_of("FrozenLake-v1").with_gamma(0.95), tol=1e-12)
    assert np.abs(r["V"] - V_vi).max() <= 1e-6 + 1e-12                # the default tol, certified
    assert r["dp_optimum"] == pytest.approx(float(r["V"][0]))          # FrozenLake starts in state 0
    ev = algo.evaluate(r["run_dir"], algo.eval_options(episodes=200))
    assert 0.6 < ev["eval/return_mean"] < 0.9                        # slippery FrozenLake: optimum ~0.74
    assert algo.sample(r["run_dir"], 5).exists()


def test_bench_maze_and_reference_v_star():
    m = maze_mdp(12, 0.99, seed=0)
    S = m.num_states
    G = (m.P_matrix().toarray().reshape(S, 4, S).sum(1) > 0)
    np.fill_diagonal(G, False)
    G[S - 1] = G[:, S - 1]                                          # the goal absorbs: use its incoming edges
    assert G.sum() == 2 * (S - 1) and np.array_equal(G, G.T)        # a perfect maze: a spanning tree
    V_star = _v_star(m)
    assert np.all(V_star[:-1] < 0) and V_star[-1] == 0
    V_ref, res, opt = reference_v_star(m, np.zeros(S, dtype=np.int64), direct=True)   # from a bad policy
    assert np.abs(V_ref - V_star).max() <= 1e-9 and res < 1e-9 and opt < 1e-9
    row = TargetRow("x", "cmd", 10.0, "ms", 60.0, "peer", higher_is_better=False, target=5.0, accurate=True)
    assert row.ratio == 6.0 and row.met
    assert not TargetRow("x", "cmd", 20.0, "ms", 60.0, "peer", higher_is_better=False, target=5.0).met
    assert not TargetRow("x", "cmd", 1.0, "ms", 60.0, "peer", higher_is_better=False, target=5.0,
                         accurate=False).met                        # fast but not within tol: not met


@pytest.mark.parametrize("A", [1, 2, 3, 4, 8, 9])
def test_rowargmax_is_lowest_maximizer(A):
    rng = np.random.default_rng(A)
    Q = rng.integers(0, 3, size=(500, A)).astype(float)            # many ties
    for q in (Q, np.asfortranarray(Q), Q.T.copy().T):              # C, F and transposed-view layouts
        np.testing.assert_array_equal(dp._rowargmax(q), np.argmax(Q, 1))


def test_diagonal_storage_matches_csr():
    m = _maze(12, 0.99)                                             # grid: offsets 0, +-1, +-12
    S, A = m.R.shape
    Pm, term = m.P_matrix(), m.terminal
    diag = dp._diagonals(Pm, S, A, term, True)
    assert diag is not None and set(diag.offsets.tolist()) <= {-12, -1, 0, 1, 12}
    x = np.random.default_rng(0).normal(size=S)
    live = ~term
    Q_csr = m.R + np.asarray(Pm @ x).reshape(S, A)
    np.testing.assert_allclose(diag.backup(m.R, x)[live], Q_csr[live], rtol=0, atol=1e-14 * S)
    pol = np.random.default_rng(1).integers(0, A, S)
    P_pi, r_pi = dp._policy_rows(Pm, m.R, pol, term, True)
    out = np.empty(S)
    np.testing.assert_allclose(diag.sweep(diag.policy(pol), r_pi, x, out), r_pi + P_pi @ x, rtol=0, atol=1e-14 * S)
    rnd = random_mdp(2000, 3, successors=5, gamma=0.9, seed=0, sparse=True)   # successors anywhere: CSR kept
    assert dp._diagonals(rnd.P_matrix(), 2000, 3, rnd.terminal, True) is None
