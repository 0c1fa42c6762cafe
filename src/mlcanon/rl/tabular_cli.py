"""CLI entries of every tabular algorithm: dynamic programming, learning from interaction, bandits.

Names: ``value-iteration``, ``policy-iteration``, ``mc``, ``td0``, ``sarsa``, ``expected-sarsa``,
``q-learning``, ``nstep-sarsa`` and ``bandit`` (``--strategy epsilon-greedy|ucb|thompson|gradient``).
Each has a config dataclass and a ``train(config, run=None) -> dict``; ``evaluate(run_dir, options)`` and
``sample(run_dir, n, out, options)`` are the ``mlcanon eval`` / ``mlcanon sample`` hooks. The algorithms
live in :mod:`mlcanon.rl.dp`, :mod:`mlcanon.rl.tabular_learning` and :mod:`mlcanon.rl.bandits`.

Flags: ``--episodes`` is the learners' budget, ``--max-episode-steps`` an episode's time limit, and the
bandits' budget in pulls is ``--total-steps``. ``--num-seeds N`` runs N independent seeds as one array:
seed i's tables and curves are bitwise those of ``--seed seed+i --num-seeds 1``.

Run folder extras: ``curves_band.png`` (episode return, mean and 95% band over seeds), ``epsilon.png``,
``values.png``, ``policy.png`` and ``result.json`` (final greedy return, DP optimum, gap). Resuming
(``Run.reopen``) restores the Q-tables, every seed's position in its random stream and every episode
counter: the result equals an uninterrupted run for envs with a model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np

from mlcanon.config import CommonConfig, option, validate
from mlcanon.errors import UserError
from mlcanon.metrics.rl import mean_ci95
from mlcanon.registry import EvalOptions, SampleOptions, algorithm_of_run, register
from mlcanon.rl import bandits as bd
from mlcanon.rl import dp, plots
from mlcanon.rl import exploration as ex
from mlcanon.rl import tabular_learning as tl
from mlcanon.rl.envs import make, mdp_of
from mlcanon.runs import Run, load_checkpoint

ENV_HELP = "environment id: mlcanon/GridWorld-v0, FrozenLake-v1, CliffWalking-v1, ... (Discrete spaces)"


# ------------------------------------------------------------------------------------------ configs
@dataclasses.dataclass
class DPConfig(CommonConfig):
    """Dynamic programming on an env's tabular model."""
    uses_torch: ClassVar[bool] = False   # numpy only: torch flags are rejected, not ignored

    env: str = option("mlcanon/GridWorld-v0", ENV_HELP)
    gamma: float | None = option(None, "discount (None: the env's own)", min=0.0, max=1.0)
    tol: float = option(1e-10, "stop when the largest value change is below this", min=0.0)
    max_episode_steps: int = option(100, "time limit of the evaluation episodes", min=1)


@dataclasses.dataclass
class ValueIterationConfig(DPConfig):
    """Value iteration (S&B sec. 4.4)."""

    tol: float = option(1e-10, "gamma < 1: stop once the MacQueen-Porteus bounds certify max|V - V*| <= tol (V "
                               "is their midpoint); gamma = 1: once a sweep changes no value by tol or more",
                        min=0.0)


@dataclasses.dataclass
class PolicyIterationConfig(DPConfig):
    """Policy iteration (S&B sec. 4.3)."""


@dataclasses.dataclass
class _TabularConfig(CommonConfig):
    """Fields shared by the tabular learners."""
    uses_torch: ClassVar[bool] = False   # numpy only: torch flags are rejected, not ignored

    env: str = option("mlcanon/GridWorld-v0", ENV_HELP)
    episodes: int = option(500, "episodes per seed", min=1)
    num_seeds: int = option(100, "independent seeds learned together (one array); seed i is --seed + i", min=1)
    alpha: float = option(0.1, "step size alpha", min=0.0, max=1.0)
    gamma: float | None = option(None, "discount (None: the env's own; 0.99 for envs without a model)",
                                 min=0.0, max=1.0)
    max_episode_steps: int = option(100, "episode time limit (truncation: the target bootstraps)", min=1)


