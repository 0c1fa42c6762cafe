"""Advantage actor-critic, synchronous (A2C; Mnih et al. 2016, "Asynchronous methods for deep RL", in its
synchronous form): ``mlcanon train a2c --env CartPole-v1``.

Each iteration, top to bottom:
1. roll out T steps (``--num-steps``) of N parallel envs with pi_theta, storing V(s_t);
2. advantages by GAE(gamma, lambda) (Schulman et al. 2016; lambda = 1 gives A3C's n-step returns up to the end of
   the rollout), bootstrapping from V of the true next state (truncation bootstraps, termination does not);
3. ONE gradient step on
       L = -mean_t log pi(a_t|s_t) A_t + c_v mean_t (R_t - V(s_t))^2 - c_e mean_t H(pi(.|s_t))
   (Mnih et al. 2016, algorithm S3), R_t = A_t + V(s_t) the lambda-return; RMSprop as in the paper and SB3.
Defaults are Stable-Baselines3's A2C defaults (8 envs as in rl-baselines3-zoo's CartPole-v1 entry).
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import torch
from torch import nn

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
from mlcanon.rl.returns import explained_variance, gae
from mlcanon.rl.vec_env import VecEnv
from mlcanon.runs import Run
from mlcanon.training import TrainState


@dataclasses.dataclass
class A2CConfig(DeepRLConfig):
    """Synchronous advantage actor-critic with GAE and parallel envs."""

    total_steps: int = option(500_000, "training budget in environment steps (all envs together)", min=1)
    num_envs: int = option(8, "parallel environments", min=1)
    num_steps: int = option(5, "steps per env in each rollout (one gradient step per rollout)", min=1)
    lr: float = option(7e-4, "RMSprop learning rate", min=0.0)
    gae_lambda: float = option(1.0, "GAE lambda (1: n-step returns to the end of the rollout)", min=0.0, max=1.0)
    ent_coef: float = option(0.0, "entropy bonus coefficient c_e", min=0.0)
    vf_coef: float = option(0.5, "value loss coefficient c_v", min=0.0)
    norm_adv: bool = option(False, "normalize advantages per rollout")
    activation: str = option("tanh", "hidden activation", choices=("tanh", "relu"))
    log_std_init: float = option(0.0, "initial log-std of the Gaussian policy (Box actions)")


class A2C(Agent):
    name = "a2c"
    config_cls = A2CConfig

    def __init__(self, env: str, config: A2CConfig, device=None):
        super().__init__(env, config, device)
        self.net = ActorCritic(self.obs_dim, self.action_space, config.hidden, config.activation,
                               config.log_std_init).to(self.device)
        self.optimizer = torch.optim.RMSprop(self.net.parameters(), lr=config.lr, alpha=0.99, eps=1e-5,
                                             foreach=True)   # one kernel per op over all tensors
        self._actor_np: list | None = None

    def modules(self):
        return {"policy": self.net}

    def policy(self, obs, deterministic):
        a = self.net.mode(obs) if deterministic else self.net.sample(obs)[0]
        return self.net.to_env(a)

    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        """As :meth:`Agent.act`; the greedy action of a discrete policy on the CPU (the evaluations) is computed in
        numpy on views of the actor's weights, argmax_a of its logits: for a few observations per call, torch's
        per-call overhead is several times the arithmetic."""
        if not (deterministic and self.net.discrete and self.device.type == "cpu"):
            return super().act(obs, deterministic)
        if self._actor_np is None:            # views: they follow the optimizer's in-place updates
            self._actor_np = [(m.weight.detach().numpy().T, m.bias.detach().numpy())
                              for m in self.net.actor if isinstance(m, nn.Linear)]
        h = np.asarray(obs, dtype=np.float32)
        for i, (w, b) in enumerate(self._actor_np):
            h = h @ w + b
            if i < len(self._actor_np) - 1:
                h = np.tanh(h) if self.config.activation == "tanh" else np.maximum(h, 0.0)
        return h.argmax(-1)

    def learn(self, total_steps: int | None = None, run: Run | None = None) -> dict:
        cfg, dev = self.config, self.device
        total = total_steps or cfg.total_steps
        T, N = cfg.num_steps, cfg.num_envs
        env = VecEnv(cfg.env, N, cfg.seed, cfg.max_episode_steps or None)
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        storage = RolloutStorage(T, N, self.obs_shape, () if discrete else self.action_space.shape,
                                 torch.int64 if discrete else torch.float32, dev)
        state = TrainState(policy=self.net, optimizer=self.optimizer, env=env)
        run, loop = self.start(run, state, total, "a2c")
        while not loop.finished:
            # 1. rollout of T steps ----------------------------------------------------------------------
            ep = collect_rollout(self.net, env, storage, T, dev)   # a_t ~ pi(.|s_t) for T steps of every env
            # 2. GAE with V of the true next states ----------------------------------------------------
            with torch.no_grad():
                next_values = self.net.value(storage.next_obs.view(T * N, *self.obs_shape)).view(T, N)
                adv, ret = gae(storage.rewards, storage.values, next_values, storage.terminated, storage.dones,
                               cfg.gamma, cfg.gae_lambda)
            b = storage.flat(advantages=adv, returns=ret)
            # 3. one gradient step on the actor-critic loss --------------------------------------------
            logp, entropies = self.net.log_prob_entropy(b["obs"], b["actions"])   # log pi(a|s), H[pi(.|s)]
            value = self.net.value(b["obs"])
            a = b["advantages"]
            if cfg.norm_adv and len(a) > 1:
                a = (a - a.mean()) / (a.std() + 1e-8)
            pg_loss = -(logp * a).mean()                          # -log pi(a|s) A
            v_loss = ((b["returns"] - value) ** 2).mean()          # (R - V(s))^2
            entropy = entropies.mean()
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


def train(config: A2CConfig, run: Run | None = None) -> dict:
    """Train A2C; returns the run folder, the step reached, the best evaluation and the step that solved it."""
    return train_agent(A2C, config, run)


register("a2c", family="rl-deep", config=A2CConfig,
         description="synchronous advantage actor-critic: parallel envs, GAE, one RMSprop step per rollout",
         evaluate=evaluate_run, sample=sample_run, load=load_agent, eval_options=RLEvalOptions,
         sample_options=RLSampleOptions,
         tiny={"env": "CartPole-v1", "total_steps": 240, "num_envs": 4, "num_steps": 5, "eval_every": 120,
               "eval_episodes": 2, "max_episode_steps": 50, "checkpoint_every": 60, "hidden": (16,)})(train)
