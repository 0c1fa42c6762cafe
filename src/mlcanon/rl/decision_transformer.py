"""Decision transformer (Chen et al. 2021), offline RL as return-conditioned sequence modelling:
``mlcanon train decision-transformer --dataset trajectories.npz`` (the file from
``mlcanon sample RUN_DIR --episodes 500 --epsilon 0.3 --out trajectories.npz``).

- Tokens: each step t contributes (R_t, s_t, a_t), R_t = sum_{k>=t} r_{k+1} the (undiscounted) return-to-go;
  each is embedded linearly (actions by an embedding table) plus a learned embedding of the timestep t
  (the paper's "episodic positional embedding"), and the 3K tokens of the last K steps go through a causal
  transformer (:class:`mlcanon.nn.attention.Decoder`).
- a_t is predicted from the hidden state of the s_t token, which sees R_<=t, s_<=t and a_<t only (causal mask);
  the loss is the cross-entropy of the data's actions (paper sec. 3, discrete actions).
- At evaluation the model is conditioned on a target return R_0 = target and R_{t+1} = R_t - r_{t+1}
  (paper Algorithm 1); evaluated at several targets (``--target-returns``), the achieved return should follow
  the target up to what the data supports.

Without ``--dataset`` on CartPole-v1 the data are mixed-quality episodes of a scripted balancing controller
with per-episode action noise epsilon in [0, 0.8] (so the defaults work out of the box); the file named by
``--dataset`` is checked when the config is built and its sha256 is recorded in config.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.metrics.rl import mean_ci95
from mlcanon.nn.attention import Decoder
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.rl.vec_env import evaluate_episodes, make_env, obs_shape_of
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer

REQUIRED_KEYS = ("obs", "actions", "rewards", "episode")


@dataclasses.dataclass
class DTConfig(TrainConfig):
    """Decision transformer trained on trajectories; every field is a flag."""

    env: str = option("CartPole-v1", "gymnasium env id the trajectories come from (evaluation runs in it)")
    dataset: str = option("", "trajectories .npz (from `mlcanon sample RUN_DIR --out FILE.npz`); empty: scripted "
                              "mixed-quality CartPole-v1 episodes")
    dataset_sha256: str = option("", "sha256 of --dataset, recorded when the config is built (checked on resume)")
    generated_episodes: int = option(200, "episodes of the scripted data when --dataset is empty", min=1)
    context: int = option(20, "K: steps of history the model attends to", min=1)
    d_model: int = option(64, "transformer width", min=1)
    n_layers: int = option(2, "transformer blocks", min=1)
    n_heads: int = option(2, "attention heads", min=1)
    dropout: float = option(0.1, "dropout", min=0.0, max=0.9)
    epochs: int = option(2, "passes over the windows of the data", min=1)
    batch_size: int = option(64, "windows per batch", min=1)
    lr: float = option(6e-4, "peak learning rate (AdamW, cosine decay after warm-up)", min=0.0)
    optimizer: str = option("adamw", "optimizer", choices=("adam", "adamw", "sgd"))
    weight_decay: float = option(1e-4, "AdamW decoupled weight decay", min=0.0)
    max_grad_norm: float = option(0.25, "clip the global gradient norm (0: off)", min=0.0)
    warmup_steps: int = option(100, "linear learning-rate warm-up steps", min=0)
    lr_schedule: str = option("cosine", "learning-rate decay after warm-up", choices=("constant", "cosine", "linear"))
    target_returns: tuple[float, ...] = option((500.0, 300.0, 100.0), "returns to condition on at evaluation")
    eval_episodes: int = option(10, "episodes per target return", min=1)
    max_episode_steps: int = option(0, "episode time limit at evaluation (0: the env's own)", min=0)

    def check(self) -> None:
        super().check()
        if not self.target_returns:
            raise UserError("--target-returns: give at least one return, e.g. --target-returns 500,250")
        if self.d_model % self.n_heads:
            raise UserError(f"--d-model {self.d_model} must be divisible by --n-heads {self.n_heads}")
        if not self.dataset:
            if self.env != "CartPole-v1":
                raise UserError(f"--env {self.env}: the scripted data exist for CartPole-v1 only; give --dataset "
                                "FILE.npz written by `mlcanon sample RUN_DIR --episodes 500 --epsilon 0.3 --out "
                                "FILE.npz`")
            return
        path = Path(self.dataset)
        if not path.is_file():
            raise UserError(f"--dataset {path}: no such file; write one with `mlcanon sample RUN_DIR --episodes 500 "
                            "--epsilon 0.3 --out trajectories.npz`")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if self.dataset_sha256 and self.dataset_sha256 != digest:
            raise UserError(f"--dataset {path} changed since this run started (sha256 {digest[:12]}..., recorded "
                            f"{self.dataset_sha256[:12]}...); restore the file or start a new run")
        self.dataset_sha256 = digest
        try:
            with np.load(path) as z:
                missing = [k for k in REQUIRED_KEYS if k not in z.files]
        except (OSError, ValueError) as e:
            raise UserError(f"--dataset {path}: not a readable .npz ({e})") from None
        if missing:
            raise UserError(f"--dataset {path}: lacks {', '.join(missing)}; use a file written by `mlcanon sample "
                            "RUN_DIR --out FILE.npz`")


# ------------------------------------------------------------------------------------------------- data
def scripted_cartpole(episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Mixed-quality CartPole data: a balancing controller a = [theta + 0.5 theta_dot > 0] (which scores 500),
    taking a uniformly random action with probability eps_j, eps_j evenly spaced in [0, 0.8] over episodes."""
    eps = np.linspace(0.0, 0.8, episodes)
    rng = np.random.default_rng(seed)
    trajs: list[dict] = []
    for j in range(episodes):
        def pol(o, e=eps[j]):
            a = (o[:, 2] + 0.5 * o[:, 3] > 0).astype(np.int64)
            return np.where(rng.random(len(o)) < e, rng.integers(0, 2, len(o)), a)
        evaluate_episodes(pol, "CartPole-v1", 1, seed * 100_003 + j, record=trajs)
    out = {k: np.concatenate([t[k] for t in trajs]) for k in ("obs", "actions", "rewards")}
    out["episode"] = np.concatenate([np.full(len(t["rewards"]), j) for j, t in enumerate(trajs)])
    return out


