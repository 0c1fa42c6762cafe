"""Deep agents: learning on a chain MDP, target-update semantics, save/load, spaces, Python interface."""

import numpy as np
import pytest
import torch
from chain import OPTIMAL_RETURN  # registers mlcanon-test/Chain-v0

from mlcanon.errors import UserError
from mlcanon.rl.a2c import A2C, A2CConfig
from mlcanon.rl.actor_critic import ActorCriticAgent, ActorCriticConfig
from mlcanon.rl.agent import Agent
from mlcanon.rl.dqn import DQN, DQNConfig
from mlcanon.rl.ppo import PPO, PPOConfig
from mlcanon.rl.reinforce import Reinforce, ReinforceConfig, policy_gradient_loss

CHAIN = "mlcanon-test/Chain-v0"


def quiet(cls, **kw):
    return cls(device="cpu", progress=False, eval_every=0, eval_episodes=4, **kw)


def test_ppo_learns_the_chain():
    cfg = quiet(PPOConfig, env=CHAIN, total_steps=1536, num_envs=4, num_steps=32, minibatch_size=64,
                update_epochs=4, gamma=0.9, lr=3e-3, anneal_clip=False, hidden=(32,))
    agent = PPO(CHAIN, cfg)
    agent.learn()
    assert agent.evaluate(4)["return_mean"] == OPTIMAL_RETURN


def test_dqn_learns_the_chain_with_every_option():
    cfg = quiet(DQNConfig, env=CHAIN, total_steps=800, learning_starts=200, train_every=4, gradient_steps=2,
                batch_size=32, buffer_size=2000, target_update_every=50, gamma=0.9, lr=1e-3, hidden=(32,),
                exploration_fraction=0.5, double=True, dueling=True, prioritized=True, n_step=3)
    agent = DQN(CHAIN, cfg)
    agent.learn()
    assert agent.evaluate(4)["return_mean"] == OPTIMAL_RETURN


def test_dqn_target_network_semantics():
    base = {"env": "CartPole-v1", "total_steps": 40, "learning_starts": 0, "batch_size": 8, "hidden": (8,),
            "gradient_steps": 1}
    frozen = DQN("CartPole-v1", quiet(DQNConfig, **base, train_every=1, target_update_every=10**6))
    init = {k: v.clone() for k, v in frozen.q.state_dict().items()}
    frozen.learn()
    for k, v in frozen.target.state_dict().items():   # never updated: still the initial weights ...
        assert torch.equal(v, init[k])
    assert any(not torch.equal(v, init[k]) for k, v in frozen.q.state_dict().items())   # ... while Q moved
    # hard copy every step, last training phase at step 35: the target equals Q at the end
    hard = DQN("CartPole-v1", quiet(DQNConfig, **base, train_every=7, target_update_every=1, tau=1.0))
    hard.learn()
    for (k, v), w in zip(hard.q.state_dict().items(), hard.target.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("cls,cfg_cls,env", [(PPO, PPOConfig, "Pendulum-v1"), (DQN, DQNConfig, "CartPole-v1")])
def test_save_load_gives_identical_actions(tmp_path, cls, cfg_cls, env):
    extra = {"normalize_obs": True, "num_steps": 16, "num_envs": 2} if cls is PPO else {"learning_starts": 16}
    agent = cls(env, quiet(cfg_cls, env=env, total_steps=64, hidden=(8,), **extra))
    agent.learn()
    loaded = Agent.load(agent.save(tmp_path / "agent"))
    assert type(loaded) is cls
    obs = np.random.default_rng(0).normal(size=(16, *agent.obs_shape)).astype(np.float32)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), loaded.act(obs, deterministic=True))
    torch.manual_seed(3)
    a = agent.act(obs)
    torch.manual_seed(3)
    np.testing.assert_array_equal(a, loaded.act(obs))
    if cls is PPO:   # observation statistics travel with the agent
        assert torch.equal(agent.obs_norm.rms.mean, loaded.obs_norm.rms.mean)
        assert agent.obs_norm.rms.count > 1


