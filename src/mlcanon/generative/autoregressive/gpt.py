"""GPT: a decoder-only transformer language model (Radford et al. 2018, 2019; as nanoGPT, Karpathy 2022).

    h_0 = E[x] (+ P[pos] for learned positions)
    h_l = h_{l-1} + Attn(LN(h_{l-1})),   h_l = h_l + MLP(LN(h_l))            (pre-LN blocks, GPT-2)
    Attn: softmax(Q K^T / sqrt(d_h) + M) V per head, M_ts = -inf for s > t   (causal: Vaswani et al. 2017)
    p(x_{t+1} | x_<=t) = softmax(LN(h_L) E^T)                               (weight tying: Press & Wolf 2017)

Positions: learned (GPT-2) or rotary (RoPE, Su et al. 2021: q, k rotated by position, so q.k depends on the
offset only). Attention goes through ``F.scaled_dot_product_attention`` (the fused kernel where one exists).
Sampling keeps a KV cache: the keys and values of past tokens are stored per layer and only the new token is
run through the network (O(T) per token instead of O(T^2)); when the context is full the window is recomputed
from its last ``context`` tokens, exactly as the cache-free model sees it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.generative.autoregressive.language import (
    LMConfig,
    LMEvalOptions,
    LMHooks,
    LMSampleOptions,
    cross_entropy_loss,
    load_text,
    sequence_log_prob,
    train_language_model,
)
from mlcanon.nn.attention import RotaryEmbedding
from mlcanon.registry import register
from mlcanon.runs import Run


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional KV cache (past keys/values [B, H, T_past, d_h])."""

    def __init__(self, d: int, heads: int, dropout: float = 0.0, rotary: bool = False, causal: bool = True,
                 bias: bool = True):
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} must be divisible by heads {heads}")
        self.heads, self.dh, self.dropout, self.causal = heads, d // heads, dropout, causal
        self.qkv = nn.Linear(d, 3 * d, bias=bias)                          # [W_q W_k W_v]
        self.proj = nn.Linear(d, d, bias=bias)                             # W_o
        self.rope = RotaryEmbedding(self.dh) if rotary else None

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)   # [B, H, T, d_h] each
        t0 = 0 if past is None else past[0].shape[2]
        if self.rope is not None:
            pos = torch.arange(t0, t0 + T, device=x.device)
            q, k = self.rope(q, pos), self.rope(k, pos)                    # rotate by absolute position
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)  # KV cache: keys/values of x_<t
        if attn_mask is None and self.causal and T > 1 and t0 > 0:        # new rows t0.. see columns <= own
            attn_mask = torch.ones(T, t0 + T, dtype=torch.bool, device=x.device).tril(t0)
        y = F.scaled_dot_product_attention(                                 # softmax(QK^T/sqrt(d_h) + M) V
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None and T > 1 and t0 == 0)
        return self.proj(y.transpose(1, 2).reshape(B, T, D)), (k, v)


class Block(nn.Module):
    """Pre-LN transformer block: h + Attn(LN(h)), then h + MLP(LN(h)) with a 4x GELU MLP. ``bias=False``:
    no additive biases in the linear layers and layer norms (nanoGPT's ``bias=False``, its default)."""

    def __init__(self, d: int, heads: int, dropout: float = 0.0, rotary: bool = False, causal: bool = True,
                 bias: bool = True):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=bias), nn.LayerNorm(d, bias=bias)
        self.attn = CausalSelfAttention(d, heads, dropout, rotary, causal, bias)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d, bias=bias), nn.GELU(), nn.Linear(4 * d, d, bias=bias),
                                 nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, past=None, attn_mask=None):
        a, kv = self.attn(self.ln1(h), past, attn_mask)
        h = h + self.drop(a)
        return h + self.mlp(self.ln2(h)), kv


