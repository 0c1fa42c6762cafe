"""Tabular learning from interaction (S&B ch. 5-7): Monte Carlo, TD(0), SARSA, expected SARSA, Q-learning, n-step.

The algorithms (the CLI entries that train them are in :mod:`mlcanon.rl.tabular_cli`).

Vectorized over seeds: ``N`` independent learners are ONE array (Q-tables ``[N, S, A]``, states ``[N]``), and
environments with a model (an :class:`~mlcanon.rl.mdp.MDP`) are simulated for all seeds at once from its tables:
``s' ~ P[s, a]`` by comparing one uniform per seed with the cumulative sums, reward ``R[s, a]`` (the expected
reward). Episodes end at terminal states (no bootstrap) or at the ``max_episode_steps`` time limit
(truncation: the target bootstraps from the last state, it is NOT treated as terminal).

N seeds are N independent runs: seed i = ``seed + i`` draws every uniform from its own stream
(:class:`~mlcanon.rl.streams.SeedStreams`) in an order fixed by its own trajectory, so row i of an N-seed run is
bitwise the run with ``seed + i`` and ``num_seeds=1``. One-step TD methods read the same number of uniforms
per step for every seed (``W`` columns: action, transition, reset), which keeps the streams aligned and the
read one slice.

Seeds run asynchronously: each seed starts its next episode as soon as the last one ends, and stops once it
has done ``episodes`` episodes (Monte Carlo runs the seeds' episodes in lock-step, since it learns only at
episode ends; a seed that waits reads nothing). Gymnasium environments without a model (Discrete observation
and action spaces) are stepped for real, one env per seed, seeded from the seed's own ``ENV`` stream.

Entry points: :func:`q_learning`, :func:`sarsa`, :func:`expected_sarsa`, :func:`nstep_sarsa`,
:func:`td0_prediction`, :func:`nstep_td_prediction`, :func:`mc_prediction`, :func:`mc_control`; the
:class:`Learner` behind them can be advanced in chunks and checkpointed (``state_dict``/``load_state_dict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from mlcanon.errors import UserError
from mlcanon.rl import envs as envs_mod
from mlcanon.rl import exploration as ex
from mlcanon.rl.mdp import MDP
from mlcanon.rl.streams import ENV, SeedStreams, int_seed

CONTROL = ("q-learning", "sarsa", "expected-sarsa", "nstep-sarsa", "mc")
PREDICTION = ("td0", "nstep-td", "mc-prediction")
METHODS = CONTROL + PREDICTION


# ------------------------------------------------------------------------------------------ simulators
class MDPSim:
    """N copies of an MDP stepped at once from its tables (one uniform per seed and step)."""

    def __init__(self, mdp: MDP, num_seeds: int):
        self.mdp = mdp
        self.N = num_seeds
        self.S, self.A = mdp.R.shape
        self.R = np.asarray(mdp.R, dtype=np.float64)
        self.terminal = np.asarray(mdp.terminal, dtype=bool)
        nxt, cum = mdp.sampling_tables()                      # successors [S, A, K] and their cumsums
        K = nxt.shape[-1]
        self.K = K
        self.nxt, self.cum = nxt.reshape(-1, K), cum.reshape(-1, K)   # rows s * A + a
        self.next = self.nxt[:, 0] if K == 1 else None        # deterministic MDP: s' = next[s * A + a]
        self.R_sa = self.R.reshape(-1)
        start = np.cumsum(mdp.start)
        start[-1] = 1.0                                       # exact top: u in [0, 1) always lands in a state
        self.start_cum = start
        self.has_model = True

    def reset(self, idx: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Start states for seeds ``idx``: s0 ~ start distribution, by inverse CDF of ``u`` [len(idx)]."""
        return np.searchsorted(self.start_cum, u, side="right")   # = #{s: u >= F(s)}, F sorted

    def step(self, s: np.ndarray, a: np.ndarray, u: np.ndarray, idx: np.ndarray | None = None):
        """(s', r, terminated, env_truncated=None) per seed: s' ~ P[s, a] by inverse CDF of u, r = R[s, a].

        ``idx``: the seeds that the rows belong to (None: all); the model is the same for every seed."""
        sa = s * self.A + a
        if self.next is not None:
            s2 = self.next[sa]
        else:
            c = self.cum[sa]                                  # [N, K] cumulative probabilities
            k = np.zeros(len(sa), dtype=np.int64)
            for j in range(self.K - 1):                       # k = #{j < K-1: u >= F_j}: the first k with u < F_k
                k += u >= c[:, j]
            s2 = self.nxt[sa, k]
        return s2, self.R_sa[sa], self.terminal[s2], None