@dataclasses.dataclass
class _ControlConfig(_TabularConfig):
    """Tabular control with epsilon-greedy behaviour."""

    epsilon_schedule: str = option("linear", "epsilon over episodes", choices=("constant", "linear", "exp"))
    epsilon_max: float = option(1.0, "epsilon at episode 0 (the constant one for 'constant')", min=0.0, max=1.0)
    epsilon_min: float = option(0.05, "floor of the decaying schedules", min=0.0, max=1.0)
    epsilon_decay: float | None = option(None, "linear: episodes from max to min; exp: factor per episode "
                                               "(None: reach the floor at half of --episodes)", min=0.0)

    def check(self):
        """Cross-field checks."""
        if self.epsilon_min > self.epsilon_max:
            raise UserError(f"--epsilon-min ({self.epsilon_min}) must be <= --epsilon-max ({self.epsilon_max})")

    @property
    def schedule(self):
        """The epsilon schedule over episodes."""
        return ex.make_schedule(self.epsilon_schedule, self.epsilon_max, self.epsilon_min, self.epsilon_decay,
                                horizon=self.episodes)


@dataclasses.dataclass
class QLearningConfig(_ControlConfig):
    """Q-learning (S&B sec. 6.5)."""


@dataclasses.dataclass
class SarsaConfig(_ControlConfig):
    """SARSA (S&B sec. 6.4)."""


@dataclasses.dataclass
class ExpectedSarsaConfig(_ControlConfig):
    """Expected SARSA (S&B sec. 6.6)."""


@dataclasses.dataclass
class NStepSarsaConfig(_ControlConfig):
    """n-step SARSA (S&B sec. 7.2)."""

    n: int = option(3, "steps before bootstrapping", min=1)


@dataclasses.dataclass
class MCConfig(_ControlConfig):
    """On-policy Monte Carlo control (S&B sec. 5.3-5.4)."""

    alpha: float | None = option(None, "constant step size (None: sample averages 1/N(s,a))", min=0.0, max=1.0)
    first_visit: bool = option(True, "first-visit (true) or every-visit (false) returns")
    exploring_starts: bool = option(False, "exploring starts with a greedy policy instead of epsilon-soft")


@dataclasses.dataclass
class TD0Config(_TabularConfig):
    """TD(0) prediction of a fixed policy's values (S&B sec. 6.1)."""

    alpha: float = option(0.05, "step size alpha", min=0.0, max=1.0)
    policy: str = option("random", "the policy evaluated: uniform random or the DP-optimal one",
                         choices=("random", "optimal"))


@dataclasses.dataclass
class BanditConfig(CommonConfig):
    """Multi-armed bandits on a random testbed (S&B ch. 2)."""
    uses_torch: ClassVar[bool] = False   # numpy only: torch flags are rejected, not ignored

    strategy: str = option("ucb", "action selection", choices=bd.STRATEGIES)
    arms: int = option(10, "number of arms K", min=1)
    testbed: str = option("gaussian", "arm means ~ N(0,1) with N(mu,1) rewards, or Bernoulli arms mu ~ U(0,1)",
                          choices=("gaussian", "bernoulli"))
    total_steps: int = option(1000, "pulls per run (the training budget in env steps)", min=1)
    num_seeds: int = option(200, "independent runs (run i: its own random problem and pulls from seed + i)", min=1)
    epsilon: float = option(0.1, "epsilon-greedy: exploration probability", min=0.0, max=1.0)
    c: float = option(2.0, "ucb: exploration weight (UCB1: sqrt(2))", min=0.0)
    alpha: float = option(0.1, "gradient: preference step size", min=0.0)
    baseline: bool = option(True, "gradient: subtract the average reward")


# ------------------------------------------------------------------------------------------ helpers
def _mdp(env: str, gamma: float | None):
    obj = make(env)                                                 # unknown ids: a UserError naming them
    try:
        mdp = mdp_of(obj)
    except UserError:
        return None
    return mdp if gamma is None else mdp.with_gamma(gamma)


