"""Generated 2-D point sets (``toy2d:<name>``) and their exact densities where a closed form exists.

Sets (``noise`` is a standard deviation; defaults in :data:`DEFAULT_NOISE`):

- ``moons``: two interleaved half circles (as sklearn's make_moons, angle uniform on [0, pi]), centred and
  scaled by 2, plus isotropic Gaussian noise. No closed-form density.
- ``8gaussians``: equal mixture of 8 isotropic Gaussians N(mu_k, noise^2 I), mu_k = R (cos k pi/4, sin k pi/4),
  R = 2 sqrt(2) (FFJORD's set: scale 4, std 0.5, divided by 1.414).
- ``checkerboard``: uniform on the 8 "black" cells of a 4x4 board of 2x2 cells covering [-4, 4]^2 (cell
  (i, j) = (floor(x/2), floor(y/2)) is black when i + j is even); density 1/32 there, 0 elsewhere. No noise.
- ``swissroll``: t = 1.5 pi (1 + 2u), u ~ U(0, 1); point = ((t cos t, t sin t) + noise * eps) / 5. No closed form.
- ``rings``: pick ring k with probability w_k = r_k / sum(r) for radii r = (1, 2, 3, 4); draw a signed radius
  rho ~ N(r_k, noise^2) and an angle theta ~ U(0, 2 pi); point = rho (cos theta, sin theta). A negative rho
  is the point at |rho| and angle theta + pi, which is again uniform, so the radius |x| has the folded
  density p_r(r) = sum_k w_k [N(r; r_k, s^2) + N(-r; r_k, s^2)] (r > 0) and, by the polar change of
  variables (dx dy = r dr dtheta), p(x) = p_r(|x|) / (2 pi |x|).

Splits are independent draws: seed ``3 * seed + {train: 0, valid: 1, test: 2}``.
"""

from __future__ import annotations

import math

import torch

from mlcanon.data.base import ArrayDataset, check_split, reject_options
from mlcanon.errors import UserError

NAMES = ("moons", "8gaussians", "checkerboard", "swissroll", "rings")
DEFAULT_NOISE = {"moons": 0.05, "8gaussians": 0.5 / math.sqrt(2), "checkerboard": None,
                 "swissroll": 1.0, "rings": 0.1}
CLOSED_FORM = ("8gaussians", "checkerboard", "rings")
GAUSS_RADIUS = 2 * math.sqrt(2)
RING_RADII = (1.0, 2.0, 3.0, 4.0)
_SPLIT_OFFSET = {"train": 0, "valid": 1, "test": 2}


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise UserError(f"unknown toy2d set {name!r}: use toy2d:<{'|'.join(NAMES)}>")


def _noise(name: str, noise: float | None) -> float | None:
    """The noise std to use (default when None); UserError for a negative value or noise on checkerboard."""
    if name == "checkerboard":
        if noise is not None:
            raise UserError("toy2d:checkerboard is exactly uniform and takes no noise option; drop noise=")
        return None
    if noise is None:
        return DEFAULT_NOISE[name]
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise UserError(f"noise must be a number >= 0, got {noise!r}")
    if noise == 0 and name in CLOSED_FORM:
        raise UserError(f"toy2d:{name} needs noise > 0 (with 0 it has no density); got noise=0")
    return float(noise)


def _gauss_centers(dtype=torch.float64) -> torch.Tensor:
    k = torch.arange(8, dtype=dtype)
    return GAUSS_RADIUS * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)  # [8, 2]


