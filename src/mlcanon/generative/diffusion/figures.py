"""Figures of the reverse process: a denoising-progress strip (images) and reverse trajectories (2-D points)."""

from __future__ import annotations

from pathlib import Path

import torch

from mlcanon.data.images import save_image_grid


def save_progress_strip(frames: list[torch.Tensor], path: str | Path) -> Path:
    """Rows = samples, columns = reverse-process snapshots (x_0 estimates from noise to data), images in [0, 1].

    ``frames``: K tensors [R, C, H, W] (snapshot k of R samples)."""
    K = len(frames)
    R = frames[0].shape[0]
    grid = torch.stack(frames, 1).reshape(R * K, *frames[0].shape[1:])   # row r: sample r at each snapshot
    return save_image_grid(grid, path, nrow=K)


def save_trajectories(traj: torch.Tensor, data: torch.Tensor | None, path: str | Path, title: str = "") -> Path:
    """Reverse trajectories of 2-D points: ``traj`` [S, N, 2] (x_T first, x_0 last), faint lines from noise to
    samples over the data (grey)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traj = traj.detach().cpu().float()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    if data is not None:
        d = data.detach().cpu().float()
        for ax in axes:
            ax.scatter(d[:, 0], d[:, 1], s=2, c="0.8", label="data")
    k = min(traj.shape[1], 64)
    for i in range(k):
        axes[0].plot(traj[:, i, 0], traj[:, i, 1], lw=0.6, alpha=0.6)
    axes[0].scatter(traj[0, :k, 0], traj[0, :k, 1], s=6, c="k", marker="x", label="x_T")
    axes[0].scatter(traj[-1, :k, 0], traj[-1, :k, 1], s=8, c="r", label="x_0")
    axes[0].set_title("reverse trajectories")
    axes[1].scatter(traj[-1, :, 0], traj[-1, :, 1], s=3, c="r", label="samples")
    axes[1].set_title(title or "samples")
    for ax in axes:
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
