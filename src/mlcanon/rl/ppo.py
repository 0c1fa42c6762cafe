"""Proximal policy optimization (Schulman et al. 2017): ``mlcanon train ppo --env CartPole-v1``.

One iteration, top to bottom (the structure of CleanRL's ppo.py, Huang et al. 2022):
1. roll out T steps of N parallel envs with the current policy pi_old, storing log pi_old(a|s) and V(s);
2. advantages by GAE(gamma, lambda) (Schulman et al. 2016), bootstrapping from V of the true next state, so a
   time-limit truncation bootstraps and a termination does not;
3. K epochs of minibatch steps on the clipped surrogate (PPO paper eq. 7)
       L^CLIP = E[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)],  r_t = pi(a_t|s_t) / pi_old(a_t|s_t),
   minus c1 times the value loss (optionally clipped around the old values) plus c2 times the entropy (eq. 9);
   advantages normalized per minibatch; learning rate (and clip range) annealed linearly to 0.
   For a categorical policy the gradient of eq. 9 is written in closed form and back-propagated by hand
   (:meth:`PPO.closed_form_backward`; tests/rl/deep/test_ppo_update.py checks it against autograd): at CartPole's
   256 x 4 minibatches an update takes about 40% less time than with autograd (which records ~100 small ops).

Discrete actions use a categorical policy, Box actions a diagonal Gaussian with a learned log-std
(:mod:`mlcanon.rl.policies`), or with ``--use-sde`` generalized state-dependent exploration (gSDE, Raffin et al.
2022, :mod:`mlcanon.rl.sde`): the noise phi(s)^T theta_eps, with exploration matrices resampled at the start of
each rollout and every ``--sde-sample-freq`` steps. Defaults are rl-baselines3-zoo's CartPole-v1 hyperparameters.

``--torch-env --num-seeds N`` (:func:`train_many_seeds`, at the end of this file; every ``--torch-env`` run, N = 1
included, so seed i of N is bitwise the run ``--seed seed+i``) runs the same three steps for N independent seeds at
once on the batched torch CartPole: weights stacked along a seed axis and applied with batched matmuls, per-seed
Adam, envs and counter-based random numbers, each seed leaving the batch at its first evaluation >=
``--target-return``, checkpoints for ``mlcanon train --resume``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from mlcanon.config import from_dict, option
from mlcanon.errors import UserError
from mlcanon.registry import register
from mlcanon.rl.agent import (
    Agent,
    DeepRLConfig,
    RLEvalOptions,
    RLSampleOptions,
    episode_metrics,
    evaluate_run,
    evaluation_due,
    load_agent,
    sample_run,
    train_agent,
    training_threads,
)
from mlcanon.rl.buffers import RolloutStorage
from mlcanon.rl.cartpole_torch import CartPoleTorch, counter_bits, counter_uniform
from mlcanon.rl.policies import ActorCritic, flat_parameters, mlp_backward, mlp_forward
from mlcanon.rl.returns import explained_variance, gae
from mlcanon.rl.vec_env import ObsNormalizer, RewardScaler, VecEnv
from mlcanon.runs import Run, load_checkpoint, read_config
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
    vf_coef: float = option(0.5, "value loss coefficient c1 of the squared error (V - V^targ)^2 (PPO eq. 9 and "
                                 "SB3; CleanRL's 0.5 (V - V^targ)^2 with c1 0.5 is --vf-coef 0.25)", min=0.0)
    norm_adv: bool = option(True, "normalize advantages per minibatch")
    target_kl: float | None = option(None, "stop the epochs of an iteration once the approximate KL exceeds this")
    closed_form_grad: bool = option(True, "categorical policies: the gradient of the loss in closed form, "
                                          "back-propagated by hand through the MLPs (about 40% less time per "
                                          "update than autograd); false: autograd")
    normalize_obs: bool = option(False, "normalize observations by running mean/std (saved with the agent)")
    scale_rewards: bool = option(False, "divide rewards by the running std of the discounted return")
    activation: str = option("tanh", "hidden activation", choices=("tanh", "relu"))
    log_std_init: float = option(0.0, "initial log-std of the Gaussian policy (Box actions; with --use-sde the "
                                      "initial log sigma of the exploration matrices)")
    use_sde: bool = option(False, "generalized state-dependent exploration (gSDE; Box actions): a = mu(s) + "
                                  "phi(s)^T theta_eps, theta_eps ~ N(0, sigma^2) per env, phi the last hidden layer")
    sde_sample_freq: int = option(-1, "--use-sde: resample the exploration matrices every this many env steps "
                                      "(-1 or 0: only at the start of each rollout)", min=-1)
    torch_env: bool = option(False, "step CartPole-v1 as one batched torch env (rl/cartpole_torch.py) instead of "
                                    "N gymnasium envs: thousands of envs at once, on the GPU too; with "
                                    "--num-seeds N the N seeds train together, vectorized over stacked weights")
    seed_chunk: int = option(0, "--torch-env --num-seeds: seeds per forward/backward pass of the updates "
                                "(0: 64 on the CPU, cache-sized blocks; all seeds at once on a GPU, where each "
                                "pass costs kernel launches); changes the speed, not the result", min=0)

    def check(self) -> None:
        super().check()
        if self.torch_env and self.env != "CartPole-v1":
            raise UserError(f"--torch-env: the batched torch env is CartPole-v1 only, not {self.env}; "
                            "drop --torch-env or use --env CartPole-v1")
        if self.use_sde and self.torch_env:
            raise UserError("--use-sde: gSDE needs continuous actions, the batched torch env is CartPole-v1 "
                            "(discrete); drop --use-sde or --torch-env")
        if self.torch_env:          # every --torch-env run is train_many_seeds (also --num-seeds 1)
            unsupported = [flag for flag, on in (("--normalize-obs", self.normalize_obs),
                                                 ("--scale-rewards", self.scale_rewards),
                                                 ("--target-kl", self.target_kl is not None)) if on]
            if unsupported:
                raise UserError(f"--torch-env: {', '.join(unsupported)} is not supported by the vectorized "
                                "seeds of the torch env; drop it, or drop --torch-env (gymnasium envs)")


class PPO(Agent):
    name = "ppo"
    config_cls = PPOConfig

    def __init__(self, env: str, config: PPOConfig, device=None):
        super().__init__(env, config, device)
        if config.use_sde and not isinstance(self.action_space, gym.spaces.Box):
            raise UserError(f"--use-sde: gSDE needs continuous (Box) actions, {env} has {self.action_space}; "
                            "drop --use-sde")
        self.net = ActorCritic(self.obs_dim, self.action_space, config.hidden, config.activation,
                               config.log_std_init, config.use_sde, config.num_envs).to(self.device)
        self.obs_norm = ObsNormalizer(self.obs_shape).to(self.device) if config.normalize_obs else None
        self.reward_scale = RewardScaler(config.num_envs, config.gamma).to(self.device) \
            if config.scale_rewards else None
        # theta and its gradient as one flat vector each, the networks' tensors being views of them: gradient
        # clipping is one norm and one scaling, Adam one fused update and zeroing one fill
        self.flat = flat_parameters(self.net)
        self.optimizer = torch.optim.Adam([self.flat], lr=config.lr, eps=1e-5, fused=True)

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
        a = self.net.mode(x) if deterministic else self.net.sample(x)[0]
        return self.net.to_env(a)

    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        """As :meth:`Agent.act`; the greedy action of a categorical policy on the CPU without observation
        normalization (the evaluations) is argmax_a of the logits computed in numpy (ActorCritic.greedy_numpy)."""
        if not (deterministic and self.net.discrete and self.device.type == "cpu" and self.obs_norm is None):
            return super().act(obs, deterministic)
        return self.net.greedy_numpy(obs)

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
            for t in range(T):
                if cfg.use_sde and (t == 0 or (cfg.sde_sample_freq > 0 and t % cfg.sde_sample_freq == 0)):
                    self.net.sde.resample()                      # theta_eps ~ N(0, sigma^2), one per env (gSDE)
                with torch.no_grad():
                    x = self.normalize(obs, update=True)
                    action, logp = self.net.sample(x)             # a_t ~ pi_old(.|s_t), log pi_old(a_t|s_t)
                    value = self.net.value(x)
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
            columns = torch.stack([b[k] for k in self.MB_COLUMNS])   # [4, batch]: one gather for the 4 of them

            # 3. K epochs of minibatch updates on the clipped surrogate --------------------------------
            sums = torch.zeros(len(self.STATS), dtype=torch.float64, device=dev)   # read once per iteration
            n_updates = 0
            for _epoch in range(cfg.update_epochs):
                perm = torch.randperm(batch, device=dev)
                for start in range(0, batch, cfg.minibatch_size):
                    mb = perm[start:start + cfg.minibatch_size]
                    out = self.update({"obs": b["obs"][mb], "actions": b["actions"][mb],
                                       **dict(zip(self.MB_COLUMNS, columns[:, mb]))}, clip)
                    sums += out
                    n_updates += 1
                if cfg.target_kl is not None and float(out[self.STATS.index("approx_kl")]) > cfg.target_kl:
                    break
            explained = explained_variance(b["returns"], b["values"])     # 1 - Var[y-V]/Var[y]
            metrics = {f"train/{k}": s / n_updates for k, s in zip(self.STATS, sums.tolist())}
            metrics.update({"train/lr": lr, "train/clip_range": clip, "train/explained_variance": explained,
                            **episode_metrics(ep_stats)})
            self.end_iteration(loop, batch, metrics)
        loop.close()
        env.close()
        return self.summary()

    STATS = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")   # update()'s stats
    MB_COLUMNS = ("log_probs", "values", "advantages", "returns")

    def update(self, mb: dict[str, torch.Tensor], clip: float) -> torch.Tensor:
        """One gradient step on a minibatch: clipped surrogate + c1 value loss - c2 entropy (PPO eq. 9).
        Returns the STATS as one float64 tensor (no host sync per step).

        Categorical policies (``--closed-form-grad``, the default) skip autograd: the forward pass keeps each
        layer's output and :meth:`closed_form_backward` writes the gradient of eq. 9 into ``self.flat.grad``."""
        cfg = self.config
        closed = cfg.closed_form_grad and self.net.discrete
        with torch.set_grad_enabled(not closed):
            if closed:
                hs_actor, hs_critic = mlp_forward(mb["obs"], self.net.actor), mlp_forward(mb["obs"], self.net.critic)
                z = hs_actor[-1]                                  # logits
                logp_all = z - z.logsumexp(-1, keepdim=True)      # log pi(.|s) = z - log sum_b exp z_b
                logp = logp_all.gather(-1, mb["actions"][:, None]).squeeze(-1)
                entropies = -(logp_all.exp() * logp_all).sum(-1)  # H = -sum_a pi log pi
                value = hs_critic[-1].squeeze(-1)
            else:
                logp, entropies = self.net.log_prob_entropy(mb["obs"], mb["actions"])   # log pi(a|s), H[pi(.|s)]
                value = self.net.value(mb["obs"])
            entropy = entropies.mean()
            log_ratio = logp - mb["log_probs"]
            ratio = log_ratio.exp()                               # r_t = pi / pi_old
            adv = mb["advantages"]
            if cfg.norm_adv and len(adv) > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            surr1, surr2 = ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv
            pg_loss = -torch.min(surr1, surr2).mean()             # -L^CLIP (eq. 7)
            if cfg.clip_vloss:   # max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)
                v_clipped = mb["values"] + (value - mb["values"]).clamp(-clip, clip)
                v_loss = torch.max((value - mb["returns"]) ** 2, (v_clipped - mb["returns"]) ** 2).mean()
            else:
                v_loss = ((value - mb["returns"]) ** 2).mean()     # L^VF = (V(s) - V^targ)^2 (eq. 9: no 1/2)
            loss = pg_loss + cfg.vf_coef * v_loss                 # eq. 9 (as a loss) ...
            if cfg.ent_coef > 0:                                  # ... - c2 H (c2 = 0: no entropy backward)
                loss = loss - cfg.ent_coef * entropy
        if closed:
            self.closed_form_backward(mb, clip, hs_actor, hs_critic, logp_all, entropies, ratio, adv, surr1, surr2)
        else:
            self.flat.grad.zero_()
            loss.backward()
        if cfg.max_grad_norm > 0:                                 # as clip_grad_norm_: g <- g min(1, c / |g|)
            g = self.flat.grad
            g.mul_(torch.clamp(cfg.max_grad_norm / (g.norm() + 1e-6), max=1.0))
        self.optimizer.step()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()          # k3 estimator of KL(pi_old || pi) (Schulman 2020)
            clipfrac = ((ratio - 1).abs() > clip).float().mean()
            return torch.stack([loss, pg_loss, v_loss, entropy, approx_kl, clipfrac]).double()

    @torch.no_grad()
    def closed_form_backward(self, mb, clip, hs_actor, hs_critic, logp_all, entropies, ratio, adv, surr1, surr2):
        """The gradient of update()'s loss for a categorical policy, written into ``self.flat.grad``.

        dL/dz_j (logits z, minibatch of B) = -(1/B) dL^CLIP/dr r (1[j = a] - pi_j)    (d log pi(a)/dz_j = 1[j=a] - pi_j)
                                           + (c2/B) pi_j (log pi_j + H)              (dH/dz_j = -pi_j (log pi_j + H))
        dL^CLIP/dr = A where min() takes the unclipped term or r lies in [1 - eps, 1 + eps], else 0 (eq. 7);
        dL/dV = (2 c1/B) (V - R), or through the clipped branch when --clip-vloss picks it (as autograd: ties split).
        Then both MLPs by back-propagation (:func:`~mlcanon.rl.policies.mlp_backward`)."""
        cfg, B = self.config, len(ratio)
        inside = (ratio >= 1 - clip) & (ratio <= 1 + clip)
        dr = torch.where(surr1 <= surr2, 1.0, inside.float())   # (a tie outside the range has A = 0: no gradient)
        dlogp = -(adv * dr * ratio) / B                                  # dL/dlog pi(a|s)
        pi = logp_all.exp()
        dz = pi * -dlogp[:, None]
        dz.scatter_add_(1, mb["actions"][:, None], dlogp[:, None])       # + dlogp 1[j = a]
        if cfg.ent_coef > 0:
            dz += (cfg.ent_coef / B) * pi * (logp_all + entropies[:, None])
        value, ret = hs_critic[-1].squeeze(-1), mb["returns"]
        dv = (2 * cfg.vf_coef / B) * (value - ret)                       # d/dV c1 mean (V - R)^2
        if cfg.clip_vloss:
            v_clipped = mb["values"] + (value - mb["values"]).clamp(-clip, clip)
            e1, e2 = (value - ret) ** 2, (v_clipped - ret) ** 2
            w1 = torch.where(e1 > e2, 1.0, torch.where(e1 < e2, 0.0, 0.5))    # which branch max() takes
            slope = ((value - mb["values"]).abs() <= clip).float()            # d v_clipped / dV
            dv = (2 * cfg.vf_coef / B) * (w1 * (value - ret) + (1 - w1) * (v_clipped - ret) * slope)
        mlp_backward(hs_actor, self.net.actor, dz)
        mlp_backward(hs_critic, self.net.critic, dv[:, None])


