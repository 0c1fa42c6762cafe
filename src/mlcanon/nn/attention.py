"""Attention and transformers (Vaswani et al. 2017; Dosovitskiy et al. 2021 for the ViT).

- Scaled dot-product attention: Attn(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V, M = 0 / -inf from a mask.
  Causal mask: position t attends to positions s <= t only.
- Multi-head: head_h = Attn(X W_q^h, C W_k^h, C W_v^h), MHA = concat_h(head_h) W_o; C = X (self-attention)
  or another sequence (cross-attention).
- Positions: sinusoidal PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)); learned
  absolute embeddings; rotary (RoPE, Su et al. 2021): rotate each pair (x_{2i}, x_{2i+1}) of q and k by the
  angle p * theta_i, theta_i = base^(-2i/d), so that <R_m q, R_n k> = <q, R_{n-m} k> depends only on n - m.
- Transformer block, pre-LN: x += SA(LN(x)); x += CA(LN(x), mem); x += FFN(LN(x)).
                     post-LN: x = LN(x + SA(x)); x = LN(x + CA(x, mem)); x = LN(x + FFN(x)).
  FFN(x) = W_2 act(W_1 x + b_1) + b_2.
- ViT: split the image into P x P patches, embed each linearly, prepend a learned [CLS] token, add learned
  positions, run an encoder, classify from the [CLS] output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Decoder",
    "Encoder",
    "EncoderDecoder",
    "LearnedPositions",
    "MultiHeadAttention",
    "PatchEmbedding",
    "RotaryEmbedding",
    "TransformerBlock",
    "ViT",
    "attention",
    "causal_mask",
    "sinusoidal_positions",
]


def causal_mask(T_q: int, T_k: int | None = None, device=None) -> torch.Tensor:
    """Boolean [T_q, T_k] mask, True where query t may attend key s (s <= t)."""
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False, dropout: float = 0.0, training: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d) + M) V on [..., T, d] tensors; returns (output, attention weights).

    ``mask``: boolean (True = may attend) or additive float, broadcastable to [..., T_q, T_k].
    """
    d = q.shape[-1]
    if k.shape[-1] != d or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)} do not fit")
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # Q K^T / sqrt(d_k)
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))  # M = -inf where not allowed
        else:
            scores = scores + mask  # additive mask
    weights = torch.softmax(scores, dim=-1)  # rows sum to 1
    if dropout > 0 and training:
        weights = F.dropout(weights, dropout)
    return weights @ v, weights


