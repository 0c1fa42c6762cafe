"""RealNVP: real-valued non-volume preserving flow (Dinh, Sohl-Dickstein & Bengio 2017): ``mlcanon train realnvp``.

Affine couplings z = m x + (1 - m)(x exp(s(m x)) + t(m x)) with a bounded scale (eq. 6-9), masks alternating
between layers so every variable is transformed. Images use the multi-scale architecture (section 3.6): each
level is 3 checkerboard couplings, a squeeze (C x H x W -> 4C x H/2 x W/2), 3 channel couplings, and half of
the channels factored out; the last level is 4 checkerboard couplings. A normalization layer follows each
coupling: batch norm as a flow (section 3.7, the paper's choice), ActNorm, or none. Toy 2-D data: a stack of
couplings with alternating masks. Pre-processing of images: dequantization and logit with alpha (4.1).
"""

from __future__ import annotations

import dataclasses

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.generative.flows.common import (
    BUILDERS,
    IMAGE_SETS,
    FlowConfig,
    FlowEvalOptions,
    FlowSampleOptions,
    evaluate_flow,
    load_model,
    sample_flow,
    train_flow,
)
from mlcanon.generative.flows.coupling import (
    AffineCoupling,
    ConvNet,
    MLPNet,
    MultiScale,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from mlcanon.generative.flows.flow import Flow
from mlcanon.generative.flows.layers import ActNorm, BatchNormFlow, FlowSequence, Logit, Squeeze
from mlcanon.registry import register
from mlcanon.runs import Run


@dataclasses.dataclass
class RealNVPConfig(FlowConfig):
    """RealNVP: affine couplings, checkerboard and channel masks, squeeze, multi-scale (images)."""

    dataset: str = option("mnist", "data set: mnist, fashion-mnist, cifar10, or toy2d:<name>")
    levels: int = option(2, "images: scales of the multi-scale architecture (each but the last halves H, W)",
                         min=1)
    hidden: int = option(64, "hidden channels (images) or units (toys) of each coupling's network", min=1)
    couplings: int = option(8, "toys: number of affine coupling layers", min=1)
    norm: str = option("batchnorm", "normalization layer after each coupling",
                       choices=("batchnorm", "actnorm", "none"))
    epochs: int = option(10, "passes over the training set", min=1)

    def check(self) -> None:
        super().check()
        if self.is_image:
            _, H, W = IMAGE_SETS[self.dataset]
            if H % 2 ** (self.levels - 1) or W % 2 ** (self.levels - 1):
                raise UserError(f"--levels {self.levels}: {H}x{W} images cannot be squeezed {self.levels - 1} "
                                "times; use fewer levels")


def _norm(kind: str, channels: int) -> list:
    return {"batchnorm": [BatchNormFlow(channels)], "actnorm": [ActNorm(channels)], "none": []}[kind]


def image_levels(config: RealNVPConfig, shape) -> list[FlowSequence]:
    C, H, W = shape
    levels = []
    for level in range(config.levels):
        last = level == config.levels - 1
        steps = []
        for k in range(4 if last else 3):                 # checkerboard couplings, alternating parity
            steps += [AffineCoupling(checkerboard_mask(H, W, k % 2), ConvNet(C, config.hidden, 2), C),
                      *_norm(config.norm, C)]
        if not last:
            steps.append(Squeeze())                       # C x H x W -> 4C x H/2 x W/2
            C, H, W = 4 * C, H // 2, W // 2
            for k in range(3):                            # channel couplings, alternating halves
                steps += [AffineCoupling(channel_mask(C, k % 2), ConvNet(C, config.hidden, 2), C),
                          *_norm(config.norm, C)]
            C //= 2                                       # half of the channels factored out
        levels.append(FlowSequence(steps))
    return levels


def build(config: RealNVPConfig, shape, image: bool) -> Flow:
    if image:
        D = shape[0] * shape[1] * shape[2]
        return Flow([Logit(config.alpha), MultiScale(image_levels(config, shape), shape)], shape, (D,), bits=8)
    D = shape[0]
    layers = []
    for k in range(config.couplings):
        layers += [AffineCoupling(alternating_mask(D, k % 2), MLPNet(D, config.hidden, 2), D), *_norm(config.norm, D)]
    return Flow(layers, shape)


def train(config: RealNVPConfig, run: Run | None = None) -> dict:
    """Fit RealNVP by maximum likelihood; test NLL, bits/dim on images, pictures in the run folder."""
    return train_flow("realnvp", config, build, run)


BUILDERS["realnvp"] = build
register("realnvp", family="generative", config=RealNVPConfig,
         description="RealNVP: affine couplings, checkerboard/channel masks, multi-scale (Dinh et al. 2017)",
         evaluate=evaluate_flow, sample=sample_flow, load=load_model, eval_options=FlowEvalOptions,
         sample_options=FlowSampleOptions,
         tiny={"dataset": "mnist", "levels": 2, "hidden": 4, "train_subset": 64, "eval_subset": 32,
               "max_steps": 6, "batch_size": 16, "checkpoint_every": 3})(train)
