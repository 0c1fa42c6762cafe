"""Vector env: same-step autoreset, final_obs, termination vs truncation, per-episode seeds, exact resume."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from mlcanon.errors import UserError
from mlcanon.rl.vec_env import ObsNormalizer, VecEnv, episode_seed, evaluate_episodes


def run(env, steps, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        out.append(env.step(rng.integers(0, 2, env.num_envs)))
    return out


def test_same_step_autoreset_keeps_final_obs_and_seeds_each_episode():
    env = VecEnv("CartPole-v1", 2, seed=7)
    env.reset()
    ends = 0
    rng = np.random.default_rng(0)
    for _ in range(200):
        obs, _r, te, tr, info = env.step(rng.integers(0, 2, 2))
        for i in np.flatnonzero(te | tr):
            ends += 1
            k = env.episode[i]                     # the episode that just started
            ref, _ = gym.make("CartPole-v1").reset(seed=episode_seed(7, i, int(k)))
            np.testing.assert_array_equal(obs[i], ref.astype(np.float32))
            assert not np.array_equal(info["final_obs"][i], obs[i])
            assert abs(info["final_obs"][i][2]) > 0.2094 or abs(info["final_obs"][i][0]) > 2.4   # terminal
        live = ~(te | tr)
        np.testing.assert_array_equal(info["final_obs"][live], obs[live])
    assert ends >= 5


def test_truncation_is_not_termination():
    env = VecEnv("CartPole-v1", 1, seed=0, max_episode_steps=3)
    env.reset()
    steps = [env.step([i % 2]) for i in range(3)]
    _, _, te, tr, info = steps[-1]
    assert tr[0] and not te[0] and info["episode_length"] == [3] and info["episode_return"] == [3.0]


def test_resume_mid_episode_replays_exactly():
    a = VecEnv("CartPole-v1", 3, seed=1)
    a.reset()
    run(a, 37)
    b = VecEnv("CartPole-v1", 3, seed=1)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.obs, b.obs)
    for x, y in zip(run(a, 60, seed=3), run(b, 60, seed=3)):
        for u, v in zip(x[:4], y[:4]):
            np.testing.assert_array_equal(u, v)


def test_evaluate_episodes_repeats_and_counts_lengths():
    pol = lambda o: (o[:, 2] > 0).astype(np.int64)
    r1, l1 = evaluate_episodes(pol, "CartPole-v1", 5, seed=0, batch=2)
    r2, _l2 = evaluate_episodes(pol, "CartPole-v1", 5, seed=0, batch=5)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(r1, l1)            # CartPole pays 1 per step


def test_obs_normalizer_running_moments_match_numpy():
    g = torch.Generator().manual_seed(0)
    norm = ObsNormalizer((3,))
    xs = [torch.randn(n, 3, generator=g) * 3 + 1 for n in (5, 17, 2)]
    for x in xs:
        norm(x, update=True)
    allx = torch.cat(xs).double()
    # the prior count 1e-4 at mean 0 / var 1 perturbs the moments by O(1e-4 / 24)
    torch.testing.assert_close(norm.rms.mean, allx.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.rms.var, allx.var(0, unbiased=False), atol=1e-3, rtol=0)


def test_unknown_env_is_a_user_error():
    with pytest.raises(UserError, match="unknown environment"):
        VecEnv("CartPol-v1", 1, 0)
