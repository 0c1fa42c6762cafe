"""Autoregressive flow layers on MADE (:class:`mlcanon.generative.autoregressive.made.MADE`): MAF and IAF.

Both are the affine autoregressive map x_i = u_i exp(a_i) + m_i; they differ in what (m, a) depend on, which
decides which direction is one network pass and which needs D passes:

- MAF (Papamakarios et al. 2017, eq. 3-5): (m_i, a_i) = f(x_{<i}) of the DATA. Density (our ``forward``,
  x -> u): u_i = (x_i - m_i(x_{<i})) exp(-a_i), all i in one MADE pass, log|det du/dx| = -sum_i a_i.
  Sampling (``inverse``): x_i needs x_{<i}: D sequential passes.
- IAF (Kingma et al. 2016, eq. 10-11): (m_i, a_i) = f(z_{<i}) of the BASE variable. Sampling (``inverse``,
  z -> x): x = z exp(a(z)) + m(z) in one pass, log|det dx/dz| = sum_i a_i(z). Density (``forward``): z_i
  needs z_{<i}: D sequential passes.

The triangular Jacobian has diagonal exp(-a) (MAF forward) or exp(a) (IAF inverse), hence the log-dets. The
log-scale is soft-bounded, a = c tanh(a_raw / c) with c = 5, and the MADE's output layer starts at zero, so a
fresh layer is the identity. Stack layers with alternating "natural" / "reverse" orders (MAF section 3.1).
"""

from __future__ import annotations

from torch import nn

from mlcanon.generative.autoregressive.made import MADE
from mlcanon.generative.flows.layers import FlowLayer

SCALE_BOUND = 5.0


class _AutoregressiveAffine(FlowLayer):
    def __init__(self, dim: int, hidden: int = 64, hidden_layers: int = 2, order: str = "natural", seed: int = 0):
        super().__init__()
        self.dim = dim
        self.made = MADE(dim, (hidden,) * hidden_layers, out_multiplier=2, order=order, seed=seed)
        nn.init.zeros_(self.made.output.weight)     # start as the identity map
        nn.init.zeros_(self.made.output.bias)

    def _m_a(self, h):
        out = self.made(h)                                   # [B, 2, D]; out[:, :, i] depends on h_{<i}
        m, a_raw = out[:, 0], out[:, 1]
        return m, SCALE_BOUND * (a_raw / SCALE_BOUND).tanh()  # soft-bounded log-scale


class MAFLayer(_AutoregressiveAffine):
    """Masked autoregressive flow layer: one-pass density, D-pass sampling (see the module doc)."""

    def forward(self, x):
        m, a = self._m_a(x)
        u = (x - m) * (-a).exp()                          # u_i = (x_i - m_i(x_<i)) exp(-a_i(x_<i)), MAF eq. 5
        return u, -a.sum(1)                               # log|det du/dx| = -sum a_i

    def inverse(self, u):
        x = u.new_zeros(u.shape)
        for _ in range(self.dim):                         # pass k fixes the k-th variable in the order
            m, a = self._m_a(x)
            x = u * a.exp() + m                           # x_i = u_i exp(a_i) + m_i, MAF eq. 3
        return x, a.sum(1)


class IAFLayer(_AutoregressiveAffine):
    """Inverse autoregressive flow layer: one-pass sampling, D-pass density (see the module doc)."""

    def forward(self, x):
        z = x.new_zeros(x.shape)
        for _ in range(self.dim):                         # z_i = (x_i - m_i(z_<i)) exp(-a_i(z_<i))
            m, a = self._m_a(z)
            z = (x - m) * (-a).exp()
        return z, -a.sum(1)

    def inverse(self, z):
        m, a = self._m_a(z)
        return z * a.exp() + m, a.sum(1)                  # x = z exp(a(z)) + m(z), IAF eq. 10 (one pass)
