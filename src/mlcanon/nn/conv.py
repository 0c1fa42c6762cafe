"""Convolutions and pooling written from the equations (im2col via ``unfold``), with explicit backward passes.

Forward (cross-correlation, as in every deep-learning library), for input x [N, C, H, W], kernel
w [O, C, kh, kw], stride s, padding p, dilation d:

    y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * x_pad[n, c, s*i + d*u, s*j + d*v]
    H_out = floor((H + 2p - d*(kh - 1) - 1) / s) + 1

Backward (Goodfellow et al., Deep Learning, sec. 9.5; Dumoulin & Visin 2016):

- input gradient  dL/dx = FULL convolution of dL/dy (zeros inserted between its entries when s > 1) with
  the kernel rotated by 180 degrees and its in/out channels swapped: the transposed convolution.
- weight gradient dL/dw[o, c, u, v] = sum_{n, i, j} dL/dy[n, o, i, j] * x_pad[n, c, s*i + d*u, s*j + d*v],
  the correlation of the input with the output gradient.
- bias gradient   dL/db[o] = sum_{n, i, j} dL/dy[n, o, i, j].

A transposed convolution is exactly the input-gradient map of a convolution, so with stride 2 it doubles
the spatial size. Pooling: max (gradient routed only to the arg-max), average, and subsampling (keep every
s-th sample).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "avg_pool2d",
    "conv1d",
    "conv1x1",
    "conv2d",
    "conv2d_bias_grad",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "conv_output_size",
    "conv_transpose2d",
    "max_pool2d",
    "subsample2d",
]


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    if len(v) != 2 or any((not isinstance(e, int)) or e < 0 for e in v):
        raise TypeError(f"{name} must be a non-negative int or a pair of them, got {v!r}")
    return tuple(v)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """floor((size + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _resolve_padding(padding, kernel: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding; 'same' (stride 1) keeps the size, 'valid' is no padding."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("padding='same' needs stride 1 (as in torch); give an int padding instead")
        th, tw = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))  # total padding d(k-1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    if isinstance(padding, str):
        raise ValueError(f"padding {padding!r}: use 'same', 'valid', an int or a pair of ints")  # noqa: TRY004
    ph, pw = _pair(padding, "padding")
    return (pw, pw, ph, ph)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """2-D convolution (cross-correlation) by im2col: unfold patches, one matrix product. Matches F.conv2d."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    if C != Cg * groups or O % groups:
        raise ValueError(f"conv2d: input has {C} channels, weight expects {Cg * groups} (groups={groups})")
    s, d = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(s) < 1 or min(d) < 1:
        raise ValueError("conv2d: stride and dilation must be >= 1")
    pl, pr, pt, pb = _resolve_padding(padding, (kh, kw), s, d)
    xp = F.pad(x, (pl, pr, pt, pb))  # x_pad
    Ho = conv_output_size(H + pt + pb, kh, s[0], 0, d[0])
    Wo = conv_output_size(W + pl + pr, kw, s[1], 0, d[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: kernel {kh}x{kw} (dilation {d}) is larger than the padded input {H}x{W}")
    cols = F.unfold(xp, (kh, kw), dilation=d, stride=s)  # [N, C*kh*kw, Ho*Wo]: x_pad[n, c, s*i+d*u, s*j+d*v]
    cols = cols.reshape(N, groups, Cg * kh * kw, Ho * Wo)
    wmat = weight.reshape(groups, O // groups, Cg * kh * kw)
    y = torch.einsum("gok,ngkl->ngol", wmat, cols).reshape(N, O, Ho, Wo)  # sum_{c,u,v} w[o,c,u,v] * patch
    if bias is not None:
        y = y + bias.view(1, O, 1, 1)  # + b[o]
    return y


def conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1,
           padding=0, dilation: int = 1, groups: int = 1) -> torch.Tensor:
    """1-D convolution [N, C, L] * [O, C, k] as a 2-D one with height 1. Matches F.conv1d."""
    if isinstance(padding, int):
        padding = (0, padding)
    elif padding == "same":
        padding = "same"
    elif padding != "valid":
        raise ValueError(f"conv1d: padding {padding!r}: use 'same', 'valid' or an int")
    y = conv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, stride), padding, (1, dilation), groups)
    return y.squeeze(2)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """1x1 convolution = the same linear map W [O, C] applied at every pixel: y[n,:,i,j] = W x[n,:,i,j] + b."""
    w = weight.reshape(weight.shape[0], -1)
    y = torch.einsum("oc,nchw->nohw", w, x)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                     padding=0, output_padding=0, dilation=1) -> torch.Tensor:
    """Transposed convolution, weight [C_in, C_out, kh, kw] as in torch. Matches F.conv_transpose2d.

    Insert s-1 zeros between input entries, pad by d(k-1)-p on each side (+ output_padding at the end),
    then correlate (stride 1, dilation d) with the 180-degree-rotated kernel with in/out channels swapped.
    Output size: (H-1)*s - 2p + d(k-1) + output_padding + 1.
    """
    N, C, H, W = x.shape
    Ci, _O, kh, kw = weight.shape
    if C != Ci:
        raise ValueError(f"conv_transpose2d: input has {C} channels, weight expects {Ci}")
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    op = _pair(output_padding, "output_padding")
    if min(s) < 1 or min(d) < 1:
        raise ValueError("conv_transpose2d: stride and dilation must be >= 1")
    if op[0] >= max(s[0], d[0]) or op[1] >= max(s[1], d[1]):
        raise ValueError("conv_transpose2d: output_padding must be smaller than stride or dilation")
    z = x.new_zeros(N, C, (H - 1) * s[0] + 1, (W - 1) * s[1] + 1)
    z[:, :, :: s[0], :: s[1]] = x  # zeros inserted between entries (the stride-s "dilation" of dL/dy)
    eh, ew = d[0] * (kh - 1) - p[0], d[1] * (kw - 1) - p[1]  # full-convolution padding d(k-1) minus p
    z = F.pad(z, (ew, ew + op[1], eh, eh + op[0]))  # negative values crop
    w_rot = weight.flip(2, 3).transpose(0, 1)  # rotate 180 degrees, swap in/out: [C_out, C_in, kh, kw]
    return conv2d(z, w_rot, bias, 1, 0, d)


def conv2d_input_grad(grad_out: torch.Tensor, weight: torch.Tensor, input_shape, stride=1, padding=0,
                      dilation=1) -> torch.Tensor:
    """dL/dx of y = conv2d(x, w): full convolution of dL/dy with the rotated kernel (a transposed conv)."""
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    H, W = input_shape[-2:]
    Ho, Wo = grad_out.shape[-2:]
    kh, kw = weight.shape[-2:]
    # rows of x that no output reads (when (H + 2p - d(k-1) - 1) is not a multiple of s) get gradient 0
    oph = H - ((Ho - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + 1)
    opw = W - ((Wo - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + 1)
    N, O = grad_out.shape[:2]
    z = grad_out.new_zeros(N, O, (Ho - 1) * s[0] + 1, (Wo - 1) * s[1] + 1)
    z[:, :, :: s[0], :: s[1]] = grad_out
    eh, ew = d[0] * (kh - 1) - p[0], d[1] * (kw - 1) - p[1]
    z = F.pad(z, (ew, ew + opw, eh, eh + oph))
    w_rot = weight.flip(2, 3).transpose(0, 1)  # dL/dx = dL/dy (full-conv) rot180(w)
    return conv2d(z, w_rot, None, 1, 0, d)


def conv2d_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size, stride=1, padding=0,
                       dilation=1) -> torch.Tensor:
    """dL/dw[o,c,u,v] = sum_{n,i,j} dL/dy[n,o,i,j] x_pad[n,c,s*i+d*u,s*j+d*v]: correlate x with dL/dy."""
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    kh, kw = _pair(kernel_size, "kernel_size")
    # the correlation over (n, i, j): batch acts as the channel sum, dL/dy is the "kernel" dilated by s,
    # and the kernel offsets u, v are the output positions, sampled every d pixels (stride d).
    g = conv2d(x.transpose(0, 1), grad_out.transpose(0, 1), None, stride=d, padding=p, dilation=s)
    return g[:, :, :kh, :kw].transpose(0, 1).contiguous()  # [C, O, kh', kw'] -> [O, C, kh, kw]


def conv2d_bias_grad(grad_out: torch.Tensor) -> torch.Tensor:
    """dL/db[o] = sum_{n,i,j} dL/dy[n,o,i,j]."""
    return grad_out.sum(dim=(0, 2, 3))


def _pool_patches(x: torch.Tensor, kernel, stride, padding, fill: float) -> tuple[torch.Tensor, int, int]:
    N, C, H, W = x.shape
    k, p = _pair(kernel, "kernel_size"), _pair(padding, "padding")
    s = _pair(stride if stride is not None else k, "stride")
    xp = F.pad(x, (p[1], p[1], p[0], p[0]), value=fill)
    Ho, Wo = conv_output_size(H + 2 * p[0], k[0], s[0]), conv_output_size(W + 2 * p[1], k[1], s[1])
    cols = F.unfold(xp, k, stride=s).view(N, C, k[0] * k[1], Ho, Wo)  # one window per output pixel
    return cols, Ho, Wo


def max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0,
               return_indices: bool = False):
    """y = max over each window; with indices (flat H*W positions, as torch) for max unpooling."""
    _N, _C, _H, W = x.shape
    cols, Ho, Wo = _pool_patches(x, kernel_size, stride, padding, float("-inf"))
    y, arg = cols.max(dim=2)  # y[n,c,i,j] = max_{u,v} x[n,c,s*i+u,s*j+v]; gradient flows only to the argmax
    if not return_indices:
        return y
    k, p = _pair(kernel_size, "kernel_size"), _pair(padding, "padding")
    s = _pair(stride if stride is not None else kernel_size, "stride")
    u, v = arg // k[1], arg % k[1]
    rows = torch.arange(Ho, device=x.device).view(Ho, 1) * s[0] + u - p[0]
    colsi = torch.arange(Wo, device=x.device).view(1, Wo) * s[1] + v - p[1]
    return y, rows * W + colsi


def avg_pool2d(x: torch.Tensor, kernel_size, stride=None, padding: int = 0) -> torch.Tensor:
    """y = mean over each window (zero padding counted, as torch's default count_include_pad=True)."""
    cols, _, _ = _pool_patches(x, kernel_size, stride, padding, 0.0)
    return cols.mean(dim=2)  # y = (1/k^2) sum_{u,v} x[s*i+u, s*j+v]


def subsample2d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Subsampling pool: keep every ``factor``-th pixel (the top-left of each window)."""
    if factor < 1:
        raise ValueError(f"subsample2d: factor must be >= 1, got {factor}")
    return x[:, :, ::factor, ::factor]
