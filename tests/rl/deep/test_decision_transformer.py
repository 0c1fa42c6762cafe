"""Decision transformer: windows and returns-to-go, causality, config validation of the data file."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from mlcanon.config import validate
from mlcanon.errors import UserError
from mlcanon.rl.decision_transformer import (
    DecisionTransformer,
    DTConfig,
    dropout,
    make_windows,
    rollout,
    scripted_cartpole,
)


def test_windows_hold_returns_to_go_timesteps_and_padding_by_hand():
    data = {"obs": np.arange(5, dtype=np.float32)[:, None], "actions": np.array([0, 1, 0, 1, 1]),
            "rewards": np.array([1.0, 2.0, 3.0, 10.0, 20.0]), "episode": np.array([0, 0, 0, 1, 1])}
    w = make_windows(data, K=2)
    assert w["R"].tolist() == [[6, 5], [5, 3], [3, 3], [30, 20], [20, 20]]      # R_t = sum_{k>=t} r
    assert w["t"].tolist() == [[0, 1], [1, 2], [2, 2], [0, 1], [1, 1]]
    assert w["mask"].tolist() == [[True, True], [True, True], [True, False], [True, True], [True, False]]
    assert w["s"][1, :, 0].tolist() == [1.0, 2.0]


def test_action_prediction_is_causal_and_does_not_see_its_own_action():
    torch.manual_seed(0)
    m = DecisionTransformer(3, 2, context=4, max_timestep=10, d_model=16, n_layers=2, n_heads=2, dropout=0.0).eval()
    R, s = torch.randn(1, 4), torch.randn(1, 4, 3)
    a, t = torch.tensor([[0, 1, 0, 1]]), torch.arange(4)[None]
    base = m(R, s, a, t)
    a2 = a.clone()
    a2[0, 2] = 1                     # change a_2: the predictions of a_0..a_2 must not move, a_3's may
    s2 = s.clone()
    s2[0, 3] += 1.0                  # change s_3: only the prediction at step 3 may move
    out_a, out_s = m(R, s, a2, t), m(R, s2, a, t)
    assert torch.equal(out_a[0, :3], base[0, :3]) and not torch.equal(out_a[0, 3], base[0, 3])
    assert torch.equal(out_s[0, :3], base[0, :3])


def test_dataset_is_checked_and_its_sha256_recorded(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        validate(DTConfig(dataset=str(tmp_path / "missing.npz")))
    p = tmp_path / "t.npz"
    np.savez(p, **scripted_cartpole(2, seed=0))
    c = DTConfig(dataset=str(p))
    validate(c)
    assert len(c.dataset_sha256) == 64
    np.savez(p, **scripted_cartpole(3, seed=0))      # the file changes under a recorded run
    with pytest.raises(UserError, match="changed since"):
        validate(dataclasses.replace(c))
    bad = tmp_path / "bad.npz"
    np.savez(bad, obs=np.zeros(3))
    with pytest.raises(UserError, match="lacks"):
        validate(DTConfig(dataset=str(bad)))


def test_scripted_data_is_mixed_quality_and_rollout_runs():
    d = scripted_cartpole(5, seed=0)
    returns = np.bincount(d["episode"], weights=d["rewards"])
    assert returns[0] == 500 and returns.min() < 500 and len(d["obs"]) == returns.sum()
    m = DecisionTransformer(4, 2, context=3, max_timestep=500, d_model=8, n_layers=1, n_heads=2)
    r = rollout(m, "CartPole-v1", 100.0, episodes=2, seed=0, max_episode_steps=20)
    assert r.shape == (2,) and np.all((r >= 1) & (r <= 20))


def _tiny_model(seed=0, dropout=0.0, context=4, max_timestep=60):
    torch.manual_seed(seed)
    return DecisionTransformer(4, 2, context=context, max_timestep=max_timestep, d_model=16, n_layers=2, n_heads=2,
                               dropout=dropout)


def test_forward_at_the_state_tokens_equals_the_nn_decoder():
    """The model's own block pass (last block at the s_t tokens only) = head(Decoder(tokens)) at the s_t tokens."""
    m = _tiny_model().eval()
    B, K = 5, 4
    g = torch.Generator().manual_seed(1)
    R, s = torch.rand(B, K, generator=g) * 50, torch.randn(B, K, 4, generator=g)
    a, t = torch.randint(0, 3, (B, K), generator=g), torch.randint(0, 60, (B, K), generator=g)
    te = m.embed_t(t)
    tokens = torch.stack([m.embed_R((R / m.return_scale)[..., None]) + te, m.embed_s(s) + te, m.embed_a(a) + te],
                         dim=2).view(B, 3 * K, -1)
    ref = m.head(m.decoder(m.ln(tokens))[:, 1::3])                 # mlcanon.nn's Decoder.forward, every token
    out = m(R, s, a, t)
    # float32 round-off of two layers of d_model-long dot products, scaled by the logits' size
    tol = 8 * 2 * 16 * torch.finfo(torch.float32).eps * float(ref.detach().abs().max())
    assert out.shape == (B, K, 2) and torch.allclose(out, ref, rtol=0, atol=tol)
    assert torch.allclose(m(R, s, a, t, last_only=True)[:, 0], ref[:, -1], rtol=0, atol=tol)


