"""A vector of N gymnasium envs stepped together, with the autoreset behaviour deep RL agents rely on.

- **Same-step autoreset**: when env i's episode ends at step t, ``step`` returns the first observation of its
  next episode in ``obs[i]`` and the last observation of the ended one in ``info["final_obs"][i]`` (``final_obs``
  equals ``obs`` for envs that did not finish). We pin this here rather than depend on gymnasium's
  ``SyncVectorEnv`` whose autoreset default changed in 1.0 (to next-step).
- ``terminated`` (a true terminal state: no bootstrap) and ``truncated`` (a time limit: bootstrap from
  V(final_obs)) are kept apart.
- **Seeding per episode**: episode k of env i starts with ``reset(seed=episode_seed(seed, i, k))``, so an episode
  depends on nothing but its index. ``state_dict`` holds the episode indices and the actions taken so far in the
  running episodes; ``load_state_dict`` re-plays them, so a resumed run continues mid-episode exactly
  (classic-control dynamics are deterministic given the reset seed).
- Episode statistics: ``info["episode_return"]`` / ``info["episode_length"]`` list the episodes that ended.
- Discrete observation spaces are one-hot encoded, so every observation is a float vector.

:class:`ObsNormalizer` and :class:`RewardScaler` are modules (their statistics are buffers), so they are saved
and restored with the agent's weights and applied identically at evaluation.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mlcanon.errors import UserError
from mlcanon.training import _seed_key

__all__ = ["ObsNormalizer", "RewardScaler", "RunningMeanStd", "VecEnv", "episode_seed", "evaluate_episodes",
           "make_env"]


def episode_seed(seed: int, env_index: int, episode: int) -> int:
    """The reset seed of episode ``episode`` of env ``env_index`` in a run seeded ``seed``."""
    return _seed_key(seed, env_index, episode) % (2**31 - 1)


def make_env(env_id: str, **kwargs) -> gym.Env:
    """gymnasium.make (without the passive checker's per-step overhead) with user-facing errors."""
    import mlcanon.rl.envs  # noqa: F401  (registers the mlcanon/... ids)

    if env_id not in gym.registry:
        import difflib
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"--env {env_id!r}: unknown environment.{hint} Try CartPole-v1, Acrobot-v1, "
                        "MountainCar-v0, Pendulum-v1 or any id in gymnasium.registry")
    try:
        return gym.make(env_id, disable_env_checker=True, **kwargs)
    except gym.error.DependencyNotInstalled as e:
        raise UserError(f"--env {env_id}: {str(e).splitlines()[0]} (Box2D envs: pip install 'mlcanon[box2d]')"
                        ) from None


def obs_shape_of(space: gym.Space) -> tuple[int, ...]:
    if isinstance(space, gym.spaces.Discrete):
        return (int(space.n),)
    if isinstance(space, gym.spaces.Box):
        return tuple(space.shape)
    raise UserError(f"observation space {space} is not supported by the deep agents (Box or Discrete)")


def _encode(space: gym.Space, obs) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):       # one-hot
        out = np.zeros(space.n, dtype=np.float32)
        out[int(obs) - int(space.start)] = 1.0
        return out
    return np.asarray(obs, dtype=np.float32)


