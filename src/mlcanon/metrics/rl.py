"""RL statistics over runs and episodes (one implementation each; DESIGN.md section 8).

``mean_ci95`` (Student-t interval of the mean), ``iqm`` (interquartile mean), ``stratified_bootstrap_ci``
(percentile intervals resampling runs within tasks), ``performance_profile`` (run-score distribution) -- the
last three as in rliable (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice") -- and
``steps_to_threshold`` / ``episodes_to_threshold`` read off learning curves.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t


def mean_ci95(x, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the 95% Student-t interval of the mean along ``axis``.

    half = t_{0.975, n-1} * s / sqrt(n), s the sample standard deviation (ddof=1); NaN when n < 2.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    mean = x.mean(axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    half = student_t.ppf(0.975, n - 1) * x.std(axis, ddof=1) / np.sqrt(n)   # t-interval of the mean
    return mean, half


def iqm(scores, axis: int | None = None) -> np.ndarray:
    """Interquartile mean (Agarwal et al. 2021, rliable): the mean of the middle 50% of the scores, after
    dropping floor(n/4) from each end of the sorted values along ``axis`` (all values when None).

    Same convention as ``scipy.stats.trim_mean(scores, 0.25, axis)``, which rliable's ``aggregate_iqm`` uses.
    """
    x = np.asarray(scores, dtype=np.float64)
    if axis is None:
        x, axis = x.reshape(-1), 0
    x = np.sort(np.moveaxis(x, axis, -1), axis=-1)
    n = x.shape[-1]
    if n == 0:
        raise ValueError("iqm of no scores")
    cut = int(0.25 * n)                                     # drop the bottom and top quarter
    return x[..., cut:n - cut].mean(-1)


def stratified_bootstrap_ci(scores, statistic=iqm, reps: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and percentile bootstrap interval of ``statistic(scores)`` for scores [runs, tasks].

    Stratified (Agarwal et al. 2021, section 4): each bootstrap sample redraws the runs *within each task*
    with replacement, so every task keeps its number of runs. 1-D scores are one task. ``statistic`` maps a
    [runs, tasks] array to a scalar or a vector; returns (point, low, high) of its shape.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"scores must be [runs, tasks], got shape {x.shape}")
    if not 0 < confidence < 1 or reps < 1:
        raise ValueError(f"need 0 < confidence < 1 and reps >= 1, got {confidence}, {reps}")
    R, T = x.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, R, size=(reps, R, T))            # run indices, drawn per task (the strata)
    boot = np.stack([np.asarray(statistic(x[idx[b], np.arange(T)]), dtype=np.float64) for b in range(reps)])
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [a, 1 - a], axis=0)          # percentile interval
    return np.asarray(statistic(x), dtype=np.float64), lo, hi


def performance_profile(scores, taus) -> np.ndarray:
    """Run-score distribution (Agarwal et al. 2021, eq. 3): for each tau, the fraction of runs whose score
    exceeds tau, averaged over tasks. Scores [runs, tasks] (1-D: one task) -> [len(taus)]."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    taus = np.asarray(taus, dtype=np.float64)
    # (1/T) sum_m (1/R) sum_r 1[x_rm > tau]
    return (x[None, :, :] > taus.reshape(-1, 1, 1)).mean(axis=1).mean(axis=1)


def trailing_mean(values, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (NaN before the first full window), last axis."""
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    c = np.cumsum(v, axis=-1)
    out = np.full(v.shape, np.nan)
    if v.shape[-1] >= window:
        c0 = np.concatenate([np.zeros(v.shape[:-1] + (1,)), c], axis=-1)
        out[..., window - 1:] = (c0[..., window:] - c0[..., :-window]) / window
    return out


def steps_to_threshold(steps, returns, threshold: float, window: int = 1) -> np.ndarray:
    """The first logged step at which the trailing mean of the last ``window`` returns reaches ``threshold``.

    ``steps`` [T] (the x-axis of the learning curve: env steps or episodes), ``returns`` [T] or [runs, T].
    Runs that never reach it give ``inf``. Returns a scalar array for one curve, [runs] for several.
    """
    s = np.asarray(steps, dtype=np.float64)
    m = trailing_mean(returns, window)
    if s.ndim != 1 or m.shape[-1] != len(s):
        raise ValueError(f"steps must be [T] matching returns [..., T]: got {s.shape} and {m.shape}")
    hit = m >= threshold                                    # NaN (incomplete window) compares False
    first = hit.argmax(axis=-1)
    return np.where(hit.any(axis=-1), s[first], np.inf)


def episodes_to_threshold(episode_returns, threshold: float, window: int = 100) -> np.ndarray:
    """Episodes needed until the mean return of the last ``window`` episodes first reaches ``threshold``
    (gymnasium's "solved" criterion, e.g. CartPole-v1: 475 over 100 episodes); ``inf`` if never."""
    r = np.asarray(episode_returns, dtype=np.float64)
    return steps_to_threshold(np.arange(1, r.shape[-1] + 1), r, threshold, window)