def load_trajectories(config: DTConfig) -> dict[str, np.ndarray]:
    if not config.dataset:
        return scripted_cartpole(config.generated_episodes, config.seed)
    with np.load(config.dataset) as z:
        return {k: z[k] for k in REQUIRED_KEYS}


def make_windows(data: dict[str, np.ndarray], K: int) -> dict[str, torch.Tensor]:
    """Every window of K steps starting at each step of each episode, right-padded past the episode's end.

    Returns R [M, K] (return-to-go), s [M, K, D], a [M, K], t [M, K] (timesteps), mask [M, K] (real steps).
    """
    ep = data["episode"]
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    ends = np.r_[starts[1:], len(ep)]
    R_all = np.zeros(len(ep), dtype=np.float32)
    t_all = np.zeros(len(ep), dtype=np.int64)
    for s, e in zip(starts, ends):
        r = data["rewards"][s:e].astype(np.float64)
        R_all[s:e] = np.cumsum(r[::-1])[::-1]                   # R_t = sum_{k>=t} r_{k+1}
        t_all[s:e] = np.arange(e - s)
    idx, mask = [], []
    for s, e in zip(starts, ends):
        for i in range(s, e):
            w = np.arange(i, i + K)
            mask.append(w < e)
            idx.append(np.minimum(w, e - 1))
    idx, mask = np.stack(idx), np.stack(mask)
    obs = np.asarray(data["obs"], dtype=np.float32).reshape(len(ep), -1)
    return {"R": torch.from_numpy(R_all[idx]), "s": torch.from_numpy(obs[idx]),
            "a": torch.from_numpy(np.asarray(data["actions"], dtype=np.int64)[idx]),
            "t": torch.from_numpy(t_all[idx]), "mask": torch.from_numpy(mask)}