class GymSim:
    """N real gymnasium envs (Discrete spaces, no model), stepped one at a time."""

    def __init__(self, env_id, num_seeds: int, seed: int):
        self.envs = [gym.make(env_id) if isinstance(env_id, str) else env_id for _ in range(num_seeds)]
        if not isinstance(env_id, str) and num_seeds > 1:
            raise UserError("a gymnasium Env object supports --num-seeds 1 only; pass its id to run several")
        e = self.envs[0]
        for space, what in ((e.observation_space, "observation"), (e.action_space, "action")):
            if not isinstance(space, gym.spaces.Discrete) or int(space.start) != 0:
                raise UserError(f"{env_id}: tabular methods need a Discrete {what} space starting at 0, got "
                                f"{space}; use a deep RL agent (e.g. dqn) for this env")
        self.N = num_seeds
        self.S, self.A = int(e.observation_space.n), int(e.action_space.n)
        self.seed = seed
        self.started = np.zeros(num_seeds, dtype=bool)
        self.mdp = None
        self.has_model = False

    def reset(self, idx, u):
        """Reset envs ``idx`` (env n seeded from the ENV stream of seed + n on its first reset); ``u`` is unused."""
        out = np.empty(len(idx), dtype=np.int64)
        for k, n in enumerate(idx):
            seed = None if self.started[n] else int_seed(int(self.seed) + int(n), ENV)
            self.started[n] = True
            out[k] = self.envs[n].reset(seed=seed)[0]
        return out

    def step(self, s, a, u, idx=None):
        """Step envs ``idx`` (None: all) once with actions ``a``; ``u`` is unused (the envs have their own
        seeded generators)."""
        idx = range(self.N) if idx is None else idx
        M = len(a)
        s2 = np.empty(M, dtype=np.int64)
        r = np.empty(M)
        term = np.empty(M, dtype=bool)
        trunc = np.empty(M, dtype=bool)
        for k, n in enumerate(idx):
            o, rew, te, tr, _ = self.envs[n].step(int(a[k]))
            s2[k], r[k], term[k], trunc[k] = o, rew, te, tr
        return s2, r, term, trunc


def resolve_env(env) -> tuple[MDP | None, object]:
    """(MDP or None, env spec): an MDP as is; an id / Env through mlcanon.rl.envs.mdp_of, None when model-free."""
    if isinstance(env, MDP):
        return env, env
    obj = envs_mod.make(env) if isinstance(env, str) else env      # unknown ids: a UserError naming them
    try:
        return envs_mod.mdp_of(obj), env
    except UserError:
        return None, env


def make_sim(env, num_seeds: int, seed: int):
    """A simulator for ``env``: from its MDP tables when it has one, else by stepping real envs."""
    mdp, spec = resolve_env(env)
    if mdp is not None:
        return MDPSim(mdp, num_seeds)
    return GymSim(spec, num_seeds, seed)


