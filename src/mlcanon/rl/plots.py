"""Plots for tabular RL: value heat-maps, greedy-policy arrows, learning curves with 95% bands (PNG, Agg).

Shapes: a grid is ``(rows, cols)`` with s = row * cols + col; a robot grid with a heading is
``(rows, cols, 4)`` with s = (row * cols + col) * 4 + heading and is drawn as 4 panels, one per heading.
Grid actions are 0 up, 1 down, 2 left, 3 right (arrows); other action sets are drawn as labels.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mlcanon.errors import UserError
from mlcanon.metrics.rl import mean_ci95

GRID_ARROWS = {0: (0.0, 0.35), 1: (0.0, -0.35), 2: (-0.35, 0.0), 3: (0.35, 0.0)}   # (dx, dy) in plot axes
HEADING_NAMES = ("heading N", "heading E", "heading S", "heading W")
ROBOT_LABELS = ("L", "R", "F")


def _panels(shape) -> tuple[int, int, int]:
    shape = tuple(int(x) for x in shape)
    if len(shape) == 1:
        return 1, shape[0], 1
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    raise UserError(f"shape must be (n,), (rows, cols) or (rows, cols, headings), got {shape}")


def _panel_grid(values: np.ndarray, rows: int, cols: int, k: int, panel: int) -> np.ndarray:
    return values.reshape(rows * cols, k)[:, panel].reshape(rows, cols)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _check_len(x: np.ndarray, n: int, what: str) -> None:
    if x.shape[0] != n:
        raise UserError(f"{what} has {x.shape[0]} states but shape {n} cells; pass the env's shape")


def plot_values(V, shape, path, title: str = "state values", terminal=None) -> Path:
    """Heat-map of V over the grid with each cell's value written in it (one panel per heading)."""
    V = np.asarray(V, dtype=np.float64).ravel()
    rows, cols, k = _panels(shape)
    _check_len(V, rows * cols * k, "V")
    term = None if terminal is None else np.asarray(terminal, bool).ravel()
    fig, axes = plt.subplots(1, k, figsize=(1.0 + 0.9 * cols * k, 0.9 * rows + 0.8), squeeze=False)
    vmin, vmax = V.min(), V.max()
    for p, ax in enumerate(axes[0]):
        grid = _panel_grid(V, rows, cols, k, p)
        im = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1)
        for r in range(rows):
            for c in range(cols):
                v = grid[r, c]
                s = (r * cols + c) * k + p
                light = (v - vmin) / (vmax - vmin + 1e-12) > 0.6
                txt = f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
                ax.text(c, r, txt + ("\n(T)" if term is not None and term[s] else ""), ha="center",
                        va="center", fontsize=8, color="black" if light else "white")
        ax.set_xticks(range(cols))
        ax.set_yticks(range(rows))
        if k > 1:
            ax.set_title(HEADING_NAMES[p] if k == 4 else f"layer {p}", fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_policy(policy, shape, path, V=None, terminal=None, title: str = "greedy policy",
                action_labels=None) -> Path:
    """Policy arrows per cell (grid actions up/down/left/right), over the value heat-map when V is given.

    ``policy`` is an int [S] array or an [S, A] probability array (every action with probability > 0 is
    drawn, arrow length proportional to it). Terminal cells are marked "T" and get no arrow. With a heading
    (shape (rows, cols, 4)) or ``action_labels`` the actions are written as labels (robot: L/R/F).
    """
    pol = np.asarray(policy)
    rows, cols, k = _panels(shape)
    S = rows * cols * k
    _check_len(pol, S, "policy")
    if pol.ndim == 1:
        A = int(pol.max()) + 1 if action_labels is None else len(action_labels)
        A = max(A, 4 if k == 1 else 3)
        probs = np.zeros((S, A))
        probs[np.arange(S), pol.astype(int)] = 1.0
    else:
        probs = pol.astype(np.float64)
    A = probs.shape[1]
    if action_labels is None and (k > 1 or A != 4):
        action_labels = ROBOT_LABELS if (k == 4 and A == 3) else tuple(str(a) for a in range(A))
    term = np.zeros(S, bool) if terminal is None else np.asarray(terminal, bool).ravel()
    fig, axes = plt.subplots(1, k, figsize=(1.0 + 0.9 * cols * k, 0.9 * rows + 0.8), squeeze=False)
    for p, ax in enumerate(axes[0]):
        if V is not None:
            Vv = np.asarray(V, dtype=np.float64).ravel()
            _check_len(Vv, S, "V")
            ax.imshow(_panel_grid(Vv, rows, cols, k, p), cmap="viridis", alpha=0.55)
        else:
            ax.imshow(np.zeros((rows, cols)), cmap="Greys", vmin=0, vmax=1)
        for r in range(rows):
            for c in range(cols):
                s = (r * cols + c) * k + p
                if term[s]:
                    ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, color="0.55"))
                    ax.text(c, r, "T", ha="center", va="center", fontsize=12, weight="bold")
                    continue
                if action_labels is None:
                    for a in range(4):
                        if probs[s, a] > 1e-9:
                            dx, dy = GRID_ARROWS[a]
                            L = 0.4 + 0.6 * probs[s, a]   # longer arrow = more likely action
                            ax.arrow(c, r, dx * L, -dy * L, head_width=0.12 * max(L, 0.4),
                                     length_includes_head=True, color="black")
                else:
                    best = [action_labels[a] for a in range(A) if probs[s, a] > 1e-9]
                    ax.text(c, r, "/".join(best), ha="center", va="center", fontsize=10, weight="bold")
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_xticks(range(cols))
        ax.set_yticks(range(rows))
        if k > 1:
            ax.set_title(HEADING_NAMES[p] if k == 4 else f"layer {p}", fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def plot_schedule(values, path, xlabel: str = "episode", ylabel: str = "epsilon") -> Path:
    """A schedule over steps or episodes (e.g. epsilon), from 0 up."""
    v = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(len(v)), v)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1e-3, float(v.max())) * 1.05)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_curves_band(curves, path, label: str | None = None, xlabel: str = "episode",
                     ylabel: str = "return", title: str | None = None, x=None, smooth: int = 1) -> Path:
    """Mean over seeds with a 95% band; ``curves`` is [N, T] or a dict label -> [N, T] (one axis).

    ``smooth`` > 1 applies a moving average of that width to each seed's curve first.
    """
    series = dict(curves) if isinstance(curves, dict) else {label or "": curves}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, c in series.items():
        c = np.asarray(c, dtype=np.float64)
        if c.ndim == 1:
            c = c[None, :]
        if smooth > 1:
            ker = np.ones(smooth) / smooth
            c = np.stack([np.convolve(row, ker, mode="valid") for row in c])
        mean, half = mean_ci95(c, axis=0)                 # Student-t interval over seeds
        xs = np.arange(mean.size) if x is None else np.asarray(x)[-mean.size:]
        line, = ax.plot(xs, mean, label=f"{name} (n={c.shape[0]})" if name else None)
        ax.fill_between(xs, mean - half, mean + half, color=line.get_color(), alpha=0.25)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if any(series):
        ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(title or "mean and 95% interval over seeds")
    return _save(fig, path)
