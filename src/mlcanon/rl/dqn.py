"""Deep Q-network (Mnih et al. 2015) and its named options: ``mlcanon train dqn --env CartPole-v1``.

Each env step, top to bottom (the structure of CleanRL's dqn.py):
1. epsilon-greedy action on Q(s, .) with epsilon decayed linearly or exponentially
   (:mod:`mlcanon.rl.exploration`); uniformly random actions during the first ``--learning-starts`` steps;
2. store (s, a, r, s', terminated, done) in the replay buffer (s' the true next state; truncation bootstraps);
3. every ``--target-update-every`` env steps: theta^- <- tau theta + (1 - tau) theta^- (tau = 1: hard copy);
4. every ``--train-every`` env steps after the warm-up: ``--gradient-steps`` minibatch steps on the TD loss
       y = r + gamma^m (1 - terminated) Q_target(s', argmax_a' Q(s', a'))   (Double DQN, van Hasselt et al. 2016)
       y = r + gamma^m (1 - terminated) max_a' Q_target(s', a')             (DQN, Mnih et al. 2015)
       L = mean_i w_i huber(y_i - Q(s_i, a_i))   (Huber or MSE; w_i = 1, or the prioritized-replay IS weights)
   with m = 1, or the n-step return (Sutton & Barto eq. 7.1; Hessel et al. 2018).
Options: dueling heads Q = V + A - mean_a A (Wang et al. 2016, eq. 9); prioritized replay (Schaul et al. 2016).
Defaults are rl-baselines3-zoo's CartPole-v1 hyperparameters.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
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
from mlcanon.rl.buffers import PrioritizedReplayBuffer, ReplayBuffer, beta_at
from mlcanon.rl.exploration import make_schedule
from mlcanon.rl.policies import mlp
from mlcanon.rl.returns import polyak_update
from mlcanon.rl.vec_env import VecEnv
from mlcanon.runs import Run
from mlcanon.training import TrainState


@dataclasses.dataclass
class DQNConfig(DeepRLConfig):
    """DQN with target network and warm-up; Double, dueling, prioritized and n-step are options."""

    total_steps: int = option(50_000, "training budget in environment steps (all envs together)", min=1)
    lr: float = option(2.3e-3, "Adam learning rate", min=0.0)
    hidden: tuple[int, ...] = option((256, 256), "hidden layer widths of the Q-network, e.g. 256,256")
    buffer_size: int = option(100_000, "replay buffer capacity (transitions)", min=1)
    batch_size: int = option(64, "minibatch size", min=1)
    learning_starts: int = option(1000, "warm-up: env steps of uniformly random actions before learning", min=0)
    train_every: int = option(256, "env steps between training phases", min=1)
    gradient_steps: int = option(128, "gradient steps per training phase", min=1)
    target_update_every: int = option(10, "env steps between target-network updates", min=1)
    tau: float = option(1.0, "target update theta^- <- tau theta + (1 - tau) theta^- (1: hard copy, <1: Polyak)",
                        min=0.0, max=1.0)
    epsilon_schedule: str = option("linear", "epsilon decay over env steps", choices=("constant", "linear", "exp"))
    epsilon_start: float = option(1.0, "epsilon at step 0", min=0.0, max=1.0)
    epsilon_end: float = option(0.04, "final epsilon", min=0.0, max=1.0)
    exploration_fraction: float = option(0.16, "fraction of --total-steps over which epsilon decays", min=0.0,
                                         max=1.0)
    loss: str = option("huber", "TD loss", choices=("huber", "mse"))
    max_grad_norm: float = option(10.0, "clip the global gradient norm to this value (0: off)", min=0.0)
    double: bool = option(False, "Double DQN: the online net picks a', the target net evaluates it")
    dueling: bool = option(False, "dueling heads: Q(s,a) = V(s) + A(s,a) - mean_a A(s,a)")
    prioritized: bool = option(False, "prioritized replay (proportional, sum-tree)")
    per_alpha: float = option(0.6, "prioritized replay: P(i) ~ p_i^alpha", min=0.0)
    per_beta: float = option(0.4, "prioritized replay: initial IS exponent, annealed to 1", min=0.0, max=1.0)
    n_step: int = option(1, "n-step TD targets", min=1)
    activation: str = option("relu", "hidden activation", choices=("tanh", "relu"))


class QNetwork(nn.Module):
    """Q(s, .) for all actions: an MLP, or dueling streams Q = V + A - mean_a A (Wang et al. 2016, eq. 9)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...], activation: str, dueling: bool):
        super().__init__()
        self.dueling = dueling
        if dueling:
            self.trunk = mlp(obs_dim, hidden[:-1], hidden[-1], activation)
            self.act = nn.ReLU() if activation == "relu" else nn.Tanh()
            self.value = nn.Linear(hidden[-1], 1)
            self.advantage = nn.Linear(hidden[-1], n_actions)
        else:
            self.q = mlp(obs_dim, hidden, n_actions, activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.dueling:
            return self.q(obs)
        h = self.act(self.trunk(obs))
        a = self.advantage(h)
        return self.value(h) + a - a.mean(-1, keepdim=True)       # V + A - mean A


class DQN(Agent):
    name = "dqn"
    config_cls = DQNConfig

    def __init__(self, env: str, config: DQNConfig, device=None):
        super().__init__(env, config, device)
        self.n_actions = int(self.action_space.n)
        self.q = QNetwork(self.obs_dim, self.n_actions, config.hidden, config.activation, config.dueling)
        self.q.to(self.device)
        self.target = QNetwork(self.obs_dim, self.n_actions, config.hidden, config.activation, config.dueling)
        self.target.to(self.device).load_state_dict(self.q.state_dict())   # theta^- = theta
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.lr, fused=True)

    def modules(self):
        return {"q": self.q}

    def policy(self, obs, deterministic):
        greedy = self.q(obs).argmax(-1)
        if deterministic:
            return greedy
        eps = self.config.epsilon_end                      # the behaviour policy at the end of training
        explore = torch.rand(len(obs), device=obs.device) < eps
        return torch.where(explore, torch.randint(self.n_actions, (len(obs),), device=obs.device), greedy)

    def learn(self, total_steps: int | None = None, run: Run | None = None) -> dict:
        cfg, dev = self.config, self.device
        total = total_steps or cfg.total_steps
        N = cfg.num_envs
        env = VecEnv(cfg.env, N, cfg.seed, cfg.max_episode_steps or None)
        Buffer = PrioritizedReplayBuffer if cfg.prioritized else ReplayBuffer
        kw = {"alpha": cfg.per_alpha} if cfg.prioritized else {}
        buffer = Buffer(cfg.buffer_size, self.obs_shape, num_envs=N, seed=cfg.seed, **kw)
        state = TrainState(q=self.q, target=self.target, optimizer=self.optimizer, env=env, buffer=buffer)
        run, loop = self.start(run, state, total, "dqn")
        epsilon = make_schedule(cfg.epsilon_schedule, cfg.epsilon_start, cfg.epsilon_end,
                                horizon=2 * max(1, int(cfg.exploration_fraction * total)))  # eps_end at that step
        while not loop.finished:
            step = loop.step
            after = step + N
            # 1. epsilon-greedy action (uniform during the warm-up) ----------------------------------------
            eps = 1.0 if step < cfg.learning_starts else float(epsilon(step))
            obs = torch.as_tensor(env.obs, device=dev)
            with torch.no_grad():
                greedy = self.q(obs).argmax(-1)
            explore = torch.rand(N, device=dev) < eps
            action = torch.where(explore, torch.randint(self.n_actions, (N,), device=dev), greedy)
            # 2. env step, store (s, a, r, s', terminated, done) ----------------------------------------------
            _, reward, term, trunc, info = env.step(action.cpu().numpy())
            buffer.add(obs.cpu(), action.cpu(), reward, info["final_obs"], term, term | trunc)
            metrics = {"train/epsilon": eps, **episode_metrics(info)}
            # 3. target network update --------------------------------------------------------------------
            if after // cfg.target_update_every > step // cfg.target_update_every:
                polyak_update(self.target, self.q, cfg.tau)      # theta^- <- tau theta + (1 - tau) theta^-
            # 4. training phase ------------------------------------------------------------------------------
            if after > cfg.learning_starts and after // cfg.train_every > step // cfg.train_every:
                beta = beta_at(after, total, cfg.per_beta)
                out = torch.stack([self.update(buffer, beta) for _ in range(cfg.gradient_steps)]).mean(0)
                metrics.update({"train/loss": float(out[0]), "train/q_mean": float(out[1])})
            self.end_iteration(loop, N, metrics)
        loop.close()
        env.close()
        return self.summary()

    def update(self, buffer: ReplayBuffer, beta: float) -> torch.Tensor:
        """One gradient step on a replay minibatch; returns [loss, mean Q(s, a)] (read once per phase)."""
        cfg, dev = self.config, self.device
        if cfg.prioritized:
            b = buffer.sample(cfg.batch_size, cfg.n_step, cfg.gamma, beta=beta)
        else:
            b = buffer.sample(cfg.batch_size, cfg.n_step, cfg.gamma)
        b = {k: v.to(dev) for k, v in b.items()}
        with torch.no_grad():
            q_next = self.target(b["next_obs"])
            if cfg.double:   # a* = argmax_a Q(s', a; theta), evaluated by theta^-
                q_next = q_next.gather(1, self.q(b["next_obs"]).argmax(-1, keepdim=True)).squeeze(1)
            else:            # max_a Q(s', a; theta^-)
                q_next = q_next.max(-1).values
            y = b["rewards"] + b["discount"] * (~b["terminated"]).float() * q_next   # TD target
        q_all = self.q(b["obs"])
        q_sa = q_all.gather(1, b["actions"].view(-1, 1)).squeeze(1)               # Q(s, a)
        B = q_sa.shape[0]
        assert y.shape == q_sa.shape == (B,), (y.shape, q_sa.shape)
        td = y - q_sa
        per_item = F.smooth_l1_loss(q_sa, y, reduction="none") if cfg.loss == "huber" else td.pow(2)
        w = b.get("weights")
        loss = (per_item * w).mean() if w is not None else per_item.mean()        # IS-weighted TD loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.q.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        if cfg.prioritized:
            buffer.update_priorities(b["indices"], td.detach())                   # p_i = |delta_i| + eps
        return torch.stack([loss.detach(), q_sa.detach().mean()])


def train(config: DQNConfig, run: Run | None = None) -> dict:
    """Train DQN; returns the run folder, the step reached, the best evaluation and the step that solved it."""
    return train_agent(DQN, config, run)


register("dqn", family="rl-deep", config=DQNConfig,
         description="deep Q-network: replay, target network, epsilon decay; Double, dueling, prioritized, n-step",
         evaluate=evaluate_run, sample=sample_run, load=load_agent, eval_options=RLEvalOptions,
         sample_options=RLSampleOptions,
         tiny={"env": "CartPole-v1", "total_steps": 240, "learning_starts": 60, "train_every": 20,
               "gradient_steps": 4, "batch_size": 16, "buffer_size": 500, "eval_every": 120, "eval_episodes": 2,
               "max_episode_steps": 50, "checkpoint_every": 60, "hidden": (16,)})(train)