def train(config: PPOConfig, run: Run | None = None) -> dict:
    """Train PPO; returns the run folder, the step reached, the best evaluation and the step that solved it.
    ``--torch-env`` runs (any ``--num-seeds``, 1 included) go through :func:`train_many_seeds`, so that seed i of
    ``--num-seeds N --seed s`` is bitwise the run ``--seed s+i``."""
    if config.torch_env:
        with training_threads(config):
            return train_many_seeds(config, run)
    return train_agent(PPO, config, run)


# =============================================================================================================
# Many seeds at once: ``mlcanon train ppo --torch-env --num-seeds 1000 --target-return 475``
# =============================================================================================================
# Steps 1-3 of PPO above, for S independent seeds in one process. Nothing is shared between seeds: each has its
# own networks (initialized as the single run's ActorCritic with torch.manual_seed(seed), weights stacked along a
# leading seed axis and applied with batched matmuls), its own Adam moments and gradient-norm clipping, its own
# CartPole envs (episodes keyed by (seed, env, episode)), and its own counter-based random numbers (actions and
# minibatch permutations keyed by (seed, iteration, ...)). Only the reports reduce over seeds. A seed leaves the
# batch at its first evaluation >= --target-return, so the batch shrinks as seeds solve. Everything the loop carries
# (stacked weights, Adam moments, envs, active set, evaluation tables, counters) is one TrainState, checkpointed
# every --checkpoint-every env steps (per seed), so a killed run resumes (`mlcanon train --resume`) bitwise.
_ACTIONS, _MINIBATCHES, _EVAL, _EVAL_CLI = 1, 2, 104_729, 7_927    # random-stream ids of counter_bits keys


