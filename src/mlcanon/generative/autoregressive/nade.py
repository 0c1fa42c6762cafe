"""NADE: the Neural Autoregressive Distribution Estimator (Larochelle & Murray, AISTATS 2011).

One hidden layer per conditional, with weights SHARED across the conditionals (eq. 5-6):

    h_i = sigmoid(a_i),   a_i = c + W_{:, <i} x_<i
    p(x_i = 1 | x_<i) = sigmoid(b_i + V_i . h_i)

The pre-activations obey the recursion a_1 = c, a_{i+1} = a_i + W_{:, i} x_i (section 3), so all D
conditionals cost O(D H) together instead of O(D^2 H). Training uses teacher forcing (every a_i from the TRUE
x_<i); sampling runs the recursion one pixel at a time, feeding each sampled x_i into a_{i+1}.

Teacher forcing as written (an exclusive ``cumsum`` over i) materializes several [B, D, H] tensors for autograd
(about 2 s per step at B = 100, D = 784, H = 500 on one CPU core). :class:`NADELogits` runs the same recursion
over blocks of K pixels and keeps only a_i at the block starts; its hand-written backward recomputes each block's
h_i and runs the recursion backwards, carrying S_j (the gradient reaching the term W_{:,j} x_j of every later a_i):

    G_i = dL/dlogit_i * V_i * h_i (1 - h_i)             (dL/da_i through conditional i alone)
    S_j = sum_{i > j} G_i                               (every later a_i contains W_{:,j} x_j)
    dL/dW_{:,j} = sum_batch x_j S_j,   dL/dx_j = W_{:,j} . S_j,   dL/dc = sum_batch sum_i G_i,
    dL/dV_i = sum_batch dL/dlogit_i h_i,   dL/db_i = sum_batch dL/dlogit_i
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from mlcanon.config import option
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
from mlcanon.registry import register
from mlcanon.runs import Run
from mlcanon.training import LR_SCHEDULES


def _block_hidden(a0: torch.Tensor, xb: torch.Tensor, Wb: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """h_i = sigmoid(a_i) for the K pixels of a block into ``out`` [K, B, H], from a0 = a at the block's first
    pixel [B, H]: a_{s+k} = a_s + sum_{k' < k} W_{:, s+k'} x_{s+k'} (the recursion within the block, as one
    matmul: K masked copies of x_block [K B, K'] times W_block^T [K', H])."""
    K, (B, H) = xb.shape[1], a0.shape
    strict_lower = torch.ones(K, K, dtype=xb.dtype, device=xb.device).tril(-1)     # [k, k'] = 1[k' < k]
    xl = (strict_lower[:, None, :] * xb[None]).reshape(K * B, K)                   # [K B, K']
    torch.mm(xl, Wb.T, out=out.view(K * B, H))
    return out.add_(a0).sigmoid_()                                                 # sigmoid(a_s + x_l W^T)


class NADELogits(torch.autograd.Function):
    """logit_i = b_i + V_i . sigmoid(c + W_{:,<i} x_<i) for every i [B, D], by blocks of K pixels (see the
    module doc): it keeps only a_i at the block starts [D / K, B, H] and recomputes a block's h in backward."""

    @staticmethod
    def forward(ctx, x, W, c, V, b, block: int):
        (B, D), H = x.shape, W.shape[0]
        buf = torch.empty(block, B, H, dtype=x.dtype, device=x.device)
        a = c.expand(B, -1).contiguous()                                  # a_1 = c
        a_starts, logits = [], torch.empty(D, B, dtype=x.dtype, device=x.device)
        for s in range(0, D, block):
            e = min(s + block, D)
            a_starts.append(a)
            h = _block_hidden(a, x[:, s:e], W[:, s:e], buf[:e - s])       # [K, B, H]: h_i = sigmoid(a_i)
            torch.bmm(h, V[s:e, :, None], out=logits[s:e, :, None])      # V_i . h_i
            a = torch.addmm(a, x[:, s:e], W[:, s:e].T)                   # a_e = a_s + sum_{s<=j<e} W_{:,j} x_j
        ctx.block = block
        ctx.save_for_backward(x, W, V, torch.stack(a_starts))
        return logits.T + b                                               # + b_i

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, W, V, a_starts = ctx.saved_tensors
        block, (B, D), H = ctx.block, x.shape, W.shape[0]
        need_x = ctx.needs_input_grad[0]
        gT = g.T.contiguous()                                             # [D, B]
        dx = torch.empty(D, B, dtype=x.dtype, device=x.device) if need_x else None
        dW, dV = torch.empty(D, H, dtype=W.dtype, device=W.device), torch.empty_like(V)
        buf = torch.empty(block, B, H, dtype=x.dtype, device=x.device)
        carry = torch.zeros(1, B * H, dtype=x.dtype, device=x.device)   # sum of G_i over the pixels after the block
        for n in reversed(range(len(a_starts))):
            s = n * block
            e = min(s + block, D)
            K = e - s
            h = _block_hidden(a_starts[n], x[:, s:e], W[:, s:e], buf[:K])    # recomputed [K, B, H]
            torch.bmm(gT[s:e, None, :], h, out=dV[s:e, None, :])         # dL/dV_i = sum_b g_i h_i
            G = h.sub_(h * h).mul_(gT[s:e, :, None]).mul_(V[s:e, None, :])   # G_i = g_i V_i h_i (1 - h_i)
            strict_upper = torch.ones(K, K, dtype=x.dtype, device=x.device).triu(1)   # [k, k'] = 1[k' > k]
            S = torch.addmm(carry, strict_upper, G.view(K, B * H)).view(K, B, H)   # S_j = sum_{i > j} G_i
            torch.bmm(x[:, s:e].T[:, None, :], S, out=dW[s:e, None, :])  # dL/dW_{:,j} = sum_b x_j S_j
            if need_x:
                torch.bmm(S, W[:, s:e].T[:, :, None], out=dx[s:e, :, None])   # dL/dx_j = W_{:,j} . S_j
            carry = (S[0] + G[0]).view(1, B * H)                        # sum_{i >= s} G_i
        dc = carry.view(B, H).sum(0)                                     # dL/dc = sum_b sum_i G_i
        return (dx.T if need_x else None), dW.T, dc, dV, g.sum(0), None   # dL/db_i = sum_b g_i


