"""REINFORCE with reward-to-go and a learned value baseline (Williams 1992; Sutton & Barto sec. 13.3-13.4).

Each iteration, top to bottom:
1. run ``--episodes-per-update`` complete episodes with the current policy pi_theta (in parallel; iteration k's
   episodes are seeded by (seed, k), so a resumed run replays them);
2. reward-to-go G_t = sum_{k>=t} gamma^(k-t) r_{k+1} of every step (S&B eq. 3.9), bootstrapped from V(s_T) when
   the episode was truncated by a time limit (a terminated one ends with 0);
3. one gradient step on the policy-gradient estimator (S&B eq. 13.8, with baseline b(s) = V_w(s)):
       grad J ~ mean_t grad log pi_theta(a_t|s_t) (G_t - V_w(s_t)),
   and on the baseline's squared error mean_t (G_t - V_w(s_t))^2 (S&B sec. 13.4).
Categorical policies for Discrete actions, Gaussian with a learned log-std for Box actions
(:mod:`mlcanon.rl.policies`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mlcanon.config import option
from mlcanon.registry import register
from mlcanon.rl.agent import (
    Agent,
    DeepRLConfig,
    RLEvalOptions,
    RLSampleOptions,
    evaluate_run,
    load_agent,
    sample_run,
    train_agent,
)
from mlcanon.rl.policies import ActorCritic
from mlcanon.rl.returns import reward_to_go
from mlcanon.rl.vec_env import evaluate_episodes
from mlcanon.runs import Run
from mlcanon.training import TrainState, _seed_key


@dataclasses.dataclass
class ReinforceConfig(DeepRLConfig):
    """REINFORCE (Monte Carlo policy gradient) with reward-to-go and an optional learned baseline."""

    total_steps: int = option(200_000, "training budget in environment steps", min=1)
    episodes_per_update: int = option(8, "complete episodes per gradient step (run in parallel)", min=1)
    lr: float = option(3e-3, "Adam learning rate (policy and baseline)", min=0.0)
    baseline: str = option("value", "baseline b(s) subtracted from G_t: a learned V(s), or none",
                           choices=("value", "none"))
    vf_coef: float = option(0.5, "weight of the baseline's squared error in the loss", min=0.0)
    ent_coef: float = option(0.0, "entropy bonus coefficient", min=0.0)
    norm_adv: bool = option(True, "normalize G_t - b(s_t) over each batch (a per-batch scale of the step size)")
    activation: str = option("tanh", "hidden activation", choices=("tanh", "relu"))
    log_std_init: float = option(0.0, "initial log-std of the Gaussian policy (Box actions)")


def policy_gradient_loss(log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-mean_t log pi(a_t|s_t) Psi_t with Psi_t held constant: its gradient is minus the score-function estimate
    of grad J (Williams 1992; S&B eq. 13.8 with Psi_t = G_t - b(s_t))."""
    if log_probs.shape != advantages.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and advantages {tuple(advantages.shape)} differ")
    return -(log_probs * advantages.detach()).mean()


class Reinforce(Agent):
    name = "reinforce"
    config_cls = ReinforceConfig

    def __init__(self, env: str, config: ReinforceConfig, device=None):
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
        state = TrainState(policy=self.net, optimizer=self.optimizer)
        state.counters.setdefault("iteration", 0)
        run, loop = self.start(run, state, total, "reinforce")
        while not loop.finished:
            # 1. complete episodes with pi_theta (raw samples: the env clips Box actions itself) ---------
            episodes: list[dict] = []
            with torch.no_grad():
                returns, lengths = evaluate_episodes(
                    lambda o: self.net.dist(torch.as_tensor(o, device=dev)).sample().cpu().numpy(), self.env_id,
                    cfg.episodes_per_update, _seed_key(cfg.seed, state.counters["iteration"]),
                    cfg.max_episode_steps or None, batch=cfg.episodes_per_update, record=episodes)
            state.counters["iteration"] += 1
            obs = torch.as_tensor(np.concatenate([e["obs"] for e in episodes]), device=dev)
            actions = torch.as_tensor(np.concatenate([e["actions"] for e in episodes]), device=dev)
            # 2. reward-to-go per episode; a truncated episode bootstraps from V(final obs) ---------------
            with torch.no_grad():
                g = []
                for e in episodes:
                    tail = 0.0
                    if cfg.baseline == "value" and e["truncated"][-1] and not e["terminated"][-1]:
                        tail = self.net.value(torch.as_tensor(e["final_obs"], device=dev)[None])[0]
                    g.append(reward_to_go(torch.as_tensor(e["rewards"], device=dev), gamma=cfg.gamma,
                                          last_value=tail))
                G = torch.cat(g)
            # 3. one step on the policy-gradient estimator and the baseline's regression -----------------
            dist = self.net.dist(obs)
            logp = dist.log_prob(actions if self.net.discrete else actions.float())
            value = self.net.value(obs)
            adv = G - value.detach() if cfg.baseline == "value" else G      # Psi_t = G_t - b(s_t)
            if cfg.norm_adv and len(adv) > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg = policy_gradient_loss(logp, adv)
            v_loss = ((G - value) ** 2).mean() if cfg.baseline == "value" else torch.zeros((), device=dev)
            entropy = dist.entropy().mean()
            loss = pg + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            metrics = {"train/loss": loss.item(), "train/policy_loss": pg.item(), "train/value_loss": v_loss.item(),
                       "train/entropy": entropy.item(), "rollout/episode_return": float(returns.mean()),
                       "rollout/episode_length": float(lengths.mean())}
            self.end_iteration(loop, int(lengths.sum()), metrics)
        loop.close()
        return self.summary()


def train(config: ReinforceConfig, run: Run | None = None) -> dict:
    """Train REINFORCE; returns the run folder, the step reached, the best evaluation and the step that solved it."""
    return train_agent(Reinforce, config, run)


register("reinforce", family="rl-deep", config=ReinforceConfig,
         description="REINFORCE: Monte Carlo policy gradient with reward-to-go and a learned value baseline",
         evaluate=evaluate_run, sample=sample_run, load=load_agent, eval_options=RLEvalOptions,
         sample_options=RLSampleOptions,
         tiny={"env": "CartPole-v1", "total_steps": 300, "episodes_per_update": 2, "eval_every": 150,
               "eval_episodes": 2, "max_episode_steps": 30, "checkpoint_every": 60, "hidden": (16,)})(train)
