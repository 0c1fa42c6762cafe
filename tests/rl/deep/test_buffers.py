"""Replay buffers: ring semantics, uniform and prioritized sampling statistics, IS weights, n-step, resume."""

import numpy as np
import torch

from mlcanon.rl.buffers import PrioritizedReplayBuffer, ReplayBuffer, RolloutStorage, SumTree, beta_at
from mlcanon.rl.returns import nstep_returns


def fill(buf, steps, num_envs, seed=0, done_p=0.2):
    rng = np.random.default_rng(seed)
    log = []
    for t in range(steps):
        o = rng.normal(size=(num_envs, 3)).astype(np.float32)
        r = rng.normal(size=num_envs)
        term = rng.random(num_envs) < done_p / 2
        done = term | (rng.random(num_envs) < done_p / 2)
        buf.add(o, rng.integers(0, 2, num_envs), r, o + 1, term, done)
        log.append((r, term, done))
    return log


def test_ring_keeps_the_newest_and_samples_uniformly():
    buf = ReplayBuffer(10, (3,), num_envs=1, seed=0)
    for i in range(25):
        buf.add(np.full((1, 3), i), [0], [float(i)], np.zeros((1, 3)), [False], [False])
    assert len(buf) == 10 and sorted(buf.rewards.tolist()) == list(range(15, 25))
    n = 50_000
    s = buf.sample(n)["rewards"].long()
    counts = torch.bincount(s - 15, minlength=10).double()
    p = 0.1   # each count ~ Binomial(n, p): within 5 standard deviations
    assert torch.all((counts - n * p).abs() < 5 * np.sqrt(n * p * (1 - p)))


def test_sum_tree_find_matches_brute_force():
    rng = np.random.default_rng(0)
    tree = SumTree(13)
    vals = rng.random(13)
    tree.update(np.arange(13), vals)
    assert abs(tree.total - vals.sum()) < 1e-12 * 13
    u = rng.random(1000) * vals.sum()
    np.testing.assert_array_equal(tree.find(u), np.searchsorted(np.cumsum(vals), u, side="right"))


def test_prioritized_frequency_proportional_to_priority_power_alpha_and_is_weights():
    alpha, beta = 0.7, 0.5
    buf = PrioritizedReplayBuffer(8, (1,), alpha=alpha, seed=3, eps=0.0)
    for i in range(8):
        buf.add(np.zeros((1, 1)), [0], [0.0], np.zeros((1, 1)), [False], [False])
    prio = np.array([0.1, 0.5, 1.0, 2.0, 4.0, 0.3, 3.0, 1.5])
    buf.update_priorities(torch.arange(8), torch.tensor(prio))
    P = prio**alpha / (prio**alpha).sum()                        # P(i) = p_i^a / sum_k p_k^a
    np.testing.assert_allclose(buf.probabilities(), P, rtol=1e-12)
    counts = np.zeros(8)
    draws = 0
    for _ in range(200):
        b = buf.sample(256, beta=beta)
        counts += np.bincount(b["indices"].numpy(), minlength=8)
        draws += 256
        w = (8 * P[b["indices"].numpy()]) ** -beta / (8 * P.min()) ** -beta   # (N P)^-b / max_j w_j
        np.testing.assert_allclose(b["weights"].numpy(), w, rtol=1e-6)
    # stratified draws have less variance than multinomial ones: the binomial bound is conservative
    assert np.all(np.abs(counts - draws * P) < 5 * np.sqrt(draws * P * (1 - P)))


def test_beta_anneals_to_one():
    assert beta_at(0, 100, 0.4) == 0.4 and abs(beta_at(50, 100, 0.4) - 0.7) < 1e-12 and beta_at(500, 100, 0.4) == 1.0


def test_nstep_sampling_matches_per_env_nstep_returns():
    N, T, n, gamma = 3, 12, 3, 0.9
    buf = ReplayBuffer(64, (3,), num_envs=N, seed=0)
    log = fill(buf, T, N)
    r = torch.tensor(np.stack([x[0] for x in log]), dtype=torch.float32)      # [T, N]
    term = torch.tensor(np.stack([x[1] for x in log]))
    done = torch.tensor(np.stack([x[2] for x in log]))
    nv = torch.arange(T * N, dtype=torch.float32).view(T, N)                 # V(s') := the slot's index
    expect = nstep_returns(r, nv, term, done, gamma, n)
    b = buf.sample(500, n_step=n, gamma=gamma)
    # slot of the bootstrap state, encoded as next_obs[...,0]-1 = obs[...,0] of that slot; recover its index
    slot_of = {float(buf.next_obs[k, 0]): k for k in range(T * N)}
    for i, k in enumerate(b["indices"].tolist()):
        tt, e = divmod(k, N)
        j = slot_of[float(b["next_obs"][i, 0])]
        got = b["rewards"][i] + b["discount"][i] * (~b["terminated"][i]).float() * nv.view(-1)[j]
        assert abs(float(got) - float(expect[tt, e])) < 1e-4


def test_state_dict_round_trip_continues_the_sampling_stream():
    a = PrioritizedReplayBuffer(32, (3,), num_envs=2, seed=5)
    fill(a, 10, 2)
    a.update_priorities(torch.arange(5), torch.arange(5.0))
    b = PrioritizedReplayBuffer(32, (3,), num_envs=2, seed=99)
    b.load_state_dict(a.state_dict())
    x, y = a.sample(16, n_step=2), b.sample(16, n_step=2)
    for k in x:
        assert torch.equal(x[k], y[k]), k


def test_rollout_storage_flattens_time_major():
    st = RolloutStorage(3, 2, (1,))
    for t in range(3):
        st.add(obs=torch.full((2, 1), float(t)), rewards=torch.tensor([t, 10 + t]))
    f = st.flat()
    assert f["rewards"].tolist() == [0, 10, 1, 11, 2, 12] and f["obs"].shape == (6, 1)
