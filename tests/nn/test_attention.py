"""Attention, multi-head attention, masks, positions (sinusoidal, learned, RoPE), transformer stacks, ViT."""

import math

import pytest
import torch
import torch.nn.functional as F

from mlcanon.nn import (
    Decoder,
    Encoder,
    EncoderDecoder,
    LearnedPositions,
    MultiHeadAttention,
    RotaryEmbedding,
    TransformerBlock,
    ViT,
    attention,
    causal_mask,
    sinusoidal_positions,
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_attention_formula_and_sdpa():
    q, k, v = _rand(2, 3, 5, 8), _rand(2, 3, 7, 8, seed=1), _rand(2, 3, 7, 4, seed=2)
    out, w = attention(q, k, v)
    torch.testing.assert_close(w, torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    mask = _rand(5, 7, seed=3) > -0.5
    mask[:, 0] = True
    torch.testing.assert_close(attention(q, k, v, mask)[0], F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    kc, vc = k[:, :, :5], v[:, :, :5]
    torch.testing.assert_close(attention(q, kc, vc, causal=True)[0],
                               F.scaled_dot_product_attention(q, kc, vc, is_causal=True))
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))


def test_mha_matches_torch_multihead_attention_and_sdpa():
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x, ctx = _rand(2, 5, 16), _rand(2, 6, 16, seed=1)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0])
    torch.testing.assert_close(ours(x, causal=True), ref(x, x, x, attn_mask=~causal_mask(5), need_weights=False)[0])
    torch.testing.assert_close(ours(x, ctx, key_padding_mask=pad),
                               ref(x, ctx, ctx, key_padding_mask=pad, need_weights=False)[0])
    # heads by hand with torch's fused kernel
    def split(t):
        return t.view(2, -1, 4, 4).transpose(1, 2)
    q, k, v = split(ours.q_proj(x)), split(ours.k_proj(ctx)), split(ours.v_proj(ctx))
    sdpa = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(ours(x, ctx), ours.out_proj(sdpa))


def test_causal_self_attention_by_gradient():
    torch.manual_seed(0)
    for module in (MultiHeadAttention(8, 2), Decoder(8, 2, num_layers=2)):
        x = torch.randn(1, 6, 8, requires_grad=True)
        out = module(x, causal=True) if isinstance(module, MultiHeadAttention) else module(x)
        r = torch.randn(8)  # a random read-out (a plain sum of a LayerNorm output is constant)
        for t in range(6):
            (g,) = torch.autograd.grad(out[0, t] @ r, x, retain_graph=True)
            assert g[0, t + 1:].abs().sum() == 0  # nothing after t influences position t
            assert g[0, : t + 1].abs().sum(-1).min() > 0  # everything up to t does


def test_key_padding_is_ignored():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    x, ctx = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    pad = torch.tensor([[False, False, False, True, True]])
    a = mha(x, ctx, key_padding_mask=pad, need_weights=True)
    assert mha.last_weights[..., 3:].abs().max() == 0
    ctx2 = ctx.clone()
    ctx2[:, 3:] = 100.0
    torch.testing.assert_close(mha(x, ctx2, key_padding_mask=pad), a)
    torch.testing.assert_close(a, mha(x, ctx[:, :3]))


def test_sinusoidal_positions_formula_and_relative_shift():
    pe = sinusoidal_positions(50, 16)
    p, i = 7, 3
    assert math.isclose(pe[p, 2 * i].item(), math.sin(p / 10000 ** (2 * i / 16)), rel_tol=1e-5)
    assert math.isclose(pe[p, 2 * i + 1].item(), math.cos(p / 10000 ** (2 * i / 16)), rel_tol=1e-5)
    # PE[p + k] is a fixed rotation of PE[p] for every p (per frequency pair): depends on k only
    k = 5
    w = 10000 ** (-torch.arange(0, 16, 2).float() / 16)
    c, s = torch.cos(k * w), torch.sin(k * w)
    shifted = torch.stack([pe[:-k, 0::2] * c + pe[:-k, 1::2] * s, pe[:-k, 1::2] * c - pe[:-k, 0::2] * s], -1)
    torch.testing.assert_close(shifted.flatten(1), pe[k:], atol=1e-4, rtol=0)


