"""Bandits: UCB beats epsilon-greedy, Thompson's regret is sublinear, the gradient bandit learns."""

import numpy as np
import pytest

from mlcanon.errors import UserError
from mlcanon.rl import bandits as bd


def test_ucb_lower_regret_than_epsilon_greedy():
    p = bd.testbed(200, 10, "gaussian", seed=0)
    ucb = bd.run_bandit(p, "ucb", 1000, seed=1, c=2.0).cumulative_regret[:, -1].mean()
    eg = bd.run_bandit(p, "epsilon-greedy", 1000, seed=1, epsilon=0.1).cumulative_regret[:, -1].mean()
    assert ucb < 0.8 * eg


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_thompson_regret_is_sublinear(kind):
    p = bd.testbed(100, 5, kind, seed=3)
    cr = bd.run_bandit(p, "thompson", 2000, seed=4).cumulative_regret.mean(0)
    first, second = cr[999], cr[1999] - cr[999]
    assert second < 0.5 * first                            # later pulls add much less regret than earlier ones
    rand = (p.means.max(1) - p.means.mean(1)).mean() * 2000  # a uniform random player's expected regret
    assert cr[-1] < 0.1 * rand


def test_regret_definition_and_gradient_bandit_learns():
    p = bd.BanditProblem(np.array([[0.0, 1.0, 0.5]] * 50), "gaussian")
    r = bd.run_bandit(p, "gradient", 500, seed=0, alpha=0.1)
    mu = p.means[np.arange(50)[:, None], r.actions]
    np.testing.assert_allclose(r.regret, 1.0 - mu)
    assert r.optimal[:, -100:].mean() > 0.8
    no_base = bd.run_bandit(bd.BanditProblem(p.means + 4.0), "gradient", 500, seed=0, baseline=False)
    with_base = bd.run_bandit(bd.BanditProblem(p.means + 4.0), "gradient", 500, seed=0, baseline=True)
    assert with_base.optimal[:, -100:].mean() > no_base.optimal[:, -100:].mean()   # S&B fig. 2.5


def test_bad_input():
    with pytest.raises(UserError, match="strategy"):
        bd.run_bandit(bd.testbed(2), "greedy", 10)
    with pytest.raises(UserError, match="probabilities"):
        bd.BanditProblem(np.array([[1.5, 0.2]]), "bernoulli")


@pytest.mark.parametrize("strategy,kind", [("epsilon-greedy", "gaussian"), ("ucb", "gaussian"),
                                           ("thompson", "bernoulli"), ("thompson", "gaussian"),
                                           ("gradient", "bernoulli")])
def test_run_i_of_n_runs_is_the_single_run_with_seed_plus_i(strategy, kind):
    """--num-seeds N is N independent runs: run i (its problem and its pulls) is the run with seed + i."""
    many = bd.run_bandit(bd.testbed(4, 5, kind, seed=20), strategy, 150, seed=20)
    for i in range(4):
        p1 = bd.testbed(1, 5, kind, seed=20 + i)
        one = bd.run_bandit(p1, strategy, 150, seed=20 + i)
        np.testing.assert_array_equal(one.actions[0], many.actions[i])
        np.testing.assert_array_equal(one.rewards[0], many.rewards[i])
    assert not np.array_equal(many.actions[0], many.actions[1])


def test_rewards_have_the_arm_distributions():
    """Pulls give N(mu_a, std^2) (Box-Muller from the run's uniforms) or Bernoulli(mu_a) rewards."""
    for problem in (bd.BanditProblem(np.array([[0.3, -1.0]] * 2000), "gaussian", reward_std=2.0),
                    bd.BanditProblem(np.array([[0.25, 0.9]] * 2000), "bernoulli")):
        res = bd.run_bandit(problem, "gradient", 3, seed=0, alpha=0.0)      # alpha 0: uniform arm choice
        for arm, mu in enumerate(problem.means[0]):
            x = res.rewards[res.actions == arm]
            sd = 2.0 if problem.kind == "gaussian" else np.sqrt(mu * (1 - mu))
            assert abs(x.mean() - mu) < 5 * sd / np.sqrt(len(x))           # 5 standard errors
            if problem.kind == "gaussian":
                assert abs(x.std() - sd) < 0.1
            else:
                assert set(np.unique(x)) == {0.0, 1.0}
