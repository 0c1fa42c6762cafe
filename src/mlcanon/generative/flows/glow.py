"""Glow: generative flow with invertible 1x1 convolutions (Kingma & Dhariwal 2018): ``mlcanon train glow``.

One step of flow (section 3, table 1): ActNorm -> invertible 1x1 convolution (plain or LU-decomposed,
eq. 10) -> affine coupling on the channel halves (images: the net sees the kept half, section 3.3,
``--coupling half``; run folders written before that option have the channel-mask coupling, ``masked``). Images: L levels (figure 2), each a squeeze, K steps, and
(but the last) half of the channels factored out, with the paper's learned prior N(mu(h), sigma(h)) of the
factored-out half given the kept half h (``--learned-prior``; off: N(0, I) as RealNVP). Sampling at temperature
T: x = f^{-1}(T eps) (section 5). Toy 2-D data: K
steps on the vector (the 1x1 convolution becomes a learned invertible 2x2 matrix). The run folder also
gets ``interpolation.png``: decoded linear paths between the latents of pairs of test digits (figure 5).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.generative.flows.common import (
    BUILDERS,
    IMAGE_SETS,
    FlowConfig,
    FlowEvalOptions,
    FlowSampleOptions,
    eval_tensor,
    evaluate_flow,
    load_model,
    load_split,
    sample_flow,
    save_interpolation,
    train_flow,
)
from mlcanon.generative.flows.coupling import (
    AffineCoupling,
    HalfAffineCoupling,
    MLPNet,
    MultiScale,
    alternating_mask,
    channel_mask,
    conditioner,
)
from mlcanon.generative.flows.flow import Flow
from mlcanon.generative.flows.layers import ActNorm, FlowSequence, InvConv1x1, Logit, Squeeze
from mlcanon.registry import register
from mlcanon.runs import Run


@dataclasses.dataclass
class GlowConfig(FlowConfig):
    """Glow: L levels of K steps (ActNorm, invertible 1x1 conv, affine coupling)."""

    dataset: str = option("mnist", "data set: mnist, fashion-mnist, cifar10, or toy2d:<name>")
    levels: int = option(2, "images: number L of levels (each squeezes; all but the last factor out half)", min=1)
    steps: int = option(8, "number K of flow steps per level (toys: in total)", min=1)
    hidden: int = option(128, "hidden channels (images) or units (toys) of each coupling's network", min=1)
    coupling: str = option("half", "images: 'half': each coupling's net sees the kept C/2 channels and outputs "
                                   "(s, t) for the other C/2 (Glow 3.3); 'masked': a channel-mask coupling whose "
                                   "net sees all C (masked) and outputs 2C (runs written before this option)",
                           choices=("half", "masked"), absent="masked")
    scale: str = option("auto", "coupling scale: 'sigmoid' = sigmoid(h + 2) as Glow's code (below 1: a coupling never "
                                "amplifies its input), 'tanh' = exp(c tanh(h)) as RealNVP (runs written before this "
                                "option); 'auto': sigmoid for images with --coupling half, tanh otherwise",
                        choices=("auto", "sigmoid", "tanh"), absent="tanh")
    lu: bool = option(True, "LU-decomposed 1x1 convolution (Glow eq. 10); false: a plain matrix with slogdet")
    learned_prior: bool = option(True, "images: each factored-out half ~ N(mu(h), sigma(h)) given the kept half h "
                                       "(a zero-initialized 3x3 conv, as Glow); false: N(0, I)")
    epochs: int = option(10, "passes over the training set", min=1)

    def check(self) -> None:
        super().check()
        if self.is_image:
            _, H, W = IMAGE_SETS[self.dataset]
            if H % 2 ** self.levels or W % 2 ** self.levels:
                raise UserError(f"--levels {self.levels}: {H}x{W} images cannot be squeezed {self.levels} times")
        if self.scale == "sigmoid" and not (self.is_image and self.coupling == "half"):
            raise UserError("--scale sigmoid is implemented for images with --coupling half; use --scale tanh "
                            "(or auto) here")

    @property
    def coupling_scale(self) -> str:
        """The scale the couplings use ('auto' resolved)."""
        if self.scale != "auto":
            return self.scale
        return "sigmoid" if self.is_image and self.coupling == "half" else "tanh"


def flow_step(channels: int, hidden: int, lu: bool, shape, coupling: str = "half", scale: str = "tanh") -> list:
    """ActNorm -> invertible 1x1 conv -> affine coupling (Glow table 1)."""
    if len(shape) == 3 and coupling == "half":
        return [ActNorm(channels), InvConv1x1(channels, lu=lu), HalfAffineCoupling(channels, hidden, scale)]
    mask = channel_mask(channels) if len(shape) == 3 else alternating_mask(channels)
    return [ActNorm(channels), InvConv1x1(channels, lu=lu),
            AffineCoupling(mask, conditioner(shape, hidden, 2), channels)]


def build(config: GlowConfig, shape, image: bool) -> Flow:
    if not image:
        D = shape[0]
        layers = []
        for _ in range(config.steps):
            layers += [ActNorm(D), InvConv1x1(D, lu=config.lu),
                       AffineCoupling(alternating_mask(D), MLPNet(D, config.hidden, 2), D)]
        return Flow(layers, shape)
    C, H, W = shape
    levels = []
    for level in range(config.levels):
        C, H, W = 4 * C, H // 2, W // 2                   # squeeze
        steps = [Squeeze()]
        for _ in range(config.steps):
            steps += flow_step(C, config.hidden, config.lu, (C, H, W), config.coupling, config.coupling_scale)
        levels.append(FlowSequence(steps))
        if level < config.levels - 1:
            C //= 2                                       # split: half the channels go to the base
    D = shape[0] * shape[1] * shape[2]
    return Flow([Logit(config.alpha), MultiScale(levels, shape, learned_prior=config.learned_prior)], shape,
                (D,), bits=8)


def train(config: GlowConfig, run: Run | None = None) -> dict:
    """Fit Glow by maximum likelihood; test NLL, bits/dim, samples and latent interpolations (images)."""
    out = train_flow("glow", config, build, run)
    if config.is_image and out["model"] is not None and "test_nll_nats" in out:
        test = load_split(config, "test", 16)
        y = eval_tensor(config, test.x, config.seed).to(out["model"].base_loc.device)
        save_interpolation(out["model"], y[0::2], y[1::2], Path(out["run_dir"]) / "interpolation.png")
    return out


BUILDERS["glow"] = build
register("glow", family="generative", config=GlowConfig,
         description="Glow: ActNorm, invertible 1x1 conv (LU), affine coupling, multi-scale (Kingma & Dhariwal 2018)",
         evaluate=evaluate_flow, sample=sample_flow, load=load_model, eval_options=FlowEvalOptions,
         sample_options=FlowSampleOptions,
         tiny={"dataset": "toy2d:moons", "steps": 2, "hidden": 8, "toy_points": 512, "max_steps": 8,
               "batch_size": 64, "checkpoint_every": 4})(train)