def test_dropout_masks_at_rate_p_keep_the_mean_and_follow_the_seed():
    x = torch.ones(200_000, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.1, training=True)
    dropped = (y == 0).double().mean().item()
    p = round(0.1 * 65536) / 65536
    assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5          # 5 binomial standard deviations
    assert torch.all((y == 0) | (y == 1 / (1 - p)))                       # inverted dropout: kept x / (1 - p)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())                                # dy/dx = m / (1 - p)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1, training=True), y)                 # a function of the torch seed
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0, training=True) is x


def _one_episode(m, target, seed, max_steps):
    """Algorithm 1 of Chen et al. 2021 for one episode, written plainly: full history, last K steps, argmax."""
    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    o, _ = env.reset(seed=seed)
    Rs, ss, acts, ret, R_left = [], [], [], 0.0, target
    while True:
        Rs.append(R_left)
        ss.append(o)
        acts.append(m.n_actions)                    # the "no action yet" token at the newest step
        lo = max(0, len(ss) - m.context)
        t = torch.arange(lo, len(ss))[None]
        logits = m(torch.tensor([Rs[lo:]], dtype=torch.float32), torch.tensor(np.array([ss[lo:]])),
                   torch.tensor([acts[lo:]]), t)[0, -1].detach()
        assert abs(float(logits[0] - logits[1])) > 1e-4      # no near-tie whose side could depend on round-off
        acts[-1] = int(logits.argmax())
        o, r, term, trunc, _ = env.step(acts[-1])
        ret += r
        R_left -= r
        if term or trunc:
            return ret


def test_rollout_batched_over_targets_and_episodes_equals_one_episode_at_a_time():
    m = _tiny_model(seed=4).eval()
    with torch.no_grad():                           # decisive logits (see the near-tie assertion) that depend
        m.head.weight.mul_(100.0)                   # visibly on the state and the target
        m.embed_s.weight.mul_(10.0)
        m.embed_R.weight.mul_(20.0)
    targets, episodes, seed = (40.0, 5.0), 3, 7
    got = rollout(m, "CartPole-v1", targets, episodes, seed, max_episode_steps=60)
    want = np.array([[_one_episode(m, g, seed * 1_000_003 + j, 60) for j in range(episodes)] for g in targets])
    assert got.shape == (2, 3) and np.array_equal(got, want)
    # the case is not degenerate: episodes end at different steps (the batch shrinks mid-run, one is truncated at
    # 60), the window of K = 4 slides, and the target changes the actions
    assert len(np.unique(want)) > 3 and want.max() == 60 and want.min() > 4 and not np.array_equal(*want)
    assert np.array_equal(rollout(m, "CartPole-v1", 5.0, episodes, seed, max_episode_steps=60), want[1])


def test_sampled_actions_follow_the_softmax_and_repeat_with_the_seed():
    """sample_actions (the paper's Atari evaluation draws a_t ~ softmax): with a zero head the softmax is uniform, so
    the sampled episodes are a random policy's (CartPole mean ~22 steps), while the greedy argmax of the tie always
    pushes left (episodes end within ~10 steps)."""
    m = _tiny_model(seed=1).eval()
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
    greedy = rollout(m, "CartPole-v1", 50.0, 20, seed=2, max_episode_steps=200)
    sampled = rollout(m, "CartPole-v1", 50.0, 20, seed=2, max_episode_steps=200, sample=True)
    assert greedy.max() <= 12 and sampled.mean() > 15 and sampled.max() > 25
    assert np.array_equal(sampled, rollout(m, "CartPole-v1", 50.0, 20, seed=2, max_episode_steps=200, sample=True))


def test_runs_written_before_sample_actions_keep_the_greedy_evaluation():
    from mlcanon.config import from_dict
    assert from_dict(DTConfig, {}).sample_actions is False                 # a stored config.json without the field
    assert from_dict(DTConfig, {}, stored=False).sample_actions is True    # a --config file: the new default
    assert DTConfig().sample_actions is True
