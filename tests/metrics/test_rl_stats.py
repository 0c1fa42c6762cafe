"""RL statistics against hand computations and scipy: Student-t interval, IQM, stratified bootstrap,
performance profiles, steps/episodes to a threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from mlcanon.metrics import rl


def test_mean_ci95_is_student_t():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    mean, half = rl.mean_ci95(x)
    lo, hi = scipy.stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    assert mean == pytest.approx(3.5)
    assert half == pytest.approx((hi - lo) / 2, rel=1e-12)


def test_iqm_hand_and_scipy():
    assert rl.iqm(np.arange(1, 9)) == pytest.approx(4.5)            # middle four of 1..8: 3, 4, 5, 6
    assert rl.iqm([100.0, 1, 2, 3]) == pytest.approx(2.5)           # n = 4: drop one at each end
    rng = np.random.default_rng(0)
    for shape, axis in (((10,), None), ((13, 5), None), ((13, 5), 0), ((6, 11), 1)):
        x = rng.standard_normal(shape)
        np.testing.assert_allclose(rl.iqm(x, axis), scipy.stats.trim_mean(x, 0.25, axis=axis), rtol=1e-12)


def test_stratified_bootstrap_keeps_tasks_apart():
    # task A always scores 0, task B always 1: each stratified resample keeps 5 runs of each, so the mean is
    # exactly 0.5 in every replicate (a pooled bootstrap would mix the tasks and vary)
    scores = np.stack([np.zeros(5), np.ones(5)], axis=1)
    point, lo, hi = rl.stratified_bootstrap_ci(scores, statistic=np.mean, reps=500)
    assert point == lo == hi == 0.5


def test_stratified_bootstrap_matches_normal_theory_for_a_mean():
    # one task, n = 400 normal scores: the percentile interval of the mean ~ mean +- 1.96 s_(ddof=0) / sqrt(n)
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=400)
    point, lo, hi = rl.stratified_bootstrap_ci(x, statistic=np.mean, reps=4000, seed=2)
    half = scipy.stats.norm.ppf(0.975) * x.std() / math.sqrt(len(x))
    assert point == pytest.approx(x.mean(), rel=1e-12)
    # Monte Carlo error of the 2.5% / 97.5% quantiles with 4000 replicates is ~3% of the half-width
    assert lo == pytest.approx(x.mean() - half, abs=0.12 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.12 * half)
    # same seed, same interval; vector statistics give vector intervals
    once, twice = (rl.stratified_bootstrap_ci(x, np.mean, reps=200, seed=3) for _ in range(2))
    assert once == twice
    p, lo2, hi2 = rl.stratified_bootstrap_ci(x, lambda s: rl.performance_profile(s, [2.0, 3.0]), reps=200)
    assert p.shape == lo2.shape == hi2.shape == (2,) and np.all(lo2 <= p) and np.all(p <= hi2)


def test_performance_profile_hand():
    np.testing.assert_allclose(rl.performance_profile([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 4.0]), [1.0, 0.5, 0.0])
    # two tasks with 2 runs each: task 0 [1, 3], task 1 [2, 2]; tau = 1.5 -> (1/2 + 1) / 2
    scores = np.array([[1.0, 2.0], [3.0, 2.0]])
    np.testing.assert_allclose(rl.performance_profile(scores, [1.5, 2.0]), [0.75, 0.25])


def test_steps_to_threshold_hand():
    steps = [10, 20, 30, 40]
    returns = [0.0, 5.0, 3.0, 8.0]
    assert rl.steps_to_threshold(steps, returns, 5.0) == 20
    assert rl.steps_to_threshold(steps, returns, 5.0, window=2) == 40    # trailing means -, 2.5, 4, 5.5
    assert rl.steps_to_threshold(steps, returns, 9.0) == np.inf
    runs = np.array([returns, [6.0, 6.0, 6.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(rl.steps_to_threshold(steps, runs, 5.0), [20, 10, np.inf])
    with pytest.raises(ValueError):
        rl.steps_to_threshold([1, 2], returns, 1.0)


def test_episodes_to_threshold_hand():
    r = np.r_[np.zeros(50), np.full(200, 500.0)]
    # the mean of the last 100 episodes reaches 475 when 95 of them score 500: after episode 50 + 95
    assert rl.episodes_to_threshold(r, 475.0, window=100) == 145
    assert rl.episodes_to_threshold(r[:120], 475.0, window=100) == np.inf
