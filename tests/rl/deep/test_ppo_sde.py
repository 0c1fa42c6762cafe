"""PPO with gSDE (--use-sde): the exploration matrices' resampling schedule in the rollouts, the actions
mu(s) + phi(s)^T theta_eps of each env's own matrix, the flags' errors, and checkpoint/resume (the matrices
included) bitwise."""

import pytest
import torch
from safetensors.torch import load_file

from mlcanon import runs
from mlcanon.config import validate
from mlcanon.errors import UserError
from mlcanon.rl.agent import Agent
from mlcanon.rl.ppo import PPO, PPOConfig, train
from mlcanon.runs import Run, read_metrics

EPS32 = torch.finfo(torch.float32).eps


def sde_config(**kw):
    """A tiny Pendulum-v1 PPO config with gSDE, validated."""
    base = {"env": "Pendulum-v1", "device": "cpu", "progress": False, "eval_every": 0, "eval_episodes": 2,
            "num_envs": 3, "num_steps": 10, "minibatch_size": 15, "update_epochs": 2, "hidden": (8, 8),
            "use_sde": True, "sde_sample_freq": 4, "total_steps": 60, "max_episode_steps": 25}
    cfg = PPOConfig(**{**base, **kw})
    validate(cfg)
    return cfg


def spy_rollouts(agent):
    """Record, at every rollout step: the matrices theta_eps, the policy input, mu(s), phi(s) and the action."""
    steps, sample = [], agent.net.sample

    def spy(x):
        with torch.no_grad():
            phi = agent.net.actor[:-1](x)                         # the last hidden layer
            mu = agent.net.actor[-1](phi)
        a, logp = sample(x)
        steps.append({"theta": agent.net.sde.theta.clone(), "mu": mu, "phi": phi, "a": a.clone()})
        return a, logp

    agent.net.sample = spy
    return steps


@pytest.mark.parametrize("freq", [4, -1])
def test_exploration_matrices_resampled_on_schedule(freq):
    cfg = sde_config(sde_sample_freq=freq)
    agent = PPO(cfg.env, cfg)
    steps = spy_rollouts(agent)
    agent.learn()
    T, N = cfg.num_steps, cfg.num_envs
    assert len(steps) == 2 * T                                    # two rollouts of T steps
    for i, s in enumerate(steps):
        t = i % T
        # a_t = mu(s_t) + phi(s_t)^T theta_eps of the env's own matrix (gSDE eq. 4)
        expected = s["mu"] + torch.stack([s["phi"][n] @ s["theta"][n] for n in range(N)])
        assert torch.allclose(s["a"], expected, atol=64 * EPS32 * float(expected.abs().max() + 1))
        assert not torch.equal(s["theta"][0], s["theta"][1])     # one matrix per env
        if i == 0:
            continue
        resampled = t == 0 or (freq > 0 and t % freq == 0)        # each rollout start, then every freq steps
        if resampled:                                             # every entry drawn anew
            assert torch.all(s["theta"] != steps[i - 1]["theta"]), (i, t)
        else:                                                     # held: the same state gives the same action
            assert torch.equal(s["theta"], steps[i - 1]["theta"]), (i, t)


def test_sde_log_std_is_trained_and_the_policy_is_gsde():
    cfg = sde_config()
    agent = PPO(cfg.env, cfg)
    assert not hasattr(agent.net, "log_std") and agent.net.sde.log_std.shape == (8, 1)
    before = agent.net.sde.log_std.detach().clone()
    agent.learn()
    assert not torch.equal(before, agent.net.sde.log_std.detach())   # in the optimizer, gradient nonzero


def test_use_sde_errors_are_user_errors():
    with pytest.raises(UserError, match="--use-sde"):
        PPO("CartPole-v1", sde_config(env="CartPole-v1"))
    with pytest.raises(UserError, match="--use-sde"):
        sde_config(env="CartPole-v1", torch_env=True)


def _stable(records):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


class _Killed(Exception):
    """Stands for the process dying right after its first checkpoint."""


def test_resume_restores_the_exploration_matrices_bitwise(tmp_path, monkeypatch):
    cfg = {"checkpoint_every": 30, "eval_every": 30, "out_dir": str(tmp_path / "a")}
    a = train(sde_config(**cfg))
    real = runs.save_checkpoint

    def save_then_die(directory, obj, *, tag="checkpoint", step=0):
        path = real(directory, obj, tag=tag, step=step)
        if tag == "checkpoint":
            raise _Killed
        return path

    monkeypatch.setattr(runs, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train(sde_config(**{**cfg, "out_dir": str(tmp_path / "c")}))
    monkeypatch.setattr(runs, "save_checkpoint", real)
    (c_dir,) = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    ck = load_file(str(c_dir / "checkpoint.safetensors"))
    theta_key = [k for k in ck if k.endswith("sde.theta")]
    assert theta_key and ck[theta_key[0]].shape == (3, 8, 1)    # the matrices are in the checkpoint
    run, step = Run.reopen(c_dir)
    assert 0 < step < 60
    train(sde_config(**{**cfg, "out_dir": str(tmp_path / "c")}), run)
    a_dir = a["run_dir"]
    fa, fc = load_file(f"{a_dir}/checkpoint.safetensors"), load_file(str(c_dir / "checkpoint.safetensors"))
    assert sorted(fa) == sorted(fc) and all(torch.equal(fa[k], fc[k]) for k in fa)
    assert _stable(read_metrics(a_dir)) == _stable(read_metrics(c_dir))


def test_saved_agent_restores_matrices_and_actions(tmp_path):
    cfg = sde_config()
    agent = PPO(cfg.env, cfg)
    agent.learn()
    agent.save(tmp_path / "agent")
    loaded = Agent.load(tmp_path / "agent")
    assert torch.equal(loaded.net.sde.theta, agent.net.sde.theta)
    obs = torch.randn(3, 3).numpy()
    assert (loaded.act(obs, deterministic=True) == agent.act(obs, deterministic=True)).all()
    torch.manual_seed(0)
    a1 = agent.act(obs)
    torch.manual_seed(0)
    assert (loaded.act(obs) == a1).all()                           # 3 rows = 3 envs: each row's own matrix


# rl-baselines3-zoo ppo.yml, Pendulum-v1 (SB3 2.x): 4 envs x 1024 steps, lambda 0.95, gamma 0.9, 10 epochs of batch
# 64, lr 1e-3, clip 0.2, no entropy bonus, gSDE resampled every 4 steps, no normalization; budget 1e5 as the zoo
ZOO_PENDULUM = {"env": "Pendulum-v1", "num_envs": 4, "num_steps": 1024, "gae_lambda": 0.95, "gamma": 0.9,
                "update_epochs": 10, "minibatch_size": 64, "lr": 1e-3, "anneal_lr": False, "anneal_clip": False,
                "clip_coef": 0.2, "ent_coef": 0.0, "use_sde": True, "sde_sample_freq": 4}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_slow_ppo_sde_reaches_minus_200_on_pendulum(tmp_runs, seed):
    r = train(PPOConfig(out_dir=str(tmp_runs), total_steps=100_000, target_return=-200.0, eval_every=10_000,
                        eval_episodes=10, progress=False, device="cpu", seed=seed, **ZOO_PENDULUM))
    assert r["solved_step"] is not None and r["best_eval_return"] >= -200.0
