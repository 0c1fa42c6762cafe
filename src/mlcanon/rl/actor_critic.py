"""One-step and n-step actor-critic (Sutton & Barto sec. 13.5; n-step as in A3C, Mnih et al. 2016):
``mlcanon train actor-critic --env CartPole-v1 [--n-steps 5]``.

Each iteration, top to bottom:
1. take n steps (``--n-steps``; 1 = one-step actor-critic) in each of N envs with pi_theta;
2. the n-step target of every step, G_t = r_{t+1} + gamma r_{t+2} + ... + gamma^m V(s_{t+m}) with m the steps to
   the end of the batch or of the episode (S&B eq. 7.1; m = 1 gives the TD target r + gamma V(s')); truncation
   bootstraps from V(final obs), termination does not;
3. the TD error delta_t = G_t - V(s_t) is the advantage (S&B sec. 13.5, "one-step actor-critic"):
       theta <- theta + alpha delta_t grad log pi(a_t|s_t)        w <- w + alpha_w delta_t grad V_w(s_t)
   as one Adam step on L = -mean_t delta_t log pi(a_t|s_t) + c_v mean_t delta_t^2 - c_e mean_t H (delta_t held
   constant in the policy term).
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import torch

from mlcanon.config import option
from mlcanon.registry import register
from mlcanon.rl.agent import (
    Agent,
    DeepRLConfig,
    RLEvalOptions,
    RLSampleOptions,
    episode_metrics,
    evaluate_run,
    load_agent,
    sample_run,
    train_agent,
)
from mlcanon.rl.buffers import RolloutStorage
from mlcanon.rl.policies import ActorCritic, collect_rollout
from mlcanon.rl.returns import explained_variance, nstep_returns
from mlcanon.rl.vec_env import VecEnv
from mlcanon.runs import Run
from mlcanon.training import TrainState


@dataclasses.dataclass
class ActorCriticConfig(DeepRLConfig):
    """One-step (``--n-steps 1``) or n-step actor-critic with the TD error as advantage."""

    total_steps: int = option(200_000, "training budget in environment steps (all envs together)", min=1)
    num_envs: int = option(4, "parallel environments", min=1)
    n_steps: int = option(1, "n of the n-step targets (1: one-step actor-critic); steps per update", min=1)
    lr: float = option(1e-3, "Adam learning rate", min=0.0)
    ent_coef: float = option(0.0, "entropy bonus coefficient c_e", min=0.0)
    vf_coef: float = option(0.5, "value loss coefficient c_v", min=0.0)
    activation: str = option("tanh", "hidden activation", choices=("tanh", "relu"))
    log_std_init: float = option(0.0, "initial log-std of the Gaussian policy (Box actions)")


class ActorCriticAgent(Agent):
    name = "actor-critic"
    config_cls = ActorCriticConfig

    def __init__(self, env: str, config: ActorCriticConfig, device=None):
        super().__init__(env, config, device)
        self.net = ActorCritic(self.obs_dim, self.action_space, config.hidden, config.activation,
                               config.log_std_init).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, fused=True)

    def modules(self):
        return {"policy": self.net}

    def policy(self, obs, deterministic):
        a = self.net.mode(obs) if deterministic else self.net.dist(obs).sample()
        return self.net.to_env(a)

    def learn(self, total_steps: int | None = None, run: Run | None = None) -> dict:
        cfg, dev = self.config, self.device
        total = total_steps or cfg.total_steps
        T, N = cfg.n_steps, cfg.num_envs
        env = VecEnv(cfg.env, N, cfg.seed, cfg.max_episode_steps or None)
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        storage = RolloutStorage(T, N, self.obs_shape, () if discrete else self.action_space.shape,
                                 torch.int64 if discrete else torch.float32, dev)
        state = TrainState(policy=self.net, optimizer=self.optimizer, env=env)
        run, loop = self.start(run, state, total, "actor-critic")
        while not loop.finished:
            # 1. n steps of every env ----------------------------------------------------------------------
            ep = collect_rollout(self.net, env, storage, T, dev)   # a_t ~ pi(.|s_t) for T steps of every env
            # 2. n-step targets G_t, bootstrapped from V of the true next states ---------------------
            with torch.no_grad():
                next_values = self.net.value(storage.next_obs.view(T * N, *self.obs_shape)).view(T, N)
                target = nstep_returns(storage.rewards, next_values, storage.terminated, storage.dones, cfg.gamma, T)
            b = storage.flat(returns=target)
            # 3. TD error as advantage: one step on the actor and the critic -------------------------------
            dist = self.net.dist(b["obs"])
            logp = dist.log_prob(b["actions"])
            value = self.net.value(b["obs"])
            delta = b["returns"] - value                          # delta_t = G_t - V(s_t)
            pg_loss = -(logp * delta.detach()).mean()             # -delta log pi(a|s)
            v_loss = (delta ** 2).mean()                          # delta^2 (semi-gradient: G_t is a constant)
            entropy = dist.entropy().mean()
            loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            explained = explained_variance(b["returns"], b["values"])
            metrics = {"train/loss": loss.item(), "train/policy_loss": pg_loss.item(), "train/value_loss": v_loss.item(),
                       "train/entropy": entropy.item(), "train/explained_variance": explained,
                       **episode_metrics(ep)}
            self.end_iteration(loop, T * N, metrics)
        loop.close()
        env.close()
        return self.summary()


def train(config: ActorCriticConfig, run: Run | None = None) -> dict:
    """Train the actor-critic; returns the run folder, the step reached, the best evaluation and the step that solved it."""
    return train_agent(ActorCriticAgent, config, run)


register("actor-critic", family="rl-deep", config=ActorCriticConfig,
         description="one-step (TD error as advantage) and n-step actor-critic with a learned critic",
         evaluate=evaluate_run, sample=sample_run, load=load_agent, eval_options=RLEvalOptions,
         sample_options=RLSampleOptions,
         tiny={"env": "CartPole-v1", "total_steps": 240, "num_envs": 4, "n_steps": 3, "eval_every": 120,
               "eval_episodes": 2, "max_episode_steps": 50, "checkpoint_every": 60, "hidden": (16,)})(train)