def test_unsupported_action_space_names_the_space_and_the_agents():
    with pytest.raises(UserError, match=r"dqn does not support the Box action space.*agents that do: .*ppo"):
        DQN("Pendulum-v1", quiet(DQNConfig, env="Pendulum-v1"))


def test_act_single_observation_and_evaluate_stats():
    agent = PPO("CartPole-v1", quiet(PPOConfig, hidden=(8,)))
    a = agent.act(np.zeros(4, dtype=np.float32), deterministic=True)
    assert a.shape == () and a in (0, 1)
    ev = agent.evaluate(3, seed=1)
    assert ev["episodes"] == 3 and len(ev["returns"]) == 3 and ev["return_mean"] == np.mean(ev["returns"])
    assert ev == agent.evaluate(3, seed=1)


def test_policy_gradient_estimator_mean_matches_the_analytic_gradient_on_a_bandit():
    # J(theta) = sum_a softmax(theta)_a r_a;  dJ/dtheta_b = p_b (r_b - p.r)
    theta = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    r = torch.tensor([1.0, 0.0, 2.0])
    p = torch.softmax(theta.detach(), 0)
    analytic = p * (r - (p * r).sum())
    M = 20_000
    torch.manual_seed(0)
    dist = torch.distributions.Categorical(logits=theta)
    a = dist.sample((M,))
    logp = dist.log_prob(a)
    (-policy_gradient_loss(logp, r[a])).backward()          # -loss: the estimate of grad J
    # per-sample score-function terms grad log pi(a) r_a = (onehot(a) - p) r_a: their spread gives the error bar
    per = (torch.nn.functional.one_hot(a, 3).float() - p) * r[a, None]
    se = per.std(0) / M**0.5
    assert torch.all((theta.grad - analytic).abs() < 5 * se), (theta.grad, analytic, se)
    torch.testing.assert_close(theta.grad, per.mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls,cfg_cls,extra", [
    (A2C, A2CConfig, {"num_envs": 4, "num_steps": 8, "lr": 3e-3, "total_steps": 3000}),
    (ActorCriticAgent, ActorCriticConfig, {"num_envs": 4, "n_steps": 4, "lr": 3e-3, "total_steps": 3000}),
    (Reinforce, ReinforceConfig, {"episodes_per_update": 8, "lr": 1e-2, "total_steps": 3000}),
])
def test_policy_gradient_agents_learn_the_chain(cls, cfg_cls, extra):
    agent = cls(CHAIN, quiet(cfg_cls, env=CHAIN, gamma=0.9, hidden=(32,), **extra))
    agent.learn()
    assert agent.evaluate(4)["return_mean"] == OPTIMAL_RETURN


def test_reinforce_gaussian_policy_runs_on_pendulum():
    agent = Reinforce("Pendulum-v1", quiet(ReinforceConfig, env="Pendulum-v1", total_steps=40, episodes_per_update=2,
                                          max_episode_steps=20, hidden=(8,)))
    out = agent.learn()
    assert out["step"] == 40 and agent.net.log_std.grad is not None


