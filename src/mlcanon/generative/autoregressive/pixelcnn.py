"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu, ICML 2016, "Pixel Recurrent Neural Networks") and the
gated PixelCNN (van den Oord et al., NeurIPS 2016, "Conditional Image Generation with PixelCNN Decoders").

Both model binary images in raster order, p(x) = prod_i p(x_i | x_<i), with every conditional computed in one
convolutional pass (teacher forcing):

* ``pixelcnn``: a k x k masked convolution of type A (hides the centre pixel) then residual blocks of type-B
  masked convolutions (see :class:`mlcanon.nn.MaskedConv2d`), then 1 x 1 convolutions to one logit per pixel.
  Stacked masked kernels leave a BLIND SPOT: pixels above and to the right that the receptive field's bounding
  box contains but no path reaches (2016b, fig. 1, "blind spot").
* ``gated-pixelcnn``: two stacks per layer (2016b, section 2.2 and fig. 2). The vertical stack convolves with a
  (k/2 + 1) x k kernel over the rows at and above a pixel, and reaches the horizontal stack shifted down by one
  row, so pixel (i, j) gets every pixel of the rows above inside a growing cone: no blind spot. The horizontal
  stack convolves the row to the left ((1, k/2 + 1) kernel; the first layer shifted right by one so the pixel
  itself is hidden), with a residual connection. Gated activation units (eq. 2 and 4):

      y = tanh(W_f * x + V_f^T h) . sigmoid(W_g * x + V_g^T h)

  where h is a class embedding (class-conditional model, ``--conditional``).