# ------------------------------------------------------------------------------------------ evaluation
def policy_value(mdp: MDP, policy: np.ndarray, horizon: int, gamma: float | None = None) -> np.ndarray:
    """Expected return of deterministic policies ``policy`` [N, S] within ``horizon`` steps -> V [N, S].

    V_{k+1}(s) = R(s, pi(s)) + gamma * sum_s' P(s'|s, pi(s)) V_k(s'), V_0 = 0, terminal states 0 (finite-horizon
    Bellman expectation backup, S&B eq. 4.5); finite even for improper policies at gamma = 1. Uses the MDP's
    successor tables, so it costs O(N S K) per backup (K successors per state-action).
    """
    gamma = mdp.gamma if gamma is None else gamma
    policy = np.atleast_2d(np.asarray(policy, dtype=np.int64))
    N, S = policy.shape
    nxt, cum = mdp.sampling_tables()
    prob = np.diff(cum, axis=-1, prepend=0.0)                # P of each successor slot [S, A, K]
    alive = ~np.asarray(mdp.terminal, dtype=bool)
    si = np.arange(S)[None, :]
    Nxt, Pr = nxt[si, policy], prob[si, policy]               # [N, S, K] successors of (s, pi(s))
    Rpi = mdp.R[si, policy] * alive                           # R(s, pi(s)), 0 at terminal states
    rows = np.arange(N)[:, None, None]
    V = np.zeros((N, S))
    for _ in range(int(horizon)):
        V_new = Rpi + gamma * alive * (Pr * V[rows, Nxt]).sum(-1)   # S&B eq. 4.5, one backup
        if np.array_equal(V_new, V):
            break
        V = V_new
    return V


# ------------------------------------------------------------------------------------------ results
@dataclasses.dataclass
class LearnResult:
    """What a learning run returns: tables, per-episode curves and the epsilon used per episode."""

    Q: np.ndarray | None          # [N, S, A] (control)
    V: np.ndarray | None          # [N, S]    (prediction)
    returns: np.ndarray           # [N, episodes] undiscounted episode returns
    lengths: np.ndarray           # [N, episodes] episode lengths (steps)
    epsilon: np.ndarray           # [episodes] epsilon used in each episode (0 for prediction)
    steps: int                    # env steps taken, all seeds together