def sample(name: str, n: int, noise: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points [n, 2] (float32) from toy set ``name``."""
    _check_name(name)
    s = _noise(name, noise)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"n must be a positive int, got {n!r}")
    g = generator
    f64 = torch.float64
    if name == "moons":
        t = torch.rand(n, generator=g, dtype=f64) * math.pi
        upper = torch.rand(n, generator=g) < 0.5
        outer = torch.stack([torch.cos(t), torch.sin(t)], 1)
        inner = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
        p = torch.where(upper[:, None], outer, inner)
        p = 2 * (p - torch.tensor([0.5, 0.25], dtype=f64))
        p = p + s * torch.randn(n, 2, generator=g, dtype=f64)
    elif name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g)
        p = _gauss_centers()[k] + s * torch.randn(n, 2, generator=g, dtype=f64)  # x ~ N(mu_k, s^2 I)
    elif name == "checkerboard":
        cell = torch.randint(0, 8, (n,), generator=g)  # one of the 8 black cells, uniformly
        i = cell // 2  # column 0..3
        j = 2 * (cell % 2) + (i % 2)  # row with i + j even
        u = torch.rand(n, 2, generator=g, dtype=f64)
        p = 2 * (torch.stack([i, j], 1).to(f64) + u) - 4  # uniform inside the 2x2 cell
    elif name == "swissroll":
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=f64))
        p = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)
        p = (p + s * torch.randn(n, 2, generator=g, dtype=f64)) / 5
    else:  # rings
        radii = torch.tensor(RING_RADII, dtype=f64)
        k = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=g)
        rho = radii[k] + s * torch.randn(n, generator=g, dtype=f64)  # signed radius ~ N(r_k, s^2)
        theta = 2 * math.pi * torch.rand(n, generator=g, dtype=f64)
        p = rho[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    return p.to(torch.float32)


def log_prob(name: str, x: torch.Tensor, noise: float | None = None) -> torch.Tensor:
    """Exact log-density log p(x) [N] of toy set ``name`` at points ``x`` [N, 2] (in x's float dtype).

    Only for the sets with a closed form (8gaussians, checkerboard, rings); UserError for the others.
    """
    _check_name(name)
    if name not in CLOSED_FORM:
        raise UserError(f"toy2d:{name} has no closed-form density; log_prob exists for {', '.join(CLOSED_FORM)}")
    s = _noise(name, noise)
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != 2:
        raise UserError(f"x must be a tensor of shape [N, 2], got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise UserError(f"x must be a floating-point tensor, got {x.dtype}")
    if name == "8gaussians":
        mu = _gauss_centers(x.dtype).to(x.device)
        d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)  # [N, 8] squared distances
        log_n = -d2 / (2 * s**2) - math.log(2 * math.pi * s**2)  # log N(x; mu_k, s^2 I) in 2-D
        return torch.logsumexp(log_n, 1) - math.log(8)  # log (1/8) sum_k N(x; mu_k, s^2 I)
    if name == "checkerboard":
        inside = (x.abs() < 4).all(1)
        cell = torch.floor(x / 2)
        black = (cell.sum(1) % 2) == 0
        return torch.where(inside & black, torch.full_like(x[:, 0], -math.log(32.0)),
                           torch.full_like(x[:, 0], -math.inf))  # uniform on area 8 * 2 * 2 = 32
    # rings
    r = x.norm(dim=1)
    radii = torch.tensor(RING_RADII, dtype=x.dtype, device=x.device)
    log_w = torch.log(radii / radii.sum())
    c = -0.5 * math.log(2 * math.pi * s**2)
    plus = log_w + c - (r[:, None] - radii) ** 2 / (2 * s**2)  # log w_k N(r; r_k, s^2)
    minus = log_w + c - (r[:, None] + radii) ** 2 / (2 * s**2)  # log w_k N(-r; r_k, s^2): the fold
    log_pr = torch.logsumexp(torch.cat([plus, minus], 1), 1)  # folded radial density p_r(r)
    return log_pr - torch.log(2 * math.pi * r)  # p(x) = p_r(|x|) / (2 pi |x|) (polar Jacobian r)


class Toy2dDataset(ArrayDataset):
    """Points [N, 2] of a toy set (unlabeled); ``log_prob(x)`` is the set's exact density (where known)."""

    def __init__(self, toy: str, x: torch.Tensor, split: str, noise: float | None):
        super().__init__(x, None, name=f"toy2d:{toy}", split=split, kind="points")
        self.toy = toy
        self.noise = noise

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) of the distribution this set was drawn from (UserError where none is known)."""
        return log_prob(self.toy, x, self.noise)


def load(toy: str, split: str, n: int = 10000, noise: float | None = None, seed: int = 0) -> Toy2dDataset:
    """``n`` points of ``toy2d:<toy>`` for ``split`` (an independent draw per split and seed)."""
    _check_name(toy)
    check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed must be an int, got {seed!r}")
    g = torch.Generator().manual_seed(3 * seed + _SPLIT_OFFSET[split])
    x = sample(toy, n, noise, g)
    return Toy2dDataset(toy, x, split, _noise(toy, noise))


def load_dataset(toy: str, split: str, **options) -> Toy2dDataset:
    """Dispatch used by :func:`mlcanon.data.load` (checks the option names)."""
    reject_options(f"toy2d:{toy}", options, ("n", "noise", "seed"))
    return load(toy, split, **options)