def sinusoidal_positions(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """[T, d]: PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d))."""
    if d % 2:
        raise ValueError(f"sinusoidal_positions: d must be even, got {d}")
    p = torch.arange(T, dtype=torch.float32).unsqueeze(1)
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # 1 / base^(2i/d)
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(p * inv)
    pe[:, 1::2] = torch.cos(p * inv)
    return pe


class LearnedPositions(nn.Module):
    """Learned absolute position embeddings: x + E[p] for p = 0..T-1 (T <= max_len)."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, T, D]."""
        T = x.shape[1]
        if T > self.weight.shape[0]:
            raise ValueError(f"sequence length {T} exceeds max_len {self.weight.shape[0]}; raise max_len")
        return x + self.weight[:T]


class RotaryEmbedding(nn.Module):
    """RoPE: rotate pairs (x_{2i}, x_{2i+1}) by angle p * theta_i, theta_i = base^(-2i/d)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        self.register_buffer("inv_freq", base ** (-torch.arange(0, head_dim, 2).float() / head_dim),
                             persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., T, d] rotated by its positions (default 0..T-1)."""
        T = x.shape[-2]
        if positions is None:
            positions = torch.arange(T, device=x.device)
        ang = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # [T, d/2]: p * theta_i
        cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = x1 * cos - x2 * sin  # [cos -sin; sin cos] [x1; x2]
        out[..., 1::2] = x1 * sin + x2 * cos
        return out


class MultiHeadAttention(nn.Module):
    """Multi-head attention (self or cross): concat_h softmax(Q_h K_h^T / sqrt(d_h)) V_h, then W_o."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True,
                 kv_dim: int | None = None, rope: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MultiHeadAttention: d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_heads, self.head_dim, self.dropout = d_model, n_heads, d_model // n_heads, dropout
        kv_dim = kv_dim or d_model
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)  # W_q
        self.k_proj = nn.Linear(kv_dim, d_model, bias=bias)  # W_k
        self.v_proj = nn.Linear(kv_dim, d_model, bias=bias)  # W_v
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)  # W_o
        self.rope = RotaryEmbedding(self.head_dim) if rope else None
        self.last_weights: torch.Tensor | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, h, T, d_h]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """x [B, T, D] (queries), context [B, S, kv_dim] (keys/values; default x) -> [B, T, D].

        ``mask``: [T, S] or [B, 1|h, T, S] (bool True = may attend, or additive); ``key_padding_mask``:
        [B, S], True at padded keys. With ``need_weights`` the weights [B, h, T, S] are kept in
        ``last_weights``.
        """
        B, T, D = x.shape
        if D != self.d_model:
            raise ValueError(f"MultiHeadAttention: expected feature size {self.d_model}, got {D}")
        ctx = x if context is None else context
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(ctx)), self._split(self.v_proj(ctx))
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)  # R_p q, R_p k
        if key_padding_mask is not None:
            keep = ~key_padding_mask.view(B, 1, 1, -1)
            mask = keep if mask is None else (mask & keep if mask.dtype == torch.bool else
                                              mask.masked_fill(~keep, float("-inf")))
        out, w = attention(q, k, v, mask, causal, self.dropout, self.training)
        self.last_weights = w.detach() if need_weights else None
        out = out.transpose(1, 2).reshape(B, T, D)  # concat heads
        return self.out_proj(out)  # W_o


class TransformerBlock(nn.Module):
    """Self-attention (+ optional cross-attention) + FFN with residuals; pre-LN (default) or post-LN."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int | None = None, dropout: float = 0.0,
                 norm_first: bool = True, cross_attention: bool = False, causal: bool = False,
                 rope: bool = False, activation: str = "gelu"):
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"TransformerBlock: activation must be gelu or relu, got {activation!r}")
        d_ff = d_ff or 4 * d_model
        self.norm_first, self.causal = norm_first, causal
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, rope=rope)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout) if cross_attention else None
        self.norm2 = nn.LayerNorm(d_model) if cross_attention else None
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU() if activation == "gelu" else nn.ReLU(),
                                nn.Dropout(dropout), nn.Linear(d_ff, d_model))  # W_2 act(W_1 x + b_1) + b_2
        self.norm3 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D] (+ memory [B, S, D] for cross-attention) -> [B, T, D]."""
        if (self.cross_attn is None) != (memory is None):
            raise ValueError("TransformerBlock: pass memory= exactly when the block has cross_attention=True")

        def sa(h):
            return self.drop(self.self_attn(h, mask=mask, causal=self.causal, key_padding_mask=key_padding_mask))

        def ca(h):
            return self.drop(self.cross_attn(h, memory, key_padding_mask=memory_key_padding_mask))

        if self.norm_first:
            x = x + sa(self.norm1(x))  # x += SA(LN(x))
            if self.cross_attn is not None:
                x = x + ca(self.norm2(x))  # x += CA(LN(x), memory)
            return x + self.drop(self.ff(self.norm3(x)))  # x += FFN(LN(x))
        x = self.norm1(x + sa(x))  # x = LN(x + SA(x))
        if self.cross_attn is not None:
            x = self.norm2(x + ca(x))  # x = LN(x + CA(x, memory))
        return self.norm3(x + self.drop(self.ff(x)))  # x = LN(x + FFN(x))


_POSITIONS = ("sinusoidal", "learned", "rope", "none")


class _Stack(nn.Module):
    """Token/feature embedding + positions + blocks (+ final LN for pre-LN)."""

    def __init__(self, d_model, n_heads, num_layers, d_ff, dropout, norm_first, vocab_size, max_len, positions,
                 causal, cross_attention):
        super().__init__()
        if positions not in _POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(_POSITIONS)}, got {positions!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.d_model, self.positions, self.max_len = d_model, positions, max_len
        self.embed = nn.Embedding(vocab_size, d_model) if vocab_size else None
        self.pos = LearnedPositions(max_len, d_model) if positions == "learned" else None
        if positions == "sinusoidal":
            self.register_buffer("pe", sinusoidal_positions(max_len, d_model), persistent=False)
        self.blocks = nn.ModuleList([
            TransformerBlock(d_model, n_heads, d_ff, dropout, norm_first, cross_attention, causal,
                             rope=positions == "rope") for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            if x.dtype not in (torch.int64, torch.int32):
                raise ValueError("this stack has vocab_size set: pass integer token ids [B, T]")
            x = self.embed(x) * math.sqrt(self.d_model)  # scale embeddings by sqrt(d_model)
        elif x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected features [B, T, {self.d_model}] (or build with vocab_size=), got "
                            f"{list(x.shape)}")
        T = x.shape[1]
        if self.positions == "sinusoidal":
            if T > self.max_len:
                raise ValueError(f"sequence length {T} exceeds max_len {self.max_len}; raise max_len")
            x = x + self.pe[:T]  # x + PE
        elif self.pos is not None:
            x = self.pos(x)
        return self.drop(x)


class Encoder(_Stack):
    """Transformer encoder: bidirectional self-attention blocks over token ids [B, T] or features [B, T, D]."""

    def __init__(self, d_model: int, n_heads: int, num_layers: int, d_ff: int | None = None,
                 dropout: float = 0.0, norm_first: bool = True, vocab_size: int | None = None,
                 max_len: int = 512, positions: str = "sinusoidal"):
        super().__init__(d_model, n_heads, num_layers, d_ff, dropout, norm_first, vocab_size, max_len, positions,
                         causal=False, cross_attention=False)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """-> hidden states [B, T, D]."""
        h = self._embed(x)
        for block in self.blocks:
            h = block(h, key_padding_mask=key_padding_mask)
        return self.norm(h)


class Decoder(_Stack):
    """Transformer decoder: causal self-attention (+ cross-attention to an encoder's memory if enabled)."""

    def __init__(self, d_model: int, n_heads: int, num_layers: int, d_ff: int | None = None,
                 dropout: float = 0.0, norm_first: bool = True, vocab_size: int | None = None,
                 max_len: int = 512, positions: str = "sinusoidal", cross_attention: bool = False):
        super().__init__(d_model, n_heads, num_layers, d_ff, dropout, norm_first, vocab_size, max_len, positions,
                         causal=True, cross_attention=cross_attention)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """-> hidden states [B, T, D]; position t depends on inputs <= t only."""
        h = self._embed(x)
        for block in self.blocks:
            h = block(h, memory, key_padding_mask=key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask)
        return self.norm(h)


class EncoderDecoder(nn.Module):
    """Sequence-to-sequence transformer: encoder over the source, causal decoder with cross-attention, linear head."""

    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int = 128, n_heads: int = 4, num_layers: int = 2,
                 d_ff: int | None = None, dropout: float = 0.0, norm_first: bool = True, max_len: int = 512,
                 positions: str = "sinusoidal"):
        super().__init__()
        self.encoder = Encoder(d_model, n_heads, num_layers, d_ff, dropout, norm_first, src_vocab, max_len,
                               positions)
        self.decoder = Decoder(d_model, n_heads, num_layers, d_ff, dropout, norm_first, tgt_vocab, max_len,
                               positions, cross_attention=True)
        self.head = nn.Linear(d_model, tgt_vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """src [B, S], tgt [B, T] token ids -> logits [B, T, tgt_vocab] (teacher forcing)."""
        memory = self.encoder(src, src_key_padding_mask)
        h = self.decoder(tgt, memory, memory_key_padding_mask=src_key_padding_mask)
        return self.head(h)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, bos: int, max_len: int) -> torch.Tensor:
        """Greedy decoding: y_{t+1} = argmax p(y | y_<=t, src); returns [B, max_len + 1] starting with bos."""
        memory = self.encoder(src)
        y = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
        for _ in range(max_len):
            logits = self.head(self.decoder(y, memory))[:, -1]
            y = torch.cat([y, logits.argmax(-1, keepdim=True)], dim=1)
        return y