def test_rope_scores_depend_only_on_relative_offset():
    rope = RotaryEmbedding(8)
    q, k = _rand(8), _rand(8, seed=1)

    def score(m, n):
        qm = rope(q.view(1, 8), torch.tensor([m]))
        kn = rope(k.view(1, 8), torch.tensor([n]))
        return (qm * kn).sum().item()

    for m, n in [(0, 3), (5, 2), (10, 10)]:
        for shift in (1, 7, 40):
            assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-4, abs_tol=1e-5)
    assert not math.isclose(score(0, 3), score(0, 4), rel_tol=1e-3)
    x = _rand(2, 5, 8)
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1))  # rotations keep the norm


def test_learned_positions():
    lp = LearnedPositions(4, 6)
    x = torch.zeros(2, 3, 6)
    torch.testing.assert_close(lp(x), lp.weight[:3].expand(2, 3, 6))
    with pytest.raises(ValueError, match="max_len"):
        lp(torch.zeros(1, 5, 6))


def test_pre_and_post_layer_norm_blocks():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    post = TransformerBlock(16, 4, norm_first=False)
    y = post(x)  # ends with LayerNorm (gamma = 1, beta = 0 at init)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)
    pre = TransformerBlock(16, 4, norm_first=True)
    with torch.no_grad():  # zero output projections: every residual branch adds 0, the block is the identity
        pre.self_attn.out_proj.weight.zero_()
        pre.self_attn.out_proj.bias.zero_()
        pre.ff[-1].weight.zero_()
        pre.ff[-1].bias.zero_()
    torch.testing.assert_close(pre(x), x)
    cross = TransformerBlock(16, 4, cross_attention=True)
    assert cross(x, torch.randn(2, 7, 16)).shape == (2, 5, 16)
    with pytest.raises(ValueError, match="memory"):
        cross(x)


def test_encoder_without_positions_is_permutation_equivariant():
    torch.manual_seed(0)
    enc = Encoder(16, 4, num_layers=2, positions="none")
    x = torch.randn(2, 6, 16)
    perm = torch.randperm(6)
    torch.testing.assert_close(enc(x[:, perm]), enc(x)[:, perm])
    enc_pos = Encoder(16, 4, num_layers=2, positions="sinusoidal")
    assert not torch.allclose(enc_pos(x[:, perm]), enc_pos(x)[:, perm], atol=1e-4)
    rope_enc = Encoder(16, 4, num_layers=1, positions="rope", vocab_size=10)
    assert rope_enc(torch.randint(0, 10, (2, 6))).shape == (2, 6, 16)
    with pytest.raises(ValueError, match="positions"):
        Encoder(16, 4, 1, positions="alibi")


def test_encoder_decoder_learns_to_copy():
    torch.manual_seed(0)
    V, T = 6, 5
    model = EncoderDecoder(V + 1, V + 1, d_model=32, n_heads=4, num_layers=1, d_ff=64, positions="learned")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    bos = V
    for _ in range(200):
        src = torch.randint(0, V, (32, T))
        tgt_in = torch.cat([torch.full((32, 1), bos), src[:, :-1]], 1)  # teacher forcing
        loss = F.cross_entropy(model(src, tgt_in).reshape(-1, V + 1), src.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    src = torch.randint(0, V, (64, T), generator=torch.Generator().manual_seed(1))
    out = model.generate(src, bos, T)[:, 1:]
    assert (out == src).float().mean() > 0.9


def test_vit_learns_a_tiny_task():
    torch.manual_seed(0)
    x = torch.randn(48, 1, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()  # brighter top half?
    vit = ViT(8, 2, 1, 2, d_model=16, depth=1, n_heads=2)
    assert vit(x).shape == (48, 2)
    opt = torch.optim.Adam(vit.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(vit(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (vit(x).argmax(1) == y).float().mean() >= 0.95
    with pytest.raises(ValueError, match="divisible"):
        ViT(8, 3, 1, 2)
