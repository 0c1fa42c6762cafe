"""PPO over many seeds at once (``ppo --torch-env --num-seeds N``): each seed is its own PPO run.

The vectorized pieces are checked against their one-seed references (torch's ActorCritic, torch.optim.Adam), the
sampler against its distribution, and a seed's whole run against the same seed run alone (bitwise).
"""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mlcanon.errors import UserError
from mlcanon.rl.agent import RLEvalOptions
from mlcanon.rl.cartpole_torch import CartPoleTorch
from mlcanon.rl.policies import ActorCritic
from mlcanon.rl.ppo import (
    PPOConfig,
    SeedAdam,
    SeedNets,
    _categorical,
    evaluate_ppo_run,
    evaluate_seeds,
    train,
    train_many_seeds,
)

SPACE = gym.spaces.Discrete(2)
EPS32 = torch.finfo(torch.float32).eps
TINY = {"total_steps": 512, "num_envs": 4, "num_steps": 32, "update_epochs": 2, "minibatch_size": 64,
        "eval_every": 256, "eval_episodes": 3, "max_episode_steps": 100, "hidden": (16, 16), "progress": False,
        "device": "cpu", "torch_env": True}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_seed_nets_are_the_single_runs_actor_critics(activation):
    seeds = [0, 5, 9]
    nets = SeedNets(seeds, 4, SPACE, (32, 32), activation, "cpu")
    x = torch.randn(3, 10, 4)
    for j, s in enumerate(seeds):
        torch.manual_seed(s)                               # what Agent.__init__ does before building the network
        ref = ActorCritic(4, SPACE, (32, 32), activation)
        with torch.no_grad():
            # tanh as 2 sigmoid(2x) - 1 is within a few float32 ulps of torch.tanh; the three layers add up to
            # |W| |x| sums of 32 terms: 64 eps relative covers it
            torch.testing.assert_close(nets.logits(x)[j], ref.actor(x[j]), rtol=64 * EPS32, atol=64 * EPS32)
            torch.testing.assert_close(nets.value(x)[j], ref.value(x[j]), rtol=64 * EPS32, atol=64 * EPS32)


def test_seed_adam_is_torch_adam_per_seed():
    torch.manual_seed(0)
    params = [torch.randn(3, 5, 4), torch.randn(3, 1, 4)]
    opt = SeedAdam([p.clone() for p in params])
    mine = [p.clone() for p in params]
    refs = [[p[j].clone().requires_grad_() for p in params] for j in range(3)]
    torch_opts = [torch.optim.Adam(r, lr=1e-2, eps=1e-5) for r in refs]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for rows in (slice(0, 2), slice(2, 3)):            # two seed chunks, as the updates run them
            opt.step(mine, [g[rows] for g in grads], rows, 1e-2)
        opt.t += 1
        for j in range(3):
            for r, g in zip(refs[j], grads):
                r.grad = g[j].clone()
            torch_opts[j].step()
    for j in range(3):
        for p, r in zip(mine, refs[j]):                   # same formula, unfused: a few ulps of |theta| apart
            torch.testing.assert_close(p[j], r.detach(), rtol=8 * EPS32, atol=8 * EPS32)


def test_categorical_sampler_has_softmax_frequencies():
    logits = torch.tensor([[0.3, -1.0, 1.2], [2.0, 0.0, -2.0]])
    n = 200_000
    u = torch.rand(2, n, generator=torch.Generator().manual_seed(0))
    a = _categorical(logits[:, None, :].expand(2, n, 3), u)
    p = torch.softmax(logits, -1)
    freq = torch.stack([torch.bincount(a[i], minlength=3) for i in range(2)]).double() / n
    se = (p * (1 - p) / n).sqrt()                          # binomial standard error of each frequency
    assert torch.all((freq - p).abs() < 5 * se), (freq, p)


