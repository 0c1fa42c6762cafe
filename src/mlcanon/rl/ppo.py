"""Proximal policy optimization (Schulman et al. 2017): ``mlcanon train ppo --env CartPole-v1``.

One iteration, top to bottom (the structure of CleanRL's ppo.py, Huang et al. 2022):
1. roll out T steps of N parallel envs with the current policy pi_old, storing log pi_old(a|s) and V(s);
2. advantages by GAE(gamma, lambda) (Schulman et al. 2016), bootstrapping from V of the true next state, so a
   time-limit truncation bootstraps and a termination does not;
3. K epochs of minibatch steps on the clipped surrogate (PPO paper eq. 7)
       L^CLIP = E[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)],  r_t = pi(a_t|s_t) / pi_old(a_t|s_t),
   minus c1 times the value loss (optionally clipped around the old values) plus c2 times the entropy (eq. 9);
   advantages normalized per minibatch; learning rate (and clip range) annealed linearly to 0.

Discrete actions use a categorical policy, Box actions a diagonal Gaussian with a learned log-std
(:mod:`mlcanon.rl.policies`). Defaults are rl-baselines3-zoo's CartPole-v1 hyperparameters.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import torch

from mlcanon.config import option
from mlcanon.errors import UserError
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
from mlcanon.rl.cartpole_torch import CartPoleTorch
from mlcanon.rl.policies import ActorCritic
from mlcanon.rl.returns import explained_variance, gae
from mlcanon.rl.vec_env import ObsNormalizer, RewardScaler, VecEnv
from mlcanon.runs import Run
from mlcanon.training import TrainState


@dataclasses.dataclass
class PPOConfig(DeepRLConfig):
    """PPO with the clipped objective and GAE; every field is a flag (``--num-envs 8``)."""

    total_steps: int = option(100_000, "training budget in environment steps (all envs together)", min=1)
    num_envs: int = option(8, "parallel environments", min=1)
    num_steps: int = option(32, "steps per env in each rollout (rollout = num_envs * num_steps)", min=1)
    gamma: float = option(0.98, "discount factor", min=0.0, max=1.0)
    gae_lambda: float = option(0.8, "GAE lambda (0: TD(0) advantages, 1: Monte Carlo)", min=0.0, max=1.0)
    lr: float = option(1e-3, "Adam learning rate (annealed to 0 with --anneal-lr)", min=0.0)
    anneal_lr: bool = option(True, "decay the learning rate linearly to 0 over training")
    update_epochs: int = option(20, "epochs over each rollout", min=1)
    minibatch_size: int = option(256, "minibatch size of the updates", min=1)
    clip_coef: float = option(0.2, "clip range epsilon of the probability ratio", min=0.0)
    anneal_clip: bool = option(True, "decay the clip range linearly to 0 over training (rl-zoo's lin_0.2)")
    clip_vloss: bool = option(False, "clip the value update around the old values (PPO2's value clipping)")
    ent_coef: float = option(0.0, "entropy bonus coefficient c2", min=0.0)
    vf_coef: float = option(0.5, "value loss coefficient c1", min=0.0)
    norm_adv: bool = option(True, "normalize advantages per minibatch")
    target_kl: float | None = option(None, "stop the epochs of an iteration once the approximate KL exceeds this")
    normalize_obs: bool = option(False, "normalize observations by running mean/std (saved with the agent)")
    scale_rewards: bool = option(False, "divide rewards by the running std of the discounted return")
    activation: str = option("tanh", "hidden activation", choices=("tanh", "relu"))
    log_std_init: float = option(0.0, "initial log-std of the Gaussian policy (Box actions)")
    torch_env: bool = option(False, "step CartPole-v1 as one batched torch env (rl/cartpole_torch.py) instead of "
                                    "N gymnasium envs: thousands of envs at once, on the GPU too")

    def check(self) -> None:
        super().check()
        if self.torch_env and self.env != "CartPole-v1":
            raise UserError(f"--torch-env: the batched torch env is CartPole-v1 only, not {self.env}; "
                            "drop --torch-env or use --env CartPole-v1")


class PPO(Agent):
    name = "ppo"
    config_cls = PPOConfig

    def __init__(self, env: str, config: PPOConfig, device=None):
        super().__init__(env, config, device)
        self.net = ActorCritic(self.obs_dim, self.action_space, config.hidden, config.activation,
                               config.log_std_init).to(self.device)
        self.obs_norm = ObsNormalizer(self.obs_shape).to(self.device) if config.normalize_obs else None
        self.reward_scale = RewardScaler(config.num_envs, config.gamma).to(self.device) \
            if config.scale_rewards else None
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, eps=1e-5, fused=True)

    def modules(self):
        mods = {"policy": self.net}
        if self.obs_norm is not None:
            mods["obs_norm"] = self.obs_norm
        if self.reward_scale is not None:
            mods["reward_scale"] = self.reward_scale
        return mods

    def normalize(self, obs: torch.Tensor, update: bool = False) -> torch.Tensor:
        return obs if self.obs_norm is None else self.obs_norm(obs, update)

    def policy(self, obs, deterministic):
        x = self.normalize(obs)
        a = self.net.mode(x) if deterministic else self.net.dist(x).sample()
        return self.net.to_env(a)

    def learn(self, total_steps: int | None = None, run: Run | None = None) -> dict:
        cfg, dev = self.config, self.device
        total = total_steps or cfg.total_steps
        T, N = cfg.num_steps, cfg.num_envs
        env = CartPoleTorch(N, cfg.seed, dev, cfg.max_episode_steps or 500) if cfg.torch_env else \
            VecEnv(cfg.env, N, cfg.seed, cfg.max_episode_steps or None)
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        storage = RolloutStorage(T, N, self.obs_shape, () if discrete else self.action_space.shape,
                                 torch.int64 if discrete else torch.float32, dev)
        state = TrainState(**self.modules(), optimizer=self.optimizer, env=env)
        run, loop = self.start(run, state, total, "ppo")
        batch = T * N
        while not loop.finished:
            frac = 1.0 - loop.step / total                       # linear annealing to 0
            lr = cfg.lr * frac if cfg.anneal_lr else cfg.lr
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            clip = cfg.clip_coef * frac if cfg.anneal_clip else cfg.clip_coef

            # 1. rollout of T steps with pi_old ---------------------------------------------------------
            storage.reset()
            ep_stats = {"episode_return": [], "episode_length": []}
            obs = torch.as_tensor(env.obs, device=dev)
            for _ in range(T):
                with torch.no_grad():
                    x = self.normalize(obs, update=True)
                    dist = self.net.dist(x)
                    action = dist.sample()                        # a_t ~ pi_old(.|s_t)
                    logp, value = dist.log_prob(action), self.net.value(x)
                env_action = self.net.to_env(action)
                next_obs, reward, term, trunc, info = env.step(env_action if cfg.torch_env else env_action.cpu().numpy())
                done = torch.as_tensor(term | trunc, device=dev)
                r = torch.as_tensor(reward, dtype=torch.float32, device=dev)
                if self.reward_scale is not None:
                    r = self.reward_scale(r, done)
                storage.add(obs=x, actions=action, log_probs=logp, values=value, rewards=r,
                            terminated=torch.as_tensor(term, device=dev), dones=done,
                            next_obs=self.normalize(torch.as_tensor(info["final_obs"], device=dev)))
                for k in ep_stats:
                    ep_stats[k] += info[k]
                obs = torch.as_tensor(next_obs, device=dev)

            # 2. GAE advantages and lambda-returns, V(s') of the true next states ---------------------
            with torch.no_grad():
                next_values = self.net.value(storage.next_obs.view(batch, *self.obs_shape)).view(T, N)
                adv, ret = gae(storage.rewards, storage.values, next_values, storage.terminated, storage.dones,
                               cfg.gamma, cfg.gae_lambda)
            b = storage.flat(advantages=adv, returns=ret)

            # 3. K epochs of minibatch updates on the clipped surrogate --------------------------------
            sums = {"loss": 0.0, "policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0,
                    "clip_fraction": 0.0}
            n_updates = 0
            for _epoch in range(cfg.update_epochs):
                perm = torch.randperm(batch, device=dev)
                for start in range(0, batch, cfg.minibatch_size):
                    mb = perm[start:start + cfg.minibatch_size]
                    out = self.update({k: v[mb] for k, v in b.items()}, clip)
                    for k in sums:
                        sums[k] += out[k]
                    n_updates += 1
                if cfg.target_kl is not None and out["approx_kl"] > cfg.target_kl:
                    break
            explained = explained_variance(b["returns"], b["values"])     # 1 - Var[y-V]/Var[y]
            metrics = {f"train/{k}": float(s) / n_updates for k, s in sums.items()}
            metrics.update({"train/lr": lr, "train/clip_range": clip, "train/explained_variance": explained,
                            **episode_metrics(ep_stats)})
            self.end_iteration(loop, batch, metrics)
        loop.close()
        env.close()
        return self.summary()

    def update(self, mb: dict[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
        """One gradient step on a minibatch: clipped surrogate + c1 value loss - c2 entropy (PPO eq. 9)."""
        cfg = self.config
        dist = self.net.dist(mb["obs"])
        logp = dist.log_prob(mb["actions"])
        entropy = dist.entropy().mean()
        log_ratio = logp - mb["log_probs"]
        ratio = log_ratio.exp()                                   # r_t = pi / pi_old
        adv = mb["advantages"]
        if cfg.norm_adv and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()   # -L^CLIP (eq. 7)
        value = self.net.value(mb["obs"])
        if cfg.clip_vloss:   # max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)
            v_clipped = mb["values"] + (value - mb["values"]).clamp(-clip, clip)
            v_loss = 0.5 * torch.max((value - mb["returns"]) ** 2, (v_clipped - mb["returns"]) ** 2).mean()
        else:
            v_loss = 0.5 * ((value - mb["returns"]) ** 2).mean()
        loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy   # eq. 9 (as a loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()          # k3 estimator of KL(pi_old || pi) (Schulman 2020)
            clipfrac = ((ratio - 1).abs() > clip).float().mean()
        return {"loss": loss.item(), "policy_loss": pg_loss.item(), "value_loss": v_loss.item(),
                "entropy": entropy.item(), "approx_kl": approx_kl.item(), "clip_fraction": clipfrac.item()}


def train(config: PPOConfig, run: Run | None = None) -> dict:
    """Train PPO; returns the run folder, the step reached, the best evaluation and the step that solved it."""
    return train_agent(PPO, config, run)


register("ppo", family="rl-deep", config=PPOConfig,
         description="proximal policy optimization: clipped surrogate, GAE, minibatch epochs (discrete/Gaussian)",
         evaluate=evaluate_run, sample=sample_run, load=load_agent, eval_options=RLEvalOptions,
         sample_options=RLSampleOptions,
         tiny={"env": "CartPole-v1", "total_steps": 256, "num_envs": 2, "num_steps": 32, "update_epochs": 2,
               "minibatch_size": 32, "eval_every": 128, "eval_episodes": 2, "max_episode_steps": 50,
               "checkpoint_every": 64, "hidden": (16,)})(train)

__all__ = ["PPO", "PPOConfig", "train"]
