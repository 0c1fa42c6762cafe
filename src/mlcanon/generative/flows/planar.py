"""Planar and radial flows on 2-D toy densities: ``mlcanon train planar-flow --dataset toy2d:8gaussians``.

Rezende & Mohamed 2015 ("Variational inference with normalizing flows") introduced these maps for the
sampling direction of a variational posterior; here they are fitted by maximum likelihood on data, so each
layer is applied in the normalizing direction x -> z (:class:`~mlcanon.generative.flows.layers.Planar`,
:class:`~mlcanon.generative.flows.layers.Radial`), and sampling inverts them (bisection for planar, a closed
form for radial). The model: an element-wise affine layer, then K planar / radial / alternating layers,
over N(0, I):

    log p(x) = log N(f_K o ... o f_1(x); 0, I) + sum_k log|det df_k/dh_{k-1}|
"""

from __future__ import annotations

import dataclasses

from mlcanon.config import option
from mlcanon.errors import UserError
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
from mlcanon.generative.flows.layers import Affine, Planar, Radial
from mlcanon.registry import register
from mlcanon.runs import Run


@dataclasses.dataclass
class PlanarConfig(FlowConfig):
    """A stack of planar and/or radial layers fitted to a 2-D toy density by maximum likelihood."""

    dataset: str = option("toy2d:8gaussians", "toy2d:<moons|8gaussians|checkerboard|swissroll|rings>")
    layers: int = option(32, "number K of planar / radial layers", min=1)
    kind: str = option("planar", "layer type: planar, radial, or both (alternating)",
                       choices=("planar", "radial", "both"))
    epochs: int = option(30, "passes over the training set", min=1)
    batch_size: int = option(256, "mini-batch size", min=1)
    lr: float = option(5e-3, "learning rate", min=0.0)

    def check(self) -> None:
        super().check()
        if self.is_image:
            raise UserError(f"planar-flow models 2-D toy sets (toy2d:<name>), not {self.dataset}")


def build(config: PlanarConfig, shape, image: bool) -> Flow:
    D = shape[0]
    kinds = {"planar": [Planar], "radial": [Radial], "both": [Planar, Radial]}[config.kind]
    layers = [Affine((D,))] + [kinds[k % len(kinds)](D) for k in range(config.layers)]
    return Flow(layers, shape)


def train(config: PlanarConfig, run: Run | None = None) -> dict:
    """Fit the planar / radial flow; test NLL, KL to the truth (closed-form sets), density and samples PNGs."""
    return train_flow("planar-flow", config, build, run)


BUILDERS["planar-flow"] = build
register("planar-flow", family="generative", config=PlanarConfig,
         description="planar / radial flow (Rezende & Mohamed 2015) fitted to 2-D toy densities",
         evaluate=evaluate_flow, sample=sample_flow, load=load_model, eval_options=FlowEvalOptions,
         sample_options=FlowSampleOptions,
         tiny={"dataset": "toy2d:8gaussians", "layers": 4, "kind": "both", "toy_points": 512, "max_steps": 8,
               "batch_size": 64, "checkpoint_every": 4})(train)
