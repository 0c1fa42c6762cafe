"""Decision transformer (Chen et al. 2021), offline RL as return-conditioned sequence modelling:
``mlcanon train decision-transformer --dataset trajectories.npz`` (the file from
``mlcanon sample RUN_DIR --episodes 500 --epsilon 0 --epsilon-max 1 --out trajectories.npz``: each episode
with its own rate of random actions, so the data hold every quality from the agent's own to a random policy's).

- Tokens: each step t contributes (R_t, s_t, a_t), R_t = sum_{k>=t} r_{k+1} the (undiscounted) return-to-go;
  each is embedded linearly (actions by an embedding table) plus a learned embedding of the timestep t
  (the paper's "episodic positional embedding"), and the 3K tokens of the last K steps go through a causal
  transformer (:class:`mlcanon.nn.attention.Decoder`).
- a_t is predicted from the hidden state of the s_t token, which sees R_<=t, s_<=t and a_<t only (causal mask);
  the loss is the cross-entropy of the data's actions (paper sec. 3, discrete actions).
- At evaluation the model is conditioned on a target return R_0 = target and R_{t+1} = R_t - r_{t+1}
  (paper Algorithm 1); evaluated at several targets (``--target-returns``), the achieved return should follow
  the target up to what the data supports. Actions are drawn from the predicted softmax, as the paper's Atari
  evaluation does (``--sample-actions false``: the greedy argmax, which reproduces the data's majority action
  whatever the target when low returns come from random actions mixed into one policy's).

Without ``--dataset`` on CartPole-v1 the data are mixed-quality episodes of a scripted balancing controller
with per-episode action noise epsilon in [0, 0.8] (so the defaults work out of the box); the file named by
``--dataset`` is checked when the config is built and its sha256 is recorded in config.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.metrics.rl import mean_ci95
from mlcanon.nn.attention import Decoder, TransformerBlock
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
    sample_actions: bool = option(True, "at evaluation draw a_t from the predicted softmax, as the paper's Atari "
                                        "evaluation (false: the greedy argmax, which ignores a low target when the "
                                        "data's actions are noisy versions of one policy's)", absent=False)

    def check(self) -> None:
        super().check()
        if not self.target_returns:
            raise UserError("--target-returns: give at least one return, e.g. --target-returns 500,250")
        if self.d_model % self.n_heads:
            raise UserError(f"--d-model {self.d_model} must be divisible by --n-heads {self.n_heads}")
        if not self.dataset:
            if self.env != "CartPole-v1":
                raise UserError(f"--env {self.env}: the scripted data exist for CartPole-v1 only; give --dataset "
                                "FILE.npz written by `mlcanon sample RUN_DIR --episodes 500 --epsilon 0 "
                                "--epsilon-max 1 --out FILE.npz`")
            return
        path = Path(self.dataset)
        if not path.is_file():
            raise UserError(f"--dataset {path}: no such file; write one with `mlcanon sample RUN_DIR --episodes 500 "
                            "--epsilon 0 --epsilon-max 1 --out trajectories.npz`")
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
    ep_end = np.repeat(ends, ends - starts)[:, None]           # end (exclusive) of each step's episode
    w = np.arange(len(ep))[:, None] + np.arange(K)[None]       # window of step i: steps i .. i + K - 1
    mask, idx = w < ep_end, np.minimum(w, ep_end - 1)          # past the end: padding (repeat the last step)
    obs = np.asarray(data["obs"], dtype=np.float32).reshape(len(ep), -1)
    return {"R": torch.from_numpy(R_all[idx]), "s": torch.from_numpy(obs[idx]),
            "a": torch.from_numpy(np.asarray(data["actions"], dtype=np.int64)[idx]),
            "t": torch.from_numpy(t_all[idx]), "mask": torch.from_numpy(mask)}


# ------------------------------------------------------------------------------------------------ model
def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout x * m / (1 - p), m_i ~ Bernoulli(1 - p) (Srivastava et al. 2014), with p rounded to a
    multiple of 2^-16: m_i compares a uniform 16-bit word with the threshold, four words per 64-bit draw of the
    torch generator (~5x faster on a CPU than F.dropout's one Bernoulli draw per element, ~30% of a step)."""
    if not training or p == 0.0:
        return x
    k = round(p * 65536)                                            # P(drop) = k / 2^16
    words = torch.randint(-2**63, 2**63 - 1, (-(-x.numel() // 4),), dtype=torch.int64, device=x.device)
    keep = words.view(torch.int16)[:x.numel()].view(x.shape) >= k - 32768
    return x * (keep.to(x.dtype) * (65536 / (65536 - k)))          # E[output] = x


def transformer_block(block: TransformerBlock, x: torch.Tensor, queries: slice, training: bool) -> torch.Tensor:
    """A causal pre-LN :class:`TransformerBlock` (its weights), x += SA(LN(x)); x += FFN(LN(x)), evaluated at
    the token positions ``queries`` only: query p attends keys s <= p; keys and values come from every token.

    The same function as ``block(x)[:, queries]`` (tested); it exists so that the last block computes the s_t
    tokens only (the other tokens' last-layer outputs are never read: ~1/4 of the work) and for :func:`dropout`.
    """
    sa = block.self_attn
    B, T, D = x.shape
    pos = torch.arange(T, device=x.device)
    y = block.norm1(x)                                              # LN(x)
    q = sa._split(sa.q_proj(y[:, queries]))                         # [B, h, Q, d_h]
    k, v = sa._split(sa.k_proj(y)), sa._split(sa.v_proj(y))         # [B, h, T, d_h]
    scores = q @ k.transpose(-2, -1) / math.sqrt(sa.head_dim)       # Q K^T / sqrt(d_k)
    scores = scores.masked_fill(pos[None, :] > pos[queries, None], float("-inf"))   # causal mask M
    w = dropout(torch.softmax(scores, dim=-1), sa.dropout, training)                 # attention dropout
    o = sa.out_proj((w @ v).transpose(1, 2).reshape(B, -1, D))      # concat_h(head_h) W_o
    h = x[:, queries] + dropout(o, block.drop.p, training)          # x += SA(LN(x))
    lin1, act, drop, lin2 = block.ff
    f = lin2(dropout(act(lin1(block.norm3(h))), drop.p, training))  # W_2 act(W_1 LN(x) + b_1) + b_2
    return h + dropout(f, block.drop.p, training)                   # x += FFN(LN(x))


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

    def forward(self, R: torch.Tensor, s: torch.Tensor, a: torch.Tensor, t: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        """R [B, K], s [B, K, D], a [B, K], t [B, K] -> action logits [B, K, A] (from the s_t tokens), or
        [B, 1, A] for the newest step only with ``last_only`` (what Algorithm 1 uses at evaluation)."""
        B, K = R.shape
        te = self.embed_t(t.clamp(max=int(self.max_timestep)))
        tokens = torch.stack([self.embed_R((R / self.return_scale)[..., None]) + te, self.embed_s(s) + te,
                              self.embed_a(a) + te], dim=2).view(B, 3 * K, -1)   # R_1, s_1, a_1, R_2, ...
        dec = self.decoder
        h = dropout(self.ln(tokens), dec.drop.p, self.training)    # embedding dropout (positions="none")
        for i, block in enumerate(dec.blocks):                      # the last block at the s_t tokens only
            last = i == len(dec.blocks) - 1
            h = transformer_block(block, h, (slice(3 * K - 2, 3 * K - 1) if last_only else slice(1, None, 3))
                                  if last else slice(None), self.training)
        return self.head(dec.norm(h))                               # a_t from the s_t token

    def loss(self, batch: dict) -> dict:
        """Cross-entropy of the data's actions over the real (unpadded) steps of the windows."""
        logits = self(batch["R"], batch["s"], batch["a"], batch["t"])
        m = batch["mask"]
        ce = F.cross_entropy(logits[m], batch["a"][m])
        acc = (logits[m].argmax(-1) == batch["a"][m]).float().mean()
        return {"loss": ce, "accuracy": acc}


@torch.inference_mode()
def rollout(model: DecisionTransformer, env_id: str, targets: float | Sequence[float], episodes: int, seed: int,
            max_episode_steps: int | None = None, sample: bool = False) -> np.ndarray:
    """Returns of ``episodes`` episodes conditioned on each target return (paper Algorithm 1):
    [len(targets), episodes], or [episodes] for one float ``target``. Actions are the greedy argmax, or with
    ``sample`` drawn from the predicted softmax, as the paper's discrete-action (Atari) evaluation does; draws come
    from a generator seeded by ``seed``, so the returns repeat exactly.

    All targets' episodes run together, one forward per env step over the live episodes' last K steps (the
    newest s_t token only). Episode j starts from reset seed ``seed * 1_000_003 + j`` whatever the target, so
    the targets are compared on the same initial states.
    """
    model.eval()
    scalar = np.ndim(targets) == 0
    targets = np.atleast_1d(np.asarray(targets, dtype=np.float64))
    N, K, A = len(targets) * episodes, model.context, model.n_actions
    kw = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    envs = [make_env(env_id, **kw) for _ in range(N)]                 # env n: target n // episodes, episode n % ..
    obs = np.stack([env.reset(seed=seed * 1_000_003 + n % episodes)[0] for n, env in enumerate(envs)])
    cap = max_episode_steps or getattr(envs[0].spec, "max_episode_steps", None) or 1024
    hist_R = torch.zeros(N, cap)                                      # the whole history, written in place
    hist_s = torch.zeros(N, cap, obs.shape[1])
    hist_a = torch.full((N, cap), A, dtype=torch.long)                # A: "no action yet" at the newest step
    hist_t = torch.arange(cap).expand(N, cap)
    R_left = np.repeat(targets, episodes)                             # R_0 = target
    returns = np.zeros(N)
    live = np.arange(N)
    gen = torch.Generator().manual_seed(seed)
    t = 0
    while len(live):
        if t == hist_R.shape[1]:                                      # an env without a time limit: grow
            hist_R, hist_s = torch.cat([hist_R, torch.zeros_like(hist_R)], 1), torch.cat([hist_s, hist_s * 0], 1)
            hist_a = torch.cat([hist_a, torch.full_like(hist_a, A)], 1)
            hist_t = torch.arange(2 * t).expand(N, 2 * t)
        rows = torch.from_numpy(live)
        hist_R[rows, t] = torch.from_numpy(R_left[live]).float()
        hist_s[rows, t] = torch.from_numpy(obs[live]).float()
        lo = max(0, t + 1 - K)                                        # the last K steps: lo .. t
        logits = model(hist_R[rows, lo:t + 1], hist_s[rows, lo:t + 1], hist_a[rows, lo:t + 1],
                       hist_t[rows, lo:t + 1], last_only=True)[:, 0]
        if sample:                                                    # a_t ~ softmax(logits)
            act = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen)[:, 0]
        else:
            act = logits.argmax(-1)                                   # greedy a_t
        hist_a[rows, t] = act
        still = []
        for n, a in zip(live, act.tolist()):
            o, r, te, tr, _ = envs[n].step(a)
            obs[n] = o
            returns[n] += r
            R_left[n] -= r                                            # R_{t+1} = R_t - r_{t+1}
            if not (te or tr):
                still.append(n)
        live = np.array(still, dtype=np.int64)
        t += 1
    for env in envs:
        env.close()
    returns = returns.reshape(len(targets), episodes)
    return returns[0] if scalar else returns


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
        all_rets = rollout(model, config.env, config.target_returns, config.eval_episodes, config.seed,
                             config.max_episode_steps or None, config.sample_actions)
        for target, rets in zip(config.target_returns, all_rets):
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
    targets = options.target_returns or config.target_returns
    all_rets = rollout(model, config.env, targets, options.episodes, options.seed, config.max_episode_steps or None,
                       config.sample_actions)
    for target, rets in zip(targets, all_rets):
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
    stats = [mean_ci95(r) for r in rollout(model, config.env, targets, n, options.seed,
                                           config.max_episode_steps or None, config.sample_actions)]
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
