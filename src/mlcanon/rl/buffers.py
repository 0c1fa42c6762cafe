"""Experience storage for deep RL: uniform replay, prioritized replay (sum-tree), rollout storage.

Every buffer preallocates its arrays once (insert and sample are O(1) per item; O(log capacity) for the
sum-tree), keeps its own ``torch.Generator`` for sampling, and has ``state_dict`` / ``load_state_dict``, so it is
a part of the :class:`~mlcanon.training.TrainState`: a resumed DQN continues with the same contents and the same
sampling stream.

Transitions are stored as (s, a, r, s', terminated, done) where s' is the TRUE next state (the final observation
when the episode ended), ``terminated`` stops bootstrapping and ``done = terminated | truncated`` ends the episode.
The N envs of a vector env are inserted together, so env e's step t+k lies k*N slots after its step t: the n-step
targets are computed at sample time (:meth:`ReplayBuffer.sample` with ``n_step``), and need no extra state.

References: Lin (1992) and Mnih et al. (2015) (experience replay); Schaul et al. (2016), "Prioritized experience
replay" (sum-tree, P(i) = p_i^alpha / sum_k p_k^alpha, w_i = (N P(i))^-beta / max_j w_j).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PrioritizedReplayBuffer", "ReplayBuffer", "RolloutStorage", "SumTree", "beta_at"]


class ReplayBuffer:
    """Uniform experience replay over a ring of ``capacity`` transitions (Mnih et al. 2015)."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...] = (),
                 action_dtype: torch.dtype = torch.int64, num_envs: int = 1, seed: int = 0,
                 obs_dtype: torch.dtype = torch.float32):
        if capacity < 1 or num_envs < 1:
            raise ValueError(f"capacity and num_envs must be >= 1, got {capacity}, {num_envs}")
        self.capacity, self.num_envs = int(capacity), int(num_envs)
        self.obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.actions = torch.zeros((capacity, *action_shape), dtype=action_dtype)
        self.rewards = torch.zeros(capacity, dtype=torch.float32)
        self.terminated = torch.zeros(capacity, dtype=torch.bool)
        self.dones = torch.zeros(capacity, dtype=torch.bool)
        self.pos, self.size = 0, 0
        self.generator = torch.Generator().manual_seed(int(seed))
        self._np = {k: getattr(self, k).numpy() for k in ("obs", "next_obs", "actions", "rewards", "terminated",
                                                          "dones")}   # views: writes land in the tensors

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, rewards, next_obs, terminated, dones) -> torch.Tensor:
        """Insert one step of the N envs (each argument has a leading axis N); returns the slots written.

        The values are written through numpy views of the storage tensors (one DQN insert per env step: torch's
        indexing overhead would be several times the copy)."""
        n = len(rewards)
        if n > self.capacity:
            raise ValueError(f"cannot insert {n} transitions into a buffer of capacity {self.capacity}")
        idx = (self.pos + np.arange(n)) % self.capacity                 # ring: overwrite the oldest
        at = slice(self.pos, self.pos + n) if self.pos + n <= self.capacity else idx   # a slice writes faster
        a = self._np
        a["obs"][at] = np.asarray(obs).reshape(n, *a["obs"].shape[1:])
        a["next_obs"][at] = np.asarray(next_obs).reshape(n, *a["next_obs"].shape[1:])
        a["actions"][at] = np.asarray(actions).reshape(n, *a["actions"].shape[1:])
        a["rewards"][at] = np.asarray(rewards)
        a["terminated"][at] = np.asarray(terminated)
        a["dones"][at] = np.asarray(dones)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return torch.from_numpy(idx)

    def _indices(self, batch_size: int) -> torch.Tensor:
        return torch.randint(self.size, (batch_size,), generator=self.generator)   # uniform over stored

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 0.99) -> dict[str, torch.Tensor]:
        """A uniform batch {obs, actions, rewards, next_obs, terminated, discount, indices}.

        With ``n_step`` > 1 (S&B eq. 7.1): rewards = sum_{k<m} gamma^k r_{t+k+1}, next_obs = s_{t+m},
        discount = gamma^m, m = min(n, steps to the episode end, steps stored after t); the TD target is then
        rewards + discount (1 - terminated) max_a Q(next_obs, a).
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        return self._gather(self._indices(batch_size), n_step, gamma)

    def _gather(self, idx: torch.Tensor, n_step: int, gamma: float) -> dict[str, torch.Tensor]:
        if n_step == 1:
            return {"obs": self.obs[idx], "actions": self.actions[idx], "rewards": self.rewards[idx],
                    "next_obs": self.next_obs[idx], "terminated": self.terminated[idx],
                    "discount": torch.full((len(idx),), gamma), "indices": idx}
        newer = (self.pos - 1 - idx) % self.capacity                    # slots written after idx
        m_max = newer // self.num_envs + 1                              # steps of the same env available
        ret = torch.zeros(len(idx))
        disc = torch.ones(len(idx))
        alive = torch.ones(len(idx), dtype=torch.bool)
        last = idx.clone()
        for k in range(n_step):
            j = (idx + k * self.num_envs) % self.capacity
            use = alive & (k < m_max)
            ret = torch.where(use, ret + disc * self.rewards[j], ret)    # + gamma^k r_{t+k+1}
            disc = torch.where(use, disc * gamma, disc)
            last = torch.where(use, j, last)
            alive = use & ~self.dones[j]
        return {"obs": self.obs[idx], "actions": self.actions[idx], "rewards": ret,
                "next_obs": self.next_obs[last], "terminated": self.terminated[last], "discount": disc,
                "indices": idx}

    # -- TrainState part ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        n = self.size   # only the filled slots
        return {"obs": self.obs[:n], "next_obs": self.next_obs[:n], "actions": self.actions[:n],
                "rewards": self.rewards[:n], "terminated": self.terminated[:n], "dones": self.dones[:n],
                "pos": self.pos, "size": self.size, "generator": self.generator.get_state()}

    def load_state_dict(self, st: dict) -> None:
        n = int(st["size"])
        if n > self.capacity:
            raise ValueError(f"checkpointed buffer holds {n} transitions, capacity is {self.capacity}")
        for k in ("obs", "next_obs", "actions", "rewards", "terminated", "dones"):
            getattr(self, k)[:n] = torch.as_tensor(st[k])
        self.pos, self.size = int(st["pos"]), n
        self.generator.set_state(torch.as_tensor(st["generator"]))


class SumTree:
    """Binary tree over ``capacity`` leaves whose nodes hold the sum of their children (Schaul et al. 2016,
    appendix B.2.1): update a leaf and find the leaf where a prefix sum lands, both in O(log capacity).

    Array layout: node 1 is the root, node i has children 2i and 2i+1, leaves are ``size .. 2 size - 1`` with
    ``size`` the capacity rounded up to a power of two (the padding leaves stay 0 and are never drawn).
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.size = 1 << max(0, (self.capacity - 1).bit_length())
        self.levels = self.size.bit_length() - 1
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def leaves(self) -> np.ndarray:
        return self.tree[self.size:self.size + self.capacity]

    def update(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``idx`` to ``values`` (>= 0) and recompute their ancestors, level by level."""
        idx = np.asarray(idx, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if np.any(values < 0) or not np.all(np.isfinite(values)):
            raise ValueError("priorities must be finite and >= 0")
        node = idx + self.size
        self.tree[node] = values
        for _ in range(self.levels):
            node = np.unique(node // 2)
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]   # parent = sum of children

    def find(self, prefix: np.ndarray) -> np.ndarray:
        """Leaf index i with sum(leaves[:i]) <= prefix < sum(leaves[:i+1]), for each prefix (vectorized)."""
        prefix = np.asarray(prefix, dtype=np.float64).copy()
        node = np.ones(prefix.shape, dtype=np.int64)
        for _ in range(self.levels):
            left = 2 * node
            go_right = prefix >= self.tree[left]
            prefix = np.where(go_right, prefix - self.tree[left], prefix)   # descend: skip the left mass
            node = np.where(go_right, left + 1, left)
        leaf = node - self.size
        return np.minimum(leaf, self.capacity - 1)


def beta_at(step: int, total_steps: int, beta0: float) -> float:
    """IS exponent annealed linearly from beta0 to 1 over training (Schaul et al. 2016, sec. 3.4)."""
    return beta0 + (1.0 - beta0) * min(1.0, step / max(total_steps, 1))


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016): P(i) = p_i^alpha / sum_k p_k^alpha with
    p_i = |delta_i| + eps; new transitions get the largest priority seen so far; the batch is drawn by
    stratified sampling (one uniform in each of B equal slices of the total mass); the importance-sampling
    weights w_i = (N P(i))^-beta / max_j w_j correct the bias of the non-uniform draw."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...] = (),
                 action_dtype: torch.dtype = torch.int64, num_envs: int = 1, seed: int = 0, alpha: float = 0.6,
                 eps: float = 1e-6, obs_dtype: torch.dtype = torch.float32):
        super().__init__(capacity, obs_shape, action_shape, action_dtype, num_envs, seed, obs_dtype)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha, self.eps = float(alpha), float(eps)
        self.tree = SumTree(capacity)
        self.max_priority = 1.0

    def add(self, obs, actions, rewards, next_obs, terminated, dones) -> torch.Tensor:
        idx = super().add(obs, actions, rewards, next_obs, terminated, dones)
        self.tree.update(idx.numpy(), np.full(len(idx), self.max_priority ** self.alpha))   # p_max^alpha
        return idx

    def probabilities(self) -> np.ndarray:
        """P(i) of every stored slot."""
        return self.tree.leaves()[:self.size] / self.tree.total

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 0.99,
               beta: float = 0.4) -> dict[str, torch.Tensor]:
        """A prioritized batch (as :meth:`ReplayBuffer.sample`) plus ``weights`` w_i."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        total = self.tree.total
        u = torch.rand(batch_size, generator=self.generator, dtype=torch.float64).numpy()
        prefix = (np.arange(batch_size) + u) * (total / batch_size)      # stratified: one draw per slice
        idx = np.minimum(self.tree.find(prefix), self.size - 1)
        p = self.tree.tree[idx + self.tree.size] / total                 # P(i)
        p_min = self.tree.leaves()[:self.size].min() / total
        w = (self.size * p) ** (-beta) / (self.size * p_min) ** (-beta)  # (N P(i))^-beta / max_j w_j
        out = self._gather(torch.from_numpy(idx), n_step, gamma)
        out["weights"] = torch.from_numpy(w).float()
        return out

    def update_priorities(self, idx: torch.Tensor, td_errors: torch.Tensor) -> None:
        """p_i = |delta_i| + eps for the sampled slots."""
        p = td_errors.detach().abs().double().cpu().numpy() + self.eps
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.update(idx.cpu().numpy(), p ** self.alpha)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "priorities": self.tree.leaves()[:self.size].copy(),
                "max_priority": self.max_priority}

    def load_state_dict(self, st: dict) -> None:
        super().load_state_dict(st)
        self.tree.tree[:] = 0.0
        self.tree.update(np.arange(self.size), np.asarray(st["priorities"], dtype=np.float64))
        self.max_priority = float(st["max_priority"])


