"""NADE: the Neural Autoregressive Distribution Estimator (Larochelle & Murray, AISTATS 2011).

One hidden layer per conditional, with weights SHARED across the conditionals (eq. 5-6):

    h_i = sigmoid(a_i),   a_i = c + W_{:, <i} x_<i
    p(x_i = 1 | x_<i) = sigmoid(b_i + V_i . h_i)

The pre-activations obey the recursion a_1 = c, a_{i+1} = a_i + W_{:, i} x_i (section 3), so all D
conditionals cost O(D H) together instead of O(D^2 H). Training uses teacher forcing (every a_i from the TRUE
x_<i: an exclusive cumulative sum, the same recursion done by ``cumsum``); sampling runs the recursion one pixel
at a time, feeding each sampled x_i into a_{i+1}.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from mlcanon.config import option
from mlcanon.generative.autoregressive.binary_images import (
    BinaryImageConfig,
    ImageEvalOptions,
    ImageHooks,
    ImageSampleOptions,
    bernoulli_log_prob,
    nll_loss,
    train_image_model,
)
from mlcanon.registry import register
from mlcanon.runs import Run


class NADE(nn.Module):
    """NADE over D binary dims in raster order with H shared hidden units (parameters W, c, V, b)."""

    def __init__(self, image_shape: Sequence[int], hidden: int = 500):
        super().__init__()
        self.image_shape = tuple(image_shape)
        D = math.prod(image_shape)
        self.D, self.H = D, hidden
        self.W = nn.Parameter(torch.randn(hidden, D) / math.sqrt(D))     # input -> hidden, shared by every i
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(D, hidden) / math.sqrt(hidden))  # hidden -> output i
        self.b = nn.Parameter(torch.zeros(D))
        self.register_buffer("generation_order", torch.arange(D))

    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """a [B, D, H] with a_i = c + sum_{j<i} W_{:,j} x_j: the recursion a_{i+1} = a_i + W_{:,i} x_i as an
        exclusive cumulative sum over i (teacher forcing)."""
        B, D = x.shape
        assert D == self.D, (B, D)
        steps = x[:, :, None] * self.W.T[None]                      # [B, D, H]: W_{:,j} x_j
        a = torch.cumsum(steps, dim=1) - steps                      # exclusive: sum over j < i
        return a + self.c

    def logits(self, x: torch.Tensor, y=None) -> torch.Tensor:
        xf = x.reshape(x.shape[0], -1)
        h = torch.sigmoid(self.hidden_preactivations(xf))           # h_i = sigmoid(a_i)
        return torch.einsum("bdh,dh->bd", h, self.V) + self.b       # b_i + V_i . h_i

    def log_prob(self, x: torch.Tensor, y=None) -> torch.Tensor:
        return bernoulli_log_prob(self.logits(x), x.reshape(x.shape[0], -1))

    def loss(self, batch: dict) -> dict:
        return nll_loss(self, batch)

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sequential sampling with the O(H) update per pixel: a <- a + W_{:,i} x_i."""
        dev, dt = self.W.device, self.W.dtype
        x = torch.zeros(n, self.D, device=dev, dtype=dt)
        u = torch.rand(n, self.D, generator=generator).to(dev, dt)
        a = self.c.expand(n, self.H).clone()                        # a_1 = c
        for i in range(self.D):
            p = torch.sigmoid(self.b[i] + torch.sigmoid(a) @ self.V[i])   # p(x_i = 1 | x_<i)
            x[:, i] = (u[:, i] < p).to(dt)
            a += x[:, i:i + 1] * self.W[:, i]                         # a_{i+1} = a_i + W_{:,i} x_i
        return x.view(n, *self.image_shape)


@dataclasses.dataclass
class NADEConfig(BinaryImageConfig):
    """NADE on binary images (Larochelle & Murray 2011): shared weights, O(DH) likelihood."""

    hidden: int = option(500, "hidden units H (shared by all the conditionals)", min=1)
    batch_size: int = option(100, "global mini-batch size", min=1)


def build(config: NADEConfig) -> NADE:
    return NADE((1, 28, 28), config.hidden)


def train(config: NADEConfig, run: Run | None = None) -> dict:
    """Maximum likelihood with teacher forcing; best by validation NLL."""
    run = Run.start("nade", config, run)
    return train_image_model("nade", config, run, build(config))


hooks = ImageHooks("nade", build)

register("nade", family="generative", config=NADEConfig,
         description="NADE: shared-weight autoregressive net, O(DH) recursive hidden units, teacher forcing",
         evaluate=hooks.evaluate, sample=hooks.sample, load=hooks.load, eval_options=ImageEvalOptions,
         sample_options=ImageSampleOptions,
         tiny={"hidden": 16, "max_steps": 8, "batch_size": 32, "train_subset": 256, "eval_subset": 64,
               "eval_every": 4, "checkpoint_every": 4, "samples": 2})(train)
