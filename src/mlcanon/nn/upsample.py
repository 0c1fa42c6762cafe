"""Up-sampling by an integer factor s: nearest neighbour, bilinear, bed of nails, max unpooling, transposed conv.

- nearest:      y[i, j] = x[floor(i/s), floor(j/s)]
- bilinear:     source coordinate u = (i + 0.5)/s - 0.5 (half-pixel centres, torch's align_corners=False),
                y = (1-a)(1-b) x[i0,j0] + (1-a) b x[i0,j1] + a (1-b) x[i1,j0] + a b x[i1,j1]
- bed of nails: y[s*i, s*j] = x[i, j], zeros elsewhere
- max unpooling: y[idx] = x, where idx are the arg-max positions recorded by the matching max pool
- transposed convolution (learned): see :func:`mlcanon.nn.conv.conv_transpose2d`
"""

from __future__ import annotations

import torch
from torch import nn

from mlcanon.nn.conv import conv_transpose2d

__all__ = ["Upsample", "bed_of_nails", "max_unpool2d", "upsample_bilinear", "upsample_nearest"]


def _check_factor(scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"up-sampling factor must be an int >= 1, got {scale!r}")


def upsample_nearest(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """y[i, j] = x[floor(i/s), floor(j/s)]. Matches F.interpolate(mode='nearest')."""
    _check_factor(scale)
    return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def _linear_weights(n_in: int, scale: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    i = torch.arange(n_in * scale, device=device, dtype=torch.float64)
    u = ((i + 0.5) / scale - 0.5).clamp(min=0.0)  # source coordinate, half-pixel centres
    i0 = u.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    a = u - i0  # distance to the left neighbour
    return i0, i1, a


def upsample_bilinear(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Bilinear interpolation (separable: linear along rows, then along columns). Matches F.interpolate."""
    _check_factor(scale)
    H, W = x.shape[-2:]
    r0, r1, a = _linear_weights(H, scale, x.device)
    c0, c1, b = _linear_weights(W, scale, x.device)
    a = a.to(x.dtype).view(-1, 1)
    b = b.to(x.dtype)
    rows = (1 - a) * x[..., r0, :] + a * x[..., r1, :]  # (1-a) x[i0] + a x[i1]
    return (1 - b) * rows[..., c0] + b * rows[..., c1]  # (1-b) . + b .


def bed_of_nails(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """y[s*i, s*j] = x[i, j]; every other entry is zero."""
    _check_factor(scale)
    *lead, H, W = x.shape
    y = x.new_zeros(*lead, H * scale, W * scale)
    y[..., ::scale, ::scale] = x
    return y


def max_unpool2d(x: torch.Tensor, indices: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Put each value back where the matching max pool found it (flat H*W indices); zeros elsewhere."""
    N, C, h, w = x.shape
    if indices.shape != x.shape:
        raise ValueError(f"max_unpool2d: indices shape {list(indices.shape)} must equal input shape {list(x.shape)}")
    H, W = output_size
    y = x.new_zeros(N, C, H * W)
    y = y.scatter(2, indices.reshape(N, C, h * w), x.reshape(N, C, h * w))  # y[idx] = x
    return y.view(N, C, H, W)


class Upsample(nn.Module):
    """Up-sampling layer: mode 'nearest' | 'bilinear' | 'bed_of_nails' | 'transposed' (learned, needs channels)."""

    MODES = ("nearest", "bilinear", "bed_of_nails", "transposed")

    def __init__(self, scale: int = 2, mode: str = "nearest", channels: int | None = None):
        super().__init__()
        _check_factor(scale)
        if mode not in self.MODES:
            raise ValueError(f"Upsample: unknown mode {mode!r}; use one of {', '.join(self.MODES)}")
        self.scale, self.mode = scale, mode
        if mode == "transposed":
            if channels is None:
                raise ValueError("Upsample(mode='transposed') needs channels=")
            # kernel s, stride s: out = (H-1)s + s = sH
            self.conv = nn.ConvTranspose2d(channels, channels, scale, stride=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, sH, sW]."""
        if self.mode == "nearest":
            return upsample_nearest(x, self.scale)
        if self.mode == "bilinear":
            return upsample_bilinear(x, self.scale)
        if self.mode == "bed_of_nails":
            return bed_of_nails(x, self.scale)
        return conv_transpose2d(x, self.conv.weight, self.conv.bias, stride=self.scale)
