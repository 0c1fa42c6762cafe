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
   with m = 1, or the n-step return (Sutton & Barto eq. 7.1; Hessel et al. 2018). theta^- does not move during
   a phase, so the phase draws its minibatches at once and computes their DQN targets in one pass (see
   :meth:`DQN.train_phase`).
The semantics are SB3's and CleanRL's: the target update interval counts env steps, epsilon decays linearly over
``--exploration-fraction`` of the budget, random actions before ``--learning-starts``, Huber loss, gradient norm
clipped to 10, Adam (eps 1e-8), greedy evaluation, truncation bootstraps. Greedy actions are computed in numpy on
views of the weights (:meth:`QNetwork.forward_numpy`): per env step, torch's call overhead would dominate. For
the same reason the plain MLP's gradient is written by hand (:meth:`DQN.backprop`, and on the CPU
:meth:`DQN.backprop_host` with the small products in numpy; both checked against autograd by
tests/rl/deep/test_dqn_backprop.py); dueling heads and prioritized replay use autograd (:meth:`DQN.update`).
Options: dueling heads Q = V + A - mean_a A (Wang et al. 2016, eq. 9); prioritized replay (Schaul et al. 2016).
Defaults are rl-baselines3-zoo's CartPole-v1 hyperparameters, except the training cadence: 32 gradient steps every
64 env steps instead of 128 every 256 (the same 0.5 gradient steps per env step; over held-out seeds 10-29 it solved
CartPole-v1 in a median 20,500 env steps instead of 26,500, 20/20 both; docs/BENCHMARKS.md). rl-zoo's cadence:
``--train-every 256 --gradient-steps 128``.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
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
from mlcanon.rl.policies import flat_parameters, mlp, mlp_backward, mlp_forward, mlp_numpy, numpy_views
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
    train_every: int = option(64, "env steps between training phases", min=1)
    gradient_steps: int = option(32, "gradient steps per training phase", min=1)
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
        self.dueling, self.activation = dueling, activation
        self._np_layers: list | None = None        # numpy views of the weights (forward_numpy)
        if dueling:
            self.trunk = mlp(obs_dim, hidden[:-1], hidden[-1], activation)
            self.act = nn.ReLU() if activation == "relu" else nn.Tanh()
            self.value = nn.Linear(hidden[-1], 1)
            self.advantage = nn.Linear(hidden[-1], n_actions)
        else:
            self.q = mlp(obs_dim, hidden, n_actions, activation)
            for m in self.q:            # ReLU in place on the Linear's output: no copy of the [G*B, 256] targets pass
                if isinstance(m, nn.ReLU):
                    m.inplace = True

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.dueling:
            return self.q(obs)
        h = self.act(self.trunk(obs))
        a = self.advantage(h)
        return self.value(h) + a - a.mean(-1, keepdim=True)       # V + A - mean A

    def forward_numpy(self, obs: np.ndarray) -> np.ndarray:
        """forward() in numpy on views of the (CPU) weights, for acting on a few observations: torch's per-call
        overhead is several times the arithmetic of a [1, 4] x [4, 256] x [256, 256] product. The views follow
        the in-place updates of the optimizer and of load_state_dict."""
        if self._np_layers is None:
            self._np_layers = numpy_views([m for m in self.modules() if isinstance(m, nn.Linear)])  # forward()'s order
        if not self.dueling:
            return mlp_numpy(self._np_layers, obs, self.activation)
        h = mlp_numpy(self._np_layers[:-2], obs, self.activation, activate_last=True)
        (wv, bv), (wa, ba) = self._np_layers[-2:]
        a = h @ wa + ba
        return (h @ wv + bv) + a - a.mean(-1, keepdims=True)      # V + A - mean A


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
        # One flat parameter vector and one flat gradient vector, the module's tensors being views of them: the
        # gradient clipping is one norm, Adam one fused update and zeroing one fill, instead of one per tensor
        # (at a [64 x 256] minibatch these per-tensor calls cost as much as the arithmetic).
        self.flat = flat_parameters(self.q)
        self.target_flat = flat_parameters(self.target, grad=False).detach()   # theta^-, viewed by the target net
        self.optimizer = torch.optim.Adam([self.flat], lr=config.lr, fused=True)
        # The plain MLP's gradient is written by hand (:meth:`backprop`), autograd being half of a step's time at
        # these sizes; dueling heads and prioritized replay (IS weights, one minibatch at a time) use autograd.
        self.hand_backprop = not config.dueling and not config.prioritized
        # its step on the CPU: backprop_host, on numpy views of the tensors (elsewhere: backprop, in torch)
        self.host_step = self.device.type == "cpu"

    def modules(self):
        return {"q": self.q}

    def policy(self, obs, deterministic):
        greedy = self.q(obs).argmax(-1)
        if deterministic:
            return greedy
        eps = self.config.epsilon_end                      # the behaviour policy at the end of training
        explore = torch.rand(len(obs), device=obs.device) < eps
        return torch.where(explore, torch.randint(self.n_actions, (len(obs),), device=obs.device), greedy)

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(s, a) for a batch of observations [n, obs_dim] (numpy in, numpy out)."""
        if self.device.type == "cpu":
            return self.q.forward_numpy(obs).argmax(-1)
        with torch.no_grad():
            return self.q(torch.as_tensor(obs, device=self.device)).argmax(-1).cpu().numpy()

    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        if not deterministic:
            return super().act(obs, deterministic)
        x = np.asarray(obs, dtype=np.float32)
        single = x.ndim == len(self.obs_shape)
        a = self.greedy(x[None] if single else x)          # evaluation: the greedy policy, without torch calls
        return a[0] if single else a

    def learn(self, total_steps: int | None = None, run: Run | None = None) -> dict:
        cfg = self.config
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
            obs = env.obs
            explore = torch.rand(N).numpy() < eps
            k = np.count_nonzero(explore)               # uniform actions drawn, greedy ones computed, only if used
            uniform = torch.randint(self.n_actions, (N,)).numpy() if k else None
            action = uniform if k == N else self.greedy(obs) if k == 0 else np.where(explore, uniform, self.greedy(obs))
            # 2. env step, store (s, a, r, s', terminated, done) ----------------------------------------------
            _, reward, term, trunc, info = env.step(action)
            buffer.add(obs, action, reward, info["final_obs"], term, term | trunc)
            metrics = {"train/epsilon": eps, **episode_metrics(info)}
            # 3. target network update --------------------------------------------------------------------
            if after // cfg.target_update_every > step // cfg.target_update_every:
                polyak_update(self.target_flat, self.flat, cfg.tau)   # theta^- <- tau theta + (1 - tau) theta^-
            # 4. training phase ------------------------------------------------------------------------------
            if after > cfg.learning_starts and after // cfg.train_every > step // cfg.train_every:
                out = self.train_phase(buffer, beta_at(after, total, cfg.per_beta))
                metrics.update({"train/loss": float(out[0]), "train/q_mean": float(out[1])})
            self.end_iteration(loop, N, metrics)
        loop.close()
        env.close()
        return self.summary()

    def train_phase(self, buffer: ReplayBuffer, beta: float) -> torch.Tensor:
        """``--gradient-steps`` minibatch steps; returns the mean [loss, Q(s, a)] over them (read once per phase).

        theta^- is frozen during a phase (it moves every ``--target-update-every`` ENV steps), so with uniform
        replay the G minibatches are drawn at once and, for DQN, their TD targets come from ONE pass of the
        target net over the G*B next states: the same targets as G passes, one large matrix product instead of
        G small ones. Prioritized replay draws each minibatch after the previous priority update."""
        cfg, G, B = self.config, self.config.gradient_steps, self.config.batch_size
        if cfg.prioritized:
            batches = ({k: v.to(self.device) for k, v in buffer.sample(B, cfg.n_step, cfg.gamma, beta=beta).items()}
                       for _ in range(G))
            return sum(self.update(b, buffer) for b in batches) / G
        big = {k: v.to(self.device) for k, v in buffer.sample(G * B, cfg.n_step, cfg.gamma).items()}
        if not cfg.double:
            big["y"] = self.td_target(big)
        if not self.hand_backprop:
            return sum(self.update({k: v[g * B:(g + 1) * B] for k, v in big.items()}, buffer) for g in range(G)) / G
        obs, actions = big["obs"].view(G, B, -1), big["actions"].view(G, B, 1)
        y = big["y"].view(G, B, 1) if not cfg.double else torch.empty(G, B, 1, device=self.device)
        q_sa = torch.empty(G, B, 1, device=self.device)
        dq = self.loss_derivative_rows(actions)                  # e_{a_i} c / B of every minibatch of the phase
        host = self.host_step
        step_args = [t.numpy() for t in (obs, actions, y, q_sa, dq)] if host else (obs, actions, y, q_sa, dq)
        for g in range(G):
            if cfg.double:   # a* = argmax_a Q(s', a; theta) with the current theta
                y[g, :, 0] = self.td_target({k: v[g * B:(g + 1) * B] for k, v in big.items()})
            (self.backprop_host if host else self.backprop)(*(a[g] for a in step_args))
            self.optimizer_step()
        loss_fn = F.smooth_l1_loss if cfg.loss == "huber" else F.mse_loss
        return torch.stack([loss_fn(q_sa, y), q_sa.mean()])          # means over the phase's G*B samples

    @torch.no_grad()
    def td_target(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = r + gamma^m (1 - terminated) Q_target(s', a*), a* = argmax of Q_target (DQN) or of Q (Double DQN).

        A phase's G*B next states go through the nets in chunks of 1,024 rows: a chunk's [1024, 256] activations
        (1 MB) stay in the core's cache from layer to layer, where all [8192, 256] of them would go to memory."""
        next_obs, n = b["next_obs"], len(b["next_obs"])
        q_next = torch.empty(n, device=next_obs.device)
        for i in range(0, n, 1024):
            s = next_obs[i:i + 1024]
            q = self.target(s)
            if self.config.double:   # a* = argmax_a Q(s', a; theta), evaluated by theta^-
                q_next[i:i + 1024] = q.gather(1, self.q(s).argmax(-1, keepdim=True)).squeeze(1)
            else:                    # max_a Q(s', a; theta^-)
                torch.amax(q, -1, out=q_next[i:i + 1024])
        return b["rewards"] + b["discount"] * (~b["terminated"]).float() * q_next

    def loss_derivative_rows(self, actions: torch.Tensor) -> torch.Tensor:
        """dL/dQ(s_i, .) up to the TD error's factor, for actions [..., B, 1] -> [..., B, n_actions]: e_{a_i} / B
        (Huber: its derivative clamp(d, -1, 1) multiplies it) or e_{a_i} 2 / B (MSE: 2 d)."""
        c = (1.0 if self.config.loss == "huber" else 2.0) / actions.shape[-2]
        return torch.zeros(*actions.shape[:-1], self.n_actions, device=actions.device).scatter_(-1, actions, c)

    def _hand_buffers(self, B: int) -> dict:
        """Preallocated tensors for :meth:`backprop` at minibatches of B rows (no allocation per step): each layer's
        output and delta (:func:`mlp_forward`'s ``out``, :func:`mlp_backward`'s ``work``), the TD error, dL/dQ."""
        bufs = self.__dict__.get("_buffers")
        if bufs is None or bufs["B"] != B:
            lins = [m for m in self.q.q if isinstance(m, nn.Linear)]
            new = lambda n: torch.empty(B, n, device=self.device)
            bufs = self.__dict__["_buffers"] = {
                "B": B, "h": [new(m.out_features) for m in lins], "dh": [new(m.in_features) for m in lins],
                "d": new(1), "dz": new(lins[-1].out_features)}
        return bufs

    @torch.no_grad()
    def backprop(self, obs: torch.Tensor, actions: torch.Tensor, y: torch.Tensor, q_sa: torch.Tensor,
                 dq: torch.Tensor | None = None) -> None:
        """The gradient of L = 1/B sum_i huber(Q(s_i, a_i) - y_i) (or the squared error) for the plain MLP, written
        by hand into the flat gradient vector (and Q(s_i, a_i) into ``q_sa``); actions, y, q_sa are [B, 1]; ``dq``
        is :meth:`loss_derivative_rows` of the actions (computed here if not given).

        At a [64 x 256] minibatch autograd's bookkeeping costs as much as the matrix products; this is the same
        arithmetic with about a third fewer torch calls, into preallocated tensors. Backpropagation (Goodfellow et al.
        2016, algorithm 6.4), layer l being z_l = h_{l-1} W_l^T + b_l, h_l = act(z_l), h_0 = s, Q = z_L:
            dL/dz_L = e_{a_i} huber'(Q(s_i, a_i) - y_i) / B, huber'(d) = clamp(d, -1, 1)   (MSE: 2 d)
            dL/dW_l = dL/dz_l^T h_{l-1},   dL/db_l = sum_i dL/dz_l[i]
            dL/dz_{l-1} = (dL/dz_l W_l) * act'(z_{l-1}),  relu'(z) = [h > 0],  tanh'(z) = 1 - h^2
        """
        P = self._hand_buffers(len(obs))
        hs = mlp_forward(obs, self.q.q, out=P["h"])                    # [h_0 = s, h_1, ..., Q(s, .) = z_L]
        torch.gather(hs[-1], 1, actions, out=q_sa)                      # Q(s_i, a_i)
        d = torch.sub(q_sa, y, out=P["d"])                              # TD error (negated)
        if self.config.loss == "huber":
            d.clamp_(-1.0, 1.0)                                         # huber'(d)
        dz = torch.mul(self.loss_derivative_rows(actions) if dq is None else dq, d, out=P["dz"])   # dL/dz_L
        mlp_backward(hs, self.q.q, dz, work=P["dh"])                    # dL/dW_l, dL/db_l into the flat gradient

    def _host_plan(self, B: int) -> SimpleNamespace:
        """What :meth:`backprop_host` needs at minibatches of B rows, built once (DQN is never deep-copied and its
        parameters are views of ``self.flat`` from __init__ on, so the views stay valid): per Linear of the plain MLP,
        numpy views of W, b, dW, db (they follow the optimizer's in-place updates), whether its products are wide
        (every dimension >= 32: torch, i.e. MKL) or small (numpy), and preallocated output and delta buffers, each
        held as a numpy array and a torch tensor on the same memory; a row of ones (bias gradients as a product) and
        the offsets of the rows of the flattened [B, n_actions] output."""
        plan = self.__dict__.get("_host")
        if plan is None or plan.B != B:
            def pair(n):
                t = torch.empty(B, n)
                return t.numpy(), t
            layers = []
            for m in (m for m in self.q.q if isinstance(m, nn.Linear)):
                W, b = m.weight.detach(), m.bias.detach()
                (hn, ht), (dhn, dht) = pair(m.out_features), pair(m.in_features)
                layers.append(SimpleNamespace(
                    W=W, b=b, Wn=W.numpy(), bn=b.numpy(), gW=m.weight.grad, gWn=m.weight.grad.numpy(),
                    gbn=m.bias.grad.numpy(), wide=min(m.in_features, m.out_features, B) >= 32, hn=hn, ht=ht,
                    dhn=dhn, dht=dht))
            plan = self.__dict__["_host"] = SimpleNamespace(
                B=B, layers=layers, ones=np.ones(B, np.float32), row_offsets=np.arange(B) * self.n_actions)
        return plan

    def backprop_host(self, obs: np.ndarray, actions: np.ndarray, y: np.ndarray, q_sa: np.ndarray,
                      dq: np.ndarray) -> None:
        """:meth:`backprop` on the CPU, on numpy views (obs [B, obs_dim], actions / y / q_sa [B, 1], dq [B, n_actions]):
        the same equations; each product with a small dimension (the observation's 4 numbers, the 2 actions) goes
        through numpy (1-3 us a call, where torch's small-matrix path costs 7-40 us), the [B x 256] x [256 x 256]
        ones through torch (MKL), the activations and their derivatives through torch on the same memory."""
        P = self._host_plan(len(obs))
        layers, relu = P.layers, self.config.activation == "relu"
        hn, ht = [obs], [torch.from_numpy(obs)]                       # h_0 = s
        for i, L in enumerate(layers):                                # z_l = h_{l-1} W_l^T + b_l
            if L.wide:
                torch.addmm(L.b, ht[-1], L.W.t(), out=L.ht)
            else:
                np.add(np.matmul(hn[-1], L.Wn.T, out=L.hn), L.bn, out=L.hn)
            if i < len(layers) - 1:                                   # h_l = act(z_l), in place
                L.ht.relu_() if relu else torch.tanh(L.ht, out=L.ht)
            hn.append(L.hn)
            ht.append(L.ht)
        np.take(hn[-1].reshape(-1), actions[:, 0] + P.row_offsets, out=q_sa[:, 0])   # Q(s_i, a_i)
        d = q_sa - y                                                  # TD error (negated)
        if self.config.loss == "huber":
            np.minimum(np.maximum(d, -1.0, out=d), 1.0, out=d)        # huber'(d) = clamp(d, -1, 1)
        dyn = np.multiply(dq, d, out=layers[-1].hn)                   # dL/dz_L (Q(s, .) is no longer needed)
        dyt = layers[-1].ht
        for i in range(len(layers) - 1, -1, -1):
            L = layers[i]
            if L.wide:                                                # dL/dW_l = dL/dz_l^T h_{l-1}
                torch.mm(dyt.t(), ht[i], out=L.gW)
            else:
                np.matmul(dyn.T, hn[i], out=L.gWn)
            np.matmul(P.ones, dyn, out=L.gbn)                         # dL/db_l = sum_i dL/dz_l[i]
            if i > 0:                                                 # dL/dz_{l-1} = (dL/dz_l W_l) * act'(z_{l-1})
                if L.wide:
                    torch.mm(dyt, L.W, out=L.dht)
                else:
                    np.matmul(dyn, L.Wn, out=L.dhn)
                if relu:
                    torch.ops.aten.threshold_backward.grad_input(L.dht, ht[i], 0, grad_input=L.dht)   # [h > 0]
                else:
                    torch.ops.aten.tanh_backward.grad_input(L.dht, ht[i], grad_input=L.dht)          # 1 - h^2
                dyn, dyt = L.dhn, L.dht

    def optimizer_step(self) -> None:
        """Clip the global gradient norm (as clip_grad_norm_: g <- g min(1, c / (|g| + 1e-6))), then one Adam step.

        The Adam step is the kernel that ``torch.optim.Adam(fused=True).step()`` runs, called on the optimizer's own
        state (so checkpoints and resume are unchanged): the ``step()`` wrapper's bookkeeping (profiler scope, hooks,
        grouping by device and dtype) costs ~80 us per call, twice the kernel on this 67k-parameter vector."""
        g = self.flat.grad
        if self.config.max_grad_norm > 0:
            # c / (|g| + 1e-6) in float32 as clip_grad_norm_ (torch: fl(fl(1 / fl(|g| + 1e-6)) c)), on the host: one
            # norm and one read instead of five tensor ops on a 0-d tensor (a host sync on GPU either way)
            t = np.float32(g.norm().item()) + np.float32(1e-6)
            coef = (np.float32(1.0) / t) * np.float32(self.config.max_grad_norm)
            if coef < 1.0:
                g.mul_(float(coef))
        st, hp = self.optimizer.state[self.flat], self.optimizer.param_groups[0]
        if not st or not hasattr(torch, "_fused_adam_"):
            self.optimizer.step()                  # the first step creates the state: step, exp_avg, exp_avg_sq
            return
        st["step"] += 1                            # t <- t + 1; then m, v, bias corrections, theta (Kingma & Ba, alg. 1)
        torch._fused_adam_([self.flat.data], [g], [st["exp_avg"]], [st["exp_avg_sq"]], [], [st["step"]],
                           amsgrad=False, lr=hp["lr"], beta1=hp["betas"][0], beta2=hp["betas"][1],
                           weight_decay=hp["weight_decay"], eps=hp["eps"], maximize=False)

    def update(self, b: dict[str, torch.Tensor], buffer: ReplayBuffer) -> torch.Tensor:
        """One gradient step on a replay minibatch by autograd (dueling heads, prioritized replay, and the reference
        of :meth:`backprop`); returns [loss, mean Q(s, a)]."""
        cfg = self.config
        y = b["y"] if "y" in b else self.td_target(b)                             # TD target
        q_sa = self.q(b["obs"]).gather(1, b["actions"].view(-1, 1)).squeeze(1)   # Q(s, a)
        assert y.shape == q_sa.shape == (len(q_sa),), (y.shape, q_sa.shape)
        w = b.get("weights")
        loss_fn = F.smooth_l1_loss if cfg.loss == "huber" else F.mse_loss
        if w is None:
            loss = loss_fn(q_sa, y)                                               # mean_i huber(y_i - Q(s_i, a_i))
        else:
            loss = (loss_fn(q_sa, y, reduction="none") * w).mean()                # IS-weighted TD loss
        self.flat.grad.zero_()
        loss.backward()
        self.optimizer_step()
        if cfg.prioritized:
            buffer.update_priorities(b["indices"], (y - q_sa).detach())           # p_i = |delta_i| + eps
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
