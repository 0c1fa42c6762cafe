"""MAF: masked autoregressive flow (Papamakarios, Pavlakou & Murray 2017): ``mlcanon train maf``.

K layers of u = (x - m(x_<)) exp(-a(x_<)) on MADE (:class:`~mlcanon.generative.flows.autoregressive.MAFLayer`),
orders reversed between layers (section 3.1), optionally batch norm between them (section 3.4). Density
evaluation is one MADE pass per layer (fast: this is what MAF trains on); sampling needs D passes per layer.
Images are dequantized, logit pre-processed and flattened.
"""

from __future__ import annotations

import dataclasses
import math

from mlcanon.config import option
from mlcanon.generative.flows.autoregressive import IAFLayer, MAFLayer
from mlcanon.generative.flows.common import (
    BUILDERS,
    FlowConfig,
    FlowEvalOptions,
    FlowSampleOptions,
    evaluate_flow,
    load_model,
    sample_flow,
    train_flow,
)
from mlcanon.generative.flows.flow import Flow
from mlcanon.generative.flows.layers import BatchNormFlow, Logit, Reshape
from mlcanon.registry import register
from mlcanon.runs import Run


@dataclasses.dataclass
class MAFConfig(FlowConfig):
    """MAF (and IAF, which shares these fields): K MADE layers with alternating orders."""

    layers: int = option(5, "number K of autoregressive layers", min=1)
    hidden: int = option(128, "hidden units of each MADE layer", min=1)
    hidden_layers: int = option(2, "hidden layers of each MADE", min=1)
    batch_norm: bool = option(False, "batch norm as a flow between the autoregressive layers (MAF 3.4)")
    batch_size: int = option(128, "mini-batch size", min=1)


def build_autoregressive(config: MAFConfig, shape, image: bool, layer_cls) -> Flow:
    """Pre-processing (images), then K ``layer_cls`` layers with orders natural / reverse / natural / ..."""
    D = math.prod(shape)
    layers = [Logit(config.alpha), Reshape(shape, (D,))] if image else []
    for k in range(config.layers):
        layers.append(layer_cls(D, config.hidden, config.hidden_layers, order="natural" if k % 2 == 0 else "reverse",
                                seed=k))
        if config.batch_norm and k < config.layers - 1:
            layers.append(BatchNormFlow(D))
    return Flow(layers, shape, (D,), bits=8 if image else None)


def build(config: MAFConfig, shape, image: bool) -> Flow:
    return build_autoregressive(config, shape, image, MAFLayer)


def build_iaf(config: MAFConfig, shape, image: bool) -> Flow:
    return build_autoregressive(config, shape, image, IAFLayer)


def train(config: MAFConfig, run: Run | None = None) -> dict:
    """Fit MAF by maximum likelihood; test NLL (bits/dim on images, KL to the truth on closed-form toys)."""
    return train_flow("maf", config, build, run)


BUILDERS["maf"] = build
register("maf", family="generative", config=MAFConfig,
         description="MAF: masked autoregressive flow on MADE, fast density (Papamakarios et al. 2017)",
         evaluate=evaluate_flow, sample=sample_flow, load=load_model, eval_options=FlowEvalOptions,
         sample_options=FlowSampleOptions,
         tiny={"dataset": "toy2d:rings", "layers": 2, "hidden": 16, "toy_points": 512, "max_steps": 8,
               "batch_size": 64, "checkpoint_every": 4, "batch_norm": True})(train)