class RolloutStorage:
    """On-policy rollout of T steps of N envs (A2C, PPO): preallocated [T, N, ...] tensors filled step by step.

    Fields: obs, actions, log_probs, rewards, values, terminated, dones and next_obs (the true s_{t+1}, the final
    observation on episode ends, so V(s_{t+1}) bootstraps truncations).
    """

    FIELDS = ("obs", "actions", "log_probs", "rewards", "values", "terminated", "dones", "next_obs")

    def __init__(self, T: int, N: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...] = (),
                 action_dtype: torch.dtype = torch.int64, device: torch.device | str = "cpu"):
        self.T, self.N = int(T), int(N)
        z = {"device": device}
        self.obs = torch.zeros((T, N, *obs_shape), **z)
        self.next_obs = torch.zeros((T, N, *obs_shape), **z)
        self.actions = torch.zeros((T, N, *action_shape), dtype=action_dtype, **z)
        self.log_probs = torch.zeros((T, N), **z)
        self.rewards = torch.zeros((T, N), **z)
        self.values = torch.zeros((T, N), **z)
        self.terminated = torch.zeros((T, N), dtype=torch.bool, **z)
        self.dones = torch.zeros((T, N), dtype=torch.bool, **z)
        self.t = 0

    def add(self, **step: torch.Tensor) -> None:
        """Write step t of every field given (then t += 1)."""
        if self.t >= self.T:
            raise ValueError(f"rollout storage is full ({self.T} steps); call reset()")
        for k, v in step.items():
            getattr(self, k)[self.t] = torch.as_tensor(v).to(getattr(self, k).dtype)
        self.t += 1

    def reset(self) -> None:
        self.t = 0

    @property
    def full(self) -> bool:
        return self.t == self.T

    def flat(self, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every field (and ``extra`` [T, N] tensors) with the T and N axes merged: [T*N, ...]."""
        out = {k: getattr(self, k) for k in self.FIELDS}
        out.update(extra)
        return {k: v.reshape(self.T * self.N, *v.shape[2:]) for k, v in out.items()}

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.FIELDS}, "t": self.t}

    def load_state_dict(self, st: dict) -> None:
        for k in self.FIELDS:
            getattr(self, k).copy_(torch.as_tensor(st[k]))
        self.t = int(st["t"])
