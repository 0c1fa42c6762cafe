"""Masked layers for autoregressive models: a weight multiplied by a fixed 0/1 mask keeps output i from
seeing the inputs that come at or after i in the chosen order.

- :class:`MaskedLinear`: y = (W * M) x + b (MADE, Germain et al. 2015, eq. 10-13; FVSBN's triangular W).
- :class:`MaskedConv2d`: a k x k convolution whose kernel sees only the pixels above and to the left of its
  centre in raster order (PixelCNN, van den Oord et al. 2016a, fig. 2): mask ``"A"`` (first layer) also hides
  the centre pixel, mask ``"B"`` (later layers) keeps it.
- :class:`CausalConv1d`: a dilated 1-D convolution padded on the left only, so y_t depends on
  x_{t - (k-1) d}, ..., x_t (WaveNet, van den Oord et al. 2016b, fig. 2-3); ``shift=1`` makes it strictly
  causal (y_t sees x_{<t}), for the first layer of a model of p(x_t | x_{<t}).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a 0/1 ``mask`` [out, in] buffer: y = (W * M) x + b."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mask: torch.Tensor | None = None):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones(out_features, in_features))
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask: torch.Tensor) -> None:
        if mask.shape != self.mask.shape:
            raise ValueError(f"mask must have shape {tuple(self.mask.shape)} [out, in], got {tuple(mask.shape)}")
        self.mask.copy_(mask.to(self.mask.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)   # y = (W * M) x + b


def raster_mask(kernel_size: int, mask_type: str) -> torch.Tensor:
    """[k, k] 0/1 mask of a PixelCNN kernel: rows above the centre, and the centre row left of the centre
    (plus the centre itself for mask ``"B"``)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    c = kernel_size // 2
    m = torch.zeros(kernel_size, kernel_size)
    m[:c, :] = 1                               # every row above the centre
    m[c, :c] = 1                               # the centre row, left of the centre
    if mask_type == "B":
        m[c, c] = 1                            # B: the centre pixel's own features (already causal)
    return m


class MaskedConv2d(nn.Conv2d):
    """PixelCNN's masked k x k convolution (same padding): mask "A" hides the centre, mask "B" keeps it.

    With a single-channel (binary) image there is no colour-channel ordering to mask; all input channels of a
    visible pixel are visible.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str = "B",
                 bias: bool = True, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                         bias=bias, dilation=dilation)
        self.mask_type = mask_type
        self.register_buffer("mask", raster_mask(kernel_size, mask_type)[None, None].expand_as(self.weight).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv(x, W * M). The rows of M below the centre are all zero, so only the top k//2 + 1 kernel rows are
        # convolved, over x padded above (and left/right) but not below: the same output for ~(k//2+1)/k of the
        # multiply-adds (a 3 x 3 kernel: 6 taps instead of 9).
        c = self.kernel_size[0] // 2
        p = self.dilation[0] * c
        w = self.weight[:, :, :c + 1] * self.mask[:, :, :c + 1]
        return F.conv2d(F.pad(x, (p, p, p, 0)), w, self.bias, dilation=self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask_type={self.mask_type!r}"


class CausalConv1d(nn.Conv1d):
    """Dilated causal convolution on [B, C, T]: y_t = sum_j W_j x_{t - shift - (k-1-j) d} (left zero padding).

    ``shift=0``: y_t sees x_{t-(k-1)d .. t}; ``shift=1``: y_t sees x_{<t} only (the first layer of an
    autoregressive model). The output has the input's length T.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 bias: bool = True, shift: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        if shift < 0:
            raise ValueError(f"shift must be >= 0, got {shift}")
        self.shift = shift
        self.left_pad = (kernel_size - 1) * dilation + shift

    @property
    def receptive_field(self) -> int:
        """Number of past-and-present time steps one output sees: (k - 1) d + 1."""
        return (self.kernel_size[0] - 1) * self.dilation[0] + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[-1]
        y = super().forward(F.pad(x, (self.left_pad, 0)))       # pad the past only
        return y[..., :T]                                       # with shift s, drop the last s outputs
