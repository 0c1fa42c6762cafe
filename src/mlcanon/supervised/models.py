"""Classifier architectures by name: ``build_model(name, input_shape, num_classes, config) -> nn.Module``.

Every builder takes the input shape ``(C, H, W)``, the number of classes, and the classifier config (fields
``width``, ``depth``, ``dropout`` are read where they make sense) and returns a module mapping ``[B, C, H, W]``
to logits ``[B, num_classes]``. Add an architecture with one function and one line in ``MODELS``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mlcanon.errors import UserError


def mlp(input_shape: tuple[int, ...], num_classes: int, config) -> nn.Module:
    """Multilayer perceptron: depth x (Linear -> ReLU -> Dropout), then a linear head."""
    d_in = 1
    for s in input_shape:
        d_in *= s
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(config.depth):
        layers += [nn.Linear(d_in, config.width), nn.ReLU(), nn.Dropout(config.dropout)]  # h = relu(Wx + b)
        d_in = config.width
    layers.append(nn.Linear(d_in, num_classes))  # logits = W h + b
    return nn.Sequential(*layers)


class SimpleCNN(nn.Module):
    """Conv(3x3, same) -> BN -> ReLU -> MaxPool(2) blocks, global average pool, dropout, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int, depth: int, dropout: float):
        super().__init__()
        blocks: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            out = width * (2 ** i)
            blocks += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cnn(input_shape: tuple[int, ...], num_classes: int, config) -> nn.Module:
    """A small VGG-style CNN; ``depth`` conv blocks starting at ``width // 4`` channels (min 8)."""
    if len(input_shape) != 3:
        raise UserError(f"--model cnn needs image inputs [C, H, W]; this data set has shape {input_shape}")
    depth = max(1, min(config.depth, 3))
    return SimpleCNN(input_shape[0], num_classes, max(8, config.width // 4), depth, config.dropout)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, config) -> nn.Module:
    if name not in MODELS:
        raise UserError(f"--model {name!r}: unknown; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(input_shape), num_classes, config)
