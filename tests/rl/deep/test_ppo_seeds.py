"""PPO over many seeds at once (``ppo --torch-env --num-seeds N``): each seed is its own PPO run.

The vectorized pieces are checked against their one-seed references (torch's ActorCritic, torch.optim.Adam), the
sampler against its distribution, a seed's whole run from the CLI against the same seed run alone (bitwise), and a
run killed with SIGKILL and resumed against the uninterrupted run (bitwise).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mlcanon import config as cfg
from mlcanon import registry
from mlcanon.cli import main
from mlcanon.errors import UserError
from mlcanon.rl import ppo
from mlcanon.rl.agent import Agent, RLEvalOptions
from mlcanon.rl.cartpole_torch import CartPoleTorch
from mlcanon.rl.policies import ActorCritic
from mlcanon.rl.ppo import (
    _EVAL_CLI,
    PPOConfig,
    SeedAdam,
    SeedNets,
    _categorical,
    evaluate_ppo_run,
    evaluate_seeds,
    train,
    train_many_seeds,
)
from mlcanon.runs import checkpoint_step, load_checkpoint, read_metrics

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
        # and back: seed j's stacked weights are exactly (transposes only) the single run's module
        back = nets.actor_critic(j, SPACE).state_dict()
        assert sorted(back) == sorted(ref.state_dict())
        assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())


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
    good = evaluate_seeds(nets, torch.tensor([0, 1]), 4, 200, "cpu", evaluation=0)
    assert torch.equal(good, torch.full((2, 4), 200.0, dtype=torch.float64))
    nets.params[2] = w1.flip(-1)                           # the opposite controller drops the pole at once
    bad = evaluate_seeds(nets, torch.tensor([0, 1]), 4, 200, "cpu", evaluation=0)
    assert bool((bad < 20).all())


def test_greedy_evaluation_returns_are_the_episode_lengths_under_the_full_env():
    """evaluate_seeds steps the bare physics and stops every 16 steps at most; its returns are the lengths of the
    first episodes that the full env (autoreset, truncation, episode lists) reports for the same start states."""
    nets = SeedNets([3, 4, 5], 4, SPACE, (8,), "tanh", "cpu")     # random policies: episodes end at many steps
    seeds = torch.tensor([3, 4, 5])
    got = evaluate_seeds(nets, seeds, 5, 60, "cpu", evaluation=2)
    lengths = torch.tensor([np.nan] * 15, dtype=torch.float64)
    env = CartPoleTorch(5, ppo.counter_bits(seeds, ppo._EVAL, 2).tolist(), "cpu", 60)
    obs, ended = env.reset(), torch.zeros(15, dtype=torch.bool)
    for t in range(60):
        a = nets.logits(obs.view(3, 5, -1)).argmax(-1).view(-1)
        obs, _, term, trunc, _ = env.step(a)
        new = (term | trunc) & ~ended
        lengths[new] = t + 1.0
        ended |= term | trunc
    assert bool(ended.all()) and len(set(lengths.tolist())) > 3         # several different episode lengths
    assert torch.equal(got, lengths.view(3, 5))


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


KILL_AT_STEP = textwrap.dedent("""
    import os, signal, sys
    import mlcanon.runs as runs
    real = runs.save_checkpoint
    def save_then_die(directory, obj, *, tag="checkpoint", step=0):   # as tests/test_contract.py's _KILLER, at
        path = real(directory, obj, tag=tag, step=step)                 # the first checkpoint at or past KILL_AT
        if tag == "checkpoint" and step >= int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    runs.save_checkpoint = save_then_die
    from mlcanon.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _flags(**extra) -> list[str]:
    out = []
    for k, v in {**TINY, "checkpoint_every": 128, "eval_every": 128, **extra}.items():
        out += [cfg.flag(k), ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return out


def _run_dir(parent: Path) -> Path:
    (d,) = [p for p in parent.iterdir() if p.is_dir()]
    return d


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and \
        a.contiguous().view(-1).view(torch.uint8).equal(b.contiguous().view(-1).view(torch.uint8))


# target 20: seeds 4 and 5 solve at the first evaluation and leave the batch, seed 3 trains on (the active set
# changes before the kill at step 256)
MULTI = {"seed": 3, "num_seeds": 3, "target_return": 20.0}


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multi")
    assert main(["train", "ppo", *_flags(**MULTI), "--out-dir", str(out)]) == 0
    return _run_dir(out)


def test_cli_seed_of_many_is_bitwise_the_single_run(multi_run, tmp_path):
    """`mlcanon train ppo --torch-env --seed 4` is bitwise seed 4 of `--torch-env --num-seeds 3 --seed 3`."""
    assert main(["train", "ppo", *_flags(seed=4, target_return=20.0), "--out-dir", str(tmp_path)]) == 0
    alone = _run_dir(tmp_path)
    wm = load_checkpoint(multi_run, tag="seeds_weights")[0]["params"]
    wa = load_checkpoint(alone, tag="seeds_weights")[0]["params"]
    assert all(_same_bytes(m[1], a[0]) for m, a in zip(wm, wa))
    rm, ra = (json.loads((d / "result.json").read_text()) for d in (multi_run, alone))
    assert rm["solved_steps"][1] == ra["solved_steps"][0] and rm["best_eval_returns"][1] == ra["best_eval_returns"][0]
    assert rm["solved_steps"] == [512, 128, 128] and ra["num_seeds"] == 1   # the seeds left at different times
    assert not torch.equal(wm[4][0], wm[4][1])                             # and differ from each other
    assert (multi_run / "curves_seeds.png").is_file()

    # the single run is a PPO agent for Agent.load / `mlcanon sample`: its actor is the run's final weights
    agent = Agent.load(alone)
    nets = SeedNets.from_params(wa, len(TINY["hidden"]) + 1, "tanh")
    x = torch.randn(50, 4)
    with torch.no_grad():   # _Tanh vs torch.tanh: a few float32 ulps, through |W| |x| sums of 16 terms
        torch.testing.assert_close(agent.net.actor(x), nets.logits(x[None])[0], rtol=64 * EPS32, atol=64 * EPS32)
    assert main(["sample", str(alone), "-n", "2", "--out", str(tmp_path / "t.npz")]) == 0
    assert len(np.load(tmp_path / "t.npz")["returns"]) == 2
    assert main(["eval", str(alone), "--episodes", "2"]) == 0
    assert json.loads((alone / "eval.json").read_text())["seeds"] == 1
    assert registry.load_run(alone).model is not None


def test_seed_chunk_changes_the_speed_not_the_result(multi_run, tmp_path):
    """--seed-chunk 1 (one seed per update pass) gives the bytes of the default pass over all three seeds."""
    assert main(["train", "ppo", *_flags(**MULTI, seed_chunk=1), "--out-dir", str(tmp_path)]) == 0
    one = load_checkpoint(_run_dir(tmp_path), tag="seeds_weights")[0]["params"]
    together = load_checkpoint(multi_run, tag="seeds_weights")[0]["params"]
    assert all(_same_bytes(a, b) for a, b in zip(one, together))


def test_sigkilled_run_resumes_bitwise(multi_run, tmp_path):
    """A `mlcanon train` process killed with SIGKILL right after its checkpoint at step 256 (of 512), continued by
    `mlcanon train --resume`, ends with the uninterrupted run's files: checkpoint, weights, metrics, result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": "256"}
    r = subprocess.run([sys.executable, "-c", KILL_AT_STEP, "train", "ppo", *_flags(**MULTI), "--out-dir",
                        str(tmp_path)], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    killed = _run_dir(tmp_path)
    assert checkpoint_step(killed) == 256 and not (killed / "result.json").exists()
    for cmd in ("eval", "sample"):                       # one line: finish it first
        assert main([cmd, str(killed)]) == 2
    assert main(["train", "--resume", str(killed)]) == 0
    for tag in ("checkpoint", "seeds_weights", "agent"):
        a, b = (load_file(str(d / f"{tag}.safetensors")) for d in (multi_run, killed))
        assert sorted(a) == sorted(b) and all(_same_bytes(a[k], b[k]) for k in a), tag
    assert read_metrics(killed) == read_metrics(multi_run)
    volatile = ("run_dir", "wall_seconds", "eval_seconds", "train_seconds")
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (multi_run, killed))
    assert {k: v for k, v in ra.items() if k not in volatile} == {k: v for k, v in rb.items() if k not in volatile}


def test_every_evaluation_plays_new_episodes(monkeypatch, tmp_path):
    torch.manual_seed(0)
    nets = SeedNets([0, 1], 4, SPACE, (8,), "tanh", "cpu")   # an untrained policy: returns vary with the start
    seeds = torch.tensor([0, 1])
    first = evaluate_seeds(nets, seeds, 8, 100, "cpu", evaluation=1)
    assert torch.equal(first, evaluate_seeds(nets, seeds, 8, 100, "cpu", evaluation=1))     # deterministic
    assert not torch.equal(first, evaluate_seeds(nets, seeds, 8, 100, "cpu", evaluation=2))  # new episodes
    assert not torch.equal(first, evaluate_seeds(nets, seeds, 8, 100, "cpu", evaluation=1, stream=_EVAL_CLI))
    # during training the k-th evaluation is evaluation k (k: the --eval-every boundaries passed, one more for a
    # last one between two boundaries): 128 steps per iteration, --eval-every 200 -> evaluations at steps 256,
    # 512, 640 and the end, 768
    seen = []

    def spy(*args, evaluation, **kw):
        seen.append(evaluation)
        return evaluate_seeds(*args, evaluation=evaluation, **kw)

    monkeypatch.setattr(ppo, "evaluate_seeds", spy)
    train_many_seeds(PPOConfig(**{**TINY, "total_steps": 700, "eval_every": 200, "num_envs": 4,
                                  "out_dir": str(tmp_path)}))
    assert seen == [1, 2, 3, 4]


def test_solved_seeds_leave_the_batch_and_keep_their_weights(tmp_path):
    # target 0: every seed solves at the first evaluation (step 256) and training stops there
    r = train(PPOConfig(seed=0, num_seeds=4, target_return=0.0, out_dir=str(tmp_path), **TINY))
    assert r["solved"] == 4 and r["solved_steps"] == [256] * 4 and r["env_steps_all_seeds"] == 4 * 256
    # `mlcanon eval RUN_DIR` evaluates every seed's saved weights on new episodes
    ev = evaluate_ppo_run(Path(r["run_dir"]), RLEvalOptions(episodes=2))
    assert ev["seeds"] == 4 and len(ev["seed_return_means"]) == 4 and ev["seeds_at_target"] == 4
    assert ev["eval/return_mean_min"] >= 1.0


def test_torch_env_runs_reject_options_they_do_not_support():
    for n in (1, 2):                                       # every --torch-env run is the vectorized one
        with pytest.raises(UserError, match="--normalize-obs"):
            PPOConfig(torch_env=True, num_seeds=n, normalize_obs=True).check()
    with pytest.raises(UserError, match="--target-kl"):
        PPOConfig(torch_env=True, target_kl=0.02).check()


@pytest.mark.slow
def test_many_seeds_all_solve_cartpole(tmp_path):
    r = train(PPOConfig(seed=0, num_seeds=16, torch_env=True, total_steps=100_000, eval_every=1000, eval_episodes=10,
                        target_return=475.0, progress=False, device="cpu", out_dir=str(tmp_path)))
    assert r["solved"] == 16 and np.median(r["solved_steps"]) <= 30_000