class NADE(nn.Module):
    """NADE over D binary dims in raster order with H shared hidden units (parameters W, c, V, b)."""

    def __init__(self, image_shape: Sequence[int], hidden: int = 500, block: int = 8):
        super().__init__()
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.block = block
        self.image_shape = tuple(image_shape)
        D = math.prod(image_shape)
        self.D, self.H = D, hidden
        self.W = nn.Parameter(torch.randn(hidden, D) / math.sqrt(D))     # input -> hidden, shared by every i
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(D, hidden) / math.sqrt(hidden))  # hidden -> output i
        self.b = nn.Parameter(torch.zeros(D))
        self.register_buffer("generation_order", torch.arange(D))

    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """a [B, D, H] with a_i = c + sum_{j<i} W_{:,j} x_j: the recursion a_{i+1} = a_i + W_{:,i} x_i as an
        exclusive cumulative sum over i (teacher forcing)."""
        B, D = x.shape
        assert D == self.D, (B, D)
        steps = x[:, :, None] * self.W.T[None]                      # [B, D, H]: W_{:,j} x_j
        a = torch.cumsum(steps, dim=1) - steps                      # exclusive: sum over j < i
        return a + self.c

    def logits(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """b_i + V_i . sigmoid(a_i) for every i [B, D], by blocks of ``block`` pixels (:class:`NADELogits`)."""
        xf = x.reshape(x.shape[0], -1).to(self.W.dtype)
        with torch.autocast(xf.device.type, enabled=False):        # the Function writes into buffers of W's dtype
            return NADELogits.apply(xf, self.W, self.c, self.V, self.b, self.block)

    def logits_cumsum(self, x: torch.Tensor) -> torch.Tensor:
        """The same logits by the plain formula, autograd through a [B, D, H] cumsum (slow; for reference)."""
        xf = x.reshape(x.shape[0], -1)
        h = torch.sigmoid(self.hidden_preactivations(xf))           # h_i = sigmoid(a_i)
        return torch.einsum("bdh,dh->bd", h, self.V) + self.b       # b_i + V_i . h_i

    def log_prob(self, x: torch.Tensor, y=None) -> torch.Tensor:
        return bernoulli_log_prob(self.logits(x), x.reshape(x.shape[0], -1))

    def loss(self, batch: dict) -> dict:
        return nll_loss(self, batch)

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sequential sampling with the O(H) update per pixel: a <- a + W_{:,i} x_i."""
        dev, dt = self.W.device, self.W.dtype
        x = torch.zeros(n, self.D, device=dev, dtype=dt)
        u = torch.rand(n, self.D, generator=generator).to(dev, dt)
        a = self.c.expand(n, self.H).clone()                        # a_1 = c
        for i in range(self.D):
            p = torch.sigmoid(self.b[i] + torch.sigmoid(a) @ self.V[i])   # p(x_i = 1 | x_<i)
            x[:, i] = (u[:, i] < p).to(dt)
            a += x[:, i:i + 1] * self.W[:, i]                         # a_{i+1} = a_i + W_{:,i} x_i
        return x.view(n, *self.image_shape)


@dataclasses.dataclass
class NADEConfig(BinaryImageConfig):
    """NADE on binary images (Larochelle & Murray 2011): shared weights, O(DH) likelihood."""

    hidden: int = option(500, "hidden units H (shared by all the conditionals)", min=1)
    block: int = option(8, "pixels per block of the teacher-forced recursion (speed only; same numbers)", min=1)
    init_bias: bool = option(True, "start the output biases b at the logits of the training marginals")
    batch_size: int = option(100, "global mini-batch size", min=1)
    lr: float = option(3e-3, "peak learning rate (Adam)", min=0.0)
    lr_schedule: str = option("cosine", "learning-rate decay after warm-up", choices=LR_SCHEDULES)
    epochs: int = option(14, "passes over the training set (the cosine decay spans them; binarized MNIST: 14 give "
                             "test 88.44 nats, 10 give 89.34)", min=1)


def build(config: NADEConfig) -> NADE:
    return NADE((1, 28, 28), config.hidden, block=config.block)


def train(config: NADEConfig, run: Run | None = None) -> dict:
    """Maximum likelihood with teacher forcing; best by validation NLL."""
    run = Run.start("nade", config, run)
    init = (lambda model, x: init_bias_to_marginals(model.b, x)) if config.init_bias else None
    return train_image_model("nade", config, run, build(config), init=init)


hooks = ImageHooks("nade", build)

register("nade", family="generative", config=NADEConfig,
         description="NADE: shared-weight autoregressive net, O(DH) recursive hidden units, teacher forcing",
         evaluate=hooks.evaluate, sample=hooks.sample, load=hooks.load, eval_options=ImageEvalOptions,
         sample_options=ImageSampleOptions,
         tiny={"hidden": 16, "max_steps": 8, "batch_size": 32, "train_subset": 256, "eval_subset": 64,
               "eval_every": 4, "checkpoint_every": 4, "samples": 2})(train)