class VecEnv:
    """N copies of one env id stepped in lock-step with same-step autoreset (see the module doc)."""

    def __init__(self, env_id: str, num_envs: int, seed: int, max_episode_steps: int | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        kw = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
        self.env_id, self.num_envs, self.seed = env_id, int(num_envs), int(seed)
        self.envs = [make_env(env_id, **kw) for _ in range(num_envs)]
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.obs_shape = obs_shape_of(self.observation_space)
        self.episode = np.zeros(num_envs, dtype=np.int64)       # index of the running episode of each env
        self.ep_return = np.zeros(num_envs, dtype=np.float64)
        self.ep_length = np.zeros(num_envs, dtype=np.int64)
        self._actions: list[list] = [[] for _ in range(num_envs)]  # actions of the running episodes
        self.obs: np.ndarray | None = None

    def _reset_one(self, i: int) -> np.ndarray:
        o, _ = self.envs[i].reset(seed=episode_seed(self.seed, i, int(self.episode[i])))
        self.ep_return[i], self.ep_length[i] = 0.0, 0
        self._actions[i] = []
        return _encode(self.observation_space, o)

    def reset(self) -> np.ndarray:
        """Start (or restart) the current episode of every env; returns obs [N, *obs_shape]."""
        self.obs = np.stack([self._reset_one(i) for i in range(self.num_envs)])
        return self.obs

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every env; returns (obs, rewards, terminated, truncated, info) with same-step autoreset.

        info: ``final_obs`` [N, ...] (the true next observation), ``episode_return`` / ``episode_length``
        (lists, the episodes that ended at this step).
        """
        if self.obs is None:
            raise ValueError("call reset() before step()")
        actions = np.asarray(actions)
        N = self.num_envs
        obs = np.empty((N, *self.obs_shape), dtype=np.float32)
        final = np.empty_like(obs)
        rewards = np.zeros(N, dtype=np.float64)
        term = np.zeros(N, dtype=bool)
        trunc = np.zeros(N, dtype=bool)
        ep_returns, ep_lengths = [], []
        for i, env in enumerate(self.envs):
            a = actions[i]      # a numpy integer as is: Discrete.contains checks a Python int against np.iinfo
            self._actions[i].append(actions[i].copy())
            o, r, te, tr, _ = env.step(a)
            final[i] = _encode(self.observation_space, o)
            rewards[i], term[i], trunc[i] = r, te, tr
            self.ep_return[i] += r
            self.ep_length[i] += 1
            if te or tr:                                 # same-step autoreset: obs is the next episode's first
                ep_returns.append(float(self.ep_return[i]))
                ep_lengths.append(int(self.ep_length[i]))
                self.episode[i] += 1
                obs[i] = self._reset_one(i)
            else:
                obs[i] = final[i]
        self.obs = obs
        return obs, rewards, term, trunc, {"final_obs": final, "episode_return": ep_returns,
                                           "episode_length": ep_lengths}

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # -- TrainState part: episode indices and the running episodes' actions (re-played on load) -------------
    def state_dict(self) -> dict:
        lengths = np.array([len(a) for a in self._actions], dtype=np.int64)
        a_shape = self.action_space.shape or ()
        dtype = np.float32 if isinstance(self.action_space, gym.spaces.Box) else np.int64
        acts = np.zeros((self.num_envs, int(lengths.max(initial=0)), *a_shape), dtype=dtype)
        for i, a in enumerate(self._actions):
            if a:
                acts[i, :len(a)] = np.stack(a)
        return {"episode": self.episode.copy(), "lengths": lengths, "actions": acts,
                "started": self.obs is not None}

    def load_state_dict(self, st: dict) -> None:
        self.episode[:] = np.asarray(st["episode"])
        if not st["started"]:
            self.obs = None
            return
        self.reset()
        lengths, acts = np.asarray(st["lengths"]), np.asarray(st["actions"])
        for i in range(self.num_envs):                 # re-play the running episode of env i
            for k in range(int(lengths[i])):
                a = acts[i, k]
                self._actions[i].append(a.copy())
                o, r, te, tr, _ = self.envs[i].step(a.item() if a.ndim == 0 else a)
                self.ep_return[i] += r
                self.ep_length[i] += 1
                if te or tr:
                    raise ValueError(f"env {i}: the re-played episode ended early; the env is not "
                                     "deterministic given its reset seed, so this run cannot be resumed exactly")
                self.obs[i] = _encode(self.observation_space, o)


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_episodes(policy, env_id: str, episodes: int, seed: int, max_episode_steps: int | None = None,
                      batch: int = 32, record: list | None = None,
                      with_ids: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(returns [episodes], lengths [episodes]) of ``policy(obs [n, ...] float32) -> actions [n, ...]``,
    run on up to ``batch`` envs at once; episode j is seeded by (seed, j), so the result repeats exactly.
    ``with_ids``: the policy is called as ``policy(obs, episode_ids [n])`` (per-episode behaviour).

    With a list ``record``, one dict per episode (in episode order) of its ``obs``, ``actions``, ``rewards``,
    ``terminated`` and ``truncated`` arrays (one row per step) and ``final_obs`` (the observation after the last
    step) is appended to it.
    """
    kw = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    returns = np.zeros(episodes, dtype=np.float64)
    lengths = np.zeros(episodes, dtype=np.int64)
    envs = [make_env(env_id, **kw) for _ in range(min(batch, episodes))]
    space = envs[0].observation_space
    for start in range(0, episodes, len(envs)):
        ids = list(range(start, min(start + len(envs), episodes)))
        obs = [_encode(space, envs[k].reset(seed=_seed_key(seed, 104_729, j) % (2**31 - 1))[0])
               for k, j in enumerate(ids)]
        logs: list[dict[str, list]] = [{"obs": [], "actions": [], "rewards": [], "terminated": [], "truncated": []}
                                       for _ in ids]
        alive = list(range(len(ids)))
        while alive:
            batch_obs = np.stack([obs[k] for k in alive])
            acts = np.asarray(policy(batch_obs, np.array([ids[k] for k in alive])) if with_ids else policy(batch_obs))
            still = []
            for a, k in zip(acts, alive):
                o, r, te, tr, _ = envs[k].step(a)      # a numpy integer as is (see VecEnv.step)
                if record is not None:
                    for key, v in zip(("obs", "actions", "rewards", "terminated", "truncated"),
                                      (obs[k], a, r, te, tr)):
                        logs[k][key].append(v)
                returns[ids[k]] += r
                lengths[ids[k]] += 1
                obs[k] = _encode(space, o)
                if not (te or tr):
                    still.append(k)
            alive = still
        if record is not None:
            record.extend({**{k: np.asarray(v, dtype=np.float32 if k in ("obs", "rewards") else None)
                              for k, v in log.items()}, "final_obs": obs[k]} for k, log in enumerate(logs))
    for env in envs:
        env.close()
    return returns, lengths


# ---------------------------------------------------------------------------------- normalization modules
class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (Chan et al. 1979 parallel update), in float64."""

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        b_mean, b_var, b = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, tot = b_mean - self.mean, self.count + b
        m2 = self.var * self.count + b_var * b + delta**2 * self.count * b / tot   # M2_a + M2_b + d^2 n_a n_b / n
        self.mean += delta * b / tot
        self.var.copy_(m2 / tot)
        self.count.copy_(tot)


class ObsNormalizer(nn.Module):
    """o -> clip((o - mean) / sqrt(var + eps), -clip, clip) with running statistics (updated in training)."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.rms, self.clip, self.eps = RunningMeanStd(shape), clip, eps

    def forward(self, obs: torch.Tensor, update: bool = False) -> torch.Tensor:
        if update:
            self.rms.update(obs)
        z = (obs - self.rms.mean.to(obs.dtype)) / torch.sqrt(self.rms.var.to(obs.dtype) + self.eps)
        return z.clamp(-self.clip, self.clip)


class RewardScaler(nn.Module):
    """r -> r / sqrt(Var[R] + eps), R the running discounted return R <- gamma R (1 - done) + r per env
    (as gymnasium's NormalizeReward / Engstrom et al. 2020); the per-env returns are buffers too."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.rms, self.gamma, self.clip, self.eps = RunningMeanStd(()), gamma, clip, eps
        self.register_buffer("ret", torch.zeros(num_envs, dtype=torch.float64))

    def forward(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        self.ret.mul_(self.gamma).add_(rewards.double())              # R <- gamma R + r
        self.rms.update(self.ret)
        self.ret.masked_fill_(dones.bool(), 0.0)                      # a new episode starts from 0
        return (rewards / torch.sqrt(self.rms.var.float() + self.eps)).clamp(-self.clip, self.clip)