def test_num_seeds_runs_each_seed_bitwise_as_its_single_run(tmp_path):
    from safetensors.torch import load_file

    from mlcanon.rl.agent import seed_runs
    from mlcanon.rl.ppo import train
    from mlcanon.runs import read_metrics
    tiny = {"total_steps": 64, "num_envs": 2, "num_steps": 16, "update_epochs": 1, "minibatch_size": 32,
            "eval_every": 32, "eval_episodes": 2, "max_episode_steps": 30, "hidden": (8,), "progress": False,
            "device": "cpu"}
    multi = train(PPOConfig(seed=3, num_seeds=2, out_dir=str(tmp_path / "multi"), **tiny))
    single = train(PPOConfig(seed=4, out_dir=str(tmp_path / "single"), **tiny))
    children = seed_runs(multi["run_dir"])
    assert len(children) == 2 and multi["seeds"] == [3, 4]
    a, b = load_file(str(children[1] / "checkpoint.safetensors")), load_file(str(
        tmp_path / "single" / next(p.name for p in (tmp_path / "single").iterdir()) / "checkpoint.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rs]
    assert strip(read_metrics(children[1])) == strip(read_metrics(single["run_dir"]))
    assert (tmp_path / "multi" / next(p.name for p in (tmp_path / "multi").iterdir()) / "curves_seeds.png").is_file()
    assert type(Agent.load(multi["run_dir"])) is PPO


def test_each_evaluation_during_training_plays_new_episodes(tmp_path):
    """SB3's EvalCallback protocol: its eval env runs on, so the k-th evaluation sees new start states. With lr 0 the
    policy never changes, so equal means at every evaluation would mean the same episodes were replayed."""
    from mlcanon.rl.agent import training_eval_seed
    from mlcanon.rl.ppo import train
    from mlcanon.runs import read_metrics
    cfg = PPOConfig(device="cpu", progress=False, lr=0.0, total_steps=256, num_envs=2, num_steps=32, update_epochs=1,
                    minibatch_size=32, eval_every=32, eval_episodes=3, hidden=(8,), out_dir=str(tmp_path))
    out = train(cfg)
    means = [r["eval/return_mean"] for r in read_metrics(out["run_dir"]) if "eval/return_mean" in r]
    assert len(means) == 4 and len(set(means)) > 1          # at steps 64, 128, 192, 256 (iterations of 64 steps)
    # the evaluation at step s is keyed by (seed, k = s / eval_every): the unchanged policy on those episodes gives the logged mean again
    agent = Agent.load(out["run_dir"], "checkpoint")
    assert [agent.evaluate(3, seed=training_eval_seed(cfg.seed, k))["return_mean"] for k in (2, 8)] == \
        [means[0], means[-1]]
    assert len({training_eval_seed(0, 1), training_eval_seed(0, 2), training_eval_seed(1, 1)}) == 3


def test_evaluation_keys_never_repeat_within_a_run(monkeypatch):
    """Iterations of 128 steps, --eval-every 200, 700 steps: evaluations at 256, 512 and 640 (boundaries 200, 400,
    600) and at the end, 768, which passes no boundary; every evaluation gets its own key k."""
    from mlcanon.rl import agent as agent_mod
    keys = []
    real = agent_mod.training_eval_seed
    monkeypatch.setattr(agent_mod, "training_eval_seed", lambda seed, k: keys.append(k) or real(seed, k))
    cfg = PPOConfig(device="cpu", progress=False, total_steps=700, num_envs=2, num_steps=64, update_epochs=1,
                    minibatch_size=64, eval_every=200, eval_episodes=1, max_episode_steps=20, hidden=(4,))
    PPO("CartPole-v1", cfg).learn()
    assert keys == [1, 2, 3, 4]


def test_rollouts_draw_one_epsilon_per_episode():
    """`mlcanon sample --epsilon A --epsilon-max B`: episode j takes a uniformly random action with probability
    eps_j ~ U[A, B] at each step. With 2 actions a random action differs from the greedy one with probability 1/2, so
    the expected number of non-greedy steps is sum_j eps_j len_j / 2 (checked to 4 binomial standard deviations)."""
    from mlcanon.rl.agent import RLSampleOptions, rollouts
    agent = PPO("CartPole-v1", quiet(PPOConfig, hidden=(8,)))
    d = rollouts(agent, 40, seed=3, epsilon=0.1, deterministic=True, epsilon_max=0.9)
    eps = d["epsilon"]
    assert eps.shape == (40,) and eps.min() >= 0.1 and eps.max() <= 0.9 and eps.std() > 0.1
    greedy = agent.act(d["obs"], deterministic=True)
    p = eps[d["episode"]] / 2                                            # P(action != greedy) at each step
    off = (d["actions"] != greedy).sum()
    assert abs(off - p.sum()) <= 4 * np.sqrt((p * (1 - p)).sum())
    plain = rollouts(agent, 5, seed=3)                                   # epsilon 0: the greedy policy itself
    assert np.array_equal(plain["actions"], agent.act(plain["obs"], deterministic=True))
    assert np.all(plain["epsilon"] == 0)
    with pytest.raises(UserError, match="--epsilon-max"):
        RLSampleOptions(epsilon=0.5, epsilon_max=0.2).check()
