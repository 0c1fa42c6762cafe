"""Batch normalization, residual blocks and a small ResNet classifier (He et al. 2016).

- Batch norm (Ioffe & Szegedy 2015), per channel c over (N, H, W):
    train: mu_B = mean(x), var_B = mean((x - mu_B)^2)    (biased, used to normalize)
           running_mean <- (1-m) running_mean + m mu_B;  running_var <- (1-m) running_var + m var_B * n/(n-1)
    eval:  mu, var = running_mean, running_var
    y = gamma * (x - mu) / sqrt(var + eps) + beta
  Parameter and buffer names equal torch.nn.BatchNorm2d's, so its state_dict loads.
- Residual block: y = relu(F(x) + shortcut(x)), F = conv-bn-relu-conv-bn; shortcut is the identity, or a
  1x1 conv (+bn) when the shape changes. With ``rescale=True``: y = relu((F(x) + shortcut(x)) / sqrt(2)),
  which keeps the variance of the sum equal to that of its (independent, unit-variance) terms.
- A plain block is the same without the shortcut; stacking many plain blocks makes the gradient at the
  first layer vanish, the identity shortcuts give it a direct path (dL/dx = dL/dy (I + dF/dx)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BatchNorm2d", "ResNet", "ResidualBlock", "deep_conv_net"]


class BatchNorm2d(nn.Module):
    """Batch norm over (N, H, W) per channel, from the equations; torch's names (weight, bias, running_*)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize with batch statistics in training (and update the running ones), running ones in eval."""
        N, C, H, W = x.shape
        if self.training:
            n = N * H * W
            if n < 2:
                raise ValueError("BatchNorm2d in training mode needs more than one value per channel")
            mu = x.mean(dim=(0, 2, 3))  # mu_B
            var = x.var(dim=(0, 2, 3), unbiased=False)  # var_B (biased)
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mu)  # running <- (1-m) running + m mu_B
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))  # unbiased estimate for inference
                self.num_batches_tracked += 1
        else:
            mu, var = self.running_mean, self.running_var
        xhat = (x - mu.view(1, C, 1, 1)) / torch.sqrt(var.view(1, C, 1, 1) + self.eps)  # (x - mu)/sqrt(var+eps)
        return self.weight.view(1, C, 1, 1) * xhat + self.bias.view(1, C, 1, 1)  # gamma xhat + beta


def _norm(channels: int, norm: bool) -> nn.Module:
    return BatchNorm2d(channels) if norm else nn.Identity()


class ResidualBlock(nn.Module):
    """y = relu(F(x) + shortcut(x)) [/ sqrt(2)], F = conv3x3-bn-relu-conv3x3-bn; ``residual=False`` drops the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: bool = True,
                 rescale: bool = False, residual: bool = True):
        super().__init__()
        self.rescale, self.residual = rescale, residual
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=not norm)
        self.bn1 = _norm(out_channels, norm)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=not norm)
        self.bn2 = _norm(out_channels, norm)
        self.shortcut: nn.Module = nn.Identity()
        if residual and (stride != 1 or in_channels != out_channels):
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=not norm),
                                          _norm(out_channels, norm))  # projection shortcut W_s x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H/stride, W/stride]."""
        f = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))  # F(x)
        if not self.residual:
            return torch.relu(f)  # plain block
        y = f + self.shortcut(x)  # F(x) + x
        if self.rescale:
            y = y / math.sqrt(2.0)  # Var(a + b) = 2 Var -> rescale by 1/sqrt(2)
        return torch.relu(y)


class ResNet(nn.Module):
    """Small ResNet classifier: 3x3 stem, stages of residual blocks (stride 2 between), global pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, stages: int = 3,
                 blocks_per_stage: int = 2, norm: bool = True, rescale: bool = False, dropout: float = 0.0):
        super().__init__()
        if stages < 1 or blocks_per_stage < 1 or width < 1:
            raise ValueError("ResNet: width, stages and blocks_per_stage must all be >= 1")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=not norm), _norm(width, norm),
                                  nn.ReLU())
        blocks, c = [], width
        for s in range(stages):
            out = width * 2 ** s
            for b in range(blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(ResidualBlock(c, out, stride, norm=norm, rescale=rescale))
                c = out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> logits [N, num_classes]."""
        h = self.blocks(self.stem(x))
        h = h.mean(dim=(2, 3))  # global average pool
        return self.head(self.dropout(h))


def deep_conv_net(depth: int, channels: int = 8, residual: bool = True, norm: bool = False,
                  rescale: bool = False) -> nn.Sequential:
    """A stack of ``depth`` conv layers (depth//2 blocks of two convs), residual or plain, same size throughout."""
    if depth < 2 or depth % 2:
        raise ValueError(f"deep_conv_net: depth must be an even number >= 2, got {depth}")
    return nn.Sequential(*[ResidualBlock(channels, channels, 1, norm=norm, rescale=rescale, residual=residual)
                           for _ in range(depth // 2)])