class GPT(nn.Module):
    """Decoder-only transformer LM; ``forward(idx) -> (logits, kv_cache)``; ``step`` continues a cache."""

    def __init__(self, vocab_size: int, context: int = 64, layers: int = 4, heads: int = 4, width: int = 128,
                 dropout: float = 0.0, positions: str = "learned", tie_weights: bool = True, bias: bool = True):
        super().__init__()
        if positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be 'learned' or 'rotary', got {positions!r}")
        self.context, self.positions = context, positions
        self.wte = nn.Embedding(vocab_size, width)                          # E
        self.wpe = nn.Embedding(context, width) if positions == "learned" else None   # P
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout, positions == "rotary", bias=bias)
                                    for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=bias)
        # weight tying: logits = h E^T (the embedding is used again; no second copy, so checkpoints hold one)
        self.head = None if tie_weights else nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():                             # GPT-2: residual projections
            if name.endswith(("proj.weight", "mlp.2.weight")):              # scaled by 1/sqrt(2L)
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, cache: list | None = None):
        """idx [B, T] (T + cached length <= context) -> (logits [B, T, V], new cache)."""
        _, T = idx.shape
        t0 = 0 if cache is None else cache[0][0].shape[2]
        if t0 + T > self.context:
            raise ValueError(f"sequence of {t0 + T} tokens exceeds the context {self.context}")
        h = self.wte(idx)
        if self.wpe is not None:
            h = h + self.wpe(torch.arange(t0, t0 + T, device=idx.device))
        h = self.drop(h)
        new_cache = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, None if cache is None else cache[i])
            new_cache.append(kv)
        h = self.ln_f(h)
        return (F.linear(h, self.wte.weight) if self.head is None else self.head(h)), new_cache

    def step(self, new: torch.Tensor, state: dict | None):
        """Feed new tokens after the cached ones: (logits of the new tokens, state). When the context would
        overflow, recompute the window of the last ``context`` tokens from scratch."""
        tokens = new if state is None else torch.cat([state["tokens"], new], 1)
        if state is None or tokens.shape[1] > self.context:
            tokens = tokens[:, -self.context:]
            logits, cache = self(tokens)
            return logits[:, -new.shape[1]:], {"tokens": tokens, "cache": cache}
        logits, cache = self(new, state["cache"])
        return logits, {"tokens": tokens, "cache": cache}

    def loss(self, batch: dict) -> dict:
        return cross_entropy_loss(self, batch)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """sum_{t>=2} log p(x_t | x_<t) [B] (nats), x [B, T <= context + 1]."""
        return sequence_log_prob(self, x)


@dataclasses.dataclass
class GPTConfig(LMConfig):
    """GPT on text; defaults: nanoGPT's shakespeare-char CPU run (4 layers, 4 heads, width 128, context 64,
    batch 12, 2,000 steps, dropout 0, AdamW 1e-3 (0.9, 0.99), weight decay 0.1 on matrices, clip 1, 100 warm-up
    steps, cosine decay to 1e-4 at the last step, no biases)."""

    layers: int = option(4, "transformer blocks", min=1)
    heads: int = option(4, "attention heads", min=1)
    width: int = option(128, "model width d (divisible by --heads)", min=1)
    positions: str = option("learned", "position encoding", choices=("learned", "rotary"))
    tie_weights: bool = option(True, "share the input embedding and the output projection")
    bias: bool = option(False, "additive biases in the linear layers and layer norms (nanoGPT: none)", absent=True)
    min_lr: float = option(1e-4, "the learning rate the cosine / linear decay ends at (nanoGPT: lr/10)", min=0.0,
                           absent=0.0)

    def check(self) -> None:
        super().check()
        if self.width % self.heads:
            raise UserError(f"--width {self.width} must be divisible by --heads {self.heads}")
        if self.positions == "rotary" and (self.width // self.heads) % 2:
            raise UserError(f"--positions rotary needs an even head width, got {self.width // self.heads}")


def build(config: GPTConfig, vocab_size: int) -> GPT:
    return GPT(vocab_size, config.context, config.layers, config.heads, config.width, config.dropout,
               config.positions, config.tie_weights, config.bias)


def train(config: GPTConfig, run: Run | None = None) -> dict:
    """Teacher forcing on random windows of the text; best by validation loss."""
    run = Run.start("gpt", config, run)
    model = build(config, load_text(config, "valid").vocab_size)
    return train_language_model("gpt", config, run, model)


hooks = LMHooks("gpt", build)

register("gpt", family="generative", config=GPTConfig,
         description="GPT: causal transformer LM (learned/rotary positions, weight tying, KV-cache sampling)",
         evaluate=hooks.evaluate, sample=hooks.sample, load=hooks.load, eval_options=LMEvalOptions,
         sample_options=LMSampleOptions,
         tiny={"layers": 1, "heads": 2, "width": 16, "context": 16, "batch_size": 4, "max_steps": 8,
               "warmup_steps": 2, "eval_every": 4, "eval_windows": 8, "checkpoint_every": 4,
               "sample_length": 20})(train)
