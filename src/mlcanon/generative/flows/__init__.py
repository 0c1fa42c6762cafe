"""Normalizing flows: exact likelihoods by the change of variables (DESIGN.md section 5 for the convention).

- :mod:`.layers`: element-wise (affine, planar, radial, logit/sigmoid, dequantization), batch norm and ActNorm,
  invertible 1x1 convolution (plain, LU), squeeze, reverse, reshape; :class:`~.layers.FlowSequence`.
- :mod:`.coupling`: additive (NICE) and affine (RealNVP) couplings, checkerboard / channel masks, the
  multi-scale architecture. :mod:`.autoregressive`: MAF and IAF layers on MADE.
- :mod:`.flow`: :class:`~.flow.Flow` (layers over a ``torch.distributions`` base: log_prob, sample, loss).
- Models (registered): ``planar-flow`` (:mod:`.planar`), ``nice``, ``realnvp``, ``glow``, ``maf``, ``iaf``;
  their shared training / evaluation / pictures in :mod:`.common`.
"""
