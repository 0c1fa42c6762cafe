"""U-Net (Ronneberger et al. 2015): an encoder that halves the resolution ``depth`` times, a decoder that
doubles it back, and skip connections that concatenate each encoder level's features to the decoder's.

    e_0 = Block(x);  e_l = Block(Down(e_{l-1}))            l = 1..depth   (Down: 2x2 max pool)
    m   = Block(e_depth)                                   (bottleneck)
    d_l = Block(concat[Up(d_{l+1}), e_l])                  (Up: transposed conv, stride 2, doubles H and W)
    y   = Conv1x1(d_0)

Optional time-embedding hook (for diffusion models): ``time_dim`` > 0 makes ``forward(x, t)`` take a
[N] tensor of (float or int) times, embedded sinusoidally, passed through an MLP and added per channel in
every block (DDPM, Ho et al. 2020). ``cond_dim`` adds an extra vector conditioning the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.errors import UserError

__all__ = ["UNet", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N] -> [N, dim]: (sin(t w_k), cos(t w_k)), w_k = max_period^(-k/(dim/2))."""
    if dim % 2:
        raise UserError(f"timestep_embedding: dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs.view(1, -1)  # t * w_k
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _group_norm(channels: int, norm: str) -> nn.Module:
    if norm == "group":
        groups = math.gcd(8, channels)
        return nn.GroupNorm(groups, channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class _Block(nn.Module):
    """Two 3x3 convs with norm and SiLU; an optional embedding is added per channel between them."""

    def __init__(self, cin: int, cout: int, emb_dim: int, norm: str, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = _group_norm(cout, norm)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = _group_norm(cout, norm)
        self.emb = nn.Linear(emb_dim, cout) if emb_dim > 0 else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(emb)[:, :, None, None]  # h += W_t phi(t), broadcast over pixels
        return F.silu(self.norm2(self.conv2(self.dropout(h))))


class UNet(nn.Module):
    """Configurable U-Net: channels per level = base_channels * channel_mult[l]; H, W divisible by 2^depth."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32, depth: int = 2,
                 channel_mult: tuple[int, ...] | None = None, time_dim: int = 0, cond_dim: int = 0,
                 norm: str = "group", dropout: float = 0.0):
        super().__init__()
        if depth < 1:
            raise UserError(f"UNet: depth must be >= 1, got {depth}")
        if norm not in ("group", "batch", "none"):
            raise UserError(f"UNet: norm must be group, batch or none, got {norm!r}")
        mult = tuple(channel_mult) if channel_mult is not None else tuple(2 ** i for i in range(depth + 1))
        if len(mult) != depth + 1:
            raise UserError(f"UNet: channel_mult needs depth+1 = {depth + 1} entries, got {len(mult)}")
        ch = [base_channels * m for m in mult]
        self.depth, self.time_dim, self.cond_dim = depth, time_dim, cond_dim
        emb_dim = 4 * base_channels if (time_dim or cond_dim) else 0
        self.time_mlp = (nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                         if time_dim else None)
        self.cond_mlp = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in ch[:-1]:
            self.down.append(_Block(c_prev, c, emb_dim, norm, dropout))
            c_prev = c
        self.mid = _Block(ch[-2], ch[-1], emb_dim, norm, dropout)
        self.up_convs = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up_convs.append(nn.ConvTranspose2d(ch[level + 1], ch[level], 2, stride=2))  # H -> 2H
            self.up.append(_Block(2 * ch[level], ch[level], emb_dim, norm, dropout))  # after concat
        self.out = nn.Conv2d(ch[0], out_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """[N, C_in, H, W] (+ times [N], + cond [N, cond_dim]) -> [N, C_out, H, W]."""
        N, _C, H, W = x.shape
        k = 2 ** self.depth
        if H % k or W % k:
            raise UserError(f"UNet of depth {self.depth} needs H and W divisible by {k}; got {H}x{W} "
                            f"(pad the input or lower the depth)")
        emb = None
        if self.time_mlp is not None:
            if t is None:
                raise UserError("this UNet was built with time_dim > 0: call it as unet(x, t)")
            emb = self.time_mlp(timestep_embedding(t.reshape(-1).expand(N) if t.numel() == 1 else t,
                                                   self.time_dim))
        if self.cond_mlp is not None:
            if cond is None:
                raise UserError("this UNet was built with cond_dim > 0: call it as unet(x, t, cond)")
            c = self.cond_mlp(cond)
            emb = c if emb is None else emb + c
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2), emb)  # e_l = Block(Down(e_{l-1}))
            skips.append(h)
        h = self.mid(F.max_pool2d(h, 2), emb)  # bottleneck
        for up_conv, block in zip(self.up_convs, self.up):
            h = block(torch.cat([up_conv(h), skips.pop()], dim=1), emb)  # d_l = Block([Up(d_{l+1}), e_l])
        return self.out(h)
