"""What every deep RL agent shares: the config fields, the Agent interface and the run-folder hooks.

DESIGN.md section 5: ``Agent(env, config)``, ``learn(total_steps)``, ``act(obs, deterministic=False)``,
``evaluate(episodes) -> stats``, ``save(path)``, ``Agent.load(path)``. Each agent file (dqn.py, ppo.py, ...)
subclasses :class:`Agent` and writes its own ``learn`` loop top to bottom on :class:`~mlcanon.training.TrainState`
and :class:`~mlcanon.training.Loop`, with :meth:`Agent.start` / :meth:`Agent.end_iteration` for the parts
every loop repeats (restore on resume, periodic greedy evaluation, ``--target-return`` early stop, ``best``).

The registry hooks (:func:`evaluate_run`, :func:`sample_run`, :func:`load_agent`) work for every agent.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mlcanon.config import CommonConfig, option, to_dict
from mlcanon.devices import resolve_device, torch_threads
from mlcanon.errors import UserError
from mlcanon.metrics.rl import mean_ci95
from mlcanon.registry import EvalOptions, SampleOptions
from mlcanon.rl.vec_env import _encode, evaluate_episodes, make_env, obs_shape_of
from mlcanon.runs import Run, load_checkpoint, read_config, save_checkpoint, seed_everything
from mlcanon.training import Loop, TrainState, _seed_key

# which agents take which action spaces (the error for an unsupported space names them)
SUPPORTED_SPACES: dict[str, tuple[str, ...]] = {
    "Discrete": ("dqn", "reinforce", "actor-critic", "a2c", "ppo", "decision-transformer"),
    "Box": ("reinforce", "actor-critic", "a2c", "ppo"),
}
AGENTS: dict[str, type[Agent]] = {}


@dataclasses.dataclass
class DeepRLConfig(CommonConfig):
    """Fields every deep RL agent shares (DESIGN.md section 3 names)."""

    env: str = option("CartPole-v1", "gymnasium environment id (CartPole-v1, Acrobot-v1, MountainCar-v0, "
                                     "Pendulum-v1, mlcanon/GridWorld-v0, ...)")
    total_steps: int = option(100_000, "training budget in environment steps (all envs together)", min=1)
    num_envs: int = option(1, "parallel environments", min=1)
    gamma: float = option(0.99, "discount factor", min=0.0, max=1.0)
    lr: float = option(3e-4, "learning rate (Adam)", min=0.0)
    hidden: tuple[int, ...] = option((64, 64), "hidden layer widths of the networks, e.g. 64,64")
    max_grad_norm: float = option(0.5, "clip the global gradient norm to this value (0: off)", min=0.0)
    max_episode_steps: int = option(0, "episode time limit (0: the env's own); truncation bootstraps", min=0)
    eval_every: int = option(10_000, "env steps between greedy evaluations (0: only at the end)", min=0)
    eval_episodes: int = option(10, "episodes per evaluation (run in parallel; new episodes at each evaluation)", min=1)
    target_return: float | None = option(None, "stop at the first evaluation whose mean return reaches this")
    num_seeds: int = option(1, "independent seeds --seed, --seed + 1, ..., each bitwise the single run with its "
                               "seed: with gymnasium envs trained one after another in this process "
                               "(RUN_DIR/seeds/<run>/), with PPO's --torch-env all at once (batched); "
                               "curves_seeds.png draws their median and range", min=1)
    threads: int = option(1, "torch CPU threads during training (0: torch's default, one per core); restored after. "
                             "These agents' small networks run fastest on one: on 2 cores two made DQN 1.4x and "
                             "PPO / A2C 2x slower (docs/BENCHMARKS.md)", min=0)

    def check(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise UserError(f"--hidden {self.hidden}: give positive layer widths, e.g. --hidden 64,64")


class Agent:
    """Base of the deep agents; see the module doc. Subclasses set ``name`` and build their modules."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = DeepRLConfig

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            AGENTS[cls.name] = cls

    def __init__(self, env: str, config: DeepRLConfig, device: torch.device | str | None = None):
        self.config = config
        self.env_id = env
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        probe = make_env(env)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        kind = type(self.action_space).__name__
        if self.name not in SUPPORTED_SPACES.get(kind, ()):
            ok = SUPPORTED_SPACES.get(kind, ())
            raise UserError(f"{self.name} does not support the {kind} action space of {env} ({self.action_space}); "
                            + (f"agents that do: {', '.join(ok)}" if ok else "no agent here supports it"))
        self.obs_shape = obs_shape_of(self.observation_space)
        self.obs_dim = int(math.prod(self.obs_shape))
        seed_everything(config.seed)          # the networks' initialization depends on the seed only

    # -- to be provided by each agent -------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The modules that define the trained agent (saved by :meth:`save`, the ``best`` checkpoint)."""
        raise NotImplementedError

    def policy(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Actions for a batch of (raw) observations [B, ...] on ``self.device``."""
        raise NotImplementedError

    def learn(self, total_steps: int | None = None, run: Run | None = None) -> dict:
        raise NotImplementedError

    # -- the interface --------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        """Action(s) for one observation or a batch [B, ...] (numpy, as the env takes them)."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        single = x.dim() == len(self.obs_shape)
        a = self.policy(x[None] if single else x, deterministic).cpu().numpy()
        return a[0] if single else a

    def evaluate(self, episodes: int = 10, seed: int = 0, deterministic: bool = True) -> dict:
        """Return statistics of ``episodes`` episodes (seeded by (seed, episode)): mean, 95% interval, lengths."""
        for m in self.modules().values():
            m.eval()
        returns, lengths = evaluate_episodes(lambda o: self.act(o, deterministic), self.env_id, episodes, seed,
                                             self.config.max_episode_steps or None)
        for m in self.modules().values():
            m.train()
        mean, half = mean_ci95(returns)
        return {"return_mean": float(mean), "return_ci95": float(half), "length_mean": float(lengths.mean()),
                "returns": returns.tolist(), "episodes": int(episodes)}

    def save(self, path: str | Path) -> Path:
        """Write ``path/config.json`` and ``path/agent.safetensors`` (weights only; load with :meth:`load`)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(
            json.dumps({"algorithm": self.name, "config": to_dict(self.config)}, indent=2))
        save_checkpoint(path, {k: m.state_dict() for k, m in self.modules().items()}, tag="agent")
        return path

    @classmethod
    def load(cls, path: str | Path, tag: str = "best", device: str | None = "cpu") -> Agent:
        """An agent from :meth:`save`'s folder or a run folder (``best`` weights, else the last checkpoint)."""
        from mlcanon import config as cfg
        from mlcanon import registry
        children = seed_runs(path)
        if children and not (Path(path) / "checkpoint.safetensors").exists():
            return cls.load(children[0], tag, device)   # a --num-seeds run: the first seed's agent
        data = read_config(path)
        registry.get(data["algorithm"])               # imports the agent's module
        klass = AGENTS.get(data["algorithm"])
        if klass is None:
            raise UserError(f"{path} holds a {data['algorithm']} run, not a deep RL agent")
        config = cfg.from_dict(klass.config_cls, data["config"], source=f"{path}/config.json")
        agent = klass(config.env, config, device=device)
        ck = load_checkpoint(path, tag="agent") or load_checkpoint(path, tag=tag) or load_checkpoint(path)
        if ck is None:
            raise UserError(f"{path} has no weights yet (no agent/best/checkpoint file)")
        for k, m in agent.modules().items():
            if k not in ck[0]:
                raise UserError(f"{path}: the checkpoint has no {k!r}; it was written by another version")
            m.load_state_dict(ck[0][k])
        return agent

    # -- loop helpers shared by every learn() --------------------------------------------------------------
    def start(self, run: Run | None, state: TrainState, total: int, desc: str) -> tuple[Run, Loop]:
        """Restore ``state`` on resume (else reset the vector env ``state["env"]`` if any), and open the Loop."""
        if run is None:                                  # learn() from Python without a run folder
            run = Run(Path("."), enabled=False)
            run.device = self.device
        state.counters.setdefault("best_eval", None)
        state.counters.setdefault("solved_step", None)
        if not state.restore(run) and "env" in state:
            state["env"].reset()
        self.run, self.state = run, state
        self.eval_seconds, self._t0 = 0.0, time.perf_counter()   # wall-clock, reported (never checkpointed)
        loop = Loop(run, state, total=total, log_every=self.config.log_every,
                    checkpoint_every=self.config.checkpoint_every, desc=self.name, unit="step",
                    progress=self.config.progress, postfix_keys=("rollout/episode_return", "eval/return_mean"))
        return run, loop

    def end_iteration(self, loop: Loop, n: int, metrics: dict[str, Any]) -> None:
        """Evaluate when an ``--eval-every`` boundary (or the end) is crossed, then ``loop.advance(n)``.

        The evaluation runs and is logged at the new step BEFORE the checkpoint of that step is written, so a
        run killed in between redoes it on resume and writes the same lines. ``best`` holds the modules of the
        best evaluation; ``--target-return`` ends the run at the first evaluation that reaches it.
        """
        cfg, state, c = self.config, loop.state, loop.state.counters
        before, after = loop.step, loop.step + n
        k = evaluation_due(before, after, cfg.eval_every, loop.total)
        if k is not None:
            t_eval = time.perf_counter()
            ev = self.evaluate(cfg.eval_episodes, seed=training_eval_seed(cfg.seed, k))
            self.eval_seconds += time.perf_counter() - t_eval
            rec = {"eval/return_mean": ev["return_mean"], "eval/return_ci95": ev["return_ci95"]}
            self.run.log(after, {k: v for k, v in rec.items() if math.isfinite(v)})
            loop._last.update(rec)
            if c["best_eval"] is None or ev["return_mean"] > c["best_eval"]:
                c["best_eval"] = ev["return_mean"]
                self.run.save(state.state_dict(modules_only=True), after, tag="best")
            if cfg.target_return is not None and ev["return_mean"] >= cfg.target_return and c["solved_step"] is None:
                c["solved_step"] = after
                state.done = True
        loop.advance(n, metrics)
        if state.done and not (after // loop.checkpoint_every > before // loop.checkpoint_every
                               or after >= loop.total):
            loop.checkpoint()

    def summary(self) -> dict:
        c = self.state.counters
        wall = time.perf_counter() - self._t0
        return {"step": int(self.state.step), "best_eval_return": c["best_eval"], "solved_step": c["solved_step"],
                "wall_seconds": wall, "eval_seconds": self.eval_seconds, "train_seconds": wall - self.eval_seconds}


_TRAINING_EVAL = 7_919                       # stream id of the evaluations during training


def evaluation_due(before: int, after: int, eval_every: int, total: int) -> int | None:
    """The key k of the evaluation due when training moves from ``before`` to ``after`` env steps, None if none is:
    one at each --eval-every boundary passed and one at the end. Each evaluation plays new episodes (as SB3's
    EvalCallback, whose eval env runs on), keyed by (seed, k) with k a function of the step, so a resumed run
    replays the same ones: k = the boundaries passed, plus one for a last evaluation that passed none."""
    crossed = eval_every > 0 and after // eval_every > before // eval_every
    if not (crossed or after >= total):
        return None
    if not eval_every:
        return 0
    return after // eval_every + (0 if crossed else 1)


def training_eval_seed(seed: int, k: int) -> int:
    """Episode seed of the k-th evaluation during training of the run ``seed`` (distinct from `mlcanon eval`'s)."""
    return _seed_key(seed, _TRAINING_EVAL, k) % (2**31 - 1)


def episode_metrics(info: dict) -> dict[str, float | None]:
    """rollout/episode_return and rollout/episode_length of the episodes that ended (None when none did)."""
    if not info["episode_return"]:
        return {}
    return {"rollout/episode_return": float(np.mean(info["episode_return"])),
            "rollout/episode_length": float(np.mean(info["episode_length"]))}


def seed_runs(run_dir: str | Path) -> list[Path]:
    """The per-seed run folders of a ``--num-seeds`` run, by seed."""
    d = Path(run_dir) / "seeds"
    if not d.is_dir():
        return []
    runs = [p for p in d.iterdir() if (p / "config.json").is_file()]
    return sorted(runs, key=lambda p: read_config(p)["config"]["seed"])


def train_seeds(cls: type[Agent], config: DeepRLConfig, run: Run | None = None) -> dict:
    """``--num-seeds N``: seeds seed..seed+N-1 one after another, each a complete run in RUN_DIR/seeds/ (so seed i is
    bitwise the run ``--seed seed+i``); on ``--resume`` finished seeds are read back and the others resumed."""
    run = Run.start(cls.name, config, run)
    done = {read_config(p)["config"]["seed"]: p for p in seed_runs(run.dir)}
    results = []
    for seed in range(config.seed, config.seed + config.num_seeds):
        child_cfg = dataclasses.replace(config, seed=seed, num_seeds=1, out_dir=str(run.dir / "seeds"))
        child = done.get(seed)
        if child is not None and (child / "result.json").is_file():
            results.append(json.loads((child / "result.json").read_text()))
            continue
        child_run = Run.reopen(child)[0] if child is not None else None
        r = train_agent(cls, child_cfg, child_run)
        results.append({k: v for k, v in r.items() if k != "agent"})
    solved = [r["solved_step"] for r in results]
    best = [r["best_eval_return"] for r in results]
    result = {"run_dir": str(run.dir), "seeds": list(range(config.seed, config.seed + config.num_seeds)),
              "solved_steps": solved, "best_eval_returns": best,
              "best_eval_return_median": float(np.median(best)) if None not in best else None,
              "solved_step_median": float(np.median(solved)) if None not in solved else None}
    _plot_seeds(run.dir)
    return run.finish(result, step=0)


def _plot_seeds(run_dir: Path) -> None:
    """curves_seeds.png: median and range over seeds of eval/return_mean and rollout/episode_return."""
    import matplotlib

    from mlcanon.runs import read_metrics
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key in zip(axes, ("eval/return_mean", "rollout/episode_return")):
        series = [{r["step"]: r[key] for r in read_metrics(p) if key in r} for p in seed_runs(run_dir)]
        steps = sorted(set().union(*series)) if series else []
        if not steps:
            continue
        vals = np.array([[sr.get(t, np.nan) for t in steps] for sr in series], dtype=np.float64)
        vals = np.array([_ffill(v) for v in vals])               # a seed that stopped early keeps its last value
        ax.plot(steps, np.nanmedian(vals, 0), label=f"median of {len(series)} seeds")
        ax.fill_between(steps, np.nanmin(vals, 0), np.nanmax(vals, 0), alpha=0.3, label="min-max")
        ax.set_title(key)
        ax.set_xlabel("env step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(run_dir) / "curves_seeds.png", dpi=90)
    plt.close(fig)


def _ffill(v: np.ndarray) -> np.ndarray:
    out = v.copy()
    for i in range(1, len(out)):
        if np.isnan(out[i]):
            out[i] = out[i - 1]
    return out


def training_threads(config: DeepRLConfig):
    """torch's intra-op CPU threads set to ``config.threads`` for the block (0: left as they are), then restored.
    At these networks' sizes (a [64 x 256] x [256 x 256] product, tens of microseconds) a second thread costs more
    in waking and synchronizing than it saves."""
    return torch_threads(config.threads)


def train_agent(cls: type[Agent], config: DeepRLConfig, run: Run | None = None) -> dict:
    """The body of every deep agent's ``train(config, run=None)``: run folder, learn, final evaluation (on
    ``--threads`` torch threads)."""
    with training_threads(config):
        return _train_agent(cls, config, run)


def _train_agent(cls: type[Agent], config: DeepRLConfig, run: Run | None) -> dict:
    if config.num_seeds > 1:
        return train_seeds(cls, config, run)
    run = Run.start(cls.name, config, run)
    agent = cls(config.env, config, device=run.device)
    out = agent.learn(config.total_steps, run)
    result = {"run_dir": str(run.dir), **out}
    metrics = {"eval/best_return_mean": out["best_eval_return"]} if out["best_eval_return"] is not None else {}
    run.finish(result, step=out["step"], metrics=metrics)
    result["agent"] = agent
    return result


# ----------------------------------------------------------------------------------------- registry hooks
@dataclasses.dataclass
class RLEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a deep RL run."""

    episodes: int = option(100, "episodes to average over", min=1)
    stochastic: bool = option(False, "sample actions from the policy instead of the greedy action")
    tag: str = option("best", "weights to evaluate: best (best evaluation during training) or checkpoint (last)",
                      choices=("best", "checkpoint"))


@dataclasses.dataclass
class RLSampleOptions(SampleOptions):
    """Options of `mlcanon sample` on a deep RL run (-n is the number of episodes unless --episodes is set)."""

    episodes: int = option(0, "episodes to roll out (0: -n)", min=0)
    epsilon: float = option(0.0, "probability of a uniformly random action at each step (mixed-quality data)",
                            min=0.0, max=1.0)
    epsilon_max: float | None = option(None, "each episode draws its own epsilon uniformly in [--epsilon, "
                                             "--epsilon-max]: data of graded quality", min=0.0, max=1.0)
    stochastic: bool = option(False, "sample actions from the policy instead of the greedy action")

    def check(self) -> None:
        if self.epsilon_max is not None and self.epsilon_max < self.epsilon:
            raise UserError(f"--epsilon-max {self.epsilon_max} is below --epsilon {self.epsilon}; give "
                            "--epsilon-max >= --epsilon (or drop it for one epsilon)")


def load_agent(run_dir: Path, config=None, tag: str = "best") -> Agent:
    """The registry's load hook: the trained agent of a run folder."""
    return Agent.load(run_dir, tag=tag)


def evaluate_run(run_dir: Path, options: RLEvalOptions | None = None) -> dict:
    """``mlcanon eval RUN_DIR --episodes 100``: mean return and the half-width of its 95% t-interval."""
    options = options or RLEvalOptions()
    agent = Agent.load(run_dir, tag=options.tag)
    ev = agent.evaluate(options.episodes, seed=options.seed, deterministic=not options.stochastic)
    return {"eval/return_mean": ev["return_mean"], "eval/return_ci95": ev["return_ci95"],
            "eval/length_mean": ev["length_mean"], "episodes": ev["episodes"],
            "summary": f"return {ev['return_mean']:.2f} +/- {ev['return_ci95']:.2f} (95% CI, {ev['episodes']} "
                       "episodes)"}


def rollouts(agent: Agent, episodes: int, seed: int, epsilon: float = 0.0, deterministic: bool = True,
             epsilon_max: float | None = None) -> dict:
    """Trajectories of ``episodes`` episodes, with probability ``epsilon`` of a uniform random action per step, or,
    with ``epsilon_max``, episode j's own probability epsilon_j ~ U[epsilon, epsilon_max] (graded quality).

    Returns flat arrays over all steps (obs, actions, rewards, terminated, truncated, episode) and per-episode
    ``returns`` / ``lengths`` / ``epsilon``; episode j's steps are ``episode == j``, in time order.
    """
    rng = np.random.default_rng(seed)
    space = agent.action_space
    space.seed(seed)                     # Box random actions come from the space's own generator
    hi = epsilon if epsilon_max is None else epsilon_max
    eps = np.random.default_rng([seed, 1]).uniform(epsilon, hi, episodes) if hi > epsilon else np.full(episodes,
                                                                                                         epsilon)

    def pol(o, ids):
        a = agent.act(o, deterministic)
        if hi > 0:
            rand = rng.random(len(o)) < eps[ids]
            if rand.any():
                r = np.stack([space.sample() for _ in range(int(rand.sum()))]) if not isinstance(
                    space, gym.spaces.Discrete) else rng.integers(0, space.n, int(rand.sum()))
                a = a.copy()
                a[rand] = r
        return a

    trajs: list[dict] = []
    returns, lengths = evaluate_episodes(pol, agent.env_id, episodes, seed, agent.config.max_episode_steps or None,
                                         record=trajs, with_ids=True)
    cat = {k: np.concatenate([t[k] for t in trajs]) for k in trajs[0] if k != "final_obs"}
    cat["episode"] = np.concatenate([np.full(len(t["rewards"]), j) for j, t in enumerate(trajs)])
    return {**cat, "returns": returns, "lengths": lengths, "epsilon": eps}


def sample_run(run_dir: Path, n: int = 10, out: Path | None = None, options: RLSampleOptions | None = None) -> Path:
    """``mlcanon sample RUN_DIR``: roll out episodes. ``--out X.npz`` writes the trajectories (the decision
    transformer's data: ``--episodes 500 --epsilon 0 --epsilon-max 1``); ``--out X.gif`` an animation of the first episode
    (needs pygame); by default ``RUN_DIR/samples.png`` (the episodes' returns) and ``RUN_DIR/trajectories.npz``."""
    options = options or RLSampleOptions()
    episodes = options.episodes or n
    out = Path(out) if out else Path(run_dir) / "samples.png"
    if out.suffix == ".gif":
        return _gif(run_dir, out, options)
    agent = Agent.load(run_dir)
    data = rollouts(agent, episodes, options.seed, options.epsilon, not options.stochastic, options.epsilon_max)
    npz = out if out.suffix == ".npz" else out.with_name("trajectories.npz")
    np.savez_compressed(npz, **data, env=np.array(agent.env_id))
    if out.suffix == ".npz":
        return out
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(np.arange(episodes), data["returns"], color="tab:blue")
    m, h = mean_ci95(data["returns"])
    ax.axhline(float(m), color="k", lw=1, label=f"mean {float(m):.1f} +/- {float(h):.1f} (95%)")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    eps = f"{options.epsilon}" if options.epsilon_max is None else f"{options.epsilon}-{options.epsilon_max}"
    ax.set_title(f"{agent.name} on {agent.env_id} (epsilon {eps})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _gif(run_dir: Path, out: Path, options: RLSampleOptions) -> Path:
    if importlib.util.find_spec("pygame") is None:
        raise UserError("--out *.gif renders the env, which needs pygame: pip install 'mlcanon[render]' "
                        "(or write trajectories with --out FILE.npz)")
    from PIL import Image
    agent = Agent.load(run_dir)
    env = make_env(agent.env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=options.seed)
    frames = [env.render()]
    done = False
    while not done and len(frames) < 2000:
        obs, _, te, tr, _ = env.step(agent.act(_encode(env.observation_space, obs), not options.stochastic).tolist())
        frames.append(env.render())
        done = te or tr
    env.close()
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(out, save_all=True, append_images=imgs[1:], duration=20, loop=0)
    return out
