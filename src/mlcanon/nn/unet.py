"""U-Net (Ronneberger et al. 2015): an encoder that halves the resolution ``depth`` times, a decoder that
doubles it back, and skip connections that concatenate each encoder level's features to the decoder's.

    e_0 = Block(x);  e_l = Block(Down(e_{l-1}))            l = 1..depth   (Down: 2x2 max pool)
    m   = Block(e_depth)                                   (bottleneck)
    d_l = Block(concat[Up(d_{l+1}), e_l])                  (Up: transposed conv, stride 2, doubles H and W)
    y   = Conv1x1(d_0)

Optional time-embedding hook (for diffusion models): ``time_dim`` > 0 makes ``forward(x, t)`` take a
[N] tensor of (float or int) times, embedded sinusoidally, passed through an MLP and added per channel in
every block (DDPM, Ho et al. 2020). ``cond_dim`` adds an extra vector conditioning the same way.

Diffusion options (off by default, so the plain U-Net is unchanged):

- ``residual=True``: pre-activation residual blocks (Ho et al. 2020, after Wide ResNets):
  ``h = Conv(SiLU(GN(x))) + W phi(t);  y = skip(x) + Conv(Dropout(SiLU(GN(h))))``, and GN + SiLU before the
  output convolution.
- ``attn_levels``: self-attention over the H*W positions after the block of each listed level (0 = full
  resolution, ``depth`` = bottleneck): ``y = x + W_o MHA(GN(x))`` (DDPM uses it at 16x16; low resolution
  keeps the (HW)^2 cost small).
- ``num_classes`` > 0: a class embedding E[y] added to the time embedding; label ``num_classes`` is the
  *null* label (no condition), used when ``y`` is None and for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.errors import UserError
from mlcanon.nn.attention import MultiHeadAttention

__all__ = ["SelfAttention2d", "UNet", "label_embedding", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N] -> [N, dim]: (sin(t w_k), cos(t w_k)), w_k = max_period^(-k/(dim/2))."""
    if dim % 2:
        raise UserError(f"timestep_embedding: dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs.view(1, -1)  # t * w_k
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def label_embedding(label_emb: nn.Embedding | None, num_classes: int, y: torch.Tensor | None, N: int,
                    device: torch.device, who: str = "UNet") -> torch.Tensor | None:
    """E[y] [N, emb] for labels y [N] in 0..num_classes, where row ``num_classes`` is the null label (used for every
    example when y is None: classifier-free guidance's unconditional branch); None for a net without labels."""
    if label_emb is None:
        if y is not None:
            raise ValueError(f"this {who} was built without num_classes: it takes no labels")
        return None
    if y is None:
        y = torch.full((N,), num_classes, dtype=torch.long, device=device)  # the null label
    elif y.shape != (N,):   # values are checked by the embedding lookup
        raise ValueError(f"{who}: labels must be [N] in 0..{num_classes} ({num_classes} = null), "
                         f"got shape {tuple(y.shape)}")
    return label_emb(y)  # E[y]


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


class _ResBlock(nn.Module):
    """Pre-activation residual block (DDPM): h = Conv(SiLU(GN(x))) + W phi(t); y = skip(x) + Conv(SiLU(GN(h)))."""

    def __init__(self, cin: int, cout: int, emb_dim: int, norm: str, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(cin, norm)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout) if emb_dim > 0 else None
        self.norm2 = _group_norm(cout, norm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()  # 1x1 projection when C changes

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]  # h += W_t SiLU(phi(t)), broadcast over pixels
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h  # y = x + F(x)


class SelfAttention2d(nn.Module):
    """Self-attention over the H*W positions of a feature map: y = x + W_o MHA(GN(x)) (DDPM's attention block)."""

    def __init__(self, channels: int, heads: int = 1, norm: str = "group"):
        super().__init__()
        if channels % heads:
            raise ValueError(f"SelfAttention2d: {channels} channels do not split into {heads} heads")
        self.norm = _group_norm(channels, norm)
        self.attn = MultiHeadAttention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        h = self.norm(x).reshape(N, C, H * W).transpose(1, 2)  # [N, HW, C]: one token per position
        h = self.attn(h)  # softmax(Q K^T / sqrt(d)) V over positions
        return x + h.transpose(1, 2).reshape(N, C, H, W)


class UNet(nn.Module):
    """Configurable U-Net: channels per level = base_channels * channel_mult[l]; H, W divisible by 2^depth."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32, depth: int = 2,
                 channel_mult: tuple[int, ...] | None = None, time_dim: int = 0, cond_dim: int = 0,
                 norm: str = "group", dropout: float = 0.0, *, residual: bool = False,
                 attn_levels: tuple[int, ...] = (), heads: int = 1, num_classes: int = 0):
        super().__init__()
        if depth < 1:
            raise UserError(f"UNet: depth must be >= 1, got {depth}")
        if norm not in ("group", "batch", "none"):
            raise UserError(f"UNet: norm must be group, batch or none, got {norm!r}")
        mult = tuple(channel_mult) if channel_mult is not None else tuple(2 ** i for i in range(depth + 1))
        if len(mult) != depth + 1:
            raise UserError(f"UNet: channel_mult needs depth+1 = {depth + 1} entries, got {len(mult)}")
        bad = [lv for lv in attn_levels if not 0 <= lv <= depth]
        if bad:
            raise ValueError(f"UNet: attn_levels {bad} outside 0..depth={depth}")
        if num_classes < 0:
            raise ValueError(f"UNet: num_classes must be >= 0, got {num_classes}")
        ch = [base_channels * m for m in mult]
        self.depth, self.time_dim, self.cond_dim = depth, time_dim, cond_dim
        self.num_classes, self.attn_levels = num_classes, tuple(sorted(set(attn_levels)))
        emb_dim = 4 * base_channels if (time_dim or cond_dim or num_classes) else 0
        self.time_mlp = (nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                         if time_dim else None)
        self.cond_mlp = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        # E[y] for y in 0..K-1, and row K = the null label (unconditional)
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        block = _ResBlock if residual else _Block

        def attn(level: int, c: int) -> nn.Module:
            return SelfAttention2d(c, heads, norm) if level in self.attn_levels else nn.Identity()

        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        c_prev = in_channels
        for level, c in enumerate(ch[:-1]):
            self.down.append(block(c_prev, c, emb_dim, norm, dropout))
            self.down_attn.append(attn(level, c))
            c_prev = c
        self.mid = block(ch[-2], ch[-1], emb_dim, norm, dropout)
        self.mid_attn = attn(depth, ch[-1])
        self.up_convs = nn.ModuleList()
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up_convs.append(nn.ConvTranspose2d(ch[level + 1], ch[level], 2, stride=2))  # H -> 2H
            self.up.append(block(2 * ch[level], ch[level], emb_dim, norm, dropout))  # after concat
            self.up_attn.append(attn(level, ch[level]))
        self.out_norm = nn.Sequential(_group_norm(ch[0], norm), nn.SiLU()) if residual else nn.Identity()
        self.out = nn.Conv2d(ch[0], out_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """[N, C_in, H, W] (+ times [N], + cond [N, cond_dim], + labels [N] with the null label
        ``num_classes`` allowed; None = all null) -> [N, C_out, H, W]."""
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
        c = label_embedding(self.label_emb, self.num_classes, y, N, x.device)
        if c is not None:
            emb = c if emb is None else emb + c  # emb += E[y]
        skips = []
        h = x
        for i, (block, attn) in enumerate(zip(self.down, self.down_attn)):
            h = attn(block(h if i == 0 else F.max_pool2d(h, 2), emb))  # e_l = Block(Down(e_{l-1}))
            skips.append(h)
        h = self.mid_attn(self.mid(F.max_pool2d(h, 2), emb))  # bottleneck
        for up_conv, block, attn in zip(self.up_convs, self.up, self.up_attn):
            h = attn(block(torch.cat([up_conv(h), skips.pop()], dim=1), emb))  # d_l = Block([Up(d_{l+1}), e_l])
        return self.out(self.out_norm(h))