# ------------------------------------------------------------------------------------------------ model
class DecisionTransformer(nn.Module):
    """(R_t, s_t, a_t) tokens + timestep embeddings -> causal transformer -> logits of a_t at the s_t token."""

    def __init__(self, obs_dim: int, n_actions: int, context: int, max_timestep: int, d_model: int = 64,
                 n_layers: int = 2, n_heads: int = 2, dropout: float = 0.1, return_scale: float = 1.0):
        super().__init__()
        self.n_actions, self.context = n_actions, context
        self.embed_t = nn.Embedding(max_timestep + 1, d_model)      # episodic timestep embedding
        self.embed_R = nn.Linear(1, d_model)
        self.embed_s = nn.Linear(obs_dim, d_model)
        self.embed_a = nn.Embedding(n_actions + 1, d_model)         # + a "no action yet" token
        self.ln = nn.LayerNorm(d_model)
        self.decoder = Decoder(d_model, n_heads, n_layers, dropout=dropout, max_len=3 * context, positions="none")
        self.head = nn.Linear(d_model, n_actions)
        self.register_buffer("return_scale", torch.tensor(float(return_scale)))
        self.register_buffer("max_timestep", torch.tensor(int(max_timestep)))

    def forward(self, R: torch.Tensor, s: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """R [B, K], s [B, K, D], a [B, K], t [B, K] -> action logits [B, K, A] (from the s_t tokens)."""
        B, K = R.shape
        te = self.embed_t(t.clamp(max=int(self.max_timestep)))
        tokens = torch.stack([self.embed_R((R / self.return_scale)[..., None]) + te, self.embed_s(s) + te,
                              self.embed_a(a) + te], dim=2).view(B, 3 * K, -1)   # R_1, s_1, a_1, R_2, ...
        h = self.decoder(self.ln(tokens)).view(B, K, 3, -1)
        return self.head(h[:, :, 1])                                # a_t from the s_t token

    def loss(self, batch: dict) -> dict:
        """Cross-entropy of the data's actions over the real (unpadded) steps of the windows."""
        logits = self(batch["R"], batch["s"], batch["a"], batch["t"])
        m = batch["mask"]
        ce = F.cross_entropy(logits[m], batch["a"][m])
        acc = (logits[m].argmax(-1) == batch["a"][m]).float().mean()
        return {"loss": ce, "accuracy": acc}


@torch.no_grad()
def rollout(model: DecisionTransformer, env_id: str, target: float, episodes: int, seed: int,
            max_episode_steps: int | None = None) -> np.ndarray:
    """Returns of ``episodes`` greedy episodes conditioned on ``target`` (paper Algorithm 1), run together."""
    model.eval()
    kw = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    envs = [make_env(env_id, **kw) for _ in range(episodes)]
    K, A = model.context, model.n_actions
    obs = np.stack([env.reset(seed=seed * 1_000_003 + j)[0] for j, env in enumerate(envs)]).astype(np.float32)
    D = obs.shape[1]
    hist_R = torch.zeros(episodes, K)
    hist_s = torch.zeros(episodes, K, D)
    hist_a = torch.full((episodes, K), A, dtype=torch.long)
    hist_t = torch.zeros(episodes, K, dtype=torch.long)
    R_left = np.full(episodes, float(target))
    returns = np.zeros(episodes)
    alive = np.ones(episodes, dtype=bool)
    t = 0
    while alive.any():
        n = min(t + 1, K)          # steps in the window; the newest sits at index n - 1
        if t >= K:                 # slide the window
            hist_R, hist_s, hist_a, hist_t = (x.roll(-1, 1) for x in (hist_R, hist_s, hist_a, hist_t))
        hist_R[:, n - 1] = torch.as_tensor(R_left, dtype=torch.float32)
        hist_s[:, n - 1] = torch.from_numpy(obs)
        hist_a[:, n - 1] = A
        hist_t[:, n - 1] = t
        logits = model(hist_R[:, :n], hist_s[:, :n], hist_a[:, :n], hist_t[:, :n])[:, n - 1]
        act = logits.argmax(-1)
        hist_a[:, n - 1] = act
        for j in np.flatnonzero(alive):
            o, r, te, tr, _ = envs[j].step(int(act[j]))
            obs[j] = o
            returns[j] += r
            R_left[j] -= r                                          # R_{t+1} = R_t - r_{t+1}
            if te or tr:
                alive[j] = False
        t += 1
    for env in envs:
        env.close()
    return returns


# ------------------------------------------------------------------------------------------------ train
def build_model(config: DTConfig, obs_dim: int, n_actions: int, max_timestep: int, scale: float):
    return DecisionTransformer(obs_dim, n_actions, config.context, max_timestep, config.d_model, config.n_layers,
                               config.n_heads, config.dropout, scale)


def _spaces(env_id: str) -> tuple[int, int]:
    env = make_env(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(act_space, gym.spaces.Discrete):
        raise UserError(f"decision-transformer does not support the {type(act_space).__name__} action space of "
                        f"{env_id}; agents that do: reinforce, actor-critic, a2c, ppo")
    return int(np.prod(obs_shape_of(obs_space))), int(act_space.n)


def train(config: DTConfig, run: Run | None = None) -> dict:
    """Train on the trajectories, then evaluate at each target return; returns the achieved returns."""
    run = Run.start("decision-transformer", config, run)
    obs_dim, n_actions = _spaces(config.env)
    data = load_trajectories(config)
    ep_returns = np.bincount(data["episode"], weights=data["rewards"])
    windows = make_windows(data, config.context)
    max_t = int(windows["t"].max()) + 1
    scale = float(max(np.abs(ep_returns).max(), 1.0))
    model = build_model(config, obs_dim, n_actions, max_t, scale)
    run.write_json("dataset.json", {"episodes": len(ep_returns), "steps": len(data["rewards"]),
                                    "return_mean": float(ep_returns.mean()), "return_max": float(ep_returns.max()),
                                    "return_median": float(np.median(ep_returns)), "sha256": config.dataset_sha256})
    trainer = Trainer(model, config, run)
    fit = trainer.fit(lambda b: model.loss(b), TensorBatches(windows, config.batch_size, seed=config.seed),
                      postfix_keys=("train/loss", "train/accuracy"))
    result = {"run_dir": str(run.dir), "step": fit.step, "data_return_mean": float(ep_returns.mean()),
              "data_return_lower_half_max": float(np.sort(ep_returns)[: max(1, len(ep_returns) // 2)].max())}
    metrics = {}
    if run.dist.is_main:
        load_weights(model, run.dir, "best")
        for target in config.target_returns:
            rets = rollout(model, config.env, target, config.eval_episodes, config.seed,
                           config.max_episode_steps or None)
            result[f"return_at_{target:g}"] = float(rets.mean())
            metrics[f"eval/return_at_{target:g}"] = float(rets.mean())
        run.finish(result, step=fit.step, metrics=metrics)
    return result


def load_model(run_dir: Path, config: DTConfig | None = None, tag: str = "best") -> DecisionTransformer:
    """The trained model of a run folder (the registry's load hook)."""
    config = config or config_of(run_dir, "decision-transformer")
    obs_dim, n_actions = _spaces(config.env)
    from mlcanon.runs import load_checkpoint
    ck = load_checkpoint(run_dir, tag=tag) or load_checkpoint(run_dir)
    if ck is None:
        raise UserError(f"{run_dir} has no checkpoint yet; continue it with `mlcanon train --resume {run_dir}`")
    sd = ck[0]["model"]
    model = build_model(config, obs_dim, n_actions, int(sd["max_timestep"]), float(sd["return_scale"]))
    model.load_state_dict(sd)
    return model.eval()


@dataclasses.dataclass
class DTEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a decision-transformer run."""

    episodes: int = option(20, "episodes per target return", min=1)
    target_returns: tuple[float, ...] = option((), "returns to condition on (empty: the run's --target-returns)")


def evaluate(run_dir: Path, options: DTEvalOptions | None = None) -> dict:
    """Mean achieved return (and its 95% interval) at each target return."""
    options = options or DTEvalOptions()
    config = config_of(run_dir, "decision-transformer")
    model = load_model(run_dir, config)
    out = {}
    for target in options.target_returns or config.target_returns:
        rets = rollout(model, config.env, target, options.episodes, options.seed, config.max_episode_steps or None)
        m, h = mean_ci95(rets)
        out[f"eval/return_at_{target:g}"] = float(m)
        out[f"eval/return_at_{target:g}_ci95"] = float(h)
    return out


@dataclasses.dataclass
class DTSampleOptions(SampleOptions):
    """Options of `mlcanon sample` on a decision-transformer run (-n: episodes per target)."""

    targets: int = option(6, "number of target returns, evenly spaced from 0 to the largest --target-returns",
                          min=2)


def sample(run_dir: Path, n: int = 10, out: Path | None = None, options: DTSampleOptions | None = None) -> Path:
    """A plot of the achieved return against the target return (mean and 95% interval over -n episodes)."""
    options = options or DTSampleOptions()
    config = config_of(run_dir, "decision-transformer")
    model = load_model(run_dir, config)
    targets = np.linspace(0.0, max(config.target_returns), options.targets)
    stats = [mean_ci95(rollout(model, config.env, float(g), n, options.seed, config.max_episode_steps or None))
             for g in targets]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(out) if out else Path(run_dir) / "samples.png"
    fig, ax = plt.subplots(figsize=(4.5, 4))
    m = np.array([float(s[0]) for s in stats])
    h = np.nan_to_num(np.array([float(s[1]) for s in stats]))
    ax.errorbar(targets, m, yerr=h, marker="o", capsize=3, label="decision transformer")
    ax.plot(targets, targets, "k--", lw=1, label="achieved = target")
    ax.set_xlabel("target return")
    ax.set_ylabel("achieved return")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


register("decision-transformer", family="rl-deep", config=DTConfig,
         description="decision transformer: offline RL as return-conditioned causal sequence modelling",
         evaluate=evaluate, sample=sample, load=load_model, eval_options=DTEvalOptions, sample_options=DTSampleOptions,
         tiny={"generated_episodes": 6, "context": 4, "d_model": 16, "n_layers": 1, "n_heads": 2, "max_steps": 12,
               "batch_size": 16, "checkpoint_every": 6, "warmup_steps": 2, "target_returns": (50.0,),
               "eval_episodes": 2, "max_episode_steps": 30})(train)
