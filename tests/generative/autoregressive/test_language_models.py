"""Language models: causality by gradient, KV-cache / carried-state sampling equals full recomputation,
sampling filters (temperature, top-k, top-p) against their definitions, normalization of log_prob."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from mlcanon import registry
from mlcanon.config import from_dict
from mlcanon.generative.autoregressive.gpt import GPT, GPTConfig, build
from mlcanon.generative.autoregressive.language import filter_logits, generate, recompute
from mlcanon.generative.autoregressive.lstm_lm import LSTMLM
from mlcanon.training import generator

V = 11


def _gpt(positions="learned", context=12):
    torch.manual_seed(0)
    return GPT(V, context=context, layers=2, heads=2, width=16, positions=positions).double().eval()


MODELS = {"gpt-learned": lambda: _gpt("learned"), "gpt-rotary": lambda: _gpt("rotary"),
          "lstm": lambda: LSTMLM(V, width=12, layers=2).double().eval()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_causal_by_gradient(name):
    """d logits_t / d e_s = 0 for s > t (through the input embeddings), and != 0 for s <= t."""
    model = MODELS[name]()
    T = 8
    x = torch.randint(V, (3, T))
    emb = model.wte if hasattr(model, "wte") else model.embed
    e = emb(x).detach().requires_grad_(True)
    handle = emb.register_forward_hook(lambda m, i, o: e)
    try:
        logits, _ = model(x)
        for t in range(T):
            e.grad = None
            logits[:, t].sum().backward(retain_graph=True)
            g = e.grad.abs().sum((0, 2))
            assert torch.all(g[t + 1:] == 0), (name, t, g)
            assert torch.all(g[:t + 1] > 0), (name, t, g)
    finally:
        handle.remove()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_sampling_equals_full_recompute(name):
    model = MODELS[name]()
    prompt = torch.randint(V, (2, 3))
    # past the GPT context (12): the window slides and the cache is rebuilt
    a = generate(model, prompt, 15, generator=generator(5), use_cache=True)
    b = generate(model, prompt, 15, generator=generator(5), use_cache=False)
    assert torch.equal(a, b)
    # and the logits themselves: one token at a time through the cache vs the whole prefix at once
    x = torch.randint(V, (2, 10))
    logits, state = model.step(x[:, :4], None)
    for t in range(4, 10):
        logits, state = model.step(x[:, t:t + 1], state)
        full = recompute(model, x[:, :t + 1])[:, -1]
        assert torch.allclose(logits[:, -1], full, atol=1e-10), (name, t)


def test_gpt_rotary_attention_depends_on_offsets_only():
    """RoPE: shifting every position by the same amount leaves q.k unchanged."""
    from mlcanon.nn.attention import RotaryEmbedding
    rope = RotaryEmbedding(8).double()
    q, k = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    pos = torch.arange(5)
    s0 = rope(q, pos) @ rope(k, pos).T
    s1 = rope(q, pos + 7) @ rope(k, pos + 7).T
    assert torch.allclose(s0, s1, atol=1e-12)


def test_gpt_weight_tying():
    torch.manual_seed(0)
    model = GPT(V, context=8, layers=1, heads=2, width=8)
    x = torch.randint(V, (2, 5))
    logits, _ = model(x)
    with torch.no_grad():
        model.wte.weight[3] += 1.0               # the output weight of token 3 is its embedding
    logits2, _ = model(x)
    assert not torch.allclose(logits2[..., 3], logits[..., 3])
    assert "head.weight" not in model.state_dict()
    untied = GPT(V, context=8, layers=1, heads=2, width=8, tie_weights=False)
    assert untied.state_dict()["head.weight"].shape == (V, 8)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_log_prob_normalizes_over_all_continuations(name):
    """sum over all V^2 continuations (x_2, x_3) of p(x_2, x_3 | x_1) = 1."""
    model = MODELS[name]()
    first = 4
    seqs = torch.tensor([(first, a, b) for a, b in itertools.product(range(V), repeat=2)])
    with torch.no_grad():
        lp = model.log_prob(seqs)
    assert abs(float(torch.logsumexp(lp, 0))) < 1e-10


def test_filter_logits_temperature_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype=torch.float64))
    p = filter_logits(logits, 1.0).exp()
    assert torch.allclose(p, logits.exp())
    p2 = filter_logits(logits, 0.5).exp()                                    # p^(1/tau), renormalized
    q = logits.exp() ** 2
    assert torch.allclose(p2, q / q.sum())
    pk = filter_logits(logits, top_k=2).exp()
    assert torch.allclose(pk, torch.tensor([[5 / 7, 2 / 7, 0, 0, 0]], dtype=torch.float64))
    pp = filter_logits(logits, top_p=0.8).exp()                              # 0.5 + 0.2 < 0.8 <= 0.85
    assert torch.allclose(pp, torch.tensor([[0.5, 0.2, 0.15, 0, 0]], dtype=torch.float64) / 0.85)
    pp = filter_logits(logits, top_p=0.7).exp()                              # exactly reached by two tokens
    assert (pp > 0).sum() in (2, 3) and math.isclose(float(pp.sum()), 1.0)


def test_sampling_frequencies_follow_the_filtered_distribution():
    model = _gpt()
    prompt = torch.full((20000, 1), 3)
    x = generate(model, prompt, 1, temperature=0.7, top_k=5, generator=generator(2))
    with torch.no_grad():
        p = filter_logits(model(prompt[:1])[0][:, -1], 0.7, 5).exp()[0]
    counts = torch.bincount(x[:, 1], minlength=V).double()
    keep = p > 0
    assert counts[~keep].sum() == 0                                          # never outside the top k
    expected = 20000 * p[keep]
    chi2 = float(((counts[keep] - expected) ** 2 / expected).sum())
    assert chi2 < 25.0                                                        # chi^2_4, quantile 0.99995


@pytest.mark.parametrize("bias", [False, True])
def test_gpt_parameter_count_is_the_closed_form(bias):
    """Weights of GPT-2's block: W_qkv 3d^2, W_o d^2, MLP 8d^2, two LayerNorm gains 2d, per layer; E (V d, tied),
    P (C d), the final gain d. Biases (bias=True) add 3d + d + 4d + d + 2 d per layer and d at the end; without
    them (nanoGPT's bias=False) no parameter is a bias."""
    Vv, C, L, d = 13, 10, 3, 24
    model = GPT(Vv, context=C, layers=L, heads=4, width=d, bias=bias)
    n = Vv * d + C * d + L * (12 * d * d + 2 * d) + d + (L * 11 * d + d if bias else 0)
    assert sum(p.numel() for p in model.parameters()) == n
    assert any(name.endswith("bias") for name, _ in model.named_parameters()) == bias


def test_gpt_config_old_runs_keep_biases_and_decay_to_zero():
    """config.json of a run written before --bias / --min-lr existed rebuilds that run's model and schedule."""
    new = GPTConfig()
    assert (new.bias, new.min_lr) == (False, 1e-4)              # nanoGPT's shakespeare-char defaults
    old = from_dict(GPTConfig, {"layers": 1, "heads": 2, "width": 8, "context": 8})
    assert (old.bias, old.min_lr) == (True, 0.0)
    assert any(name.endswith("bias") for name, _ in build(old, 5).named_parameters())


def test_gpt_learning_rate_follows_nanogpts_schedule(tmp_path, tmp_runs):
    """Logged lr at step t (after t optimizer steps; the step t-1 used it): warm-up lr t/W, then
    min + (lr - min)(1 + cos(pi u))/2 with u = (t-1-W)/(T-W) (nanoGPT's get_lr, decay to --min-lr at the end)."""
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question.\n" * 200)
    algo = registry.get("gpt")
    lr, lo, W, T = 1e-3, 1e-4, 2, 10
    config = algo.config_cls(**{**algo.tiny, "dataset": f"text:{text}", "max_steps": T, "warmup_steps": W,
                                "lr": lr, "min_lr": lo, "log_every": 1, "eval_every": 5, "samples": 0,
                                "out_dir": str(tmp_runs), "progress": False, "device": "cpu"})
    run_dir = algo.train(config)["run_dir"]
    logged = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train/lr" in rec:
            logged[rec["step"]] = rec["train/lr"]
    for t, value in logged.items():
        s = t - 1                                                   # the 0-based step whose update used it
        want = lr * (s + 1) / W if s < W else lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * (s - W) / (T - W)))
        assert value == pytest.approx(want, rel=1e-12), t
    assert sorted(logged) == list(range(1, T + 1))
