"""Invertible layers of normalizing flows (everything but the coupling layers, in :mod:`.coupling`).

Convention (DESIGN.md section 5): ``forward(x) -> (z, logdet)`` maps data toward the base space (the
normalizing direction) with ``logdet = log|det dz/dx|`` per example ([B]); ``inverse(z) -> (x, logdet)`` maps
back, its logdet being ``log|det dx/dz| = -log|det dz/dx|`` at the same point. By the change of variables

    log p(x) = log p_base(f(x)) + log|det df/dx|                                (Dinh et al. 2015, eq. 1)

and a composition adds its layers' log-determinants (:class:`FlowSequence`).

Layers here: :class:`Affine` (element-wise scale and shift; NICE's diagonal scaling without the shift),
:class:`Planar` and :class:`Radial` (Rezende & Mohamed 2015; vectors), :class:`Logit` / :class:`Sigmoid`
(the logit pre-processing with alpha of RealNVP section 4.1) and :func:`dequantize`, :class:`BatchNormFlow`
(RealNVP 3.7, MAF 3.4), :class:`ActNorm` (Glow 3.1, data-dependent initialization kept in the state),
:class:`InvConv1x1` (Glow 3.2, plain and LU-decomposed), :class:`Squeeze`, :class:`Reverse`, :class:`Reshape`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.metrics.likelihood import logit_transform


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B]: the sum over every axis but the first."""
    return t.flatten(1).sum(1)


