"""MADE: Masked Autoencoder for Distribution Estimation (Germain, Gregor, Murray & Larochelle, ICML 2015).

An MLP whose weights are multiplied by 0/1 masks so that output i depends only on the inputs before i in an
ordering: the whole autoregressive product p(x) = prod_i p(x_{o_i} | x_{o_<i}) in ONE forward pass.

Degrees (section 4): each input d gets m^0(d) = its position in the ordering (1..D); each hidden unit k of
layer l gets m^l(k) drawn uniformly in {min_k' m^{l-1}(k'), ..., D - 1}. Masks (eq. 12-13):

    M^l[k, k']   = 1[m^l(k) >= m^{l-1}(k')]      (hidden layers)
    M^V[d, k]    = 1[m^0(d) >  m^L(k)]           (output: strictly greater, so output d never sees x_d)

Direct connection (``direct``; Germain et al.'s code, ``direct_input_connect="Output"``): the output also gets
(A * M^A) x with M^A[d, e] = 1[m^0(d) > m^0(e)], a fully visible sigmoid belief net beside the hidden path.

Connectivity-agnostic / order-agnostic training (section 4.2): with ``num_masks`` > 1 the training steps cycle
through ``num_masks`` mask sets (each drawn from its own seeded stream; with ``order_agnostic`` each also draws
its own ordering), and at test time the ensemble averages the probabilities of the masks:
log p(x) = logsumexp_m log p_m(x) - log M.

:class:`MADE` is the masked network (``forward(x) -> [B, out_multiplier, D]``), also the building block of
MAF / IAF; used alone on binary data (out_multiplier = 1) its outputs are Bernoulli logits.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.generative.autoregressive.binary_images import (
    BinaryImageConfig,
    ImageEvalOptions,
    ImageHooks,
    ImageSampleOptions,
    bernoulli_log_prob,
    init_bias_to_marginals,
    nll_loss,
    train_image_model,
)
from mlcanon.nn.masked import MaskedLinear
from mlcanon.registry import config_of, register
from mlcanon.runs import Run
from mlcanon.training import LR_SCHEDULES, generator

# defaults of `mlcanon train made` (binarized MNIST, one hidden layer of 8000 units, one mask; the width of
# Germain et al.'s MNIST command): see MADEConfig
HIDDEN, EPOCHS, LR = (8000,), 6, 2e-3


def ordering(spec: str | Sequence[int] | torch.Tensor | None, D: int, seed: int = 0) -> torch.Tensor:
    """The autoregressive order as a permutation of 0..D-1 (order[p] = the dimension generated p-th):
    "natural" (0..D-1), "reverse", "random" (seeded), or an explicit sequence."""
    if spec is None or (isinstance(spec, str) and spec == "natural"):
        return torch.arange(D)
    if isinstance(spec, str):
        if spec == "reverse":
            return torch.arange(D - 1, -1, -1)
        if spec == "random":
            return torch.randperm(D, generator=generator(seed, 4242))
        raise ValueError(f"order must be 'natural', 'reverse', 'random' or a permutation, got {spec!r}")
    order = torch.as_tensor(spec, dtype=torch.long)
    if order.shape != (D,) or not torch.equal(order.sort().values, torch.arange(D)):
        raise ValueError(f"order must be a permutation of 0..{D - 1}, got {order.tolist()}")
    return order


class MADE(nn.Module):
    """Masked MLP D -> hidden_sizes -> out_multiplier * D: ``forward(x) [B, D] -> [B, out_multiplier, D]``,
    where ``out[:, j, d]`` depends only on the x_e with ``degrees[e] < degrees[d]`` (the dims before d).

    ``order``: the dims in generation order ("natural", "reverse", "random" or a permutation); ``degrees`` is
    its inverse plus one (m^0). ``context_features`` > 0 adds an unmasked input c (labels, a flow's context)
    to the first hidden layer. ``num_masks`` / ``order_agnostic``: see the module doc.
    """

    def __init__(self, in_features: int, hidden_sizes: Sequence[int] = (500,), out_multiplier: int = 1,
                 order: str | Sequence[int] | torch.Tensor | None = None, *, num_masks: int = 1,
                 order_agnostic: bool = False, context_features: int = 0, seed: int = 0,
                 activation: type[nn.Module] = nn.ReLU, direct: bool = False):
        super().__init__()
        if in_features < 1 or out_multiplier < 1 or num_masks < 1 or not hidden_sizes:
            raise ValueError("MADE needs in_features >= 1, out_multiplier >= 1, num_masks >= 1 and a hidden layer")
        D, sizes = in_features, [in_features, *hidden_sizes]
        self.in_features, self.hidden_sizes, self.out_multiplier = D, tuple(hidden_sizes), out_multiplier
        self.num_masks, self.order_agnostic, self.seed = num_masks, order_agnostic, seed
        self.hidden = nn.ModuleList(MaskedLinear(a, b) for a, b in itertools.pairwise(sizes))
        self.output = MaskedLinear(sizes[-1], out_multiplier * D)
        # direct input -> output connection (Germain et al.'s code, direct_input_connect="Output"): a masked
        # D x D linear map, an FVSBN inside the MADE, mask 1[m^0(d) > m^0(e)]; starts at zero
        self.direct = MaskedLinear(D, out_multiplier * D, bias=False) if direct else None
        if self.direct is not None:
            nn.init.zeros_(self.direct.weight)
        self.context = nn.Linear(context_features, sizes[1], bias=False) if context_features else None
        self.act = activation()
        self.register_buffer("base_order", ordering(order, D, seed))
        self.register_buffer("order", self.base_order.clone())
        self.register_buffer("degrees", torch.empty(D, dtype=torch.long))
        self.register_buffer("mask_step", torch.zeros((), dtype=torch.long))   # training steps seen (cycles masks)
        self.current_mask = -1
        self.set_mask(0)

    # -- masks ----------------------------------------------------------------------------------------
    def set_mask(self, index: int) -> None:
        """Install mask set ``index`` (0 .. num_masks-1): a pure function of (seed, index)."""
        D = self.in_features
        g = generator(self.seed, 8191, index)
        order = self.base_order if index == 0 or not self.order_agnostic else torch.randperm(D, generator=g)
        m0 = torch.empty(D, dtype=torch.long)
        m0[order] = torch.arange(1, D + 1)                      # m^0(o_p) = p + 1
        degrees = [m0]
        for layer in self.hidden:
            low = min(int(degrees[-1].min()), D - 1)           # m^l(k) ~ U{min m^{l-1}, ..., D-1}
            degrees.append(torch.randint(low, D, (layer.out_features,), generator=g) if D > 1
                           else torch.zeros(layer.out_features, dtype=torch.long))
        for layer, m_prev, m in zip(self.hidden, degrees[:-1], degrees[1:]):
            layer.set_mask((m[:, None] >= m_prev[None, :]).float())                 # M^l = 1[m^l >= m^{l-1}]
        out_deg = m0.repeat(self.out_multiplier)                                    # row j*D + d is for dim d
        self.output.set_mask((out_deg[:, None] > degrees[-1][None, :]).float())     # M^V = 1[m^0 > m^L]
        if self.direct is not None:
            self.direct.set_mask((out_deg[:, None] > m0[None, :]).float())          # M^A = 1[m^0(d) > m^0(e)]
        self.order.copy_(order.to(self.order.device))
        self.degrees.copy_(m0.to(self.degrees.device))
        self.current_mask = index

    def next_training_mask(self) -> None:
        """Connectivity-agnostic training: step t uses mask set t mod num_masks (the counter is a buffer,
        so a resumed run continues the cycle)."""
        if self.num_masks > 1:
            self.set_mask(int(self.mask_step) % self.num_masks)
            self.mask_step += 1

    # -- network --------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, D = x.shape
        if D != self.in_features:
            raise ValueError(f"MADE expects [B, {self.in_features}] inputs, got {tuple(x.shape)}")
        h = x
        for i, layer in enumerate(self.hidden):
            a = layer(h)                                        # (W^l * M^l) h + b^l
            if i == 0 and self.context is not None:
                if context is None:
                    raise ValueError("this MADE was built with context_features: pass context")
                a = a + self.context(context)
            h = self.act(a)
        out = self.output(h)                                    # (V * M^V) h + c
        if self.direct is not None:
            out = out + self.direct(x)                          # + (A * M^A) x
        return out.view(B, self.out_multiplier, D)


class BinaryMADE(nn.Module):
    """MADE as a density of binary images: p(x_d = 1 | x_<d) = sigmoid(MADE(x)_d)."""

    def __init__(self, image_shape: Sequence[int], hidden_sizes: Sequence[int] = (500,), *, order="natural",
                 num_masks: int = 1, order_agnostic: bool = False, seed: int = 0, direct: bool = False):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.made = MADE(math.prod(image_shape), hidden_sizes, 1, order, num_masks=num_masks,
                         order_agnostic=order_agnostic, seed=seed, direct=direct)

    @property
    def generation_order(self) -> torch.Tensor:
        return self.made.order

    def logits(self, x: torch.Tensor, y=None) -> torch.Tensor:
        return self.made(x.reshape(x.shape[0], -1))[:, 0]

    def log_prob(self, x: torch.Tensor, y=None, masks: int | None = None) -> torch.Tensor:
        """log p(x) [B] in nats with the current mask, or the ensemble of mask sets 0..masks-1:
        log (1/M) sum_m p_m(x) (section 4.2)."""
        xf = x.reshape(x.shape[0], -1)
        if not masks:
            return bernoulli_log_prob(self.logits(xf), xf)
        keep = self.made.current_mask
        lps = []
        for m in range(masks):
            self.made.set_mask(m)
            lps.append(bernoulli_log_prob(self.logits(xf), xf))
        self.made.set_mask(keep)
        return torch.logsumexp(torch.stack(lps), 0) - math.log(masks)

    def loss(self, batch: dict) -> dict:
        if self.training:
            self.made.next_training_mask()
        return nll_loss(self, batch)

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None, mask: int | None = None) -> torch.Tensor:
        """Ancestral sampling in the mask's order: D forward passes, x_{o_p} ~ Bernoulli(sigmoid(logit))."""
        keep = self.made.current_mask
        if mask is not None:
            self.made.set_mask(mask)
        w = self.made.output.weight
        x = torch.zeros(n, self.made.in_features, device=w.device, dtype=w.dtype)
        for d in self.made.order.tolist():
            p = torch.sigmoid(self.logits(x)[:, d])
            u = torch.rand(n, generator=generator).to(w.device, w.dtype)
            x[:, d] = (u < p).float()
        self.made.set_mask(keep)
        return x.view(n, *self.image_shape)


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class MADEConfig(BinaryImageConfig):
    """MADE on binary images (Germain et al. 2015): one masked MLP, one pass for all D conditionals."""

    hidden: tuple[int, ...] = option(HIDDEN, "hidden layer sizes, e.g. 500 or 8000,8000 (8000: the width of Germain et "
                                             "al.'s MNIST command; 500 units end ~5 nats higher on MNIST)")
    num_masks: int = option(1, "mask sets cycled through during training (1: one fixed MADE)", min=1)
    order_agnostic: bool = option(False, "each mask set also draws its own input ordering")
    order: str = option("natural", "ordering of the first mask set", choices=("natural", "reverse", "random"))
    direct: bool = option(True, "direct masked input -> output weights (Germain et al.'s code, an FVSBN inside)")
    init_bias: bool = option(True, "start the output biases at the logits of the training marginals")
    batch_size: int = option(100, "global mini-batch size", min=1)
    epochs: int = option(EPOCHS, "passes over the training set (8000 units overfit after ~5 epochs: the cosine "
                                 "decay must end by then; 500 units: use ~30 epochs and --lr 5e-3)", min=1)
    lr: float = option(LR, "peak learning rate (Adam, decayed by --lr-schedule)", min=0.0)
    lr_schedule: str = option("cosine", "learning-rate decay after warm-up", choices=LR_SCHEDULES)

    def check(self) -> None:
        super().check()
        if not self.hidden or min(self.hidden) < 1:
            raise UserError(f"--hidden {self.hidden}: give one or more positive sizes, e.g. --hidden 500")


def build(config: MADEConfig) -> BinaryMADE:
    return BinaryMADE((1, 28, 28), config.hidden, order=config.order, num_masks=config.num_masks,
                      order_agnostic=config.order_agnostic, seed=config.seed, direct=config.direct)


def train(config: MADEConfig, run: Run | None = None) -> dict:
    """Maximum likelihood with the masks cycled per step; best by validation NLL."""
    run = Run.start("made", config, run)
    init = (lambda model, x: init_bias_to_marginals(model.made.output.bias, x)) if config.init_bias else None
    return train_image_model("made", config, run, build(config), init=init)


@dataclasses.dataclass
class MADEEvalOptions(ImageEvalOptions):
    """Options of `mlcanon eval` on a MADE run."""

    masks: int = option(0, "average the probabilities of mask sets 0..N-1 (0: the number trained with)", min=0)


def _log_prob_kwargs(options) -> dict:
    return {"masks": options.masks} if getattr(options, "masks", 0) else {}


hooks = ImageHooks("made", build, log_prob_kwargs=_log_prob_kwargs)


def evaluate(run_dir, options: MADEEvalOptions | None = None) -> dict:
    """Test NLL; ``--masks N`` scores the ensemble of N mask sets (default: those used in training)."""
    options = options or MADEEvalOptions()
    if not options.masks:
        options = dataclasses.replace(options, masks=config_of(run_dir, "made").num_masks)
    return hooks.evaluate(run_dir, options)


register("made", family="generative", config=MADEConfig,
         description="MADE: masked autoencoder (degrees, masks, order-agnostic training, mask ensembles)",
         evaluate=evaluate, sample=hooks.sample, load=hooks.load, eval_options=MADEEvalOptions,
         sample_options=ImageSampleOptions,
         tiny={"hidden": (16,), "num_masks": 2, "max_steps": 8, "batch_size": 32, "train_subset": 256,
               "eval_subset": 64, "eval_every": 4, "checkpoint_every": 4, "samples": 2})(train)
