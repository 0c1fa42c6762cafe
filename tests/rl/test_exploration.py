"""Epsilon schedules against their closed forms; action-selection rules against their definitions."""

import numpy as np
import pytest

from mlcanon.errors import UserError
from mlcanon.rl import exploration as ex


def test_schedules_closed_forms():
    t = np.arange(0, 300)
    lin = ex.LinearSchedule(1.0, 0.1, 100)
    expect = [max(0.1, 1.0 - 0.9 * k / 100) for k in t]               # straight line then flat
    np.testing.assert_allclose(lin(t), expect, atol=1e-15)
    assert lin(0) == 1.0 and lin(50) == pytest.approx(0.55) and lin(10_000) == 0.1
    exp = ex.ExponentialSchedule(1.0, 0.05, 0.97)
    np.testing.assert_allclose(exp(t), np.maximum(0.05, 0.97 ** t), rtol=1e-13)
    assert exp(1) == pytest.approx(0.97)
    const = ex.ConstantSchedule(0.2)
    assert const(7) == 0.2 and np.all(const(t) == 0.2)


def test_make_schedule_reaches_floor_at_half_horizon():
    lin = ex.make_schedule("linear", 1.0, 0.1, None, horizon=200)
    exp = ex.make_schedule("exp", 1.0, 0.1, None, horizon=200)
    assert lin(100) == pytest.approx(0.1) and lin(99) > 0.1
    assert exp(100) == pytest.approx(0.1) and exp(99) > 0.1
    with pytest.raises(UserError, match="unknown epsilon schedule"):
        ex.make_schedule("cosine", 1.0)
    with pytest.raises(UserError, match="epsilon-min"):
        ex.LinearSchedule(0.1, 0.5, 10)
    with pytest.raises(UserError, match="decay"):
        ex.ExponentialSchedule(1.0, 0.1, 1.5)


def test_epsilon_greedy_frequencies_match_probs():
    rng = np.random.default_rng(0)
    q = np.array([[0.0, 2.0, 1.0, 2.0]])                               # two tied maxima
    N = 200_000
    a = ex.epsilon_greedy(np.repeat(q, N, 0), 0.3, rng.random((N, 6)))
    freq = np.bincount(a, minlength=4) / N
    probs = ex.epsilon_greedy_probs(q, 0.3)[0]                         # eps/A + (1-eps)/2 on the ties
    np.testing.assert_allclose(probs, [0.075, 0.425, 0.075, 0.425])
    np.testing.assert_allclose(freq, probs, atol=0.005)


def test_epsilon_greedy_per_seed_epsilon_and_greedy_ties():
    rng = np.random.default_rng(1)
    q = np.tile([1.0, 0.0, 1.0], (10_000, 1))
    eps = np.where(np.arange(10_000) < 5000, 0.0, 1.0)                 # vector of epsilons, one per seed
    a = ex.epsilon_greedy(q, eps, rng.random((10_000, 5)))
    assert set(a[:5000]) == {0, 2}                                     # eps = 0: greedy, ties shared
    assert abs((a[:5000] == 0).mean() - 0.5) < 0.03
    assert abs((a[5000:] == 1).mean() - 1 / 3) < 0.03                  # eps = 1: uniform


def test_softmax_probs_and_sampling():
    q = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]])
    p = ex.softmax_probs(q, 0.5)
    e = np.exp(q[0] / 0.5)
    np.testing.assert_allclose(p[0], e / e.sum())
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-12)     # no overflow at large q
    rng = np.random.default_rng(2)
    a = ex.softmax_action(np.repeat(q[:1], 100_000, 0), 0.5, rng.random(100_000))
    np.testing.assert_allclose(np.bincount(a, minlength=3) / 1e5, p[0], atol=0.01)
    with pytest.raises(UserError):
        ex.softmax_probs(q, 0.0)


def test_ucb_scores_formula_and_untried_first():
    q = np.array([[0.5, 0.2, 0.0]])
    n = np.array([[10.0, 2.0, 0.0]])
    s = ex.ucb_scores(q, n, 12, 2.0)
    np.testing.assert_allclose(s[0, :2], q[0, :2] + 2.0 * np.sqrt(np.log(12) / n[0, :2]))
    assert np.isinf(s[0, 2])
    assert ex.ucb_action(q, n, 12, 2.0, np.random.default_rng(0).random((1, 3)))[0] == 2


def test_greedy_random_tiebreak_is_fair_and_deterministic_greedy_takes_first():
    from mlcanon.rl import dp
    q = np.tile([0.0, 3.0, 3.0, 3.0], (30_000, 1))
    a = ex.greedy_random_tiebreak(q, np.random.default_rng(3).random(q.shape))
    np.testing.assert_allclose(np.bincount(a, minlength=4) / len(a), [0, 1 / 3, 1 / 3, 1 / 3], atol=0.015)
    assert np.all(dp.greedy(q) == 1)                                   # lowest index on ties
    assert dp.greedy(np.zeros((2, 5, 3))).shape == (2, 5)              # one table per seed
    with pytest.raises(ValueError, match="uniforms"):
        ex.epsilon_greedy(q[:2], 0.1, np.zeros((2, 4)))
