"""NICE: Non-linear Independent Components Estimation (Dinh, Krueger & Bengio 2015): ``mlcanon train nice``.

Additive couplings (eq. 6; volume preserving, log|det| = 0) with alternating halves (section 5.1), then the
diagonal scaling layer z = S x whose log|det| = sum_i log S_ii (section 3.3) - the only place the volume
changes. On images the input is dequantized and logit pre-processed (:mod:`.common`), then flattened:

    log p(x) = log p_base(S h_4) + sum_i log S_ii + logit log-det,   h_k = additive coupling k
"""

from __future__ import annotations

import dataclasses
import math

from mlcanon.config import option
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
from mlcanon.generative.flows.coupling import AdditiveCoupling, MLPNet, alternating_mask
from mlcanon.generative.flows.flow import Flow
from mlcanon.generative.flows.layers import Affine, Logit, Reshape
from mlcanon.registry import register
from mlcanon.runs import Run


@dataclasses.dataclass
class NICEConfig(FlowConfig):
    """NICE: additive couplings + diagonal scaling (the paper: 4 couplings, 5 hidden layers of 1000 units)."""

    couplings: int = option(4, "number of additive coupling layers (alternating halves)", min=1)
    hidden: int = option(256, "hidden units of each coupling's MLP", min=1)
    net_layers: int = option(4, "hidden layers of each coupling's MLP", min=1)
    batch_size: int = option(128, "mini-batch size", min=1)


def build(config: NICEConfig, shape, image: bool) -> Flow:
    D = math.prod(shape)
    layers = [Logit(config.alpha), Reshape(shape, (D,))] if image else []
    layers += [AdditiveCoupling(alternating_mask(D, k % 2), MLPNet(D, config.hidden, 1, config.net_layers))
               for k in range(config.couplings)]
    layers.append(Affine((D,), shift=False))          # diagonal scaling S (section 3.3)
    return Flow(layers, shape, (D,), bits=8 if image else None)


def train(config: NICEConfig, run: Run | None = None) -> dict:
    """Fit NICE by maximum likelihood; test NLL (and bits/dim on images)."""
    return train_flow("nice", config, build, run)


BUILDERS["nice"] = build
register("nice", family="generative", config=NICEConfig,
         description="NICE: additive coupling flow with diagonal scaling (Dinh et al. 2015)",
         evaluate=evaluate_flow, sample=sample_flow, load=load_model, eval_options=FlowEvalOptions,
         sample_options=FlowSampleOptions,
         tiny={"dataset": "toy2d:moons", "hidden": 16, "net_layers": 2, "toy_points": 512, "max_steps": 8,
               "batch_size": 64, "checkpoint_every": 4})(train)
