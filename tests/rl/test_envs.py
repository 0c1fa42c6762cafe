"""Environments: check_env, model == sampled dynamics, toy-text conversion, make errors."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import mlcanon.rl.envs as E
from mlcanon.errors import UserError
from mlcanon.rl import dp


@pytest.mark.parametrize("env_id", E.ENV_IDS)
@pytest.mark.parametrize("mode", ["ansi", "rgb_array"])
def test_check_env_and_render(env_id, mode):
    env = E.make(env_id, render_mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                            # no checker warnings either
        check_env(env.unwrapped, skip_render_check=False)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    out = env.render()
    if mode == "ansi":
        assert isinstance(out, str) and out
    else:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.std() > 0
    assert env.unwrapped.mdp.num_states >= env.observation_space.n   # bandit: + its terminal state


@pytest.mark.parametrize("env_id,kwargs", [("mlcanon/GridWorld-v0", {"slip": 0.3}),
                                           ("mlcanon/RobotGrid-v0", {}),
                                           ("mlcanon/SuttonBartoGrid-v0", {})])
def test_model_matches_sampled_steps(env_id, kwargs):
    env = E.make(env_id, **kwargs).unwrapped
    mdp = env.mdp
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    n = 4000
    for s in rng.choice(np.where(~mdp.terminal)[0], size=3, replace=False):
        for a in range(mdp.num_actions):
            counts = np.zeros(mdp.num_states)
            rew = 0.0
            for _ in range(n):
                env.reset(options={"state": int(s)})
                s2, r, *_ = env.step(a)
                counts[s2] += 1
                rew += r
            p = mdp.P[s, a]
            assert np.abs(counts / n - p).max() < 4 * np.sqrt(0.25 / n) + 1e-12   # MC frequencies vs P
            assert rew / n == pytest.approx(mdp.R[s, a], abs=0.1)


def test_gridworld_layout_and_options():
    env = E.make("mlcanon/GridWorld-v0", size=(3, 5), terminals={(0, 4): 2.0}, step_reward=-0.1,
                 gamma=0.9).unwrapped
    assert env.shape == (3, 5) and env.mdp.terminal.sum() == 1 and env.mdp.gamma == 0.9
    env.reset(options={"state": 3})
    s2, r, term, _trunc, _ = env.step(3)                           # right into the terminal corner
    assert (s2, r, term) == (4, pytest.approx(1.9), True)
    env.reset(options={"state": 0})
    assert env.step(0)[0] == 0                                    # up off the grid: stays
    with pytest.raises(UserError):
        E.make("mlcanon/GridWorld-v0", slip=1.5)
    default = E.make("mlcanon/GridWorld-v0").unwrapped
    assert default.terminals == {(3, 3): 1.0, (0, 0): -1.0}


def test_robot_grid_optimal_steps():
    env = E.make("mlcanon/RobotGrid-v0").unwrapped
    assert env.mdp.num_states == 36 and env.action_space.n == 3
    V, _ = dp.value_iteration(env.mdp)
    s = (0 * 3 + 0) * 4 + 1                                       # top-left facing east
    # from (0,0) facing E: F, F (to (0,2)), R (face S), F, F (to (2,2)), L (face E) = 6 actions at -1
    assert V[s] == pytest.approx(-6.0)
    assert V[(8 * 4) + 0] == pytest.approx(-1.0)                   # at the goal facing N: one right turn


def test_bandit_and_random_rewards():
    env = E.make("mlcanon/Bandit-v0", k=5, distribution="bernoulli", instance_seed=3).unwrapped
    env.reset(seed=0)
    mu = env.true_means.copy()
    assert env.optimal_arm == int(np.argmax(mu)) and env.regret(env.optimal_arm) == 0.0
    r = np.array([env.step(1)[1] for _ in range(4000)])
    assert set(np.unique(r)) <= {0.0, 1.0} and r.mean() == pytest.approx(mu[1], abs=0.03)
    np.testing.assert_allclose(env.mdp.R[0], mu)
    d = E.make("mlcanon/Bandit-v0", drift=0.1).unwrapped
    d.reset(seed=1)
    m0 = d.true_means.copy()
    d.step(0)
    assert not np.allclose(d.true_means, m0)
    d.reset(seed=1)
    np.testing.assert_allclose(d.true_means, m0)                 # a seed restores the initial means
    rr = E.make("mlcanon/RandomRewards-v0", n_steps=7).unwrapped
    rr.reset(seed=0)
    steps = 0
    while True:
        _, _, term, _, _ = rr.step(0)
        steps += 1
        if term:
            break
    assert steps == 7
    V, _ = dp.value_iteration(rr.mdp)
    assert V[0] == 0.0


def test_toy_text_conversion():
    cliff = "CliffWalking-v1" if "CliffWalking-v1" in gym.registry else "CliffWalking-v0"
    m = E.mdp_of(cliff)
    V, _ = dp.value_iteration(m)
    assert m.start @ V == pytest.approx(-13.0)                    # 13 steps along the cliff edge
    fl = E.mdp_of("FrozenLake-v1", is_slippery=False)
    assert fl.start @ dp.value_iteration(fl)[0] == pytest.approx(1.0)
    assert fl.terminal.sum() == 5                                 # 4 holes + goal
    fls = E.mdp_of("FrozenLake-v1", gamma=0.99)
    assert fls.gamma == 0.99 and 0.5 < fls.start @ dp.value_iteration(fls)[0] < 0.6
    taxi = "Taxi-v3" if "Taxi-v3" in gym.registry else "Taxi-v4"
    tm = E.mdp_of(taxi, gamma=0.99)
    V, pi = dp.value_iteration(tm, tol=1e-8)
    assert tm.num_states == 500 and tm.terminal.sum() == 4
    assert dp.policy_value_gap(tm, pi, V) < 1e-6


def test_unknown_and_untabular_envs():
    with pytest.raises(UserError, match="mlcanon/GridWorld-v0"):
        E.make("mlcanon/GridWorld-v9")
    with pytest.raises(UserError, match="no tabular model"):
        E.mdp_of("CartPole-v1")
