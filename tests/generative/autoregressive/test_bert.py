"""BERT-style encoder: full vs causal attention by gradient, the 80/10/10 corruption, the speaker task parser."""

import torch

from mlcanon.generative.autoregressive.bert import BERT, speeches
from mlcanon.training import generator


def _dependence(causal: bool) -> torch.Tensor:
    torch.manual_seed(0)
    model = BERT(9, context=6, layers=2, heads=2, width=8, causal=causal).double()
    x = torch.randint(9, (2, 6))
    e = model.wte(x).detach().requires_grad_(True)
    h = model.wte.register_forward_hook(lambda m, i, o: e)
    out = model(x)
    w = torch.randn(8, dtype=torch.float64)     # a random read-out (LayerNorm outputs sum to a constant)
    D = torch.zeros(6, 6)
    for t in range(6):
        e.grad = None
        (out[:, t] @ w).sum().backward(retain_graph=True)
        D[t] = e.grad.abs().sum((0, 2))
    h.remove()
    return D


def test_full_attention_sees_both_sides_causal_only_the_left():
    full, causal = _dependence(False), _dependence(True)
    assert (full > 0).all()                                           # every output sees every token
    assert torch.equal(causal > 0, torch.ones(6, 6).tril().bool())    # output t sees tokens <= t only


def test_corruption_rates_80_10_10():
    model = BERT(50, context=8, layers=1, heads=1, width=4)
    x = torch.randint(50, (400, 250))
    xt, chosen = model.corrupt(x, generator(0))
    n = x.numel()
    frac = chosen.float().mean()
    assert abs(frac - 0.15) < 4 * (0.15 * 0.85 / n) ** 0.5                       # 4 sigma of a binomial
    c = int(chosen.sum())
    masked = (xt[chosen] == model.mask_id).float().mean()
    assert abs(masked - 0.8) < 4 * (0.8 * 0.2 / c) ** 0.5
    same = (xt[chosen] == x[chosen]).float().mean()                               # 10% kept + 10%/50 random hits
    assert abs(same - (0.1 + 0.1 / 50)) < 4 * (0.1 * 0.9 / c) ** 0.5
    assert torch.equal(xt[~chosen], x[~chosen])                                   # the rest untouched


def test_speeches_parse_play_headings():
    text = "First Citizen:\nBefore we proceed.\nHear me.\n\nAll:\nSpeak, speak.\n\nnot a heading\nx\n"
    assert speeches(text) == [("First Citizen", "Before we proceed.\nHear me."), ("All", "Speak, speak.")]