def test_greedy_evaluation_of_a_balancing_policy_reaches_the_time_limit():
    # one linear layer per seed: logits = [0, k (theta + 0.5 theta_dot)] -> push right when the pole falls right
    nets = SeedNets([0, 1], 4, SPACE, (4,), "relu", "cpu")
    w0 = torch.zeros(2, 4, 4)
    w0[:, 2, 0], w0[:, 3, 0], w0[:, 2, 1], w0[:, 3, 1] = 1.0, 0.5, -1.0, -0.5   # relu(+s), relu(-s)
    w1 = torch.zeros(2, 4, 2)
    w1[:, 0, 1], w1[:, 1, 0] = 1.0, 1.0
    nets.params[:4] = [w0, torch.zeros(2, 1, 4), w1, torch.zeros(2, 1, 2)]
    good = evaluate_seeds(nets, torch.tensor([0, 1]), 4, 200, "cpu")
    assert torch.equal(good, torch.full((2, 4), 200.0, dtype=torch.float64))
    nets.params[2] = w1.flip(-1)                           # the opposite controller drops the pole at once
    bad = evaluate_seeds(nets, torch.tensor([0, 1]), 4, 200, "cpu")
    assert bool((bad < 20).all())


def test_multi_seed_cartpole_blocks_are_the_single_seed_envs():
    multi, single = CartPoleTorch(3, [7, 8]), CartPoleTorch(3, 8)
    multi.reset(), single.reset()
    g = torch.Generator().manual_seed(0)
    for _ in range(120):                                   # several episodes end and restart in 120 random steps
        a = torch.randint(2, (3,), generator=g)
        out_m = multi.step(torch.cat([torch.zeros(3, dtype=torch.int64), a]))
        out_s = single.step(a)
        assert torch.equal(out_m[0][3:], out_s[0]) and torch.equal(out_m[3][3:], out_s[3])
    assert int(single.episode.sum()) > 3
    multi.keep(torch.tensor([1]))
    assert torch.equal(multi.state, single.state) and torch.equal(multi.episode, single.episode)


def test_a_seed_of_the_vectorized_run_is_bitwise_its_run_alone(tmp_path):
    multi = train_many_seeds(PPOConfig(seed=3, num_seeds=3, seed_chunk=2, out_dir=str(tmp_path), **TINY))
    alone = train_many_seeds(PPOConfig(seed=4, num_seeds=1, out_dir=str(tmp_path), **TINY))
    wm = load_file(str(Path(multi["run_dir"]) / "seeds_weights.safetensors"))
    wa = load_file(str(Path(alone["run_dir"]) / "seeds_weights.safetensors"))
    assert all(torch.equal(wm[k][1], wa[k][0]) for k in wm)
    assert multi["best_eval_returns"][1] == alone["best_eval_returns"][0]
    assert not torch.equal(wm["param_2"][0], wm["param_2"][1])      # the seeds differ from each other
    result = json.loads((Path(multi["run_dir"]) / "result.json").read_text())
    assert result["num_seeds"] == 3 and len(result["solved_steps"]) == 3
    assert (Path(multi["run_dir"]) / "curves_seeds.png").is_file()


def test_solved_seeds_leave_the_batch_and_keep_their_weights(tmp_path):
    # target 0: every seed solves at the first evaluation (step 256) and training stops there
    r = train(PPOConfig(seed=0, num_seeds=4, target_return=0.0, out_dir=str(tmp_path), **TINY))
    assert r["solved"] == 4 and r["solved_steps"] == [256] * 4 and r["env_steps_all_seeds"] == 4 * 256
    # `mlcanon eval RUN_DIR` evaluates every seed's saved weights on new episodes
    ev = evaluate_ppo_run(Path(r["run_dir"]), RLEvalOptions(episodes=2))
    assert ev["seeds"] == 4 and len(ev["seed_return_means"]) == 4 and ev["seeds_at_target"] == 4
    assert ev["eval/return_mean_min"] >= 1.0


def test_vectorized_seeds_reject_options_they_do_not_support():
    with pytest.raises(UserError, match="--normalize-obs"):
        PPOConfig(torch_env=True, num_seeds=2, normalize_obs=True).check()


@pytest.mark.slow
def test_many_seeds_all_solve_cartpole(tmp_path):
    r = train(PPOConfig(seed=0, num_seeds=16, torch_env=True, total_steps=100_000, eval_every=1000, eval_episodes=10,
                        target_return=475.0, progress=False, device="cpu", out_dir=str(tmp_path)))
    assert r["solved"] == 16 and np.median(r["solved_steps"]) <= 30_000
