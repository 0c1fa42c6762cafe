"""Coupling layers, their masks and conditioner networks, and the multi-scale architecture.

A coupling layer leaves the masked part x_a = m * x unchanged and transforms the rest with functions of x_a,
so its Jacobian is triangular and its inverse is explicit (Dinh et al. 2015, NICE, section 3.2):

- additive (NICE eq. 6): z = m x + (1 - m) (x + t(m x)),            log|det| = 0
- affine (RealNVP eq. 6-9): z = m x + (1 - m) (x exp(s(m x)) + t(m x)),  log|det| = sum (1 - m) s

with the scale bounded, s = c tanh(s_raw) with a learned per-channel c (RealNVP 4.1 uses a tanh-bounded
scale), so one step cannot blow up. Masks: :func:`checkerboard_mask` (spatial parity) and
:func:`channel_mask` (first / second half of the channels), :func:`alternating_mask` for vectors.
:class:`MultiScale` factors out half of the dimensions after each level (RealNVP 3.6, Glow figure 2).
On vectors, an affine coupling with an :class:`MLPNet` (and the ActNorm or BatchNormFlow after it) runs as one
autograd node with a hand-written backward (:func:`fused_vector_forward`, taken by ``Flow.forward``): the same
values as the modules, several times fewer tensor ops per training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.generative.flows.layers import ActNorm, BatchNormFlow, FlowLayer, FlowSequence, sum_except_batch


# ------------------------------------------------------------------------------------------------ masks
def checkerboard_mask(height: int, width: int, parity: int = 0) -> torch.Tensor:
    """[1, 1, H, W] with 1 where (i + j) % 2 == parity (RealNVP figure 3, left)."""
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((i + j) % 2 == parity).float().view(1, 1, height, width)


def channel_mask(channels: int, parity: int = 0) -> torch.Tensor:
    """[1, C, 1, 1] with 1 on the first half of the channels (parity 0) or the second (parity 1)
    (RealNVP figure 3, right)."""
    first = (torch.arange(channels) < channels // 2).float()
    return (first if parity == 0 else 1 - first).view(1, channels, 1, 1)


def alternating_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """[1, D] with 1 on the even (parity 0) or odd (parity 1) features: the vector checkerboard."""
    return ((torch.arange(dim) % 2) == parity).float().view(1, dim)


# ----------------------------------------------------------------------------------- conditioner networks
class MLPNet(nn.Module):
    """Conditioner for vectors: [B, D] -> [B, out_factor * D] (two hidden ReLU layers; the last layer starts
    at zero so that every coupling starts as the identity, as Glow 3.3)."""

    def __init__(self, dim: int, hidden: int, out_factor: int, layers: int = 2):
        super().__init__()
        mods, d = [], dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        last = nn.Linear(d, out_factor * dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*mods, last)
        self._linears = tuple(mods[0::2]) + (last,)   # a plain tuple: self.net[0::2] builds a new Sequential

    def forward(self, x):
        return self.net(x)

    def weights(self) -> list[torch.Tensor]:
        """[W_1, b_1, ..., W_L, b_L] of the linear layers, input to output (ReLU between them)."""
        return [p for lin in self._linears for p in (lin.weight, lin.bias)]


class ConvNet(nn.Module):
    """Conditioner for images: [B, C, H, W] -> [B, out_factor * C, H, W]: conv 3x3, ReLU, conv 1x1, ReLU,
    conv 3x3 (zero-initialized, Glow 3.3), the shape of Glow's NN()."""

    def __init__(self, channels: int, hidden: int, out_factor: int):
        super().__init__()
        last = nn.Conv2d(hidden, out_factor * channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)
        self._convs = (self.net[0], self.net[2], last)

    def forward(self, x):
        # channels-last (NHWC) convolutions are faster on CPU; ReLU in place (its backward needs only the output);
        # the output back in the default layout, so the element-wise coupling ops that follow run on dense memory
        c1, c2, c3 = self._convs
        h = c1(x.contiguous(memory_format=torch.channels_last)).relu_()
        return c3(c2(h).relu_()).contiguous()