class _Tanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1 (within 2e-7 of torch.tanh), d tanh/dx = 1 - tanh^2: on CPU torch.tanh costs
    about 3x torch.sigmoid and was the largest single cost of the vectorized updates."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(x * 2) * 2 - 1
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(g, y)                       # g (1 - y^2) in one pass


class SeedNets:
    """S copies of :class:`~mlcanon.rl.policies.ActorCritic` (Discrete actions): layer i of the actor is
    ``x -> x @ W_i + b_i`` with W_i [S, in, out], b_i [S, 1, out]; the critic likewise."""

    def __init__(self, seeds: list[int], obs_dim: int, action_space, hidden, activation: str, device):
        nets = []
        for s in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)                  # the single run's initialization (Agent seeds, then builds)
                nets.append(ActorCritic(obs_dim, action_space, hidden, activation))
        linears = [[m for m in net.modules() if isinstance(m, torch.nn.Linear)] for net in nets]
        self.n_actor = len(hidden) + 1
        self.params = []                              # [W_0, b_0, W_1, b_1, ...], actor layers then critic layers
        for i in range(len(linears[0])):
            self.params.append(torch.stack([ls[i].weight.detach().T for ls in linears]).contiguous().to(device))
            self.params.append(torch.stack([ls[i].bias.detach()[None] for ls in linears]).to(device))
        self.activation = activation
        self.act = _Tanh.apply if activation == "tanh" else torch.relu

    @classmethod
    def from_params(cls, params: list[torch.Tensor], n_actor: int, activation: str) -> SeedNets:
        """Nets from stacked weights (a run's seeds_weights.safetensors), without building S modules."""
        nets = cls.__new__(cls)
        nets.params, nets.n_actor, nets.activation = list(params), n_actor, activation
        nets.act = _Tanh.apply if activation == "tanh" else torch.relu
        return nets

    def state_dict(self) -> dict:
        return {"params": self.params}

    def load_state_dict(self, st: dict) -> None:
        device = self.params[0].device
        self.params = [torch.as_tensor(p).to(device).clone() for p in st["params"]]

    def actor_critic(self, i: int, action_space) -> ActorCritic:
        """Seed i's weights as the single run's :class:`~mlcanon.rl.policies.ActorCritic` (the inverse of
        ``__init__``: W_i is the Linear's weight transposed), e.g. for Agent.load and ``mlcanon sample``."""
        hidden = tuple(int(w.shape[-1]) for w in self.params[0:2 * (self.n_actor - 1):2])
        with torch.random.fork_rng(devices=[]):      # the throw-away initialization leaves the global stream alone
            net = ActorCritic(int(self.params[0].shape[1]), action_space, hidden, self.activation)
        linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        if 2 * len(linears) != len(self.params):
            raise ValueError(f"SeedNets.actor_critic: {len(self.params)} stacked tensors for {len(linears)} layers")
        with torch.no_grad():
            for j, lin in enumerate(linears):
                lin.weight.copy_(self.params[2 * j][i].T)
                lin.bias.copy_(self.params[2 * j + 1][i, 0])
        return net

    def _mlp(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        n = len(params) // 2
        for i in range(n):
            w, b = params[2 * i], params[2 * i + 1]
            if w.shape[-1] == 1:     # x . w + b as a product and a row sum: bmm's matrix-vector path (one
                x = (x * w.transpose(1, 2)).sum(-1, keepdim=True) + b   # output column) changes with the batch
            else:
                x = torch.baddbmm(b, x, w)                               # x W + b, per seed
            if i < n - 1:
                x = self.act(x)
        return x

    def logits(self, x: torch.Tensor, params: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Actor logits [S, B, A] for observations [S, B, obs_dim]."""
        return self._mlp(x, (params or self.params)[:2 * self.n_actor])

    def value(self, x: torch.Tensor, params: list[torch.Tensor] | None = None) -> torch.Tensor:
        """V(s) [S, B]."""
        return self._mlp(x, (params or self.params)[2 * self.n_actor:]).squeeze(-1)


class SeedAdam:
    """Adam (Kingma & Ba 2015, Algorithm 1, with torch.optim.Adam's eps placement) on stacked per-seed parameters.

    Every operation is elementwise, so each seed's update is its own Adam's. Only plain (unfused) elementwise ops
    are used: a fused op such as lerp_/addcmul_ may round differently in the scalar tail of its vectorized loop,
    which would make a seed's result depend on how many seeds share the tensor."""

    def __init__(self, params: list[torch.Tensor], eps: float = 1e-5, betas=(0.9, 0.999)):
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t, self.eps, self.betas = 0, eps, betas

    def step(self, params, grads, rows: slice, lr: float) -> None:
        """Update ``params[i][rows]`` with ``grads[i]`` (the gradients of those seeds); ``t`` counts whole steps."""
        b1, b2 = self.betas
        t = self.t + 1
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m[rows] = m[rows] * b1 + g * (1 - b1)                      # m = b1 m + (1 - b1) g
            v[rows] = v[rows] * b2 + (g * g) * (1 - b2)                # v = b2 v + (1 - b2) g^2
            denom = v[rows].sqrt() / math.sqrt(c2) + self.eps          # sqrt(v_hat) + eps
            p[rows] = p[rows] - (m[rows] / denom) * (lr / c1)          # theta -= lr m_hat / (sqrt(v_hat) + eps)

    def keep(self, idx: torch.Tensor) -> None:
        self.m = [m[idx] for m in self.m]
        self.v = [v[idx] for v in self.v]

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, st: dict) -> None:
        device = self.m[0].device
        self.m = [torch.as_tensor(m).to(device).clone() for m in st["m"]]
        self.v = [torch.as_tensor(v).to(device).clone() for v in st["v"]]
        self.t = int(st["t"])


class _SeedsBook:
    """The rest of what the loop of :func:`train_many_seeds` carries: the positions of the seeds still training,
    the weights of every seed when it left (or its last ones), and each evaluation's per-seed mean returns
    [evaluations, seeds] (nan: the seed had left)."""

    def __init__(self, final_params: list[torch.Tensor], num_seeds: int, device):
        self.final_params = final_params
        self.active = torch.arange(num_seeds, device=device)
        self.eval_table = torch.zeros(0, num_seeds, dtype=torch.float64)

    def state_dict(self) -> dict:
        return {"final_params": self.final_params, "active": self.active, "eval_table": self.eval_table}

    def load_state_dict(self, st: dict) -> None:
        device = self.active.device
        self.final_params = [torch.as_tensor(p).to(device).clone() for p in st["final_params"]]
        self.active = torch.as_tensor(st["active"]).to(device).clone()
        self.eval_table = torch.as_tensor(st["eval_table"]).clone()


def _categorical(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """a ~ softmax(logits) by inverse CDF from uniforms u [...]: a = #{k : P(A <= k) <= u} (clamped)."""
    cdf = torch.softmax(logits, -1).cumsum(-1)
    return (cdf <= u[..., None]).sum(-1).clamp(max=logits.shape[-1] - 1)


@torch.no_grad()
def evaluate_seeds(nets: SeedNets, seeds: torch.Tensor, episodes: int, max_steps: int, device, *, evaluation: int,
                   stream: int = _EVAL) -> torch.Tensor:
    """Greedy returns [S, episodes] of each seed's policy on the torch CartPole. Episode j of evaluation k of seed
    s starts from the state keyed (s, stream, k) and j: new episodes at every evaluation (during training k counts
    the --eval-every boundaries passed, a function of the step as in the single agents, so a resumed run replays
    the same ones), each seed's depending on that seed only. ``mlcanon eval`` draws from its own stream (_EVAL_CLI)."""
    S = len(seeds)
    env = CartPoleTorch(episodes, counter_bits(seeds, stream, evaluation).tolist(), device, max_steps)
    env.reset()
    ret = torch.zeros(S * episodes, dtype=torch.float64, device=device)
    alive = torch.ones(S * episodes, dtype=torch.bool, device=device)
    state = env.state                                                   # float64 start states [S * episodes, 4]
    # the bare physics, no autoreset or episode lists: an ended episode steps on, masked out of its return; the
    # loop asks the device whether any episode is alive only every 16 steps (each question waits for the GPU)
    for t in range(max_steps):                  # the time limit (truncation) is the loop's bound
        a = nets.logits(state.float().view(S, episodes, -1)).argmax(-1).view(-1)    # greedy action
        state, term = CartPoleTorch.dynamics(state, a)
        ret += alive                            # reward 1 for each step taken, the terminating one included
        alive &= ~term
        if t % 16 == 15 and not bool(alive.any()):
            break
    return ret.view(S, episodes)


def train_many_seeds(config: PPOConfig, run: Run | None = None) -> dict:
    """PPO for seeds seed..seed+N-1 at once on the batched torch CartPole (every ``--torch-env`` run, N = 1
    included); writes result.json (per-seed solve steps and evaluation returns, how many solved),
    curves_seeds.png (median and bands over seeds), seeds_weights.safetensors (every seed's final weights,
    stacked) and agent.safetensors (the first seed's weights as a PPO agent's, for Agent.load / ``mlcanon
    sample``). Resumes from the run's checkpoint when ``run`` was reopened (``mlcanon train --resume``)."""
    cfg = config
    run = Run.start("ppo", cfg, run)
    dev = run.device
    all_seeds = list(range(cfg.seed, cfg.seed + cfg.num_seeds))
    S0, T, E, M = len(all_seeds), cfg.num_steps, cfg.num_envs, cfg.minibatch_size
    B = T * E                                                   # samples per seed per iteration
    max_steps = cfg.max_episode_steps or 500
    space = gym.spaces.Discrete(2)                              # CartPole's actions
    nets = SeedNets(all_seeds, 4, space, cfg.hidden, cfg.activation, dev)
    book = _SeedsBook([p.clone() for p in nets.params], S0, dev)
    adam = SeedAdam(nets.params)
    env = CartPoleTorch(E, all_seeds, dev, max_steps)
    state = TrainState(nets=nets, adam=adam, env=env, book=book)
    c = state.counters
    c.update(iteration=0, solved_steps=[None] * S0, best_evals=[None] * S0, eval_steps=[])
    if not state.restore(run):                                 # --resume: weights, Adam, envs, book, counters
        env.reset()
    seeds = torch.tensor(all_seeds, dtype=torch.int64, device=dev)
    ckpt_every = cfg.checkpoint_every or max(1, cfg.total_steps // 10)
    chunk = cfg.seed_chunk or (64 if dev.type == "cpu" else S0)
    eval_seconds, t0 = 0.0, time.perf_counter()               # wall-clock, reported (never checkpointed)
    bar = run.progress(cfg.total_steps, initial=state.step, unit="step", desc=f"ppo x{S0} seeds",
                       enabled=cfg.progress)
    while state.step < cfg.total_steps and len(book.active) > 0:
        active, iteration = book.active, c["iteration"]
        S = len(active)
        s_keys = seeds[active]
        frac = 1.0 - state.step / cfg.total_steps
        lr = cfg.lr * frac if cfg.anneal_lr else cfg.lr
        clip = cfg.clip_coef * frac if cfg.anneal_clip else cfg.clip_coef

        # 1. rollout of T steps of E envs per seed with pi_old ----------------------------------------------
        buf = {k: [] for k in ("obs", "actions", "log_probs", "values", "rewards", "terminated", "dones",
                               "next_obs")}
        ep_returns: list[float] = []
        obs = env.obs.view(S, E, -1)
        with torch.no_grad():
            for t in range(T):
                logits = nets.logits(obs)
                u = counter_uniform(s_keys[:, None], _ACTIONS, iteration, t, torch.arange(E, device=dev))
                a = _categorical(logits, u)                                   # a_t ~ pi_old(.|s_t)
                logp = torch.log_softmax(logits, -1).gather(-1, a[..., None]).squeeze(-1)
                next_obs, r, term, trunc, info = env.step(a.view(-1))
                for k, v in (("obs", obs), ("actions", a), ("log_probs", logp), ("values", nets.value(obs)),
                             ("rewards", r.float().view(S, E)), ("terminated", term.view(S, E)),
                             ("dones", (term | trunc).view(S, E)), ("next_obs", info["final_obs"].view(S, E, -1))):
                    buf[k].append(v)
                ep_returns += info["episode_return"]
                obs = next_obs.view(S, E, -1)
            st = {k: torch.stack(v) for k, v in buf.items()}                 # [T, S, E, ...]

            # 2. GAE advantages from V of the true next states (truncation bootstraps, termination does not) ---
            next_values = nets.value(st["next_obs"].transpose(0, 1).reshape(S, B, -1)).view(S, T, E).transpose(0, 1)
            adv, ret = gae(st["rewards"].view(T, S * E), st["values"].view(T, S * E), next_values.reshape(T, S * E),
                           st["terminated"].view(T, S * E), st["dones"].view(T, S * E), cfg.gamma, cfg.gae_lambda)
        data = {k: _seed_major(v) for k, v in (("obs", st["obs"]), ("actions", st["actions"]),
                ("log_probs", st["log_probs"]), ("values", st["values"]), ("advantages", adv.view(T, S, E)),
                ("returns", ret.view(T, S, E)))}

        # 3. K epochs of minibatch steps on each seed's clipped surrogate ------------------------------------
        kl_sum, clipfrac_sum, n_mb = torch.zeros(S, device=dev), torch.zeros(S, device=dev), 0
        for epoch in range(cfg.update_epochs):
            perm = torch.argsort(counter_bits(s_keys[:, None], _MINIBATCHES, iteration, epoch,
                                              torch.arange(B, device=dev)), dim=1)   # a permutation per seed
            for start in range(0, B, M):
                idx = perm[:, start:start + M]
                mb = {k: v.gather(1, idx.view(S, -1, *[1] * (v.dim() - 2)).expand(-1, -1, *v.shape[2:]))
                      for k, v in data.items()}
                for c0 in range(0, S, chunk):
                    rows = slice(c0, min(c0 + chunk, S))
                    kl, cf = _seed_update(nets, adam, {k: v[rows] for k, v in mb.items()}, rows, cfg, clip, lr)
                    kl_sum[rows] += kl
                    clipfrac_sum[rows] += cf
                adam.t += 1
                n_mb += 1
        c["iteration"] = iteration + 1
        before = state.step
        state.step = step = before + B
        bar.update(B)

        # evaluation at every --eval-every boundary; seeds that reach --target-return leave the batch ----------
        metrics = {"train/approx_kl_median": float((kl_sum / n_mb).median()),
                   "train/clip_fraction_median": float((clipfrac_sum / n_mb).median()), "train/lr": lr,
                   "train/active_seeds": S}
        if ep_returns:
            metrics["rollout/episode_return"] = float(np.mean(ep_returns))
        k = evaluation_due(before, step, cfg.eval_every, cfg.total_steps)    # new episodes at each evaluation
        if k is not None:
            t_eval = time.perf_counter()
            means = evaluate_seeds(nets, s_keys, cfg.eval_episodes, max_steps, dev, evaluation=k).mean(1).cpu()
            eval_seconds += time.perf_counter() - t_eval
            row = torch.full((1, S0), math.nan, dtype=torch.float64)
            row[0, active.cpu()] = means
            book.eval_table = torch.cat([book.eval_table, row])
            c["eval_steps"].append(step)
            for j, i in enumerate(active.tolist()):
                m = float(means[j])
                c["best_evals"][i] = m if c["best_evals"][i] is None else max(c["best_evals"][i], m)
            done = torch.zeros(S, dtype=torch.bool)
            if cfg.target_return is not None:
                done = means >= cfg.target_return
                for j in torch.nonzero(done).view(-1).tolist():
                    c["solved_steps"][int(active[j])] = step
            n_solved = sum(x is not None for x in c["solved_steps"])
            metrics.update({"eval/return_median_active": float(means.median()),
                            "eval/return_min_active": float(means.min()), "eval/solved_seeds": n_solved})
            bar.set_postfix(active=S, solved=n_solved, eval_median=f"{float(means.median()):.0f}")
            if bool(done.any()) or step >= cfg.total_steps:
                leaving = active[done.to(dev)] if step < cfg.total_steps else active
                pos = done.to(dev) if step < cfg.total_steps else torch.ones(S, dtype=torch.bool, device=dev)
                for fp, p in zip(book.final_params, nets.params):
                    fp[leaving] = p[pos]
                keep = torch.nonzero(~done).view(-1).to(dev)
                nets.params = [p[keep] for p in nets.params]
                adam.keep(keep)
                env.keep(keep)
                book.active = active[keep]
        run.log(step, metrics)
        finished = step >= cfg.total_steps or len(book.active) == 0
        if step // ckpt_every > before // ckpt_every or finished:    # after the log line of this step (resume
            state.done = finished                                     # truncates metrics.jsonl back to it)
            state.save(run)
    bar.close()
    wall = time.perf_counter() - t0
    result = _many_seeds_result(run, cfg, all_seeds, c, book.eval_table.numpy(), state.step, wall, eval_seconds)
    # every seed's final weights stacked [S0, ...] as SeedNets.params, and the first seed's as a PPO agent's
    run.save({"params": book.final_params}, state.step, tag="seeds_weights")
    first = SeedNets.from_params(book.final_params, nets.n_actor, cfg.activation).actor_critic(0, space)
    run.save({"policy": first.state_dict()}, state.step, tag="agent")
    return run.finish(result, step=state.step)


def _seed_major(x: torch.Tensor) -> torch.Tensor:
    """Rollout tensors [T, S, E, ...] as [S, T * E, ...] (each seed's samples in one row)."""
    T, S, E = x.shape[:3]
    return x.transpose(0, 1).reshape(S, T * E, *x.shape[3:])


def _seed_update(nets: SeedNets, adam: SeedAdam, mb: dict[str, torch.Tensor], rows: slice, cfg: PPOConfig,
                 clip: float, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One minibatch step for the seeds ``rows``: each seed's loss is PPO eq. 9 on its own minibatch; the sum
    over seeds has each seed's gradient as its block. Returns each seed's approx KL and clip fraction."""
    params = [p[rows].detach().requires_grad_() for p in nets.params]
    logits = nets.logits(mb["obs"], params)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, mb["actions"][..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean(1)           # H[pi(.|s)], per seed
    log_ratio = logp - mb["log_probs"]
    ratio = log_ratio.exp()                                           # r_t = pi / pi_old
    adv = mb["advantages"]
    if cfg.norm_adv and adv.shape[1] > 1:                             # per seed and minibatch
        adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
    pg_loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean(1)   # -L^CLIP (eq. 7)
    value = nets.value(mb["obs"], params)
    if cfg.clip_vloss:
        v_clipped = mb["values"] + (value - mb["values"]).clamp(-clip, clip)
        v_loss = torch.max((value - mb["returns"]) ** 2, (v_clipped - mb["returns"]) ** 2).mean(1)
    else:
        v_loss = ((value - mb["returns"]) ** 2).mean(1)             # L^VF = (V(s) - V^targ)^2
    loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy     # eq. 9 as a loss, [seeds]
    grads = torch.autograd.grad(loss.sum(), params)
    if cfg.max_grad_norm > 0:                                         # clip each seed's global gradient norm
        norm = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads))
        coef = (cfg.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        grads = [g * coef.view(-1, *[1] * (g.dim() - 1)) for g in grads]
    adam.step(nets.params, grads, rows, lr)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean(1)
        clipfrac = ((ratio - 1).abs() > clip).float().mean(1)
    return approx_kl, clipfrac


def _many_seeds_result(run: Run, cfg: PPOConfig, seeds, counters: dict, eval_table: np.ndarray, step, wall,
                       eval_seconds) -> dict:
    solved_step, best_eval, eval_steps = counters["solved_steps"], counters["best_evals"], counters["eval_steps"]
    solved = [s for s in solved_step if s is not None]
    best = np.array([np.nan if b is None else b for b in best_eval])
    result = {"run_dir": str(run.dir), "seeds": seeds, "num_seeds": len(seeds), "solved": len(solved),
              "target_return": cfg.target_return, "eval_episodes": cfg.eval_episodes,
              "solved_step_median": float(np.median(solved)) if solved else None,
              "solved_step_min": min(solved) if solved else None, "solved_step_max": max(solved) if solved else None,
              "best_eval_return_median": float(np.nanmedian(best)), "best_eval_return_min": float(np.nanmin(best)),
              "env_steps_all_seeds": int(sum(s if s is not None else step for s in solved_step)), "step": int(step),
              "wall_seconds": wall, "eval_seconds": eval_seconds, "train_seconds": wall - eval_seconds,
              "solved_steps": solved_step, "best_eval_returns": best_eval}
    if run.enabled and len(eval_table):
        _plot_many_seeds(run.dir / "curves_seeds.png", np.array(eval_steps), eval_table, solved_step,
                         cfg.target_return)
    return result


def _plot_many_seeds(path, steps: np.ndarray, table: np.ndarray, solved_step, target) -> None:
    """Greedy evaluation return over env steps: median, 10-90% and min-max bands over seeds (a seed that left the
    batch keeps its last value), and the fraction of seeds solved."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    vals = table.copy()
    for i in range(1, len(vals)):                                     # forward-fill seeds that left the batch
        vals[i] = np.where(np.isnan(vals[i]), vals[i - 1], vals[i])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax.fill_between(steps, np.nanmin(vals, 1), np.nanmax(vals, 1), alpha=0.2, color="tab:blue", label="min-max")
    ax.fill_between(steps, np.nanpercentile(vals, 10, 1), np.nanpercentile(vals, 90, 1), alpha=0.35,
                    color="tab:blue", label="10-90%")
    ax.plot(steps, np.nanmedian(vals, 1), color="tab:blue", label=f"median of {vals.shape[1]} seeds")
    if target is not None:
        ax.axhline(target, color="k", lw=0.8, ls="--")
    ax.set_xlabel("env steps (per seed)")
    ax.set_title("eval/return_mean (greedy)")
    ax.legend(fontsize=8)
    solved = np.array([np.inf if s is None else s for s in solved_step])
    ax2.plot(steps, [(solved <= s).mean() for s in steps])
    ax2.set_xlabel("env steps (per seed)")
    ax2.set_title("fraction of seeds solved")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def evaluate_ppo_run(run_dir: Path, options: RLEvalOptions | None = None) -> dict:
    """``mlcanon eval RUN_DIR``; on a ``--torch-env`` run, every seed's weights (saved when it solved, or at the end)
    are evaluated greedily on the torch CartPole, on new episodes (their own stream, keyed by ``--seed``): per-seed
    means, how many reach the target."""
    options = options or RLEvalOptions()
    cfg = _config_of(run_dir)
    if not cfg.torch_env:
        return evaluate_run(run_dir, options)
    ck = load_checkpoint(run_dir, tag="seeds_weights")
    if ck is None:
        raise _unfinished(run_dir)
    if options.stochastic:
        raise UserError("--stochastic: a --torch-env run is evaluated greedily only; drop --stochastic")
    nets = SeedNets.from_params(ck[0]["params"], len(cfg.hidden) + 1, cfg.activation)
    seeds = torch.arange(cfg.seed, cfg.seed + cfg.num_seeds)
    means = evaluate_seeds(nets, seeds, options.episodes, cfg.max_episode_steps or 500, "cpu",
                           evaluation=options.seed, stream=_EVAL_CLI).mean(1)
    target = cfg.target_return if cfg.target_return is not None else 475.0
    n_ok = int((means >= target).sum())
    return {"eval/return_mean_median": float(means.median()), "eval/return_mean_min": float(means.min()),
            "seeds": len(means), "seeds_at_target": n_ok, "target_return": target, "episodes": options.episodes,
            "seed_return_means": [round(float(m), 3) for m in means],
            "summary": f"{n_ok}/{len(means)} seeds with a mean greedy return >= {target:g} over {options.episodes} "
                       f"new episodes each; median {float(means.median()):.1f}, min {float(means.min()):.1f}"}


def _config_of(run_dir: Path) -> PPOConfig:
    return from_dict(PPOConfig, read_config(run_dir)["config"], source=f"{run_dir}/config.json")


def _unfinished(run_dir: Path) -> UserError:
    return UserError(f"{run_dir}: this --torch-env run has not finished (its weights are written at the end); "
                     f"finish it with `mlcanon train --resume {run_dir}`")


def load_ppo_agent(run_dir: Path, config=None, tag: str = "best") -> Agent:
    """The registry's load hook: :func:`~mlcanon.rl.agent.load_agent`; a ``--torch-env`` run's agent is its first
    seed's final weights (agent.safetensors), written when the run ends."""
    if _config_of(run_dir).torch_env and not (Path(run_dir) / "agent.safetensors").is_file():
        raise _unfinished(run_dir)
    return load_agent(run_dir, config, tag)


def sample_ppo_run(run_dir: Path, n: int = 10, out: Path | None = None, options: RLSampleOptions | None = None
                   ) -> Path:
    """``mlcanon sample RUN_DIR`` (:func:`~mlcanon.rl.agent.sample_run`); on a ``--torch-env`` run, the first seed's
    agent on gymnasium's CartPole-v1."""
    if _config_of(run_dir).torch_env and not (Path(run_dir) / "agent.safetensors").is_file():
        raise _unfinished(run_dir)
    return sample_run(run_dir, n, out, options)


register("ppo", family="rl-deep", config=PPOConfig,
         description="proximal policy optimization: clipped surrogate, GAE, minibatch epochs (discrete/Gaussian)",
         evaluate=evaluate_ppo_run, sample=sample_ppo_run, load=load_ppo_agent, eval_options=RLEvalOptions,
         sample_options=RLSampleOptions,
         tiny={"env": "CartPole-v1", "total_steps": 256, "num_envs": 2, "num_steps": 32, "update_epochs": 2,
               "minibatch_size": 32, "eval_every": 128, "eval_episodes": 2, "max_episode_steps": 50,
               "checkpoint_every": 64, "hidden": (16,)})(train)

__all__ = ["PPO", "PPOConfig", "SeedAdam", "SeedNets", "evaluate_seeds", "train", "train_many_seeds"]
