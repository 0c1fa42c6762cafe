"""Networks and action distributions shared by the policy-gradient agents (REINFORCE, actor-critic, A2C, PPO).

- Discrete actions: pi(a|s) = Categorical(softmax(f(s))) (logits from an MLP).
- Continuous actions: pi(a|s) = N(mu(s), diag(sigma^2)) with a learned, state-independent log sigma
  (Schulman et al. 2015/2017, as in their reference implementations); the env receives the action clipped to
  the action bounds, the log-probability is that of the unclipped sample.
- Continuous actions with gSDE (``use_sde``, :mod:`mlcanon.rl.sde`): a = mu(s) + phi(s)^T theta_eps with phi(s) the
  actor's last hidden layer and one exploration matrix theta_eps per env; pi(a|s) = N(mu(s), diag((phi^2)^T
  sigma^2)) with a learned [latent, action] log sigma (Raffin et al. 2022) in place of the state-independent one.
- The critic V(s) is a separate MLP (no shared trunk), orthogonally initialized as in the PPO implementation
  details (Huang et al. 2022): gain sqrt(2) hidden, 0.01 for the policy head, 1 for the value head.
- Fast paths for the categorical policy (the same numbers as ``torch.distributions.Categorical``, without building
  one per call): :meth:`ActorCritic.sample` and :meth:`ActorCritic.log_prob_entropy` from the log-softmax of the
  logits, :meth:`ActorCritic.greedy_numpy` in numpy for evaluation; :func:`flat_parameters` puts a module's
  parameters and gradients in one vector each (one norm, one fused optimizer step, one fill per update).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from mlcanon.rl.sde import StateDependentNoise

__all__ = ["ActorCritic", "collect_rollout", "flat_parameters", "mlp", "mlp_backward", "mlp_forward", "mlp_numpy",
           "numpy_views"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: str = "tanh",
        out_gain: float | None = None) -> nn.Sequential:
    """in -> [Linear, act] * len(hidden) -> Linear(out); orthogonal init when ``out_gain`` is given."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), ACTIVATIONS[activation]()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    if out_gain is not None:
        linears = [m for m in layers if isinstance(m, nn.Linear)]
        for i, m in enumerate(linears):
            nn.init.orthogonal_(m.weight, out_gain if i == len(linears) - 1 else math.sqrt(2))
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """pi(a|s) (categorical or diagonal Gaussian) and V(s), two MLPs over a flat observation."""

    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: tuple[int, ...] = (64, 64),
                 activation: str = "tanh", log_std_init: float = 0.0, use_sde: bool = False, sde_matrices: int = 1):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.activation = activation
        self._actor_np: list | None = None       # numpy views of the actor's weights (greedy_numpy)
        self.sde: StateDependentNoise | None = None
        if self.discrete:
            if use_sde:
                raise ValueError("ActorCritic: gSDE needs continuous (Box) actions")
            out = int(action_space.n)
        else:
            out = int(math.prod(action_space.shape))
            if use_sde:                           # learned log sigma [latent, action] and theta_eps per env
                latent = hidden[-1] if hidden else obs_dim
                self.sde = StateDependentNoise(latent, out, sde_matrices, log_std_init)
            else:
                self.log_std = nn.Parameter(torch.full((out,), float(log_std_init)))   # learned log sigma
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        self.actor = mlp(obs_dim, hidden, out, activation, out_gain=0.01)
        self.critic = mlp(obs_dim, hidden, 1, activation, out_gain=1.0)

    def _mean_features(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(s) and the features phi(s) (the actor's last hidden layer) of gSDE."""
        phi = self.actor[:-1](obs)
        return self.actor[-1](phi), phi

    def dist(self, obs: torch.Tensor) -> Distribution:
        """pi(.|s) for a batch of observations [B, obs_dim] (gSDE: its Gaussian over a fresh theta_eps)."""
        if self.sde is not None:
            mu, phi = self._mean_features(obs)
            return Independent(Normal(mu, self.sde.variance(phi).sqrt(), validate_args=False), 1,
                               validate_args=False)           # N(mu(s), diag((phi^2)^T sigma^2)), rl/sde.py [V]
        out = self.actor(obs)
        if self.discrete:
            return Categorical(logits=out, validate_args=False)         # softmax policy
        return Independent(Normal(out, self.log_std.exp().expand_as(out), validate_args=False), 1,
                           validate_args=False)                   # N(mu(s), diag sigma^2)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a ~ pi(.|s) and log pi(a|s) [B]. Categorical: torch.multinomial on softmax(z), the draw (and the random
        stream) of ``Categorical(logits=z).sample()``. gSDE: a = mu(s) + phi(s)^T theta_eps with the current matrices
        (one per row when the batch is the envs)."""
        if self.sde is not None:
            return self.sde.sample(*self._mean_features(obs))        # a = mu(s) + phi(s)^T theta_eps, rl/sde.py [E]
        if not self.discrete:
            d = self.dist(obs)
            a = d.sample()
            return a, d.log_prob(a)
        z = self.actor(obs)
        logp_all = z - z.logsumexp(-1, keepdim=True)             # log pi(.|s) = z - log sum_b exp z_b
        a = torch.multinomial(logp_all.softmax(-1), 1, True).squeeze(-1)
        return a, logp_all.gather(-1, a.unsqueeze(-1)).squeeze(-1)

    def log_prob_entropy(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a|s) [B] and the entropy H[pi(.|s)] [B] (differentiable), from one actor pass."""
        if self.sde is not None:
            mu, phi = self._mean_features(obs)
            return self.sde.log_prob_entropy(mu, phi, actions)       # N(a; mu, diag v(s)), rl/sde.py [V]
        if not self.discrete:
            d = self.dist(obs)
            return d.log_prob(actions), d.entropy()
        z = self.actor(obs)
        logp_all = z - z.logsumexp(-1, keepdim=True)             # log pi(.|s) = z - log sum_b exp z_b
        entropy = -(logp_all * logp_all.softmax(-1)).sum(-1)      # H = -sum_a pi(a|s) log pi(a|s)
        return logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1), entropy

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) [B]."""
        return self.critic(obs).squeeze(-1)

    def greedy_numpy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a pi(a|s) of a categorical policy for observations [n, obs_dim], in numpy on views of the actor's
        (CPU) weights: for the few observations of an evaluation step, torch's per-call overhead is several times
        the arithmetic. The views follow in-place updates (optimizer steps, load_state_dict)."""
        if not self.discrete:
            raise ValueError("greedy_numpy: the policy is not categorical")
        if self._actor_np is None:
            self._actor_np = numpy_views([m for m in self.actor if isinstance(m, nn.Linear)])
        return mlp_numpy(self._actor_np, obs, self.activation).argmax(-1)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action: argmax pi (discrete) or the mean mu(s) (Gaussian)."""
        out = self.actor(obs)
        return out.argmax(-1) if self.discrete else out

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions as the env takes them (Gaussian samples clipped to the action bounds)."""
        return actions if self.discrete else torch.maximum(torch.minimum(actions, self.high), self.low)