def _per_example(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A log-det that does not depend on the example (a scalar), repeated for each of x's B examples."""
    return value.to(x.dtype).expand(x.shape[0])


class FlowLayer(nn.Module):
    """An invertible map with a tractable log-determinant (see the module docstring for the convention)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class FlowSequence(FlowLayer):
    """f = f_K o ... o f_1: forward applies the layers in order, inverse in reverse; log-dets add up."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        lds = [x.new_zeros(x.shape[0])]
        for layer in self.layers:
            x, ld = layer(x)
            lds.append(ld)
        return x, torch.stack(lds).sum(0)   # log|det d(f_K..f_1)/dx| = sum_k log|det df_k/dh_{k-1}| (chain rule)

    def inverse(self, z):
        lds = [z.new_zeros(z.shape[0])]
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            lds.append(ld)
        return z, torch.stack(lds).sum(0)


# ------------------------------------------------------------------------------------------ element-wise
class Affine(FlowLayer):
    """z = x * exp(s) + t element-wise; log|det| = sum s (broadcast over the event).

    ``shape`` is the parameters' shape, broadcast against one example (``(D,)`` for vectors, ``(C, 1, 1)``
    per channel). With ``shift=False`` it is NICE's diagonal scaling layer z = S x (Dinh et al. 2015, 3.3).
    """

    def __init__(self, shape, shift: bool = True):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.shift = nn.Parameter(torch.zeros(shape)) if shift else None

    def _logdet(self, x):
        return _per_example(self.log_scale.expand(x.shape[1:]).sum(), x)

    def forward(self, x):
        z = x * torch.exp(self.log_scale)           # z = s x + t
        if self.shift is not None:
            z = z + self.shift
        return z, self._logdet(x)

    def inverse(self, z):
        x = z - self.shift if self.shift is not None else z
        return x * torch.exp(-self.log_scale), -self._logdet(z)   # x = (z - t) / s


class Planar(FlowLayer):
    """f(x) = x + u_hat tanh(w^T x + b) on vectors [B, D] (Rezende & Mohamed 2015, eq. 10).

    log|det df/dx| = log|1 + u_hat^T psi(x)|, psi = (1 - tanh^2(w^T x + b)) w   (eq. 11-12). The map is
    invertible when w^T u_hat >= -1 (appendix A.1): u_hat = u + (m(w^T u) - w^T u) w / |w|^2 with
    m(a) = -1 + softplus(a). The inverse has no closed form: a = w^T x solves the scalar equation
    w^T y = a + (w^T u_hat) tanh(a + b), increasing in a, found by bisection; then x = y - u_hat tanh(a + b).
    """

    def __init__(self, dim: int, init_scale: float = 0.5):
        super().__init__()
        self.u = nn.Parameter(init_scale * torch.randn(dim))
        self.w = nn.Parameter(init_scale * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w)   # w^T u_hat = m(w^T u) > -1

    def forward(self, x):
        u = self.u_hat()
        h = torch.tanh(x @ self.w + self.b)                 # [B]
        z = x + h[:, None] * u                              # eq. 10
        psi_u = (1 - h ** 2) * (self.w @ u)                 # u^T psi(x), eq. 11
        return z, torch.log(torch.abs(1 + psi_u))           # eq. 12

    def inverse(self, z, iterations: int = 100):
        u = self.u_hat()
        wu, c = (self.w @ u).detach().double(), (z @ self.w).detach().double()
        b = self.b.detach().double()
        lo, hi = c - wu.abs() - 1, c + wu.abs() + 1           # |tanh| < 1, so a = c - wu tanh(a + b) lies here
        for _ in range(iterations):                          # bisection on g(a) = a + wu tanh(a + b) - c
            mid = (lo + hi) / 2
            above = mid + wu * torch.tanh(mid + b) > c
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        a = ((lo + hi) / 2).to(z.dtype)
        x = z - torch.tanh(a + self.b)[:, None] * u           # x = y - u_hat h(w^T x + b)
        return x, -self.forward(x)[1]


class Radial(FlowLayer):
    """f(x) = x + beta h(alpha, r) (x - x0), h = 1 / (alpha + r), r = |x - x0| (Rezende & Mohamed 2015, eq. 14).

    log|det| = (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r), h' = -1/(alpha + r)^2 (eq. 15).
    alpha = softplus(.) > 0 and beta = -alpha + softplus(.) >= -alpha keep f invertible (appendix A.2). The
    inverse is closed-form: |y - x0| = r (1 + beta / (alpha + r)) gives r^2 + (alpha + beta - |y - x0|) r -
    alpha |y - x0| = 0, whose positive root is r; then x - x0 = (y - x0) / (1 + beta h(r)).
    """

    def __init__(self, dim: int, init_scale: float = 0.5):
        super().__init__()
        self.x0 = nn.Parameter(init_scale * torch.randn(dim))
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))

    def _alpha_beta(self):
        alpha = F.softplus(self.a)
        return alpha, -alpha + F.softplus(self.b)

    def forward(self, x):
        alpha, beta = self._alpha_beta()
        d = x - self.x0
        r = d.norm(dim=1)
        h = 1 / (alpha + r)
        z = x + (beta * h)[:, None] * d                                         # eq. 14
        D = x.shape[1]
        logdet = (D - 1) * torch.log1p(beta * h) + torch.log1p(beta * h - beta * r / (alpha + r) ** 2)  # eq. 15
        return z, logdet

    def inverse(self, z):
        alpha, beta = self._alpha_beta()
        dz = z - self.x0
        rz = dz.norm(dim=1)
        B = alpha + beta - rz
        disc = torch.sqrt(B ** 2 + 4 * alpha * rz)
        # positive root of r^2 + B r - alpha rz = 0, in the form without cancellation for either sign of B
        r = torch.where(B > 0, 2 * alpha * rz / (B + disc), (disc - B) / 2)
        x = self.x0 + dz / (1 + beta / (alpha + r))[:, None]
        return x, -self.forward(x)[1]


