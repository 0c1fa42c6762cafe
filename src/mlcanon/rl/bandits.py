"""Multi-armed bandits (S&B ch. 2), vectorized over independent runs, with regret curves.

A :class:`BanditProblem` holds the true arm means of ``R`` runs (``[R, K]``, e.g. the S&B 10-armed testbed:
mu ~ N(0, 1), rewards N(mu_a, 1); or Bernoulli arms mu ~ U(0, 1)). :func:`run_bandit` plays one strategy on
every run at once for ``steps`` pulls: epsilon-greedy with sample averages, UCB (UCB1 at c = sqrt(2)),
Thompson sampling (Beta-Bernoulli or Gaussian with known noise) and the gradient bandit (softmax preferences
with a reward baseline). Regret is the *expected* regret of each pull, mu* - mu_{A_t}, from the true means.

Runs are independent: run i of a problem made by ``testbed(R, seed=s)`` is ``testbed(1, seed=s + i)``, and
``run_bandit(..., seed=s)`` plays run i from the uniforms of seed s + i's own stream
(:class:`~mlcanon.rl.streams.SeedStreams`), so a run's pulls never depend on the other runs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import betaincinv

from mlcanon.errors import UserError
from mlcanon.rl import exploration as ex
from mlcanon.rl.streams import PROBLEM, SeedStreams, box_muller, generator

STRATEGIES = ("epsilon-greedy", "ucb", "thompson", "gradient")


@dataclasses.dataclass
class BanditProblem:
    """True means ``[R, K]`` of R independent K-armed bandits; Gaussian (noise ``reward_std``) or Bernoulli."""

    means: np.ndarray
    kind: str = "gaussian"
    reward_std: float = 1.0

    def __post_init__(self):
        self.means = np.atleast_2d(np.asarray(self.means, dtype=np.float64))
        if self.kind not in ("gaussian", "bernoulli"):
            raise UserError(f"bandit kind must be gaussian or bernoulli, got {self.kind!r}")
        if self.kind == "bernoulli" and ((self.means < 0) | (self.means > 1)).any():
            raise UserError("Bernoulli arm means must be probabilities in [0, 1]")
        if self.reward_std < 0:
            raise UserError(f"reward_std must be >= 0, got {self.reward_std}")

    @property
    def runs(self) -> int:
        return self.means.shape[0]

    @property
    def arms(self) -> int:
        return self.means.shape[1]

    def pull(self, a: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One reward per run for arms ``a`` [R] from two uniforms per run ``u`` [R, 2]: N(mu_a, std^2)
        (Box-Muller) or Bernoulli(mu_a) (u_0 < mu_a)."""
        mu = self.means[np.arange(self.runs), a]
        if self.kind == "gaussian":
            return mu + self.reward_std * box_muller(u[:, 0], u[:, 1])        # mu + std * z, z ~ N(0, 1)
        return (u[:, 0] < mu).astype(np.float64)


def testbed(runs: int, arms: int = 10, kind: str = "gaussian", seed: int = 0) -> BanditProblem:
    """R random problems: mu_a ~ N(0, 1) (the S&B 10-armed testbed) or mu_a ~ U(0, 1) (Bernoulli); problem i
    is drawn from the PROBLEM stream of seed + i (so it is ``testbed(1, arms, kind, seed + i)``)."""
    if runs < 1 or arms < 1:
        raise UserError(f"need runs >= 1 and arms >= 1, got runs={runs}, arms={arms}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0 (it seeds numpy's SeedSequence), got {seed}")
    gens = [generator(seed + i, PROBLEM) for i in range(runs)]
    means = np.stack([g.normal(0.0, 1.0, arms) if kind == "gaussian" else g.uniform(0.0, 1.0, arms) for g in gens])
    return BanditProblem(means, kind)


@dataclasses.dataclass
class BanditResult:
    """Per-run, per-step record of a bandit experiment."""

    actions: np.ndarray      # [R, T] arms pulled
    rewards: np.ndarray      # [R, T] rewards received
    regret: np.ndarray       # [R, T] expected regret mu* - mu_{A_t} of each pull
    optimal: np.ndarray      # [R, T] True where the pulled arm is optimal

    @property
    def cumulative_regret(self) -> np.ndarray:
        """[R, T] sum_{s<=t} (mu* - mu_{A_s})."""
        return np.cumsum(self.regret, axis=1)


