"""Generated 1-D signals for the sequence models (``wavenet``, ``vrnn``): mixtures of sinusoids with noise,
and mu-law companding to 256 levels (ITU-T G.711; WaveNet, van den Oord et al. 2016, section 2.2).

Signal n (its own seeded stream, so the set is a pure function of (seed, split, n)):

    x_t = sum_{k=1..K} a_k sin(2 pi f_k t + phi_k) + sigma eps_t,   K ~ U{1..3}, f_k ~ U[0.01, 0.08] cycles/sample,
    a_k ~ U[0.2, 1], phi_k ~ U[0, 2 pi), eps_t ~ N(0, 1), then scaled by 0.9 / (sum_k a_k + 3 sigma) so |x| < 1.

mu-law:  F(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu)  in [-1, 1],  quantized to q = floor((F + 1) / 2 * mu + 1/2)
in {0..mu}; decoded by F^{-1}(y) = sign(y) ((1 + mu)^|y| - 1) / mu at y = 2 q / mu - 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mlcanon.training import generator

SPLIT_KEYS = {"train": 0, "valid": 1, "test": 2}


def sinusoid_mixtures(n: int, length: int, *, seed: int = 0, split: str = "train", noise: float = 0.05) -> torch.Tensor:
    """[n, length] float32 signals in (-1, 1) (see the module doc); each split has its own streams."""
    if split not in SPLIT_KEYS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_KEYS)}, got {split!r}")
    t = torch.arange(length, dtype=torch.float64)
    out = torch.empty(n, length, dtype=torch.float64)
    for i in range(n):
        g = generator(seed, 5557, SPLIT_KEYS[split], i)
        K = int(torch.randint(1, 4, (1,), generator=g))
        f = 0.01 + 0.07 * torch.rand(K, 1, generator=g, dtype=torch.float64)
        a = 0.2 + 0.8 * torch.rand(K, 1, generator=g, dtype=torch.float64)
        phi = 2 * math.pi * torch.rand(K, 1, generator=g, dtype=torch.float64)
        x = (a * torch.sin(2 * math.pi * f * t + phi)).sum(0)               # sum_k a_k sin(2 pi f_k t + phi_k)
        x = x + noise * torch.randn(length, generator=g, dtype=torch.float64)
        out[i] = x * 0.9 / (float(a.sum()) + 3 * noise)
    return out.clamp(-1, 1).float()


def mu_law_encode(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """x in [-1, 1] -> integer codes in {0, ..., levels-1} (mu = levels - 1)."""
    mu = levels - 1
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)          # F(x)
    return torch.floor((y + 1) / 2 * mu + 0.5).long().clamp(0, mu)


def mu_law_decode(q: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Integer codes -> x in [-1, 1] (the inverse of the companding at the level's centre)."""
    mu = levels - 1
    y = 2 * q.float() / mu - 1
    return torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu                   # F^{-1}(y)


def plot_signals(samples: torch.Tensor, real: torch.Tensor | None, path: Path, title: str = "") -> Path:
    """Samples (the first 16) and real signals (the first 4) as line plots, one row each; every sample is also
    written as an array [n, T] to the same path with suffix .npy."""
    import numpy as np
    np.save(Path(path).with_suffix(".npy"), samples.detach().cpu().numpy())
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [("sample", s) for s in samples[:16]] + ([("real", r) for r in real[:4]] if real is not None else [])
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.3 * len(rows)), sharex=True, squeeze=False)
    for ax, (label, s) in zip(axes[:, 0], rows):
        ax.plot(s.detach().cpu().numpy(), lw=0.8, color="C0" if label == "sample" else "C1")
        ax.set_ylabel(label)
        ax.set_ylim(-1.05, 1.05)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