def conditioner(shape: tuple[int, ...], hidden: int, out_factor: int) -> nn.Module:
    """An :class:`MLPNet` for an event shape (D,), a :class:`ConvNet` for (C, H, W)."""
    if len(shape) == 1:
        return MLPNet(shape[0], hidden, out_factor)
    return ConvNet(shape[0], hidden, out_factor)


# ------------------------------------------------------------------------------------------------ layers
class AdditiveCoupling(FlowLayer):
    """NICE's additive coupling (Dinh et al. 2015, eq. 6): z = m x + (1 - m) (x + t(m x)); volume preserving."""

    def __init__(self, mask: torch.Tensor, net: nn.Module):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = net

    def forward(self, x):
        m = self.mask.to(x.dtype)
        t = self.net(m * x)
        return x + (1 - m) * t, x.new_zeros(x.shape[0])           # log|det| = 0 (unit triangular Jacobian)

    def inverse(self, z):
        m = self.mask.to(z.dtype)
        return z - (1 - m) * self.net(m * z), z.new_zeros(z.shape[0])   # m z = m x, so t is recomputed exactly


class AffineCoupling(FlowLayer):
    """RealNVP's affine coupling (Dinh et al. 2017, eq. 9): z = m x + (1 - m) (x exp(s) + t), (s, t) from m x.

    s = c tanh(s_raw), c a learned per-channel bound (starts at 1), so exp(s) stays in [e^-c, e^c].
    log|det dz/dx| = sum (1 - m) s  (eq. 6: the Jacobian is triangular with diagonal exp(s) on the free part).
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, channels: int):
        super().__init__()
        self.register_buffer("mask", mask)
        self.register_buffer("free", 1 - mask, persistent=False)   # 1 - m, the transformed half
        self.net = net
        self.scale_bound = nn.Parameter(torch.ones(channels))

    def _free_s_t(self, xa):
        """(s, t) zeroed on the masked half: there exp(s) = 1 and t = 0 leave x_a as it is."""
        s_raw, t = self.net(xa).chunk(2, dim=1)
        free = self.free.to(xa.dtype)
        c = self.scale_bound.view(1, -1, *([1] * (xa.dim() - 2))) * free   # (1 - m) c, one per channel/feature
        return c * torch.tanh(s_raw), free * t                             # bounded log-scale s = c tanh(s_raw)

    def forward(self, x):
        if _fusable(self, x):                                     # vectors: one fused node, hand-written backward
            return _apply_blocks([(self, None)], x)
        s, t = self._free_s_t(self.mask.to(x.dtype) * x)
        z = x * torch.exp(s) + t                                  # eq. 9: m x + (1 - m)(x exp(s) + t)
        return z, sum_except_batch(s)                             # sum over the free half of s

    def inverse(self, z):
        s, t = self._free_s_t(self.mask.to(z.dtype) * z)          # m z = m x: the same (s, t)
        return (z - t) * torch.exp(-s), -sum_except_batch(s)      # x_b = (z_b - t) exp(-s)


class HalfAffineCoupling(FlowLayer):
    """Glow's affine coupling on the channel halves (Kingma & Dhariwal 2018, section 3.3, table 1), images only:

        x_a, x_b = split(x)           (the first and second half of the C channels)
        (s_raw, t) = NN(x_a)          (the net sees the C/2 kept channels and outputs C: s and t of x_b)
        y_b = exp(s) x_b + t,  s = c tanh(s_raw)   (a learned per-channel bound c, as :class:`AffineCoupling`)
        y = concat(x_a, y_b),  log|det dy/dx| = sum s

    The same map as an :class:`AffineCoupling` with ``channel_mask(C)``, whose net gets all C channels (the
    masked half zeroed) and outputs 2C; here the first and last convolutions do about half that work.

    ``scale="sigmoid"`` is the scale of Glow's released code (and normflows' Glow): (h, t) = NN(x_a),
    y_b = (x_b + t) sigmoid(h + 2), log|det| = sum log sigmoid(h + 2). The scale is below 1, so no coupling can
    amplify its input: with the exp(c tanh) scale a trained Glow multiplied one unusual MNIST image by up to
    e^1.7 per coupling, to activations of ~1,000 and ~10^5 bits/dim.
    """

    def __init__(self, channels: int, hidden: int, scale: str = "tanh"):
        super().__init__()
        if channels % 2:
            raise ValueError(f"HalfAffineCoupling needs an even number of channels, got {channels}")
        if scale not in ("tanh", "sigmoid"):
            raise ValueError(f"HalfAffineCoupling scale must be 'tanh' or 'sigmoid', got {scale!r}")
        self.half, self.scale = channels // 2, scale
        self.net = ConvNet(self.half, hidden, 2)                  # [B, C/2, H, W] -> [B, C, H, W]
        if scale == "tanh":
            self.scale_bound = nn.Parameter(torch.ones(self.half))

    def _s_t(self, xa):
        s_raw, t = self.net(xa).chunk(2, dim=1)                   # (log s, t) = NN(x_a)  (table 1)
        if self.scale == "sigmoid":
            return F.logsigmoid(s_raw + 2.0), t                   # log s = log sigmoid(h + 2)  (Glow's code)
        return self.scale_bound.view(1, -1, 1, 1) * torch.tanh(s_raw), t   # bounded log-scale s = c tanh(s_raw)

    def forward(self, x):
        xa, xb = x.split(self.half, dim=1)                        # x_a, x_b = split(x)
        s, t = self._s_t(xa)
        if self.scale == "sigmoid":
            yb = (xb + t) * torch.exp(s)                          # y_b = (x_b + t) * s  (Glow: z2 += shift; z2 *= scale)
        else:
            yb = torch.addcmul(t, xb, torch.exp(s))               # y_b = s * x_b + t, with s = exp(log s)
        return torch.cat((xa, yb), 1), sum_except_batch(s)        # y = concat(x_a, y_b); log|det| = sum log s

    def inverse(self, z):
        ya, yb = z.split(self.half, dim=1)                        # x_a = y_a, so NN(x_a) is recomputed exactly
        s, t = self._s_t(ya)
        if self.scale == "sigmoid":
            return torch.cat((ya, yb * torch.exp(-s) - t), 1), -sum_except_batch(s)   # x_b = y_b / s - t
        return torch.cat((ya, (yb - t) * torch.exp(-s)), 1), -sum_except_batch(s)   # x_b = (y_b - t) / s


def has_fused_path(layer) -> bool:
    """A vector coupling with an MLP conditioner: the layers :func:`fused_vector_forward` runs as one node."""
    return isinstance(layer, AffineCoupling) and isinstance(layer.net, MLPNet)


def _fusable(layer, x: torch.Tensor) -> bool:
    """:func:`has_fused_path` on vectors, outside autocast (its hand-written backward assumes one dtype)."""
    return has_fused_path(layer) and x.dim() == 2 and not torch.is_autocast_enabled(x.device.type)


def fused_vector_forward(layers, x: torch.Tensor):
    """(z, log|det|) of a stack of vector layers, each run of [AffineCoupling with an MLPNet, optionally followed
    by an initialized ActNorm or a BatchNormFlow] going through :class:`_MLPCouplingBlocks` (one autograd node
    for the whole run); other layers run as they are. The same values as running the layers one after the other."""
    items, i, n = [], 0, len(layers)          # items: a layer, or a list of (coupling, norm | None) blocks
    while i < n:
        layer = layers[i]
        if not _fusable(layer, x):
            items.append(layer)
            i += 1
            continue
        nxt = layers[i + 1] if i + 1 < n else None
        norm = nxt if (isinstance(nxt, ActNorm) and nxt.ready()) or isinstance(nxt, BatchNormFlow) else None
        if items and isinstance(items[-1], list):
            items[-1].append((layer, norm))
        else:
            items.append([(layer, norm)])
        i += 2 if norm is not None else 1
    lds = []
    for item in items:
        if isinstance(item, list):
            x, ld = _apply_blocks(item, x)
        else:
            x, ld = item(x)
        lds.append(ld)
    return x, (lds[0] if len(lds) == 1 else torch.stack(lds).sum(0))


def _apply_blocks(blocks, x: torch.Tensor):
    layout, params = [], []
    for coupling, norm in blocks:
        weights = coupling.net.weights()
        layout.append((coupling.mask.to(x.dtype), coupling.free.to(x.dtype), len(weights) // 2, norm))
        params += [coupling.scale_bound, *weights]
        if isinstance(norm, ActNorm):
            params += [norm.loc, norm.log_scale]
        elif norm is not None:
            params += [norm.log_gamma, norm.beta]
    return _MLPCouplingBlocks.apply(x, tuple(layout), *params)


class _MLPCouplingBlocks(torch.autograd.Function):
    """A run of blocks on vectors [B, D], each an :class:`AffineCoupling` with an :class:`MLPNet` conditioner,
    optionally followed by an :class:`ActNorm` or a :class:`BatchNormFlow`, as one autograd node with a hand-written backward: the same
    values as the modules' autograd path in a handful of tensor ops per block (a toy flow's training step is
    per-op overhead more than arithmetic).

    Forward of one block (m the mask, f = 1 - m, c the scale bound, h_0 = m x, h_l = relu(h_{l-1} W_l^T + b_l)):
        [s_raw, t] = h_{L-1} W_L^T + b_L,  s = f c tanh(s_raw),  z = x e^s + f t,  ld = sum_j s_j   (eq. 6-9)
        ActNorm (Glow 3.1): y = (z - loc) e^{ls},  ld += sum_j ls_j
        BatchNormFlow (RealNVP 3.7): r = (var + eps)^(-1/2), zh = (z - mu) r, y = zh e^{lg} + beta,
            ld += sum_j [lg_j + log r_j]; mu, var: the batch's (training; running averages updated) or the running
    Backward of one block from dy = dL/dy and dld = dL/dld (chain rule), last block first:
        ActNorm: dz = dy e^{ls},  dloc = -sum_b dz,  dls = sum_b dy y + sum_b dld
        BatchNormFlow: dbeta = sum_b dy,  dlg = e^{lg} sum_b dy zh + sum_b dld,  g = dy e^{lg};  with batch
            statistics (Ioffe & Szegedy 2015, sec. 3; var's term in ld: dld/dz = -sum_b dld zh r / B)
            dz = r (g - mean_b g - zh (mean_b g zh + sum_b dld / B)),  else dz = g r
        ds = dz x e^s + dld                          (dz_j/ds_j = x_j e^{s_j}, dld/ds_j = 1)
        dc = sum_b ds f tanh(s_raw),  ds_raw = ds f c (1 - tanh^2(s_raw)),  dt = dz f
        MLP (Rumelhart et al. 1986): dW_l = delta_l^T h_{l-1}, db_l = sum_b delta_l,
            delta_{l-1} = (delta_l W_l) 1[h_{l-1} > 0],  delta_L = [ds_raw, dt]
        dx = dz e^s + m (delta_1 W_1)                 (x enters z directly and through h_0 = m x)
    ``layout``: per block (m, f, L, the norm module or None); ``params``: per block c, W_1, b_1, ..., W_L, b_L,
    then loc, ls (ActNorm) or lg, beta (BatchNormFlow).
    First-order only (``once_differentiable``): the saved activations carry no graph for a second derivative.
    """

    @staticmethod
    def forward(ctx, x, layout, *params):
        D, k, ld, acts = x.shape[1], 0, None, []
        xs = [x]
        for mask, free, L, norm in layout:
            c, weights = params[k], params[k + 1:k + 1 + 2 * L]
            hs = [x * mask]                                          # h_0 = m x
            for i in range(L - 1):
                hs.append(F.linear(hs[-1], weights[2 * i], weights[2 * i + 1]).relu_())   # relu(h W^T + b)
            W, b = weights[-2], weights[-1]                          # s_raw, t by two products: contiguous
            s_raw, t = F.linear(hs[-1], W[:D], b[:D]), F.linear(hs[-1], W[D:], b[D:])  # (chunk views are slow)
            th = torch.tanh(s_raw)
            fc = c.view(1, -1) * free                                # (1 - m) c
            s = th * fc                                              # s = (1 - m) c tanh(s_raw)
            es = torch.exp(s)
            xe = x * es
            x = torch.addcmul(xe, t, free)                           # z = x e^s + (1 - m) t   (eq. 9)
            ld = s.sum(1) if ld is None else ld.add_(s.sum(1))       # log|det| += sum (1 - m) s   (eq. 6)
            k += 1 + 2 * L
            normed = None
            if isinstance(norm, ActNorm):
                loc, log_scale = params[k], params[k + 1]
                e = torch.exp(log_scale)
                x = (x - loc) * e                                    # y = (z - loc) e^{ls}
                ld.add_(log_scale.sum())                             # log|det| += sum ls
                normed = (e,)
            elif norm is not None:
                log_gamma, beta = params[k], params[k + 1]
                mean, var = norm._stats(x)                           # batch's (and running update) or running
                r = torch.rsqrt(var + norm.eps)
                zh = (x - mean) * r                                  # (z - mu) / sqrt(var + eps)
                e = torch.exp(log_gamma)
                x = torch.addcmul(beta, zh, e)                       # y = zh e^{lg} + beta
                ld.add_(log_gamma.sum() + r.log().sum())             # log|det| += sum [lg - 1/2 log(var + eps)]
                normed = (e, zh, r, norm.training)
            k += 0 if norm is None else 2
            acts.append((hs, th, fc, es, xe, normed))
            xs.append(x)
        ctx.save_for_backward(*params)
        ctx.layout, ctx.acts, ctx.xs = layout, acts, xs              # intermediates (not inputs) kept on ctx
        return x, ld

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dld):
        params, layout, acts, xs = ctx.saved_tensors, ctx.layout, ctx.acts, ctx.xs
        grads = [None] * len(params)
        ends, k = [], 0
        for _, _, L, norm in layout:                                 # where each block's parameters start
            ends.append(k)
            k += 1 + 2 * L + (0 if norm is None else 2)
        dld_col, dld_sum = dld.unsqueeze(1), dld.sum()
        for j in range(len(layout) - 1, -1, -1):
            mask, free, L, norm = layout[j]
            hs, th, fc, es, xe, normed = acts[j]
            k = ends[j]
            weights = params[k + 1:k + 1 + 2 * L]
            if isinstance(norm, ActNorm):
                dz = dy * normed[0]                                  # dz = dy e^{ls}
                grads[k + 1 + 2 * L] = dz.sum(0).neg_()              # dloc = -sum_b dz
                grads[k + 2 + 2 * L] = (dy * xs[j + 1]).sum(0).add_(dld_sum)   # dls = sum_b dy y + sum_b dld
            elif norm is not None:
                e, zh, r, training = normed
                grads[k + 2 + 2 * L] = dy.sum(0)                     # dbeta = sum_b dy
                grads[k + 1 + 2 * L] = (dy * zh).sum(0).mul_(e).add_(dld_sum)   # dlg = e^lg sum dy zh + sum dld
                g = dy * e
                if training:   # dz = r (g - mean g - zh (mean g zh + sum dld / B)): mu, var depend on z
                    dz = (g - g.mean(0) - zh * ((g * zh).mean(0) + dld_sum / len(g))) * r
                else:
                    dz = g * r
            else:
                dz = dy
            ds = torch.addcmul(dld_col, dz, xe)                      # ds = dz x e^s + dld
            grads[k] = (ds * th).sum(0).mul_(free[0])                # dc = sum_b ds (1 - m) tanh(s_raw)
            ds_raw = torch.ops.aten.tanh_backward(ds * fc, th)       # ds_raw = ds (1 - m) c (1 - tanh^2)
            delta = torch.cat([ds_raw, dz * free], 1)                # delta_L = [ds_raw, dt], dt = dz (1 - m)
            for i in range(L - 1, -1, -1):
                grads[k + 1 + 2 * i] = delta.t().mm(hs[i])           # dW_l = delta_l^T h_{l-1}
                grads[k + 2 + 2 * i] = delta.sum(0)                  # db_l = sum_b delta_l
                if i > 0:                                            # delta_{l-1} = (delta_l W_l) relu'(h_{l-1})
                    delta = torch.ops.aten.threshold_backward(delta.mm(weights[2 * i]), hs[i], 0)
            if j == 0 and not ctx.needs_input_grad[0]:
                return None, None, *grads
            dy = torch.addcmul(dz * es, delta.mm(weights[0]), mask)  # dx = dz e^s + m (delta_1 W_1)
        return dy, None, *grads


# ----------------------------------------------------------------------------------------- multi-scale
class SplitPrior(nn.Module):
    """Glow's learned prior of a factored-out half (Kingma & Dhariwal 2018, section 3 and their code's
    ``split2d``): z_out ~ N(mu(h), exp(log_sigma(h))^2) given the kept half h, with (mu, log_sigma) from a 3x3
    convolution initialized at zero (so it starts as the N(0, I) prior). As a flow step it standardizes,
    eps = (z_out - mu) / sigma with log|det| = -sum log sigma, so the base stays N(0, I) and
    log N(z_out; mu, sigma) = log N(eps; 0, I) - sum log sigma exactly."""

    def __init__(self, kept_channels: int, out_channels: int):
        super().__init__()
        self.net = nn.Conv2d(kept_channels, 2 * out_channels, 3, padding=1)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)

    def standardize(self, out: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.net(h).chunk(2, dim=1)
        return (out - mu) * torch.exp(-log_sigma), -sum_except_batch(log_sigma)

    def unstandardize(self, eps: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.net(h).chunk(2, dim=1)
        return eps * torch.exp(log_sigma) + mu, sum_except_batch(log_sigma)


class MultiScale(FlowLayer):
    """The multi-scale architecture (RealNVP 3.6; Glow figure 2): after each level but the last, half of the
    channels are factored out (sent straight to the base distribution) and the next level works on the rest.

    ``levels`` are flow layers on images; ``input_shape`` is (C, H, W). forward returns z flattened to
    [B, D] (the factored-out parts, level by level, then the last level's output), so the base distribution
    is over D = C H W values; inverse takes that [B, D] vector back. ``learned_prior``: each factored-out half
    gets Glow's conditional prior N(mu(h), sigma(h)) given the half that goes on (:class:`SplitPrior`), else
    N(0, I) (RealNVP).
    """

    def __init__(self, levels: list[FlowLayer], input_shape: tuple[int, int, int], learned_prior: bool = False):
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.input_shape = tuple(input_shape)
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []   # (factored shape, kept shape) per level
        with torch.no_grad():                                          # the shapes each level produces
            h = torch.zeros(1, *self.input_shape)
            for i, level in enumerate(self.levels):
                h = _shape_pass(level, h)
                if i < len(self.levels) - 1:
                    if h.shape[1] % 2:
                        raise ValueError(f"level {i} ends with {h.shape[1]} channels: cannot factor out half")
                    out, h = h.chunk(2, dim=1)
                    self.shapes.append((tuple(out.shape[1:]), tuple(h.shape[1:])))
                else:
                    self.shapes.append(((0,), tuple(h.shape[1:])))
        self.priors = nn.ModuleList(SplitPrior(kept[0], out[0]) for out, kept in self.shapes[:-1]) \
            if learned_prior else None

    def forward(self, x):
        logdet = x.new_zeros(x.shape[0])
        outs, h = [], x
        for i, level in enumerate(self.levels):
            h, ld = level(h)
            logdet = logdet + ld
            if i < len(self.levels) - 1:
                out, h = h.chunk(2, dim=1)                  # factor out half (RealNVP eq. 13-14)
                if self.priors is not None:
                    out, ld = self.priors[i].standardize(out, h)    # z_out ~ N(mu(h), sigma(h)^2) (Glow)
                    logdet = logdet + ld
                outs.append(out.flatten(1))
        outs.append(h.flatten(1))
        return torch.cat(outs, 1), logdet

    def inverse(self, z):
        B = z.shape[0]
        sizes = [math.prod(s[0]) for s in self.shapes[:-1]] + [math.prod(self.shapes[-1][1])]
        parts = list(torch.split(z, sizes, dim=1))
        h = parts[-1].view(B, *self.shapes[-1][1])
        logdet = z.new_zeros(B)
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                out = parts[i].view(B, *self.shapes[i][0])
                if self.priors is not None:                 # h (kept half) is known first: z_out = mu + sigma eps
                    out, ld = self.priors[i].unstandardize(out, h)
                    logdet = logdet + ld
                h = torch.cat([out, h], 1)
            h, ld = self.levels[i].inverse(h)
            logdet = logdet + ld
        return h, logdet


def _shape_pass(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Output of ``level`` on a zero batch, without triggering data-dependent initialization."""
    if isinstance(level, FlowSequence):
        for layer in level.layers:
            h = _shape_pass(layer, h)
        return h
    if isinstance(level, (ActNorm, BatchNormFlow)):
        return h
    was = level.training
    level.eval()
    out = level(h)[0]
    level.train(was)
    return out
