"""A normalizing flow: invertible layers f over a base distribution (a ``torch.distributions`` standard normal).

    log p(x) = log p_base(f(x)) + log|det df/dx|      (change of variables; Dinh et al. 2015, eq. 1)
    sampling: x = f^{-1}(T eps), eps ~ N(0, I)        (T = 1, or a temperature T < 1: Glow section 5)

Image flows model dequantized data y in [0, 1)^D (:func:`mlcanon.generative.flows.layers.dequantize`); their
``loss`` also reports bits/dim with the dequantization term D ln 256 (:mod:`mlcanon.metrics.likelihood`).
"""

from __future__ import annotations

import math

import torch
from torch import distributions as D
from torch import nn

from mlcanon.generative.flows.coupling import fused_vector_forward, has_fused_path
from mlcanon.generative.flows.layers import FlowLayer, FlowSequence
from mlcanon.metrics.likelihood import bits_per_dim

LOG_2PI = math.log(2 * math.pi)


class Flow(nn.Module):
    """``layers`` map data [B, *data_shape] to z [B, *z_shape] (the normalizing direction) over N(0, I).

    ``bits``: the data are dequantized ``bits``-bit values scaled to [0, 1) (images); then ``loss`` also
    logs ``bits_per_dim``. The base is a ``torch.distributions.Independent(Normal(0, 1), 1)`` over the
    flattened z, built from buffers so it follows the module's device and dtype.
    """

    def __init__(self, layers: list[FlowLayer], data_shape, z_shape=None, *, bits: int | None = None):
        super().__init__()
        self.flow = FlowSequence(layers)
        # vector couplings with an MLP conditioner (and the ActNorm after each) run as fused autograd nodes
        self._fused = any(has_fused_path(m) for m in self.flow.layers)
        self.data_shape = tuple(data_shape)
        self.z_shape = tuple(z_shape) if z_shape is not None else self.data_shape
        self.num_dims = math.prod(self.data_shape)
        if math.prod(self.z_shape) != self.num_dims:
            raise ValueError(f"z shape {self.z_shape} has another size than the data shape {self.data_shape}")
        self.bits = bits
        self.register_buffer("base_loc", torch.zeros(self.num_dims))
        self.register_buffer("base_scale", torch.ones(self.num_dims))

    @property
    def base(self) -> D.Distribution:
        return D.Independent(D.Normal(self.base_loc, self.base_scale, validate_args=False), 1, validate_args=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z = f(x), log|det df/dx|) per example."""
        if self._fused and x.dim() == 2:
            return fused_vector_forward(self.flow.layers, x)
        return self.flow(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x = f^{-1}(z), log|det df^{-1}/dz|) per example."""
        return self.flow.inverse(z)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) [B] in nats (a density on the data space; for images on dequantized [0, 1)^D)."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"expected data of shape [B, {', '.join(map(str, self.data_shape))}], got "
                             f"{tuple(x.shape)}")
        z, logdet = self(x)
        z = z.reshape(len(z), -1).to(self.base_loc.dtype)
        # log N(z; 0, I) = -1/2 |z|^2 - D/2 log 2 pi: self.base.log_prob(z) without two Distribution objects per call
        log_base = (z * z).sum(1).mul(-0.5).sub(0.5 * self.num_dims * LOG_2PI)
        return log_base + logdet                                                            # change of variables

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples x = f^{-1}(T eps), eps ~ N(0, I) (drawn from ``generator`` when given: repeatable)."""
        dev = generator.device if generator is not None else self.base_loc.device
        eps = torch.randn(n, self.num_dims, generator=generator, device=dev, dtype=self.base_loc.dtype)
        z = (temperature * eps).to(self.base_loc.device).view(n, *self.z_shape)
        return self.flow.inverse(z)[0]

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """{"loss": mean NLL in nats, "nll_nats", and "bits_per_dim" for dequantized images}."""
        x = batch["x"] if isinstance(batch, dict) else batch[0]
        B = x.shape[0]
        nll = -self.log_prob(x)
        assert nll.shape == (B,), nll.shape
        mean = nll.mean()
        out = {"loss": mean, "nll_nats": mean.detach()}
        if self.bits is not None:   # (NLL + D ln 2^bits) / (D ln 2): the dequantization term included
            out["bits_per_dim"] = bits_per_dim(out["nll_nats"], self.num_dims, self.bits)
        return out