def _linears(seq: torch.nn.Sequential) -> list[tuple[torch.nn.Linear, str | None]]:
    """(Linear, the activation after it or None) for an :func:`mlp`, listed once and kept on ``seq`` (DQN calls the
    hand-written passes about 25,000 times a run)."""
    layers = seq.__dict__.get("_hand_layers")
    if layers is None:
        mods = list(seq)
        layers = seq.__dict__["_hand_layers"] = [(m, None if i + 1 == len(mods) else type(mods[i + 1]).__name__)
                                                 for i, m in enumerate(mods) if isinstance(m, torch.nn.Linear)]
    return layers


def mlp_forward(x: torch.Tensor, seq: torch.nn.Sequential, out: list[torch.Tensor] | None = None
                ) -> list[torch.Tensor]:
    """The MLP's input and the output of every layer (after its activation): [x, h_1, ..., h_L]. tanh(y) is computed
    as 2 sigmoid(2y) - 1 (within 2e-7 of torch.tanh, which costs about 2x on CPU), 2y by addmm's scale factors.
    ``out``: preallocated [B, width] tensors, one per Linear, written instead of new ones (no grad: DQN's steps)."""
    hs = [x]
    for i, (lin, act) in enumerate(_linears(seq)):
        o = {} if out is None else {"out": out[i]}
        if act == "Tanh":
            hs.append(torch.addmm(lin.bias, hs[-1], lin.weight.t(), beta=2, alpha=2, **o).sigmoid_().mul_(2).sub_(1))
        else:
            y = torch.addmm(lin.bias, hs[-1], lin.weight.t(), **o)      # h W^T + b
            hs.append(y.relu_() if act == "ReLU" else y)                # (y itself is not kept)
    return hs