def run_bandit(problem: BanditProblem, strategy: str, total_steps: int, seed: int = 0, *, epsilon: float = 0.1,
               c: float = 2.0, alpha: float = 0.1, step_size: float | None = None, baseline: bool = True,
               prior_std: float = 1.0) -> BanditResult:
    """Play ``strategy`` on every run of ``problem`` for ``total_steps`` pulls; run i reads the stream of seed + i.

    epsilon-greedy: ``epsilon``, estimates by sample averages (or constant ``step_size``);
    ucb: exploration weight ``c``; thompson: Beta(1, 1) priors on Bernoulli arms, N(0, prior_std^2) priors on
    Gaussian arms with known noise; gradient: preference step ``alpha`` and the average-reward ``baseline``.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown bandit strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if total_steps < 1:
        raise UserError(f"--total-steps must be >= 1, got {total_steps}")
    R, K = problem.runs, problem.arms
    rng = SeedStreams(seed + np.arange(R))        # run i's uniforms: its own stream
    W = {"epsilon-greedy": K + 2, "ucb": K, "thompson": 3 * K, "gradient": 1}[strategy] + 2   # + 2 for the reward
    ar = np.arange(R)
    Q = np.zeros((R, K))                 # value estimates (epsilon-greedy, ucb)
    N = np.zeros((R, K))                 # pull counts
    S = np.zeros((R, K))                 # reward sums (thompson)
    H = np.zeros((R, K))                 # preferences (gradient)
    rbar = np.zeros(R)                   # average reward baseline (gradient)
    a_beta, b_beta = np.ones((R, K)), np.ones((R, K))
    actions = np.zeros((R, total_steps), dtype=np.int64)
    rewards = np.zeros((R, total_steps))
    for t in range(total_steps):
        u = rng.draw(W)                                            # [R, W] this pull's uniforms, per run
        if strategy == "epsilon-greedy":
            a = ex.epsilon_greedy(Q, epsilon, u[:, :K + 2])
        elif strategy == "ucb":
            a = ex.ucb_action(Q, N, t + 1, c, u[:, :K])            # A_t = argmax Q + c sqrt(ln t / N)  (S&B 2.10)
        elif strategy == "thompson":
            if problem.kind == "bernoulli":
                theta = betaincinv(a_beta, b_beta, u[:, :K])       # theta_a ~ Beta(alpha_a, beta_a), inverse CDF
            else:
                prec = 1.0 / prior_std**2 + N / max(problem.reward_std, 1e-12) ** 2  # posterior precision
                mean = (S / max(problem.reward_std, 1e-12) ** 2) / prec            # posterior mean (prior mean 0)
                z = box_muller(u[:, :K], u[:, K:2 * K])                             # z ~ N(0, 1)
                theta = mean + z / np.sqrt(prec)                                    # theta_a ~ N(mean, 1/prec)
            a = ex.greedy_random_tiebreak(theta, u[:, 2 * K:3 * K])  # argmax_a theta_a
        else:
            pi = ex.softmax_probs(H, 1.0)                          # pi(a) = e^{H(a)} / sum_b e^{H(b)}  (S&B 2.11)
            a = ex.sample_categorical(pi, u[:, 0])
        r = problem.pull(a, u[:, W - 2:])
        N[ar, a] += 1
        S[ar, a] += r
        if strategy in ("epsilon-greedy", "ucb"):
            step = (1.0 / N[ar, a]) if step_size is None else step_size
            Q[ar, a] += step * (r - Q[ar, a])                      # Q <- Q + 1/N (R - Q)  (S&B eq. 2.3)
        elif strategy == "thompson" and problem.kind == "bernoulli":
            a_beta[ar, a] += r                                     # Beta posterior: alpha += r
            b_beta[ar, a] += 1.0 - r                               #                 beta  += 1 - r
        elif strategy == "gradient":
            base = rbar if baseline else 0.0
            onehot = np.zeros((R, K))
            onehot[ar, a] = 1.0
            H += alpha * (r - base)[:, None] * (onehot - pi)       # H <- H + alpha (R - Rbar)(1{a=A} - pi)  (S&B 2.12)
            rbar += (r - rbar) / (t + 1)                           # Rbar: the average of rewards so far
        actions[:, t], rewards[:, t] = a, r
    mu = problem.means
    mu_a = np.take_along_axis(mu, actions, 1)
    best = mu.max(1, keepdims=True)
    return BanditResult(actions, rewards, best - mu_a, mu_a == best)