class Logit(FlowLayer):
    """y in [0, 1] -> z = logit(alpha + (1 - 2 alpha) y) element-wise (RealNVP, Dinh et al. 2017, 4.1).

    log|det dz/dy| = sum_i [ln(1 - 2 alpha) - ln p_i - ln(1 - p_i)], p = alpha + (1 - 2 alpha) y
    (:func:`mlcanon.metrics.likelihood.logit_transform`). alpha > 0 keeps z finite at y = 0 or 1.
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, y):
        return logit_transform(y, self.alpha)

    def inverse(self, z):
        a = self.alpha
        y = (torch.sigmoid(z) - a) / (1 - 2 * a)          # p = sigmoid(z), y = (p - alpha) / (1 - 2 alpha)
        # log|det dy/dz| = sum [log p + log(1 - p) - ln(1 - 2 alpha)], log p = logsigmoid(z)
        logdet = sum_except_batch(F.logsigmoid(z) + F.logsigmoid(-z) - math.log(1 - 2 * a))
        return y, logdet


class Sigmoid(FlowLayer):
    """z = sigmoid(x) element-wise, log|det| = sum log sigmoid(x) (1 - sigmoid(x)); the inverse is logit."""

    def forward(self, x):
        return torch.sigmoid(x), sum_except_batch(F.logsigmoid(x) + F.logsigmoid(-x))

    def inverse(self, z):
        x = torch.log(z) - torch.log1p(-z)
        return x, -sum_except_batch(F.logsigmoid(x) + F.logsigmoid(-x))


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None, bits: int = 8) -> torch.Tensor:
    """Uniform dequantization (Theis et al. 2016): x = k / (2^b - 1), k in {0..2^b - 1} -> y = (k + u) / 2^b.

    u ~ U[0, 1)^D, so y lies in [0, 1) and a density p(y) bounds the discrete likelihood:
    log P(k) >= E_u log p(y) - D ln 2^b (:mod:`mlcanon.metrics.likelihood`). ``generator`` may live on the CPU
    while x is on a GPU.
    """
    levels = 2 ** bits
    k = torch.round(x * (levels - 1))
    dev = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    return (k + u) / levels


# ------------------------------------------------------------------------------------------ normalization
def _channel_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector [C] shaped to broadcast against x [B, C] or [B, C, H, W]."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


def _spatial(x: torch.Tensor) -> int:
    return int(math.prod(x.shape[2:]))


class BatchNormFlow(FlowLayer):
    """Batch normalization as a bijection (RealNVP 3.7; MAF 3.4), per channel (dim 1):

        z = (x - mu) / sqrt(var + eps) * exp(log_gamma) + beta,
        log|det| = H W sum_c [log_gamma_c - 0.5 log(var_c + eps)].

    In training mode mu and var are the batch's (biased) statistics and update the running averages; in eval
    mode, and always in the inverse (sampling), the running averages are used, so eval-mode forward and
    inverse are exact inverses. The log-det treats the statistics as constants, as the papers do.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _stats(self, x):
        if not self.training:
            return self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        return mean, var

    def _logdet(self, var, x):
        return _per_example((self.log_gamma - 0.5 * torch.log(var + self.eps)).sum() * _spatial(x), x)

    def forward(self, x):
        mean, var = self._stats(x)
        xhat = (x - _channel_view(mean, x)) / torch.sqrt(_channel_view(var, x) + self.eps)
        z = xhat * _channel_view(torch.exp(self.log_gamma), x) + _channel_view(self.beta, x)
        return z, self._logdet(var, x)

    def inverse(self, z):
        mean, var = self.running_mean.to(z.dtype), self.running_var.to(z.dtype)
        xhat = (z - _channel_view(self.beta, z)) * _channel_view(torch.exp(-self.log_gamma), z)
        x = xhat * torch.sqrt(_channel_view(var, z) + self.eps) + _channel_view(mean, z)
        return x, -self._logdet(var, z)


class ActNorm(FlowLayer):
    """Per-channel affine z = (x - loc) * exp(log_scale) (Glow, Kingma & Dhariwal 2018, 3.1, table 1);
    log|det| = H W sum_c log_scale_c.

    Data-dependent initialization: the first forward pass sets loc = per-channel mean and
    log_scale = -log(std + eps) of that batch, so the output starts with zero mean and unit variance. The
    ``initialized`` flag is a buffer, saved in the state dict: a resumed or reloaded model is not
    re-initialized.
    """

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        self._known_initialized = False           # a Python copy of the flag: no tensor read per forward once set
        self._register_load_state_dict_pre_hook(self._forget_flag)

    def _forget_flag(self, *args, **kwargs):
        self._known_initialized = False           # load_state_dict may bring either value of the buffer

    def ready(self) -> bool:
        """Whether the data-dependent initialization is done (then forward is a fixed affine map)."""
        if not self._known_initialized and bool(self.initialized):
            self._known_initialized = True
        return self._known_initialized

    @torch.no_grad()
    def _initialize(self, x):
        dims = [0, *range(2, x.dim())]
        self.loc.copy_(x.mean(dims))
        self.log_scale.copy_(-torch.log(x.std(dims, unbiased=False) + self.eps))
        self.initialized.fill_(1)
        self._known_initialized = True

    def forward(self, x):
        if not self.ready():
            self._initialize(x)
        z = (x - _channel_view(self.loc, x)) * _channel_view(torch.exp(self.log_scale), x)
        ld = self.log_scale.sum()
        return z, _per_example(ld if x.dim() == 2 else ld * _spatial(x), x)   # H W sum_c log_scale_c

    def inverse(self, z):
        x = z * _channel_view(torch.exp(-self.log_scale), z) + _channel_view(self.loc, z)
        return x, _per_example(-self.log_scale.sum() * _spatial(z), z)


