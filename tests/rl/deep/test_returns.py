"""Return estimators against hand-computed examples and their limits (returns.py)."""

import torch
from torch import nn

from mlcanon.rl.returns import discounted_return, gae, nstep_returns, polyak_update, reward_to_go, td_target

EPS = 1e-6   # float32 arithmetic on numbers of order 1 over a handful of operations


def t(*x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def test_discounted_return_by_hand():
    assert abs(float(discounted_return(t(1.0, 2.0, 3.0), 0.5)) - 2.75) < EPS   # 1 + 0.5*2 + 0.25*3


def test_reward_to_go_restarts_at_episode_ends_and_bootstraps_the_tail():
    r = t(1.0, 1.0, 1.0, 1.0)
    d = t(False, True, False, False, dtype=torch.bool)
    g = reward_to_go(r, d, gamma=0.5, last_value=2.0)
    # t=3: 1 + .5*2 = 2;  t=2: 1 + .5*2 = 2;  t=1: episode ends: 1;  t=0: 1 + .5*1 = 1.5
    torch.testing.assert_close(g, t(1.5, 1.0, 2.0, 2.0), atol=EPS, rtol=0)


def test_td_target_bootstraps_truncation_not_termination():
    y = td_target(t(1.0, 1.0), t(10.0, 10.0), t(True, False, dtype=torch.bool), 0.9)
    torch.testing.assert_close(y, t(1.0, 10.0), atol=EPS, rtol=0)


def test_nstep_by_hand_with_termination_and_truncation():
    r = t(1.0, 2.0, 3.0, 4.0)
    nv = t(10.0, 20.0, 30.0, 40.0)                     # V(s_{t+1})
    term = t(False, True, False, False, dtype=torch.bool)
    trunc = t(False, False, True, False, dtype=torch.bool)
    g = nstep_returns(r, nv, term, term | trunc, gamma=0.5, n=2)
    expect = t(1 + 0.5 * 2,                             # episode terminates after step 1: no bootstrap
               2.0,                                     # terminal right away
               3 + 0.5 * 30,                            # truncated: bootstrap from V(final obs)
               4 + 0.5 * 40)                            # end of the rollout: bootstrap after 1 step
    torch.testing.assert_close(g, expect, atol=EPS, rtol=0)


def test_nstep_limits_one_step_is_td_and_long_is_monte_carlo():
    g = torch.Generator().manual_seed(0)
    r, nv = torch.rand(7, 3, generator=g), torch.rand(7, 3, generator=g)
    term = torch.rand(7, 3, generator=g) < 0.3
    torch.testing.assert_close(nstep_returns(r, nv, term, term, 0.9, 1), td_target(r, nv, term, 0.9),
                               atol=EPS, rtol=0)
    last = torch.where(term[-1], 0.0, nv[-1])
    torch.testing.assert_close(nstep_returns(r, nv, term, term, 0.9, 50), reward_to_go(r, term, 0.9, last),
                               atol=1e-5, rtol=0)


def test_gae_by_hand_with_truncation():
    r, v = t(1.0, 1.0, 1.0), t(0.5, 0.5, 0.5)
    nv = t(0.5, 2.0, 0.5)                               # step 1 truncated: V(final obs) = 2
    term = t(False, False, False, dtype=torch.bool)
    done = t(False, True, False, dtype=torch.bool)
    adv, ret = gae(r, v, nv, term, done, gamma=0.9, lam=0.5)
    # deltas: .95, 1 + .9*2 - .5 = 2.3, .95; A2 = .95, A1 = 2.3 (episode ends), A0 = .95 + .45*2.3
    torch.testing.assert_close(adv, t(0.95 + 0.45 * 2.3, 2.3, 0.95), atol=EPS, rtol=0)
    torch.testing.assert_close(ret, adv + v)


def test_gae_limits_td0_and_monte_carlo():
    g = torch.Generator().manual_seed(1)
    T, N = 9, 4
    r, v, nv = (torch.rand(T, N, generator=g) for _ in range(3))
    term = torch.rand(T, N, generator=g) < 0.25
    nv[:-1] = v[1:]     # within an episode V(s_{t+1}) is the next step's V (terminal ones are masked anyway)
    a0, _ = gae(r, v, nv, term, term, 0.97, 0.0)
    torch.testing.assert_close(a0, td_target(r, nv, term, 0.97) - v, atol=EPS, rtol=0)   # lambda = 0: delta_t
    a1, ret1 = gae(r, v, nv, term, term, 0.97, 1.0)
    mc = reward_to_go(r, term, 0.97, torch.where(term[-1], 0.0, nv[-1]))   # lambda = 1: MC return - V
    torch.testing.assert_close(a1, mc - v, atol=1e-5, rtol=0)
    torch.testing.assert_close(ret1, mc, atol=1e-5, rtol=0)


def test_polyak_soft_and_hard():
    src, tgt = nn.Linear(2, 2), nn.Linear(2, 2)
    before = [p.clone() for p in tgt.parameters()]
    polyak_update(tgt, src, 0.25)
    for b, s, p in zip(before, src.parameters(), tgt.parameters()):
        torch.testing.assert_close(p, 0.75 * b + 0.25 * s, atol=EPS, rtol=0)
    polyak_update(tgt, src, 1.0)
    for s, p in zip(src.parameters(), tgt.parameters()):
        assert torch.equal(p, s)
    flat_t, flat_s = torch.zeros(5), torch.arange(5.0)            # flat parameter vectors, as DQN keeps them
    polyak_update(flat_t, flat_s, 0.5)
    assert torch.equal(flat_t, 0.5 * flat_s)
    polyak_update(flat_t, flat_s, 1.0)
    assert torch.equal(flat_t, flat_s)


def test_explained_variance_limits():
    from mlcanon.rl.returns import explained_variance
    y = torch.tensor([1.0, 2.0, 4.0, 7.0])
    assert explained_variance(y, y) == 1.0                                  # perfect critic
    assert abs(explained_variance(y, torch.full_like(y, float(y.mean())))) < 1e-6   # predicts the mean: 0
    assert explained_variance(torch.ones(4), y) is None                     # Var[y] = 0: undefined
