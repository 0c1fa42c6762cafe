"""Perceptron (Rosenblatt's learning rule) and the multi-layer perceptron; linear regions of 1-D ReLU nets.

- Perceptron: y_hat = step(w.x + b) with step(z) = 1[z >= 0]; on a mistake w += lr*(y - y_hat)*x,
  b += lr*(y - y_hat) (Rosenblatt 1958). Converges in finitely many updates on linearly separable data
  (Novikoff's theorem: at most (R/gamma)^2 mistakes), and cycles forever on XOR (not separable).
- MLP: h_{l+1} = sigma(W_l h_l + b_l); a single hidden layer already represents XOR.
- A shallow ReLU net f(x) = sum_j v_j relu(w_j x + b_j) + c on x in R is piecewise linear with a kink at
  each x_j = -b_j / w_j, so it has (number of ReLUs with distinct kinks in the interval) + 1 linear regions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MLP", "Perceptron", "count_linear_regions", "relu_kinks"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """An activation module by name (relu, tanh, sigmoid, gelu, silu, leaky_relu, elu, identity)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class Perceptron:
    """Rosenblatt's perceptron with a step activation, trained by the perceptron learning rule."""

    def __init__(self, in_features: int, lr: float = 1.0):
        if in_features < 1:
            raise ValueError(f"Perceptron: in_features must be >= 1, got {in_features}")
        self.w = torch.zeros(in_features, dtype=torch.float64)
        self.b = torch.zeros((), dtype=torch.float64)
        self.lr = lr

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """step(w.x + b) in {0, 1}."""
        return (x.to(torch.float64) @ self.w + self.b >= 0).to(torch.int64)  # y_hat = 1[w.x + b >= 0]

    def fit(self, x: torch.Tensor, y: torch.Tensor, max_epochs: int = 100) -> dict:
        """Cycle through the data applying the rule; stop after an epoch with no mistake.

        Returns ``{"converged": bool, "epochs": int, "updates": int}``.
        """
        N, _D = x.shape
        if y.shape != (N,):
            raise ValueError(f"Perceptron.fit: y must have shape [{N}], got {list(y.shape)}")
        if not torch.all((y == 0) | (y == 1)):
            raise ValueError("Perceptron.fit: labels must be 0 or 1")
        x = x.to(torch.float64)
        updates = 0
        for epoch in range(1, max_epochs + 1):
            mistakes = 0
            for i in range(N):
                err = float(y[i]) - float(self.predict(x[i]))  # y - y_hat in {-1, 0, 1}
                if err != 0:
                    self.w += self.lr * err * x[i]  # w += lr*(y - y_hat)*x
                    self.b += self.lr * err  # b += lr*(y - y_hat)
                    mistakes += 1
            updates += mistakes
            if mistakes == 0:
                return {"converged": True, "epochs": epoch, "updates": updates}
        return {"converged": False, "epochs": max_epochs, "updates": updates}


class MLP(nn.Module):
    """Fully connected net: in -> hidden... -> out, h_{l+1} = act(W_l h_l + b_l), optional dropout."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] | list[int], out_features: int,
                 act: str = "relu", dropout: float = 0.0, out_act: str = "identity"):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout}")
        sizes = [in_features, *hidden, out_features]
        if any(s < 1 for s in sizes):
            raise ValueError(f"MLP: every layer size must be >= 1, got {sizes}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))  # W_l h_l + b_l
            if i < len(sizes) - 2:
                layers.append(activation(act))  # sigma(.)
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        layers.append(activation(out_act))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in_features] -> [..., out_features]."""
        return self.net(x)


def relu_kinks(first: nn.Linear, lo: float, hi: float) -> torch.Tensor:
    """Kink locations x_j = -b_j / w_j of the ReLUs of a 1-D shallow net that fall inside (lo, hi), sorted."""
    if first.in_features != 1:
        raise ValueError(f"relu_kinks: the first layer must take 1 input, got {first.in_features}")
    w = first.weight.detach().reshape(-1).to(torch.float64)
    b = first.bias.detach().to(torch.float64)
    x = -b[w != 0] / w[w != 0]  # relu(w x + b) switches at w x + b = 0
    return torch.sort(x[(x > lo) & (x < hi)]).values


def count_linear_regions(f: Callable[[torch.Tensor], torch.Tensor], lo: float = -1.0, hi: float = 1.0,
                         n: int = 100_001, tol: float = 1e-6) -> int:
    """Count the linear pieces of a scalar function of one variable on [lo, hi] by counting slope changes.

    Samples f on a fine grid (float64), computes finite-difference slopes and counts the places where the
    slope changes by more than ``tol`` (each kink shows up in one or two adjacent slope differences, which
    are merged). Regions = kinks + 1.
    """
    if not hi > lo or n < 3:
        raise ValueError("count_linear_regions: need hi > lo and n >= 3")
    x = torch.linspace(lo, hi, n, dtype=torch.float64).unsqueeze(1)
    with torch.no_grad():
        y = f(x).reshape(-1).to(torch.float64)
    slope = torch.diff(y) / torch.diff(x.reshape(-1))  # (f(x_{k+1}) - f(x_k)) / dx
    scale = 1.0 + slope.abs().max()
    changed = (torch.diff(slope).abs() > tol * scale).to(torch.int64)
    # a kink strictly inside a grid cell changes the slope of that one cell: two adjacent flags -> one kink
    starts = changed.clone()
    starts[1:] &= 1 - changed[:-1]
    return int(starts.sum()) + 1
