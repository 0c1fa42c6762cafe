"""Likelihood metrics: nats per example, bits per dimension with the dequantization correction, and the
importance-weighted (IWAE) bound computed in chunks.

Discrete images and continuous densities (Theis et al. 2016, "A note on the evaluation of generative models";
Papamakarios et al. 2017, MAF, appendix). An 8-bit image x in {0..255}^D is dequantized to
``y = lo + (hi - lo) (x + u) / 256`` with u ~ U[0, 1)^D and the model gives a density p(y). Then

    log P(x) = log E_u [ p(y) ((hi - lo) / 256)^D ] >= E_u log p(y) - D ln(256 / (hi - lo))   (Jensen)

so ``NLL_discrete <= NLL_continuous + D ln(256 / (hi - lo))`` and, for data scaled to [0, 1],

    bpd = (NLL_continuous + D ln 256) / (D ln 2).

With a logit pre-processing ``z = logit(alpha + (1 - 2 alpha) y)`` (RealNVP, Dinh et al. 2017, section 4.1)
the model's density is on z, and ``log p(y) = log p(z) + sum_i log |dz_i / dy_i|``: :func:`logit_transform`
returns that log-det, to be added before converting.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LN2 = math.log(2.0)


# ------------------------------------------------------------------------------- units and offsets
def nats_to_bits_per_dim(nll_nats, num_dims: int):
    """Convert a negative log-likelihood per example (nats) to bits per dimension: nll / (D ln 2)."""
    _check_dims(num_dims)
    return nll_nats / (num_dims * LN2)


def bits_per_dim_to_nats(bpd, num_dims: int):
    """Inverse of :func:`nats_to_bits_per_dim`: bpd * D ln 2 nats per example."""
    _check_dims(num_dims)
    return bpd * (num_dims * LN2)


def dequantization_offset(num_dims: int, bits: int = 8, data_range: float = 1.0) -> float:
    """D ln(2^bits / data_range): nats to add to a continuous NLL of uniformly dequantized ``bits``-bit data
    scaled to an interval of length ``data_range`` (1 for [0, 1], 2 for [-1, 1], 256 for [0, 256))."""
    _check_dims(num_dims)
    if bits < 1 or data_range <= 0:
        raise ValueError(f"bits must be >= 1 and data_range > 0, got {bits}, {data_range}")
    # change of variables from y to z = x + u in [0, 2^bits): |dy/dz| = range / 2^bits per dimension
    return num_dims * (bits * LN2 - math.log(data_range))


def discrete_nll(nll_continuous, num_dims: int, bits: int = 8, data_range: float = 1.0):
    """Upper bound (nats per example) on the discrete data's NLL: NLL_continuous + D ln(2^bits / range)."""
    return nll_continuous + dequantization_offset(num_dims, bits, data_range)


def bits_per_dim(nll_continuous, num_dims: int, bits: int = 8, data_range: float = 1.0):
    """bpd = (NLL_continuous + D ln(2^bits / range)) / (D ln 2); on [0, 1]: (NLL + D ln 256) / (D ln 2)."""
    return nats_to_bits_per_dim(discrete_nll(nll_continuous, num_dims, bits, data_range), num_dims)


def _check_dims(num_dims: int) -> None:
    if not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive int, got {num_dims!r}")


# ------------------------------------------------------------------------------ logit pre-processing
def logit_transform(y: torch.Tensor, alpha: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """z = logit(alpha + (1 - 2 alpha) y) for y in [0, 1] (RealNVP 4.1), and log|det dz/dy| per example.

    dz/dy = (1 - 2 alpha) / (p (1 - p)) with p = alpha + (1 - 2 alpha) y, so the log-det is
    sum_i [ln(1 - 2 alpha) - ln p_i - ln(1 - p_i)], summed over all but the first axis. Then
    log p(y) = log p(z) + logdet, i.e. NLL_y = NLL_z - logdet.
    """
    if not 0 <= alpha < 0.5:
        raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
    p = alpha + (1 - 2 * alpha) * y
    z = torch.log(p) - torch.log1p(-p)
    logdet = (math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
    return z, logdet


def logit_inverse(z: torch.Tensor, alpha: float = 0.05) -> torch.Tensor:
    """y = (sigmoid(z) - alpha) / (1 - 2 alpha), the inverse of :func:`logit_transform`."""
    return (torch.sigmoid(z) - alpha) / (1 - 2 * alpha)


# ------------------------------------------------------------------------------------- IWAE bound
def iwae_bound(log_w: torch.Tensor, dim: int = 0, chunk: int | None = None) -> torch.Tensor:
    """log (1/k) sum_i exp(log_w_i) along ``dim`` (Burda et al. 2016, eq. 8), by logsumexp.

    With ``chunk`` the k weights are reduced ``chunk`` at a time with a running logsumexp (the same result up
    to round-off); accumulation is in float64 and the result has ``log_w``'s dtype.
    """
    k = log_w.shape[dim]
    if k < 1:
        raise ValueError("need at least one importance weight")
    step = chunk or k
    acc = _LogSumExp()
    for part in torch.split(log_w, step, dim=dim):
        acc.add(part.double(), dim)
    return (acc.value - math.log(k)).to(log_w.dtype)


@torch.no_grad()
def iwae_log_prob(sample_log_w_fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, k: int,
                  chunk: int = 100) -> torch.Tensor:
    """The k-sample IWAE estimate of log p(x) per example, drawing the weights ``chunk`` at a time.

    ``sample_log_w_fn(x, n)`` returns [n, B] log-weights ``log p(x, z_i) - log q(z_i | x)`` for n fresh
    samples z_i ~ q(z | x). Only a [chunk, B] block is alive at a time, so k = 5000 fits in memory.
    """
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be >= 1, got {k}, {chunk}")
    acc, done, dtype = _LogSumExp(), 0, None
    while done < k:
        n = min(chunk, k - done)
        lw = sample_log_w_fn(x, n)
        if lw.ndim != 2 or lw.shape[0] != n:
            raise ValueError(f"sample_log_w_fn(x, {n}) must return [{n}, B] log-weights, "
                             f"got {tuple(lw.shape)}")
        dtype = lw.dtype
        acc.add(lw.double(), 0)
        done += n
    return (acc.value - math.log(k)).to(dtype)   # log (1/k) sum_i w_i


class _LogSumExp:
    """Running logsumexp over blocks: lse(A u B) = logaddexp(lse(A), lse(B))."""

    def __init__(self):
        self.value = None

    def add(self, block: torch.Tensor, dim: int) -> None:
        part = torch.logsumexp(block, dim=dim)
        self.value = part if self.value is None else torch.logaddexp(self.value, part)
