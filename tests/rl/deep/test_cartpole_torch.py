"""Batched torch CartPole against gymnasium's CartPole-v1, step by step, including termination and truncation."""

import gymnasium as gym
import numpy as np
import torch

from mlcanon.rl.cartpole_torch import CartPoleTorch


def test_matches_gymnasium_step_by_step_through_termination():
    rng = np.random.default_rng(0)
    for seed in range(5):
        ref = gym.make("CartPole-v1")
        obs, _ = ref.reset(seed=seed)
        env = CartPoleTorch(1)
        env.set_state(ref.unwrapped.state)
        np.testing.assert_array_equal(env.obs[0].numpy(), obs)
        for k in range(600):
            a = int(rng.integers(2))
            o, r, te, tr, _ = ref.step(a)
            _o2, r2, te2, tr2, info = env.step(torch.tensor([a]))
            # same float64 operations in the same order: equal up to libm rounding of sin/cos (1 ulp)
            np.testing.assert_allclose(info["final_obs"][0].numpy(), o, rtol=0, atol=1e-6)
            assert (r, te, tr) == (float(r2[0]), bool(te2[0]), bool(tr2[0]))
            if te or tr:
                assert info["episode_length"] == [k + 1] and info["episode_return"] == [k + 1.0]
                break
        assert te, "random actions terminate CartPole long before 600 steps"


def test_truncation_at_the_time_limit_and_autoreset():
    ref = gym.make("CartPole-v1", max_episode_steps=20)
    obs, _ = ref.reset(seed=1)
    env = CartPoleTorch(3, max_episode_steps=20)
    env.reset()
    env.set_state(ref.unwrapped.state)
    for k in range(20):
        a = int(obs[2] + 0.5 * obs[3] > 0)              # a balancing controller: no termination in 20 steps
        obs, _r, te, tr, _ = ref.step(a)
        o2, _r2, te2, tr2, info = env.step(torch.full((3,), a))
    assert tr and not te and bool(tr2.all()) and not bool(te2.any())
    assert info["episode_length"] == [20, 20, 20] and info["episode_return"] == [20.0, 20.0, 20.0]
    np.testing.assert_allclose(info["final_obs"][0].numpy(), obs, atol=1e-6, rtol=0)
    assert torch.all(o2.abs() <= 0.05) and int(env.ep_length.sum()) == 0   # reset in the same step


def test_state_dict_resumes_exactly():
    a, b = CartPoleTorch(8, seed=3), CartPoleTorch(8, seed=99)
    a.reset()
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        a.step(torch.randint(2, (8,), generator=g))
    b.load_state_dict(a.state_dict())
    for _ in range(50):
        act = torch.randint(2, (8,), generator=g)
        x, y = a.step(act), b.step(act)
        for u, v in zip(x[:4], y[:4]):
            assert torch.equal(u, v)
