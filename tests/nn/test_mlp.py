"""Perceptron convergence (Novikoff bound) and XOR failure, MLP solving XOR, linear regions of ReLU nets."""

import pytest
import torch

from mlcanon.nn import MLP, Perceptron, count_linear_regions, relu_kinks

XOR_X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = torch.tensor([0, 1, 1, 0])


def test_perceptron_converges_within_novikoff_bound():
    g = torch.Generator().manual_seed(0)
    w_true, b_true = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64), 0.3
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    margin = x @ w_true + b_true
    keep = margin.abs() > 0.3  # a positive margin: linearly separable with room
    x, margin = x[keep], margin[keep]
    y = (margin > 0).long()
    p = Perceptron(3)
    out = p.fit(x, y, max_epochs=1000)
    assert out["converged"]
    assert torch.equal(p.predict(x), y)
    # Novikoff: updates <= (R / gamma)^2 on augmented inputs (x, 1) with unit-norm separator
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    wa = torch.cat([w_true, torch.tensor([b_true], dtype=torch.float64)])
    gamma = ((2 * y - 1) * (xa @ wa)).min() / wa.norm()
    R = xa.norm(dim=1).max()
    assert 0 < out["updates"] <= (R / gamma) ** 2


def test_perceptron_fails_on_xor():
    p = Perceptron(2)
    out = p.fit(XOR_X, XOR_Y, max_epochs=500)
    assert not out["converged"]
    assert (p.predict(XOR_X) == XOR_Y).float().mean() < 1.0
    # no line separates XOR: a brute-force search over many (w, b) never gets all four right
    g = torch.Generator().manual_seed(0)
    W = torch.randn(20000, 2, generator=g)
    b = torch.randn(20000, generator=g)
    preds = (XOR_X @ W.T + b >= 0).long()  # [4, 20000]
    assert not (preds == XOR_Y[:, None]).all(0).any()


def test_perceptron_bad_labels():
    with pytest.raises(ValueError, match="0 or 1"):
        Perceptron(2).fit(XOR_X, torch.tensor([0, 2, 1, 0]))


def test_mlp_solves_xor():
    torch.manual_seed(0)
    net = MLP(2, (8,), 1, act="tanh")
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(150):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(XOR_X).squeeze(1), XOR_Y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal((net(XOR_X).squeeze(1) > 0).long(), XOR_Y)
    assert loss.item() < 0.05


def _shallow_relu(k: int, seed: int) -> MLP:
    """1-D shallow ReLU net with k units whose kinks are spread over [-3, 3] and nonzero output weights."""
    g = torch.Generator().manual_seed(seed)
    net = MLP(1, (k,), 1).double()
    first, last = net.net[0], net.net[2]
    kinks = torch.linspace(-3, 3, k, dtype=torch.float64) + 0.05 * torch.rand(k, generator=g, dtype=torch.float64)
    w = (0.5 + torch.rand(k, generator=g, dtype=torch.float64)) * torch.sign(torch.randn(k, generator=g))
    v = (0.5 + torch.rand(k, generator=g, dtype=torch.float64)) * torch.sign(torch.randn(k, generator=g))
    with torch.no_grad():
        first.weight.copy_(w[:, None])
        first.bias.copy_(-w * kinks)  # relu(w (x - kink))
        last.weight.copy_(v[None, :])
    return net


@pytest.mark.parametrize("k", [1, 5, 20])
def test_linear_regions_equal_relus_plus_one(k):
    net = _shallow_relu(k, seed=k)
    assert count_linear_regions(net, -4.0, 4.0, n=80_001) == k + 1
    # a window holding only some kinks: regions = kinks inside + 1
    inside = relu_kinks(net.net[0], -1.0, 1.0)
    assert count_linear_regions(net, -1.0, 1.0, n=40_001) == len(inside) + 1


def test_linear_regions_of_an_affine_function_is_one():
    assert count_linear_regions(lambda x: 3 * x + 1, -2, 2, n=1001) == 1
    assert count_linear_regions(lambda x: x.abs(), -2, 2.1, n=1001) == 2
