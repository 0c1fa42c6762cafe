"""Image utilities without torchvision: grids, PNG grids with titles, and batch augmentations.

Augmentations act on a batch ``x`` [N, C, H, W] and draw from an explicit ``torch.Generator`` (on x's
device), so the same generator state gives the same result.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from mlcanon.errors import UserError


def _check_batch(x, what: str = "images") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise UserError(f"{what} must be a tensor [N, C, H, W], got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise UserError(f"{what} must be floating point (values in [0, 1]), got {x.dtype}")


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """Tile ``images`` [N, C, H, W] into one image [C, rows*(H+pad)+pad, nrow*(W+pad)+pad], row-major."""
    _check_batch(images)
    if nrow < 1 or pad < 0:
        raise UserError(f"make_grid needs nrow >= 1 and pad >= 0, got nrow={nrow}, pad={pad}")
    N, C, H, W = images.shape
    ncol = min(nrow, N)
    rows = math.ceil(N / ncol) if N else 0
    grid = images.new_full((C, rows * (H + pad) + pad, ncol * (W + pad) + pad), pad_value)
    for k in range(N):
        r, c = divmod(k, ncol)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        grid[:, top:top + H, left:left + W] = images[k]
    return grid


def save_image_grid(images: torch.Tensor, path, nrow: int | None = None, titles: list[str] | None = None) -> Path:
    """Write ``images`` [N, C, H, W] (C = 1 or 3, values in [0, 1]; clipped for display) as a PNG grid.

    ``nrow`` images per row (default ceil(sqrt(N))). With ``titles`` (one string per image, e.g.
    "pred 3 / true 5") each image gets its caption underneath. Returns the path.
    """
    _check_batch(images)
    N, C, _H, _W = images.shape
    if C not in (1, 3):
        raise UserError(f"save_image_grid needs 1 (grey) or 3 (RGB) channels, got {C}")
    if N == 0:
        raise UserError("save_image_grid got no images")
    if titles is not None and len(titles) != N:
        raise UserError(f"got {len(titles)} titles for {N} images; give one per image")
    nrow = nrow or math.ceil(math.sqrt(N))
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = images.detach().to("cpu", torch.float32).clamp(0, 1)
    cmap = "gray" if C == 1 else None
    if titles is None:
        grid = make_grid(imgs, nrow=nrow, pad=2, pad_value=1.0)
        arr = grid[0].numpy() if C == 1 else grid.permute(1, 2, 0).numpy()
        plt.imsave(path, arr, cmap=cmap, vmin=0, vmax=1)
        return path
    ncol = min(nrow, N)
    rows = math.ceil(N / ncol)
    fig, axes = plt.subplots(rows, ncol, figsize=(1.4 * ncol, 1.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= N:
            ax.axis("off")
            continue
        im = imgs[k, 0].numpy() if C == 1 else imgs[k].permute(1, 2, 0).numpy()
        ax.imshow(im, cmap=cmap, vmin=0, vmax=1)
        ax.set_xlabel(titles[k], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------- transforms
def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by ``padding`` on every side, then crop H x W at an independent random offset."""
    _check_batch(x)
    if padding < 0:
        raise UserError(f"padding must be >= 0, got {padding}")
    N, C, H, W = x.shape
    xp = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (N,), generator=generator, device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (N,), generator=generator, device=x.device)
    rows = oy[:, None] + torch.arange(H, device=x.device)  # [N, H]
    cols = ox[:, None] + torch.arange(W, device=x.device)  # [N, W]
    n = torch.arange(N, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return xp[n, c, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_batch(x)
    if not 0 <= p <= 1:
        raise UserError(f"p must be in [0, 1], got {p}")
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate image k counter-clockwise (as displayed, row 0 on top) by ``degrees[k]`` about its centre.

    Bilinear sampling via affine_grid/grid_sample; pixels from outside the image are 0. The output pixel at
    p samples the input at R(-a) p (inverse mapping); normalized coordinates are rescaled so non-square
    images rotate rigidly.
    """
    _check_batch(x)
    N, _C, H, W = x.shape
    a = torch.deg2rad(degrees.to(device=x.device, dtype=x.dtype)).reshape(N)
    cos, sin = torch.cos(a), torch.sin(a)
    # with y pointing down, a counter-clockwise turn samples input at (x cos a - y sin a, x sin a + y cos a);
    # in normalized coords (x/(W/2), y/(H/2)) the off-diagonal terms pick up the aspect ratio
    theta = torch.stack([torch.stack([cos, -sin * H / W, torch.zeros_like(a)], 1),
                         torch.stack([sin * W / H, cos, torch.zeros_like(a)], 1)], 1)  # [N, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_rotation(x: torch.Tensor, max_degrees: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image by an angle drawn uniformly from [-max_degrees, max_degrees]."""
    _check_batch(x)
    if max_degrees < 0:
        raise UserError(f"max_degrees must be >= 0, got {max_degrees}")
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    return rotate(x, (2 * u - 1) * max_degrees)


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``x + std * eps``, eps ~ N(0, I) (not clipped, so the noise stays zero-mean)."""
    _check_batch(x)
    if std < 0:
        raise UserError(f"std must be >= 0, got {std}")
    return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