@torch.no_grad()
def mlp_backward(hs: list[torch.Tensor], seq: torch.nn.Sequential, dy: torch.Tensor,
                 work: list[torch.Tensor] | None = None) -> None:
    """Back-propagation (Rumelhart et al. 1986) of dL/dh_L through the MLP, into the parameters' .grad:
    dW_l = delta_l^T h_{l-1}, db_l = sum_rows delta_l, delta_{l-1} = (delta_l W_l) * f'(h_{l-1}) with
    tanh' = 1 - tanh^2 and relu' = 1[h > 0]. ``work``: preallocated [B, in_features] tensors, one per Linear, for
    the deltas (instead of new ones)."""
    layers = _linears(seq)
    for i in range(len(layers) - 1, -1, -1):
        lin = layers[i][0]
        torch.mm(dy.t(), hs[i], out=lin.weight.grad)
        torch.sum(dy, 0, out=lin.bias.grad)
        if i > 0:
            dh = dy @ lin.weight if work is None else torch.mm(dy, lin.weight, out=work[i])
            dy = (torch.ops.aten.tanh_backward.grad_input(dh, hs[i], grad_input=dh)          # dh (1 - h^2)
                  if layers[i - 1][1] == "Tanh"                                            # dh [h > 0], in one op:
                  else torch.ops.aten.threshold_backward.grad_input(dh, hs[i], 0, grad_input=dh))   # both in place


def numpy_views(linears: list[nn.Linear]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W^T, b) of each Linear as numpy views of its (CPU) weights: they follow in-place updates (optimizer steps,
    load_state_dict), so they are built once."""
    return [(m.weight.detach().numpy().T, m.bias.detach().numpy()) for m in linears]


def mlp_numpy(layers: list[tuple[np.ndarray, np.ndarray]], obs, activation: str,
              activate_last: bool = False) -> np.ndarray:
    """An MLP's forward h <- act(h W^T + b) in numpy on :func:`numpy_views`, for acting on a few observations, where
    torch's per-call overhead is several times the arithmetic; no activation after the last layer unless asked."""
    h = np.asarray(obs, dtype=np.float32)
    for i, (w, b) in enumerate(layers):
        h = h @ w
        h += b
        if activate_last or i < len(layers) - 1:
            np.maximum(h, 0.0, out=h) if activation == "relu" else np.tanh(h, out=h)
    return h


def flat_parameters(module: nn.Module, grad: bool = True) -> nn.Parameter:
    """One flat parameter vector (with a zero gradient) whose slices become ``module``'s parameters and gradients
    (views; the module's state_dict is unchanged). An optimizer over it does one fused update, gradient clipping
    one scaling and zeroing one fill; backward accumulates into the views, so zero ``flat.grad`` (never set the
    module's grads to None) between steps, and move the module to its device before. ``grad=False``: the parameters
    only (e.g. a target network updated in place)."""
    params = list(module.parameters())
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]), requires_grad=grad)
    if grad:
        flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset:offset + n].view_as(p)           # theta_i is a view of the flat vector
        if grad:
            p.grad = flat.grad[offset:offset + n].view_as(p)       # so is its gradient
        offset += n
    return flat


def collect_rollout(net, env, storage, T: int, device) -> dict[str, list]:
    """T steps of every env of a vector env with a_t ~ pi(.|s_t) and V(s_t), into ``storage`` (reset first);
    ``next_obs`` holds the true next states (final observations at episode ends, for bootstrapping on
    truncation). Returns the finished episodes' returns and lengths (A2C and n-step actor-critic share it)."""
    storage.reset()
    ep: dict[str, list] = {"episode_return": [], "episode_length": []}
    obs = torch.as_tensor(env.obs, device=device)
    for _ in range(T):
        with torch.no_grad():
            action = net.sample(obs)[0]              # a_t ~ pi(.|s_t)
            value = net.value(obs)
        next_obs, reward, term, trunc, info = env.step(net.to_env(action).cpu().numpy())
        storage.add(obs=obs, actions=action, values=value, rewards=torch.as_tensor(reward),
                    terminated=torch.as_tensor(term), dones=torch.as_tensor(term | trunc),
                    next_obs=torch.as_tensor(info["final_obs"]))
        for k in ep:
            ep[k] += info[k]
        obs = torch.as_tensor(next_obs, device=device)
    return ep