# ----------------------------------------------------------------------------------------- permutations
class InvConv1x1(FlowLayer):
    """Invertible 1x1 convolution z = W x at every pixel (Glow 3.2); log|det| = H W log|det W|.

    Plain: W is a free [C, C] matrix initialized as a random rotation, log|det W| by slogdet (O(C^3)).
    LU (``lu=True``, Glow eq. 10): W = P L (U + diag(s)) with P a fixed permutation, L unit lower triangular,
    U strictly upper triangular and s = sign(s) exp(log|s|); then log|det W| = sum log|s| (O(C)). Also acts
    on vectors [B, C] (a learned invertible linear map).
    """

    def __init__(self, num_channels: int, lu: bool = False):
        super().__init__()
        C = num_channels
        w = torch.linalg.qr(torch.randn(C, C))[0]          # a random rotation: det = +-1 at initialization
        self.lu = lu
        if not lu:
            self.weight = nn.Parameter(w)
            return
        P, L, U = torch.linalg.lu(w)
        s = torch.diagonal(U)
        self.register_buffer("P", P)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(C, C), -1))
        self.lower = nn.Parameter(L)
        self.upper = nn.Parameter(torch.triu(U, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight_matrix(self) -> torch.Tensor:
        if not self.lu:
            return self.weight
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        L = self.lower * self.lower_mask + eye
        U = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.P @ L @ U                                # Glow eq. 10

    def _log_abs_det(self) -> torch.Tensor:
        return self.log_s.sum() if self.lu else torch.linalg.slogdet(self.weight)[1]

    @staticmethod
    def _mix(W, x):
        return x @ W.T if x.dim() == 2 else torch.einsum("ij,bj...->bi...", W, x)

    def forward(self, x):
        return self._mix(self.weight_matrix(), x), _per_example(self._log_abs_det() * _spatial(x), x)

    def inverse(self, z):
        W_inv = torch.linalg.inv(self.weight_matrix())
        return self._mix(W_inv, z), _per_example(-self._log_abs_det() * _spatial(z), z)


class Squeeze(FlowLayer):
    """[B, C, H, W] -> [B, 4C, H/2, W/2]: each 2x2 block of pixels becomes 4 channels (RealNVP 3.6); a
    permutation, so log|det| = 0."""

    def forward(self, x):
        B, C, H, W = x.shape
        if H % 2 or W % 2:
            raise ValueError(f"Squeeze needs even height and width, got {H}x{W}")
        z = x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, 4 * C, H // 2, W // 2)
        return z, x.new_zeros(B)

    def inverse(self, z):
        B, C4, H2, W2 = z.shape
        x = z.view(B, C4 // 4, 2, 2, H2, W2).permute(0, 1, 4, 2, 5, 3).reshape(B, C4 // 4, 2 * H2, 2 * W2)
        return x, z.new_zeros(B)


class Reverse(FlowLayer):
    """Reverse the order of the features (dim 1): between autoregressive or coupling layers so that every
    variable gets transformed (MAF: "reversed orders between layers"); a permutation, log|det| = 0."""

    def forward(self, x):
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, z):
        return z.flip(1), z.new_zeros(z.shape[0])


class Reshape(FlowLayer):
    """[B, *in_shape] <-> [B, *out_shape] (e.g. an image flattened for MAF); log|det| = 0."""

    def __init__(self, in_shape, out_shape):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(f"cannot reshape {self.in_shape} to {self.out_shape}")

    def forward(self, x):
        return x.reshape(x.shape[0], *self.out_shape), x.new_zeros(x.shape[0])

    def inverse(self, z):
        return z.reshape(z.shape[0], *self.in_shape), z.new_zeros(z.shape[0])