Position (``--position``, on by default). A convolution is translation-equivariant and the zero padding of a
binary image is indistinguishable from blank pixels, so without help p(x_ij = 1 | blank context) would be the
same at the image centre as at its border. Both models therefore add two learned position terms: a feature map
e[c, i, j] added after the first layer (learned position embeddings, as GPT's; PixelCNN++, Salimans et al. 2017,
gives its convolutions the border through an extra channel of ones instead) and a per-pixel logit bias b_ij
initialized at the logit of the training marginals (MADE's output biases, Germain et al. 2015). Neither depends
on x, so the autoregressive property is untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.generative.autoregressive.binary_images import (
    BinaryImageConfig,
    ImageEvalOptions,
    ImageHooks,
    ImageSampleOptions,
    bernoulli_log_prob,
    init_bias_to_marginals,
    nll_loss,
    train_image_model,
)
from mlcanon.nn.masked import MaskedConv2d
from mlcanon.registry import register
from mlcanon.runs import Run
from mlcanon.training import LR_SCHEDULES


class _RasterModel(nn.Module):
    """log_prob / loss / pixel-by-pixel sampling shared by the two PixelCNNs (``logits(x, y)`` [B, 1, H, W])."""

    image_shape: tuple[int, ...]
    num_classes: int = 0
    pos_features: nn.Parameter | None
    pos_logit: nn.Parameter | None

    def _init_position(self, channels: int, position: bool) -> None:
        C, H, W = self.image_shape
        self.pos_features = nn.Parameter(torch.zeros(1, channels, H, W)) if position else None  # e[c, i, j]
        self.pos_logit = nn.Parameter(torch.zeros(1, C, H, W)) if position else None           # b_ij

    def init_from_data(self, x: torch.Tensor) -> None:
        """b_ij <- logit of the training marginal of pixel (i, j) (before training; a no-op without position)."""
        if self.pos_logit is not None:
            init_bias_to_marginals(self.pos_logit.data, x)

    def _add_position(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.pos_features is None else h + self.pos_features

    def _add_logit_bias(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.pos_logit is None else logits + self.pos_logit

    @property
    def generation_order(self) -> torch.Tensor:
        H, W = self.image_shape[1:]
        return torch.arange(H * W)                                   # raster order

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return bernoulli_log_prob(self.logits(x, y), x)             # sum_i log p(x_i | x_<i)

    def loss(self, batch: dict) -> dict:
        return nll_loss(self, batch)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """H W forward passes: pixel (i, j) ~ Bernoulli(sigmoid(logit_ij(x_<ij)))."""
        p0 = next(self.parameters())
        C, H, W = self.image_shape
        x = torch.zeros(n, C, H, W, device=p0.device, dtype=p0.dtype)
        u = torch.rand(n, C, H, W, generator=generator).to(p0.device, p0.dtype)
        if y is not None:
            y = y.to(p0.device)
        for i in range(H):
            for j in range(W):
                p = torch.sigmoid(self.logits(x, y)[:, :, i, j])
                x[:, :, i, j] = (u[:, :, i, j] < p).to(x.dtype)
        return x


class PixelCNN(_RasterModel):
    """Mask-A k x k input conv, ``layers`` residual blocks h + conv_B(relu(h)), two 1 x 1 convs to the logits."""

    def __init__(self, image_shape: Sequence[int], channels: int = 64, layers: int = 6, first_kernel: int = 7,
                 kernel: int = 3, position: bool = True):
        super().__init__()
        self.image_shape = tuple(image_shape)
        C = self.image_shape[0]
        self.input = MaskedConv2d(C, channels, first_kernel, "A")            # sees x_<i only
        self.blocks = nn.ModuleList(MaskedConv2d(channels, channels, kernel, "B") for _ in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, C, 1))
        self._init_position(channels, position)

    def logits(self, x: torch.Tensor, y=None) -> torch.Tensor:
        h = self._add_position(self.input(x))                                # + e[c, i, j]
        for conv in self.blocks:
            h = h + conv(F.relu(h))                                         # residual, mask B keeps causality
        return self._add_logit_bias(self.head(h))                            # 1 x 1: per-pixel, + b_ij


class GatedLayer(nn.Module):
    """One layer of the gated PixelCNN: (v, h) -> (v', h') with the vertical -> horizontal link."""

    def __init__(self, in_ch: int, ch: int, k: int, first: bool, num_classes: int = 0):
        super().__init__()
        self.k, self.first, self.ch = k, first, ch
        self.v_conv = nn.Conv2d(in_ch, 2 * ch, (k // 2 + 1, k))             # rows i - k/2 .. i
        self.h_conv = nn.Conv2d(in_ch, 2 * ch, (1, k // 2 + 1))             # cols j - k/2 .. j of row i
        self.v_to_h = nn.Conv2d(2 * ch, 2 * ch, 1)
        self.h_out = nn.Conv2d(ch, ch, 1)
        self.cond = nn.Embedding(num_classes, 4 * ch) if num_classes else None   # V^T h, per stack and gate

    @staticmethod
    def gate(a: torch.Tensor) -> torch.Tensor:
        f, g = a.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)                              # tanh(W_f x) . sigmoid(W_g x)

    def forward(self, v: torch.Tensor, h: torch.Tensor, y: torch.Tensor | None = None):
        k, H, W = self.k, v.shape[-2], v.shape[-1]
        v_pre = self.v_conv(F.pad(v, (k // 2, k // 2, k // 2, 0)))          # [B, 2c, H, W]: rows <= i
        v_down = F.pad(v_pre, (0, 0, 1, 0))[:, :, :H]                        # shift down: rows < i only
        h_in = F.pad(h, (1, 0))[..., :W] if self.first else h                # first layer: hide pixel (i, j)
        h_pre = self.h_conv(F.pad(h_in, (k // 2, 0))) + self.v_to_h(v_down)
        if self.cond is not None:
            if y is None:
                raise ValueError("this gated PixelCNN is class-conditional: pass labels y")
            cv, ch_ = self.cond(y)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + cv, h_pre + ch_
        v_out = self.gate(v_pre)
        h_out = self.h_out(self.gate(h_pre))
        if not self.first:
            h_out = h_out + h                                                # residual (horizontal stack)
        return v_out, h_out


class GatedPixelCNN(_RasterModel):
    """Vertical + horizontal stacks of gated layers (no blind spot), optionally class-conditional."""

    def __init__(self, image_shape: Sequence[int], channels: int = 64, layers: int = 6, first_kernel: int = 7,
                 kernel: int = 3, num_classes: int = 0, position: bool = True):
        super().__init__()
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        C = self.image_shape[0]
        self.layers = nn.ModuleList(
            GatedLayer(C if i == 0 else channels, channels, first_kernel if i == 0 else kernel, i == 0, num_classes)
            for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, C, 1))
        self._init_position(channels, position)

    def logits(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        v = h = x
        for i, layer in enumerate(self.layers):
            v, h = layer(v, h, y)
            if i == 0:
                v, h = self._add_position(v), self._add_position(h)          # + e[c, i, j] on both stacks
        return self._add_logit_bias(self.head(h))                            # + b_ij


# ------------------------------------------------------------------------------------------------ configs
@dataclasses.dataclass
class PixelCNNConfig(BinaryImageConfig):
    """PixelCNN on binary images: masked convolutions (A then B), residual blocks."""

    channels: int = option(64, "feature channels", min=1)
    layers: int = option(6, "residual blocks of mask-B convolutions", min=0)
    first_kernel: int = option(7, "kernel size of the mask-A input convolution (odd)", min=1)
    kernel: int = option(3, "kernel size of the mask-B convolutions (odd)", min=1)
    position: bool = option(True, "learned position terms: a feature map added after the first layer and a "
                                  "per-pixel logit bias started at the training marginals (off: translation-"
                                  "equivariant convolutions only)")
    batch_size: int = option(64, "global mini-batch size", min=1)
    epochs: int = option(8, "passes over the training set (the budget unless --max-steps is set)", min=1)
    lr: float = option(2e-3, "peak learning rate (Adam, decayed by --lr-schedule)", min=0.0)
    lr_schedule: str = option("cosine", "learning-rate decay after warm-up", choices=LR_SCHEDULES)

    def check(self) -> None:
        super().check()
        if self.first_kernel % 2 == 0 or self.kernel % 2 == 0:
            raise UserError(f"--first-kernel {self.first_kernel} / --kernel {self.kernel}: use odd sizes")


@dataclasses.dataclass
class GatedPixelCNNConfig(PixelCNNConfig):
    """Gated PixelCNN on binary images: vertical and horizontal stacks, gated units, optional class label."""

    layers: int = option(6, "gated layers (vertical + horizontal stacks)", min=1)
    conditional: bool = option(False, "class-conditional p(x | label) (needs --dataset mnist, which has labels)")

    def check(self) -> None:
        super().check()
        if self.conditional and self.dataset != "mnist":
            raise UserError(f"--conditional needs labels: use --dataset mnist (not {self.dataset})")


def build_pixelcnn(config: PixelCNNConfig) -> PixelCNN:
    return PixelCNN((1, 28, 28), config.channels, config.layers, config.first_kernel, config.kernel,
                    position=config.position)


def build_gated(config: GatedPixelCNNConfig) -> GatedPixelCNN:
    return GatedPixelCNN((1, 28, 28), config.channels, config.layers, config.first_kernel, config.kernel,
                         num_classes=10 if config.conditional else 0, position=config.position)


def train_pixelcnn(config: PixelCNNConfig, run: Run | None = None) -> dict:
    """Maximum likelihood (all conditionals in one pass); best by validation NLL."""
    run = Run.start("pixelcnn", config, run)
    return train_image_model("pixelcnn", config, run, build_pixelcnn(config),
                             init=_RasterModel.init_from_data)


def train_gated(config: GatedPixelCNNConfig, run: Run | None = None) -> dict:
    """Maximum likelihood of p(x) or p(x | label); best by validation NLL."""
    run = Run.start("gated-pixelcnn", config, run)
    return train_image_model("gated-pixelcnn", config, run, build_gated(config), conditional=config.conditional,
                             init=_RasterModel.init_from_data)


def _is_conditional(config) -> bool:
    return bool(getattr(config, "conditional", False))


pixelcnn_hooks = ImageHooks("pixelcnn", build_pixelcnn)
gated_hooks = ImageHooks("gated-pixelcnn", build_gated, conditional=_is_conditional)

_TINY = {"channels": 4, "layers": 1, "first_kernel": 3, "max_steps": 6, "batch_size": 16, "train_subset": 128,
         "eval_subset": 32, "eval_every": 3, "checkpoint_every": 3, "samples": 1}

register("pixelcnn", family="generative", config=PixelCNNConfig,
         description="PixelCNN: masked convolutions (A/B) with residual blocks on binary images",
         evaluate=pixelcnn_hooks.evaluate, sample=pixelcnn_hooks.sample, load=pixelcnn_hooks.load,
         eval_options=ImageEvalOptions, sample_options=ImageSampleOptions, tiny=_TINY)(train_pixelcnn)

register("gated-pixelcnn", family="generative", config=GatedPixelCNNConfig,
         description="gated PixelCNN: vertical + horizontal stacks (no blind spot), class-conditional option",
         evaluate=gated_hooks.evaluate, sample=gated_hooks.sample, load=gated_hooks.load,
         eval_options=ImageEvalOptions, sample_options=ImageSampleOptions, tiny=_TINY)(train_gated)
