"""RL statistics over runs and episodes (one implementation each; DESIGN.md section 8)."""

from __future__ import annotations

import numpy as np


def mean_ci95(x, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the 95% Student-t interval of the mean along ``axis``.

    half = t_{0.975, n-1} * s / sqrt(n), s the sample standard deviation (ddof=1); NaN when n < 2.
    """
    from scipy.stats import t as student_t

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    mean = x.mean(axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    half = student_t.ppf(0.975, n - 1) * x.std(axis, ddof=1) / np.sqrt(n)   # t-interval of the mean
    return mean, half