class PatchEmbedding(nn.Module):
    """Split [B, C, H, W] into P x P patches and embed each linearly -> [B, (H/P)(W/P), D]."""

    def __init__(self, in_channels: int, patch_size: int, d_model: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, d_model, patch_size, stride=patch_size)  # = Linear on each patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N_patches, D]."""
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image {H}x{W} is not divisible into {self.patch_size}x{self.patch_size} patches")
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """Vision transformer: patch embedding + [CLS] token + learned positions + pre-LN encoder + linear head."""

    def __init__(self, image_size: int | tuple[int, int], patch_size: int, in_channels: int, num_classes: int,
                 d_model: int = 128, depth: int = 4, n_heads: int = 4, mlp_ratio: float = 2.0,
                 dropout: float = 0.0):
        super().__init__()
        H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
        if H % patch_size or W % patch_size:
            raise ValueError(f"ViT: image {H}x{W} must be divisible by patch_size {patch_size}")
        n = (H // patch_size) * (W // patch_size)
        self.patch = PatchEmbedding(in_channels, patch_size, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))  # learned [CLS] token
        self.pos = LearnedPositions(n + 1, d_model)
        self.blocks = nn.ModuleList([TransformerBlock(d_model, n_heads, int(mlp_ratio * d_model), dropout)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> logits [B, num_classes] from the [CLS] position."""
        h = self.patch(x)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)  # [CLS; x_p^1 E; ...; x_p^N E]
        h = self.pos(h)  # + E_pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, 0]))  # y = head(LN(z_L^0))
