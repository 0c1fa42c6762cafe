"""Decision transformer: windows and returns-to-go, causality, config validation of the data file."""

import dataclasses

import numpy as np
import pytest
import torch

from mlcanon.config import validate
from mlcanon.errors import UserError
from mlcanon.rl.decision_transformer import (
    DecisionTransformer,
    DTConfig,
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