# ------------------------------------------------------------------------------------------ learner
class Learner:
    """N seeds of one tabular method, advanced in chunks of whole-run progress and checkpointable.

    Progress is counted in episodes completed by *every* seed (``min(episode counters)``). Seed i is
    ``seed + i``: its uniforms come from its own stream, so its row equals the single run with that seed.
    """

    def __init__(self, method: str, env, *, episodes: int, num_seeds: int = 1, alpha: float | None = 0.1,
                 gamma: float | None = None, schedule=None, max_episode_steps: int = 200, n: int = 1,
                 first_visit: bool = True, exploring_starts: bool = False, policy: np.ndarray | None = None,
                 seed: int = 0, q_init: float = 0.0):
        if method not in METHODS:
            raise UserError(f"unknown tabular method {method!r}; use one of {', '.join(METHODS)}")
        if episodes < 1 or num_seeds < 1 or max_episode_steps < 1 or n < 1:
            raise UserError("--episodes, --num-seeds, --max-episode-steps and --n must be >= 1")
        if seed < 0:
            raise UserError(f"--seed must be >= 0 (it seeds numpy's SeedSequence), got {seed}")
        if alpha is not None and not 0.0 < alpha <= 1.0:
            raise UserError(f"--alpha must be in (0, 1], got {alpha}")
        if alpha is None and method not in ("mc", "mc-prediction"):
            raise UserError(f"{method} needs a step size: give --alpha (e.g. 0.1)")
        self.method, self.E, self.N = method, int(episodes), int(num_seeds)
        self.alpha, self.max_episode_steps, self.n = alpha, int(max_episode_steps), int(n)
        self.first_visit, self.exploring_starts = first_visit, exploring_starts
        self.seed = int(seed)
        self.sim = make_sim(env, self.N, self.seed)
        S, A = self.sim.S, self.sim.A
        self.S, self.A = S, A
        self.rng = SeedStreams(self.seed + np.arange(self.N))     # seed i reads only its own stream
        # uniforms read per step: action (A + 2, see ex.epsilon_greedy), transition, reset (+ n-step's A_0)
        self.W = 2 * A + 6 if method in ("nstep-sarsa", "nstep-td") else A + 4
        mdp_gamma = self.sim.mdp.gamma if self.sim.mdp is not None else None
        self.gamma = float(gamma if gamma is not None else (mdp_gamma if mdp_gamma is not None else 0.99))
        if not 0.0 <= self.gamma <= 1.0:
            raise UserError(f"--gamma must be in [0, 1], got {self.gamma}")
        if exploring_starts and self.sim.mdp is None:
            raise UserError("exploring starts need an env with a model (any start state); use epsilon-soft MC")
        self.prediction = method in PREDICTION
        if self.prediction:
            if policy is None:
                policy = np.full((S, A), 1.0 / A)            # default: the uniform random policy
            policy = np.asarray(policy, dtype=np.float64)
            if policy.ndim == 1:                              # deterministic int [S] -> one-hot [S, A]
                policy = np.eye(A)[policy.astype(np.int64)]
            if policy.shape != (S, A) or not np.allclose(policy.sum(-1), 1.0):
                raise UserError(f"policy must be [S={S}, A={A}] probabilities (rows summing to 1) or int [S]")
            self.policy = policy
        schedule = schedule if schedule is not None else ex.ConstantSchedule(0.1)
        self.eps_table = np.zeros(self.E) if self.prediction else np.asarray(schedule(np.arange(self.E)), float)
        self._eps_of_ep = np.append(self.eps_table, self.eps_table[-1])   # indexed by ep in [0, E]
        # the learner's state (everything that a checkpoint must hold)
        self.Q = np.full((self.N, S, A), float(q_init))
        self.V = np.zeros((self.N, S))
        self.returns = np.zeros((self.N, self.E))
        self.lengths = np.zeros((self.N, self.E), dtype=np.int64)
        self.ep = np.zeros(self.N, dtype=np.int64)
        self.t = np.zeros(self.N, dtype=np.int64)
        self.G = np.zeros(self.N)
        self.steps = 0
        self.ar = np.arange(self.N)
        self.row0 = self.ar * S                               # row of (seed n, state 0) in Q viewed as [N*S, A]
        self._init_episode_state()

    # -- shared pieces -----------------------------------------------------------------------------
    def _eps(self, ep):
        """Epsilon of each seed's current episode (finished seeds keep the last one)."""
        return self._eps_of_ep[ep]

    def _act(self, s, eps, u, idx=None):
        """Behaviour action for seeds ``idx`` (default all) in states ``s`` from their uniforms ``u`` [., A + 2]:
        epsilon-greedy on Q (control) or a ~ pi(.|s) by inverse CDF (prediction)."""
        if self.prediction:
            return ex.sample_categorical(self.policy[s], u[:, 0])
        rows = (self.row0 if idx is None else self.row0[idx]) + s
        return ex.epsilon_greedy(self.Q.reshape(-1, self.A)[rows], eps, u)

    def _init_episode_state(self):
        N, A = self.N, self.A
        u = self.rng.draw(A + 4)                              # start state, exploring start, first action
        self.s = self.sim.reset(self.ar, u[:, 0])
        if self.method in ("sarsa", "nstep-sarsa", "nstep-td"):
            self.a = self._act(self.s, self._eps(self.ep), u[:, 2:])
        if self.method in ("nstep-sarsa", "nstep-td"):
            L = self.n + 1                                    # circular buffers of the last n+1 steps
            self.bS = np.zeros((N, L), dtype=np.int64)
            self.bA = np.zeros((N, L), dtype=np.int64)
            self.bR = np.zeros((N, L))
            self.bS[:, 0], self.bA[:, 0] = self.s, self.a
            self.T = np.full(N, np.iinfo(np.int64).max)       # episode end time (inf until it ends)
            self.trunc = np.zeros(N, dtype=bool)
        if self.method in ("mc", "mc-prediction"):
            M = self.max_episode_steps
            self.bS = np.zeros((N, M + 1), dtype=np.int64)
            self.bA = np.zeros((N, M + 1), dtype=np.int64)
            self.bR = np.zeros((N, M))
            self.first = np.zeros((N, M), dtype=bool)
            self.seen = np.zeros((N, self.S, self.A), dtype=bool)
            self.done = np.zeros(N, dtype=bool)
            self.trunc = np.zeros(N, dtype=bool)
            self.count = np.zeros((N, self.S, self.A))        # N(s, a) visits for sample averages
            if self.exploring_starts:
                self._exploring_start(self.ar, u[:, 1])

    def _exploring_start(self, idx, u):
        """S&B 5.3 exploring starts: S0 uniform over non-terminal states (and A0 uniform, drawn in _mc_step)."""
        nonterm = np.flatnonzero(~self.sim.terminal)
        self.s[idx] = nonterm[np.minimum((u * len(nonterm)).astype(np.int64), len(nonterm) - 1)]

    def _finish(self, idx):
        """Record the episode of seeds ``idx`` and start their next one."""
        e = self.ep[idx]
        self.returns[idx, e] = self.G[idx]
        self.lengths[idx, e] = self.t[idx]
        self.ep[idx] += 1
        self.G[idx] = 0.0
        self.t[idx] = 0

    # -- one env step of the one-step methods --------------------------------------------------------
    def _td_step(self):
        ar, s, ep, g, m, A = self.ar, self.s, self.ep, self.gamma, self.method, self.A
        live = ep < self.E                                    # seeds still learning
        u = self.rng.draw(self.W)                             # [N, W]: every seed's own next W uniforms
        ua, u_env, u_reset = u[:, :A + 2], u[:, A + 2], u[:, A + 3]
        eps = self._eps(ep)
        a = self.a if m == "sarsa" else self._act(s, eps, ua)
        s2, r, term, etrunc = self.sim.step(s, a, u_env)
        self.steps += int(np.count_nonzero(live))
        self.t += live
        self.G += r * live
        ended = term | (self.t >= self.max_episode_steps)
        if etrunc is not None:
            ended |= etrunc
        ended &= live
        not_term = ~term
        if m == "td0":
            target = r + g * self.V[ar, s2] * not_term       # TD target r + gamma*V(s')      (S&B eq. 6.2)
            self.V[ar, s] += self.alpha * (target - self.V[ar, s]) * live   # V(s) += alpha*(target - V(s))
        else:
            Qr, Qf = self.Q.reshape(-1, A), self.Q.reshape(-1)  # views [N*S, A] and [N*S*A]
            q2 = Qr[self.row0 + s2]                           # [N, A] Q(s', .)
            if m == "q-learning":
                boot = ex.row_max(q2)                         # max_a' Q(s', a')
            elif m == "expected-sarsa":
                boot = ex.row_sum(ex.epsilon_greedy_probs(q2, eps) * q2)  # sum_a' pi(a'|s') Q(s', a')
            else:                                             # sarsa: A' ~ eps-greedy(Q(S', .)), chosen first
                a2 = ex.epsilon_greedy(q2, eps, ua)
                boot = np.where(ended, ex.row_sum(ex.epsilon_greedy_probs(q2, eps) * q2),
                                q2[ar, a2])                   # Q(S', A'); at a time limit its expectation
            target = r + g * boot * not_term                  # terminal: no bootstrap; truncation: bootstrap
            sa = (self.row0 + s) * A + a                      # flat index of (n, s, a)
            # Q-learning: Q(s,a) += alpha*(r + gamma*max_a' Q(s',a') - Q(s,a))          (S&B eq. 6.8)
            # SARSA:      Q(s,a) += alpha*(r + gamma*Q(s',a') - Q(s,a))                 (S&B eq. 6.7)
            # Exp. SARSA: Q(s,a) += alpha*(r + gamma*sum_a' pi(a'|s')Q(s',a') - Q(s,a)) (S&B eq. 6.9)
            Qf[sa] += self.alpha * (target - Qf[sa]) * live
        s_next = s2
        if ended.any():
            idx = np.flatnonzero(ended)
            self._finish(idx)
            s_next = s2.copy()
            s_next[idx] = self.sim.reset(idx, u_reset[idx])
        self.s = s_next
        if m == "sarsa":
            if ended.any():                                   # A_0 of the new episode; the A' drawn from these
                a2 = a2.copy()                                # uniforms above was never used (ended: no Q(S', A'))
                a2[idx] = self._act(s_next[idx], self._eps(self.ep[idx]), ua[idx], idx)
            self.a = a2

    # -- one iteration of n-step TD / n-step SARSA (S&B sec. 7.1-7.2) --------------------------------
    def _nstep_step(self):
        ar, n, g, L, A = self.ar, self.n, self.gamma, self.n + 1, self.A
        live = self.ep < self.E
        t, T = self.t, self.T
        u = self.rng.draw(self.W)                             # transition, A_{t+1}, reset, A_0
        u_env, ua2, u_reset, ua0 = u[:, 0], u[:, 1:A + 3], u[:, A + 3], u[:, A + 4:]
        stepping = live & (t < T)                             # "if t < T: take A_t, observe R_{t+1}, S_{t+1}"
        cur = t % L
        s, a = self.bS[ar, cur], self.bA[ar, cur]
        s2, r, term, etrunc = self.sim.step(s, a, u_env)
        a2 = self._act(s2, self._eps(self.ep), ua2)           # A_{t+1} ~ pi(.|S_{t+1}) (used unless S_{t+1} terminal)
        nxt = (t + 1) % L
        stepping_idx = np.flatnonzero(stepping)
        self.bR[stepping_idx, nxt[stepping_idx]] = r[stepping_idx]
        self.bS[stepping_idx, nxt[stepping_idx]] = s2[stepping_idx]
        self.bA[stepping_idx, nxt[stepping_idx]] = a2[stepping_idx]
        self.G += r * stepping
        self.steps += int(stepping.sum())
        limit = (t + 1 >= self.max_episode_steps) | (etrunc if etrunc is not None else False)
        ends = stepping & (term | limit)
        self.T = np.where(ends, t + 1, T)                     # T <- t + 1
        self.trunc = np.where(ends, ~term & limit, self.trunc)
        T = self.T
        tau = t - n + 1                                       # the time whose estimate is updated
        upd = live & (tau >= 0)
        if upd.any():
            G = np.zeros(self.N)
            for k in range(n):                                # G = sum_{i=tau+1}^{min(tau+n,T)} gamma^{i-tau-1} R_i
                i = tau + 1 + k
                G += (g ** k) * self.bR[ar, i % L] * (i <= T)
            j = np.minimum(tau + n, T)                        # bootstrap time: tau+n, or T on truncation
            boot_ok = (tau + n < T) | self.trunc
            sj, aj = self.bS[ar, j % L], self.bA[ar, j % L]
            vj = self.V[ar, sj] if self.prediction else self.Q[ar, sj, aj]
            G += np.where(boot_ok, g ** (j - tau) * vj, 0.0)  # + gamma^n Q(S_{tau+n}, A_{tau+n})  (S&B eq. 7.4)
            st, at = self.bS[ar, tau % L], self.bA[ar, tau % L]
            if self.prediction:
                self.V[ar, st] += self.alpha * (G - self.V[ar, st]) * upd        # S&B eq. 7.2
            else:
                self.Q[ar, st, at] += self.alpha * (G - self.Q[ar, st, at]) * upd  # S&B eq. 7.5
        self.t = t + live
        done = live & (tau == T - 1)                          # "until tau = T - 1"
        if done.any():
            idx = np.flatnonzero(done)
            self.t[idx] = self.T[idx]                         # episode length for the record
            self._finish(idx)
            s0 = self.sim.reset(idx, u_reset[idx])
            a0 = self._act(s0, self._eps(self.ep[idx]), ua0[idx], idx)
            self.bS[idx, 0], self.bA[idx, 0] = s0, a0
            self.T[idx] = np.iinfo(np.int64).max
            self.trunc[idx] = False

    # -- Monte Carlo: seeds play episode e in lock-step, then learn backwards (S&B sec. 5.1-5.4) ------
    def _mc_step(self):
        A, live = self.A, (self.ep < self.E) & ~self.done
        li = np.flatnonzero(live)                             # only seeds still in their episode step and read
        s, t = self.s[li], self.t[li]
        u = self.rng.draw(A + 4, li)                          # action (A + 2), exploring A_0, transition
        if self.prediction:
            a = ex.sample_categorical(self.policy[s], u[:, 0])
        else:
            a = ex.epsilon_greedy(self.Q[li, s], 0.0 if self.exploring_starts else self._eps(self.ep[li]),
                                  u[:, :A + 2])
            if self.exploring_starts:                         # A0 uniform at an exploring start
                a = np.where(t == 0, np.minimum((u[:, A + 2] * A).astype(np.int64), A - 1), a)
        s2, r, term, etrunc = self.sim.step(s, a, u[:, A + 3], li)
        self.bS[li, t], self.bA[li, t], self.bR[li, t] = s, a, r
        ak = np.zeros_like(a) if self.prediction else a       # prediction: visits of s; control: of (s, a)
        self.first[li, t] = ~self.seen[li, s, ak]             # first visit in this episode?
        self.seen[li, s, ak] = True
        self.bS[li, t + 1] = s2
        self.G[li] += r
        self.steps += len(li)
        self.t[li] = t + 1
        self.s[li] = s2
        limit = (t + 1 >= self.max_episode_steps) | (etrunc if etrunc is not None else False)
        ended = term | limit
        self.done[li] |= ended
        self.trunc[li] |= ended & ~term
        if np.all(self.done | (self.ep >= self.E)):
            self._mc_learn()

    def _mc_learn(self):
        ar, g = self.ar, self.gamma
        learn = self.ep < self.E
        T = self.t.copy()
        sT = self.bS[ar, T]
        if self.prediction:                                   # truncated: G starts from V(S_T), else 0
            G = np.where(self.trunc, self.V[ar, sT], 0.0)
        else:                                                 # ... or from sum_a pi(a|S_T) Q(S_T, a)
            qT = self.Q[ar, sT]
            pi = ex.epsilon_greedy_probs(qT, 0.0 if self.exploring_starts else self._eps(self.ep))
            G = np.where(self.trunc, (pi * qT).sum(-1), 0.0)
        for t in range(int(T[learn].max(initial=0)) - 1, -1, -1):
            m = learn & (t < T)
            G = np.where(m, g * G + self.bR[:, t], G)         # G <- gamma*G + R_{t+1}   (S&B sec. 5.1 backward)
            if self.first_visit:
                m = m & self.first[:, t]                      # first-visit: only the first occurrence
            st, at = self.bS[:, t], self.bA[:, t]
            if self.prediction:
                self.count[ar, st, 0] += m
                step = self.alpha if self.alpha is not None else 1.0 / np.maximum(self.count[ar, st, 0], 1)
                self.V[ar, st] += step * (G - self.V[ar, st]) * m        # V(s) += (G - V(s)) / N(s)  (S&B 5.1)
            else:
                self.count[ar, st, at] += m
                step = self.alpha if self.alpha is not None else 1.0 / np.maximum(self.count[ar, st, at], 1)
                self.Q[ar, st, at] += step * (G - self.Q[ar, st, at]) * m  # Q(s,a) <- average of returns (S&B 5.3/5.4)
        idx = np.flatnonzero(learn)
        self._finish(idx)
        u = self.rng.draw(2, idx)                             # next start state, exploring start
        self.s[idx] = self.sim.reset(idx, u[:, 0])
        self.seen[:] = False
        self.done[:] = False
        self.trunc[:] = False
        if self.exploring_starts:
            self._exploring_start(idx, u[:, 1])

    # -- driving -----------------------------------------------------------------------------------
    @property
    def progress(self) -> int:
        """Episodes completed by every seed."""
        return int(self.ep.min())

    def run(self, until: int | None = None, callback: Callable[[int], None] | None = None) -> Learner:
        """Advance until every seed has completed ``until`` episodes (default: all); ``callback(progress)``
        is called each time the progress counter increases."""
        until = self.E if until is None else min(int(until), self.E)
        step = {"td0": self._td_step, "q-learning": self._td_step, "sarsa": self._td_step,
                "expected-sarsa": self._td_step, "nstep-sarsa": self._nstep_step,
                "nstep-td": self._nstep_step, "mc": self._mc_step, "mc-prediction": self._mc_step}[self.method]
        last = self.progress
        while self.progress < until:
            step()
            p = self.progress
            if p > last:
                last = p
                if callback is not None:
                    callback(p)
        return self

    def result(self) -> LearnResult:
        """The tables and curves so far."""
        return LearnResult(None if self.prediction else self.Q.copy(), self.V.copy() if self.prediction else None,
                           self.returns.copy(), self.lengths.copy(), self.eps_table.copy(), int(self.steps))

    _STATE = ("Q", "V", "returns", "lengths", "ep", "t", "G", "s", "a", "bS", "bA", "bR", "T", "trunc",
              "first", "seen", "done", "count")

    def state_dict(self) -> dict:
        """Every array of the learner's state plus each seed's position in its random stream (no pickle)."""
        d = {k: getattr(self, k).copy() for k in self._STATE if hasattr(self, k)}
        d["rng"] = self.rng.state_dict()
        d["steps"] = int(self.steps)
        if isinstance(self.sim, GymSim):
            d["gym_started"] = self.sim.started.copy()
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore a :meth:`state_dict` (model-free gym envs restart their current episode's env state)."""
        if "positions" not in d.get("rng", {}):
            raise UserError("this checkpoint was written by an older mlcanon whose seeds shared one random "
                            "generator; it cannot be resumed exactly. Start a new run")
        for k in self._STATE:
            if k in d:
                setattr(self, k, np.array(d[k]))
        self.rng.load_state_dict(d["rng"])
        self.steps = int(d["steps"])


# ------------------------------------------------------------------------------------------ functions
def _learn(method, env, episodes, **kw) -> LearnResult:
    return Learner(method, env, episodes=episodes, **kw).run().result()


def q_learning(env, episodes: int, **kw) -> LearnResult:
    """Off-policy TD control: Q(s,a) += alpha*(r + gamma*max_a' Q(s',a') - Q(s,a)) (S&B eq. 6.8).

    Keywords (all methods): num_seeds, alpha, gamma (None: the env's), schedule (an epsilon schedule over
    episodes), max_episode_steps, seed, q_init.
    """
    return _learn("q-learning", env, episodes, **kw)


def sarsa(env, episodes: int, **kw) -> LearnResult:
    """On-policy TD control: Q(s,a) += alpha*(r + gamma*Q(s',a') - Q(s,a)) (S&B eq. 6.7)."""
    return _learn("sarsa", env, episodes, **kw)


def expected_sarsa(env, episodes: int, **kw) -> LearnResult:
    """Expected SARSA: target r + gamma*sum_a' pi(a'|s') Q(s',a') (S&B eq. 6.9)."""
    return _learn("expected-sarsa", env, episodes, **kw)


def nstep_sarsa(env, episodes: int, n: int = 3, **kw) -> LearnResult:
    """n-step SARSA (S&B sec. 7.2, eq. 7.4-7.5)."""
    return _learn("nstep-sarsa", env, episodes, n=n, **kw)


def td0_prediction(env, policy, episodes: int, **kw) -> LearnResult:
    """TD(0) prediction of V^pi: V(s) += alpha*(r + gamma*V(s') - V(s)) (S&B eq. 6.2)."""
    return _learn("td0", env, episodes, policy=policy, **kw)


def nstep_td_prediction(env, policy, episodes: int, n: int = 3, **kw) -> LearnResult:
    """n-step TD prediction of V^pi (S&B sec. 7.1, eq. 7.1-7.2)."""
    return _learn("nstep-td", env, episodes, policy=policy, n=n, **kw)


def mc_prediction(env, policy, episodes: int, first_visit: bool = True, **kw) -> LearnResult:
    """First- or every-visit Monte Carlo prediction of V^pi (S&B sec. 5.1); alpha=None: sample averages."""
    kw.setdefault("alpha", None)
    return _learn("mc-prediction", env, episodes, policy=policy, first_visit=first_visit, **kw)


def mc_control(env, episodes: int, first_visit: bool = True, exploring_starts: bool = False,
               **kw) -> LearnResult:
    """On-policy MC control: epsilon-soft (S&B sec. 5.4) or exploring starts with greedy policy (S&B sec. 5.3)."""
    kw.setdefault("alpha", None)
    return _learn("mc", env, episodes, first_visit=first_visit, exploring_starts=exploring_starts, **kw)
