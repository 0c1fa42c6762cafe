"""IAF: inverse autoregressive flow (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016) as a density
model: ``mlcanon train iaf``.

The same MADE layers as MAF, but conditioned on the base side: sampling x = z exp(a(z)) + m(z) is one pass per
layer (:class:`~mlcanon.generative.flows.autoregressive.IAFLayer`), while the density needs D sequential passes
per layer - the opposite trade-off (see ``mlcanon bench`` entry ``flows-maf-vs-iaf``). Trained here by maximum
likelihood, which is practical for low-dimensional data (toy 2-D: two passes); on MNIST every training step
costs 784 passes per layer.
"""

from __future__ import annotations

import dataclasses

from mlcanon.generative.flows.common import (
    BUILDERS,
    FlowEvalOptions,
    FlowSampleOptions,
    evaluate_flow,
    load_model,
    sample_flow,
    train_flow,
)
from mlcanon.generative.flows.maf import MAFConfig, build_iaf
from mlcanon.registry import register
from mlcanon.runs import Run


@dataclasses.dataclass
class IAFConfig(MAFConfig):
    """IAF: K MADE layers with alternating orders, conditioned on the base variable (one-pass sampling)."""


def train(config: IAFConfig, run: Run | None = None) -> dict:
    """Fit IAF by maximum likelihood (sequential density); test NLL, KL to the truth on closed-form toys."""
    return train_flow("iaf", config, build_iaf, run)


BUILDERS["iaf"] = build_iaf
register("iaf", family="generative", config=IAFConfig,
         description="IAF: inverse autoregressive flow on MADE, fast sampling (Kingma et al. 2016)",
         evaluate=evaluate_flow, sample=sample_flow, load=load_model, eval_options=FlowEvalOptions,
         sample_options=FlowSampleOptions,
         tiny={"dataset": "toy2d:8gaussians", "layers": 2, "hidden": 16, "toy_points": 512, "max_steps": 8,
               "batch_size": 64, "checkpoint_every": 4})(train)
