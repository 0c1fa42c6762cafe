"""Elman RNN and LSTM from the equations vs torch, BPTT by the recursion, clipping, vanishing gradients."""

import pytest
import torch

from mlcanon.nn import LSTM, ElmanRNN, LSTMCell, clip_grad_norm, elman_bptt


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm_loads_torch_state_dict_and_matches(batch_first):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 7, num_layers=2, batch_first=batch_first)
    ours = LSTM(5, 7, num_layers=2, batch_first=batch_first)
    ours.load_state_dict(ref.state_dict())  # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ... l1
    x = torch.randn(3, 11, 5) if batch_first else torch.randn(11, 3, 5)
    h0, c0 = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    out, (h, c) = ours(x, (h0, c0))
    out_r, (h_r, c_r) = ref(x, (h0, c0))
    torch.testing.assert_close(out, out_r)
    torch.testing.assert_close(h, h_r)
    torch.testing.assert_close(c, c_r)
    g = torch.autograd.grad(out.sum(), ours.weight_hh_l0)[0]  # BPTT through our loop = torch's gradient
    torch.testing.assert_close(g, torch.autograd.grad(out_r.sum(), ref.weight_hh_l0)[0])


def test_lstm_cell_gate_equations():
    torch.manual_seed(0)
    ref, ours = torch.nn.LSTMCell(4, 6), LSTMCell(4, 6)
    ours.load_state_dict(ref.state_dict())
    x, h, c = torch.randn(3, 4), torch.randn(3, 6), torch.randn(3, 6)
    h1, c1 = ours(x, (h, c))
    h_r, c_r = ref(x, (h, c))
    torch.testing.assert_close(h1, h_r)
    torch.testing.assert_close(c1, c_r)
    # by hand, gate order i, f, g, o
    z = x @ ours.weight_ih.T + ours.bias_ih + h @ ours.weight_hh.T + ours.bias_hh
    i, f, g, o = z.sigmoid()[:, :6], z.sigmoid()[:, 6:12], z.tanh()[:, 12:18], z.sigmoid()[:, 18:]
    torch.testing.assert_close(c1, f * c + i * g)
    torch.testing.assert_close(h1, o * torch.tanh(f * c + i * g))


def test_elman_matches_torch_rnn():
    torch.manual_seed(0)
    ref, ours = torch.nn.RNN(5, 7, num_layers=2, batch_first=True), ElmanRNN(5, 7, num_layers=2)
    ours.load_state_dict(ref.state_dict())
    x, h0 = torch.randn(3, 9, 5), torch.randn(2, 3, 7)
    out, h = ours(x, h0)
    out_r, h_r = ref(x, h0)
    torch.testing.assert_close(out, out_r)
    torch.testing.assert_close(h, h_r)
    with pytest.raises(ValueError, match="expected input"):
        ours(torch.randn(3, 9, 4))


def test_explicit_bptt_equals_autograd():
    g = torch.Generator().manual_seed(0)
    B, T, D, H = 3, 8, 4, 5
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64, requires_grad=True)
    W_ih = torch.randn(H, D, generator=g, dtype=torch.float64, requires_grad=True)
    W_hh = (0.5 * torch.randn(H, H, generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.randn(H, generator=g, dtype=torch.float64, requires_grad=True)
    hs, h = [], h0
    for t in range(T):
        h = torch.tanh(x[:, t] @ W_ih.T + h @ W_hh.T + b)
        hs.append(h)
    hs = torch.stack(hs, 1)
    target = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    loss = ((hs - target) ** 2).sum()
    auto = torch.autograd.grad(loss, (W_ih, W_hh, b, h0, x))
    ours = elman_bptt(x.detach(), h0.detach(), W_ih.detach(), W_hh.detach(), b.detach(),
                      2 * (hs.detach() - target))
    for key, ref in zip(("W_ih", "W_hh", "b", "h0", "x"), auto):
        torch.testing.assert_close(ours[key], ref)


def test_clip_grad_norm_follows_the_definition():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2))]
    ps[2].grad = None
    for p in ps[:2]:
        p.grad = torch.randn_like(p) * 3
    before = [p.grad.clone() for p in ps[:2]]
    norm = torch.sqrt(sum((g ** 2).sum() for g in before))
    total = clip_grad_norm(ps, max_norm=1.0)
    torch.testing.assert_close(total, norm)
    for p, g in zip(ps[:2], before):
        torch.testing.assert_close(p.grad, g * min(1.0, 1.0 / norm.item()))  # g * min(1, max_norm/||g||)
    assert torch.isclose(torch.sqrt(sum((p.grad ** 2).sum() for p in ps[:2])), torch.tensor(1.0))
    # same as torch's utility; a norm already below max_norm is left alone
    qs = [torch.nn.Parameter(torch.zeros(3)) for _ in range(2)]
    for q, g in zip(qs, before):
        q.grad = g.flatten()[:3].clone()
    kept = [q.grad.clone() for q in qs]
    clip_grad_norm(qs, max_norm=1e6)
    for q, g in zip(qs, kept):
        torch.testing.assert_close(q.grad, g)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(qs, 0.0)


def test_clip_grad_norm_matches_torch():
    torch.manual_seed(1)
    a = [torch.nn.Parameter(torch.randn(4, 4)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    torch.testing.assert_close(clip_grad_norm(a, 0.5), torch.nn.utils.clip_grad_norm_(b, 0.5))
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad)


def test_elman_gradient_vanishes_over_a_long_sequence_lstm_does_not():
    T = 100
    norms = {}
    for name, make in [("elman", lambda: ElmanRNN(4, 32)), ("lstm", lambda: LSTM(4, 32, forget_bias=5.0))]:
        torch.manual_seed(1)
        net = make()  # torch's default init U(-1/sqrt(H), 1/sqrt(H)); LSTM forget-gate bias 5
        x = torch.randn(8, T, 4, requires_grad=True)
        net(x)[0][:, -1].sum().backward()  # loss on the last output only
        norms[name] = x.grad[:, 0].norm().item()  # how much the first input still matters
    assert norms["elman"] < 1e-12  # prod_t diag(1 - h_t^2) W_hh -> 0 geometrically
    assert norms["lstm"] > 1e-2  # dc_t/dc_{t-1} = f_t ~ sigmoid(5) keeps it