def _shape(env: str, S: int):
    """Grid shape for plots: the env's ``shape`` / FrozenLake's ``desc``, else one row of S cells."""
    u = make(env).unwrapped
    shape = getattr(u, "shape", None)
    if shape is None and getattr(u, "desc", None) is not None:
        shape = tuple(np.asarray(u.desc).shape)
    if shape is None or int(np.prod(shape)) != S:
        shape = (1, S)
    return tuple(int(x) for x in shape)


def _optimum(mdp):
    """(V*, pi*) by value iteration, or (None, None) when it does not converge."""
    if mdp is None:
        return None, None
    try:
        return dp.value_iteration(mdp, tol=1e-10)
    except UserError:
        return None, None


def _mean_ci95(x) -> tuple[float, float | None]:
    """(mean, half-width of the 95% Student-t interval) as JSON scalars; None when there is one value only."""
    mean, half = mean_ci95(np.asarray(x, dtype=np.float64).ravel())
    return float(mean), (None if np.isnan(half) else float(half))


def _every(n: int, total: int, parts: int) -> int:
    return n if n > 0 else max(1, total // parts)


# ------------------------------------------------------------------------------------------ learners
def _make_learner(method: str, config) -> tl.Learner:
    kw = {"episodes": config.episodes, "num_seeds": config.num_seeds, "alpha": config.alpha, "gamma": config.gamma,
              "max_episode_steps": config.max_episode_steps, "seed": config.seed}
    if method == "td0":
        policy = None
        if config.policy == "optimal":
            _, pi = _optimum(_mdp(config.env, config.gamma))
            if pi is None:
                raise UserError(f"--policy optimal needs an env with a model that DP can solve; {config.env} "
                                "has none. Use --policy random")
            policy = pi
        return tl.Learner("td0", config.env if _mdp(config.env, None) is None else _mdp(config.env, None),
                          policy=policy, **kw)
    kw["schedule"] = config.schedule
    if method == "nstep-sarsa":
        kw["n"] = config.n
    if method == "mc":
        kw.update(first_visit=config.first_visit, exploring_starts=config.exploring_starts)
    mdp = _mdp(config.env, None)
    return tl.Learner(method, mdp if mdp is not None else config.env, **kw)


def _train_learner(method: str, config, run=None) -> dict:
    validate(config)
    learner = _make_learner(method, config)
    mdp = learner.sim.mdp.with_gamma(learner.gamma) if learner.sim.mdp is not None else None
    prediction = learner.prediction
    V_star, _pi_star = _optimum(mdp)
    V_target = None
    if prediction and mdp is not None:
            V_target = dp.policy_evaluation(mdp, learner.policy)          # V^pi, the prediction target
    if run is None:
        run = Run.create(method, config)
        run.log_hparams(config)
    else:
        loaded = run.load()
        if loaded is not None:
            learner.load_state_dict(loaded[0]["learner"])
    E = config.episodes
    log_every = _every(config.log_every, E, 200)
    ckpt_every = _every(config.checkpoint_every, E, 10)
    start_ep = learner.progress
    logged = [start_ep]

    def greedy_value():
        if mdp is None:
            return None
        V = tl.policy_value(mdp, dp.greedy(learner.Q), config.max_episode_steps)   # [N, S]
        return V @ mdp.start                                                       # per seed

    def metrics_at(e: int) -> dict:
        m = {"rollout/episode_return": float(learner.returns[:, e - 1].mean()),
             "rollout/episode_length": float(learner.lengths[:, e - 1].mean()),
             "train/epsilon": float(learner.eps_table[e - 1])}
        return m

    bar = run.progress(E, initial=start_ep, unit="ep", desc=method, enabled=config.progress)

    def callback(p: int) -> None:
        for e in range(logged[0] + 1, p + 1):
            if e % log_every == 0 or e == E:
                m = metrics_at(e)
                if e == p:
                    if V_target is not None:
                        m["eval/value_error"] = float(np.abs(learner.V - V_target).max(1).mean())
                    elif not prediction and V_star is not None:
                        m["eval/gap_to_optimal"] = float(V_star @ mdp.start - greedy_value().mean())
                run.log(e, m)
        logged[0] = p
        bar.update(p - bar.n)
        bar.set_postfix(ret=f"{learner.returns[:, p - 1].mean():.3f}")
        if p % ckpt_every == 0 or p == E:
            run.save({"learner": learner.state_dict()}, p)

    try:
        learner.run(callback=callback)
    finally:
        bar.close()
    res = learner.result()
    out: dict = {"run_dir": str(run.dir), "episodes": E, "num_seeds": config.num_seeds, "env": config.env,
                 "gamma": learner.gamma, "steps": res.steps,
                 "train_return_last10pct": float(res.returns[:, -max(1, E // 10):].mean())}
    shape = _shape(config.env, learner.S)
    if prediction:
        V_mean = res.V.mean(0)
        if V_target is not None:
            out["value_error_max"] = float(np.abs(res.V - V_target).max(1).mean())
            out["value_error_of_seed_mean"] = float(np.abs(V_mean - V_target).max())
        if run.enabled:
            plots.plot_values(V_mean, shape, run.dir / "values.png", title=f"{method}: V (mean over seeds)")
    else:
        Q0 = res.Q[0]
        if mdp is not None:
            g = greedy_value()
            out["greedy_return_mean"], out["greedy_return_ci95"] = _mean_ci95(g)
            if V_star is not None:
                out["dp_optimum"] = float(V_star @ mdp.start)
                out["gap"] = out["dp_optimum"] - out["greedy_return_mean"]
        if run.enabled:
            term = mdp.terminal if mdp is not None else None
            plots.plot_values(Q0.max(1), shape, run.dir / "values.png", title=f"{method}: max_a Q (seed 0)",
                              terminal=term)
            plots.plot_policy(dp.greedy(Q0), shape, run.dir / "policy.png", V=Q0.max(1), terminal=term,
                              title=f"{method}: greedy policy (seed 0)")
            plots.plot_schedule(res.epsilon, run.dir / "epsilon.png")
    if run.enabled:
        plots.plot_curves_band({method: res.returns}, run.dir / "curves_band.png", ylabel="episode return",
                               smooth=max(1, E // 50))
    run.finish(out)
    return {**out, "Q": res.Q, "V": res.V, "result": res}


def _load(run_dir):
    algo, config = algorithm_of_run(run_dir)
    loaded = load_checkpoint(run_dir)
    if loaded is None:
        raise UserError(f"{run_dir} has no checkpoint yet; train (or resume) it first")
    return algo, config, loaded[0]


@dataclasses.dataclass
class TabularEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a tabular control or DP run."""

    episodes: int = option(100, "greedy episodes per policy (per seed's policy for a learner run)", min=1)


def _load_tables(run_dir, config=None, tag: str = "checkpoint") -> dict:
    """``mlcanon.load_run`` hook: the learned tables as numpy arrays (Q [N, S, A] or V [N, S] per seed and
    the greedy policies; DP: V and pi). Tabular runs keep one checkpoint, the last (``tag`` is not used)."""
    algo, _, state = _load(run_dir)
    if "learner" in state:
        d = state["learner"]
        if algo.name == "td0":
            return {"V": np.asarray(d["V"])}
        return {"Q": np.asarray(d["Q"]), "policy": dp.greedy(np.asarray(d["Q"]))}
    if "policy" in state:
        return {"V": np.asarray(state["V"]), "policy": np.asarray(state["policy"])}
    return {"cumulative_regret": np.asarray(state["cumulative_regret"])}


def _greedy_returns(env, policy: np.ndarray, episodes: int, max_episode_steps: int, seed: int) -> np.ndarray:
    """Returns of ``episodes`` greedy episodes per policy row ([M, S] int) -> [M * episodes]."""
    mdp = _mdp(env, None)
    pol = np.repeat(np.atleast_2d(policy), episodes, axis=0)
    M = pol.shape[0]
    sim = tl.MDPSim(mdp, M) if mdp is not None else tl.GymSim(env, M, seed)
    rng = np.random.default_rng(seed + 1)
    s = sim.reset(np.arange(M), rng.random(M))
    G = np.zeros(M)
    live = np.ones(M, dtype=bool)
    for _ in range(max_episode_steps):
        s2, r, term, trunc = sim.step(s, pol[np.arange(M), s], rng.random(M))
        G += r * live
        live &= ~term & (~trunc if trunc is not None else True)
        s = s2
        if not live.any():
            break
    return G


def _evaluate_learner(run_dir, options: TabularEvalOptions | None = None) -> dict:
    options = options or TabularEvalOptions()
    algo, config, state = _load(run_dir)
    if algo.name == "td0":
        return _evaluate_prediction(config, np.asarray(state["learner"]["V"]))
    Q = state["learner"]["Q"]
    mdp = _mdp(config.env, None)
    pol = dp.greedy(Q if mdp is not None else Q[:1])                 # model-free: seed 0 only (real envs)
    G = _greedy_returns(config.env, pol, options.episodes, config.max_episode_steps, options.seed)
    mean, half = _mean_ci95(G)
    out = {"eval/return_mean": mean, "eval/return_ci95": half, "episodes": len(G)}
    gamma = config.gamma if config.gamma is not None else (mdp.gamma if mdp is not None else None)
    if mdp is not None and gamma == 1.0:
        V_star, _ = _optimum(mdp)
        if V_star is not None:
            out["dp_optimum"] = float(V_star @ mdp.start)
            out["eval/gap_to_optimal"] = out["dp_optimum"] - mean
    return out


def _evaluate_prediction(config, V: np.ndarray) -> dict:
    """Prediction runs: the error of each seed's V against V^pi from the model (policy evaluation, S&B 4.1)."""
    mdp = _mdp(config.env, config.gamma)
    if mdp is None:
        raise UserError(f"{config.env} has no model, so there is no exact V^pi to score td0 against; "
                        "see the run's curves and result.json")
    S, A = mdp.R.shape
    policy = np.full((S, A), 1.0 / A) if config.policy == "random" else _optimum(mdp)[1]
    V_pi = dp.policy_evaluation(mdp, policy)
    err = np.abs(V - V_pi).max(1)                                   # max_s |V(s) - V^pi(s)| per seed
    mean, half = _mean_ci95(err)
    return {"eval/value_error": mean, "eval/value_error_ci95": half,
            "eval/value_error_of_seed_mean": float(np.abs(V.mean(0) - V_pi).max()), "seeds": len(err)}


def _sample_tabular(run_dir, n: int = 64, out=None, options: SampleOptions | None = None) -> Path:
    options = options or SampleOptions()
    algo, config, state = _load(run_dir)
    out = Path(out) if out else Path(run_dir) / "samples.png"
    mdp = _mdp(config.env, None)
    if "learner" in state:
        Q = state["learner"]["Q"][0]
        if algo.name == "td0":
            V = state["learner"]["V"].mean(0)
            S = len(V)
            plots.plot_values(V, _shape(config.env, S), out, title=f"{algo.name}: V (mean over seeds)")
            return out
        pi, V = dp.greedy(Q), Q.max(1)
    else:
        pi, V = np.asarray(state["policy"]), np.asarray(state["V"])
    shape = _shape(config.env, len(V))
    plots.plot_policy(pi, shape, out, V=V, terminal=mdp.terminal if mdp is not None else None,
                      title=f"{algo.name}: greedy policy over values")
    # a text rollout of the greedy policy (up to n steps)
    try:
        env = make(config.env, render_mode="ansi")
    except TypeError:
        env = make(config.env)
    s, _ = env.reset(seed=options.seed)
    lines = [f"greedy rollout of {algo.name} on {config.env} (up to {n} steps)"]
    G = 0.0
    for t in range(n):
        frame = env.render() if getattr(env, "render_mode", None) == "ansi" else None
        if frame:
            lines.append(str(frame).rstrip())
        a = int(pi[s])
        s2, r, term, trunc, _ = env.step(a)
        G += float(r)
        lines.append(f"t={t} s={s} a={a} r={r:g} s'={s2}")
        s = s2
        if term or trunc:
            break
    lines.append(f"return {G:g}")
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return out


def _learner_entry(name: str, cfg: type, description: str):
    @register(name, family="rl-tabular", config=cfg, description=description, evaluate=_evaluate_learner,
              sample=_sample_tabular, load=_load_tables, eval_options=TabularEvalOptions,
              tiny={"episodes": 20, "num_seeds": 3, "log_every": 5, "checkpoint_every": 5})
    def train(config, run=None):
        """Train, log, checkpoint and plot (resumes from ``run``'s checkpoint when it has one)."""
        return _train_learner(name, config, run)
    train.__name__ = f"train_{name.replace('-', '_')}"
    return train


train_q_learning = _learner_entry("q-learning", QLearningConfig,
                                  "Q-learning, off-policy TD control (S&B 6.5), N seeds vectorized")
train_sarsa = _learner_entry("sarsa", SarsaConfig, "SARSA, on-policy TD control (S&B 6.4)")
train_expected_sarsa = _learner_entry("expected-sarsa", ExpectedSarsaConfig, "expected SARSA (S&B 6.6)")
train_nstep_sarsa = _learner_entry("nstep-sarsa", NStepSarsaConfig, "n-step SARSA (S&B 7.2)")
train_mc = _learner_entry("mc", MCConfig, "Monte Carlo control, epsilon-soft or exploring starts (S&B 5.3-5.4)")
train_td0 = _learner_entry("td0", TD0Config, "TD(0) prediction of a policy's values (S&B 6.1)")


# ------------------------------------------------------------------------------------------ DP
def _train_dp(name: str, config, run=None) -> dict:
    validate(config)
    mdp = _mdp(config.env, config.gamma)
    if mdp is None:
        raise UserError(f"{name} needs an env with a tabular model; {config.env} has none. Use one of ours "
                        "(mlcanon/GridWorld-v0, ...) or FrozenLake-v1, CliffWalking-v1, Taxi-v4")
    if run is None:
        run = Run.create(name, config)
        run.log_hparams(config)
    if name == "value-iteration":
        tr = dp.value_iteration(mdp, tol=config.tol, return_trace=True)
        V, pi, iters = tr.V, tr.policy, tr.n_sweeps
        for i, d in enumerate(tr.deltas, 1):
            run.log(i, {"train/delta": float(d)})
    else:
        V, pi, iters = dp.policy_iteration(mdp, tol=config.tol)
        run.log(iters, {"train/iterations": float(iters)})
    run.save({"V": V, "policy": pi}, iters)
    shape = _shape(config.env, mdp.num_states)
    out = {"run_dir": str(run.dir), "iterations": int(iters), "dp_optimum": float(V @ mdp.start),
           "env": config.env, "gamma": mdp.gamma}
    if run.enabled:
        plots.plot_values(V, shape, run.dir / "values.png", title=f"{name}: V*", terminal=mdp.terminal)
        plots.plot_policy(pi, shape, run.dir / "policy.png", V=V, terminal=mdp.terminal, title=f"{name}: pi*")
    run.finish(out)
    return {**out, "V": V, "policy": pi}


def _evaluate_dp(run_dir, options: TabularEvalOptions | None = None) -> dict:
    options = options or TabularEvalOptions()
    _, config, state = _load(run_dir)
    G = _greedy_returns(config.env, np.asarray(state["policy"])[None], options.episodes,
                        config.max_episode_steps, options.seed)
    mean, half = _mean_ci95(G)
    return {"eval/return_mean": mean, "eval/return_ci95": half, "episodes": len(G)}


@register("value-iteration", family="rl-tabular", config=ValueIterationConfig,
          description="value iteration on an env's MDP (S&B 4.4)", evaluate=_evaluate_dp, sample=_sample_tabular,
          load=_load_tables, eval_options=TabularEvalOptions, one_shot=True)
def train_value_iteration(config, run=None):
    """V* and pi* by value iteration; writes values.png, policy.png, result.json."""
    return _train_dp("value-iteration", config, run)


@register("policy-iteration", family="rl-tabular", config=PolicyIterationConfig,
          description="policy iteration on an env's MDP (S&B 4.3)", evaluate=_evaluate_dp, sample=_sample_tabular,
          load=_load_tables, eval_options=TabularEvalOptions, one_shot=True)
def train_policy_iteration(config, run=None):
    """V* and pi* by policy iteration; writes values.png, policy.png, result.json."""
    return _train_dp("policy-iteration", config, run)


# ------------------------------------------------------------------------------------------ bandits
def _evaluate_bandit(run_dir, options: EvalOptions | None = None) -> dict:
    """Regret of the finished runs, with its 95% interval over runs (nothing random: ``--seed`` is not used)."""
    _, _config, state = _load(run_dir)
    cr = np.asarray(state["cumulative_regret"])                       # [R] final cumulative regret per run
    mean, half = _mean_ci95(cr)
    return {"eval/cumulative_regret": mean, "eval/cumulative_regret_ci95": half,
            "eval/optimal_action_last10pct": float(state["optimal_last10pct"]), "runs": len(cr)}


def _sample_bandit(run_dir, n: int = 64, out=None, options: SampleOptions | None = None) -> Path:
    """The cumulative-regret curves (mean and 95% band over runs); ``n`` and ``--seed`` are not used."""
    _, config, state = _load(run_dir)
    out = Path(out) if out else Path(run_dir) / "samples.png"
    plots.plot_curves_band({config.strategy: np.asarray(state["regret_curves"])}, out, xlabel="step",
                           ylabel="cumulative regret")
    return out


@register("bandit", family="rl-tabular", config=BanditConfig,
          description="k-armed bandits: epsilon-greedy, UCB, Thompson, gradient (S&B ch. 2); regret curves",
          evaluate=_evaluate_bandit, sample=_sample_bandit, load=_load_tables, one_shot=True,
          tiny={"total_steps": 60, "num_seeds": 5})
def train_bandit(config, run=None):
    """Play the strategy on ``num_seeds`` random problems; log regret; write regret.png and result.json."""
    validate(config)
    if run is None:
        run = Run.create("bandit", config)
        run.log_hparams(config)
    problem = bd.testbed(config.num_seeds, config.arms, config.testbed, seed=config.seed)
    res = bd.run_bandit(problem, config.strategy, config.total_steps, seed=config.seed, epsilon=config.epsilon,
                        c=config.c, alpha=config.alpha, baseline=config.baseline)
    cr = res.cumulative_regret
    k = _every(config.log_every, config.total_steps, 200)
    for t in range(k, config.total_steps + 1, k):
        run.log(t, {"train/regret": float(res.regret[:, t - 1].mean()),
                    "train/cumulative_regret": float(cr[:, t - 1].mean()),
                    "rollout/reward": float(res.rewards[:, t - 1].mean()),
                    "train/optimal_action": float(res.optimal[:, t - 1].mean())})
    last = res.optimal[:, -max(1, config.total_steps // 10):].mean()
    stride = max(1, config.total_steps // 500)
    run.save({"cumulative_regret": cr[:, -1].copy(), "regret_curves": cr[:, ::stride].copy(),
              "optimal_last10pct": float(last)}, config.total_steps)
    mean, half = _mean_ci95(cr[:, -1])
    out = {"run_dir": str(run.dir), "strategy": config.strategy, "cumulative_regret": mean,
           "cumulative_regret_ci95": half, "optimal_action_last10pct": float(last)}
    if run.enabled:
        plots.plot_curves_band({config.strategy: cr[:, ::stride]}, run.dir / "regret.png", xlabel="step",
                               ylabel="cumulative regret", x=np.arange(config.total_steps)[::stride] + 1)
    run.finish(out)
    return {**out, "result": res}
