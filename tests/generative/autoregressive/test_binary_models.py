"""The exact-likelihood models of binary images (FVSBN, NADE, MADE, PixelCNN, gated PixelCNN): the
autoregressive property by gradient, normalization by brute force over all 2^D inputs, and sampling
frequencies against log_prob."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mlcanon.generative.autoregressive.binary_images import bits_per_dim
from mlcanon.generative.autoregressive.fvsbn import FVSBN
from mlcanon.generative.autoregressive.made import MADE, BinaryMADE
from mlcanon.generative.autoregressive.nade import NADE
from mlcanon.training import generator

MODELS = {
    "fvsbn": lambda shape: FVSBN(shape),
    "nade": lambda shape: NADE(shape, hidden=7),
    "made": lambda shape: BinaryMADE(shape, (30, 30), order="random", seed=3),
    "made-order-agnostic": lambda shape: BinaryMADE(shape, (30,), num_masks=3, order_agnostic=True, seed=1),
}
try:   # the convolutional ones, when present
    from mlcanon.generative.autoregressive.pixelcnn import GatedPixelCNN, PixelCNN
    MODELS["pixelcnn"] = lambda shape: PixelCNN(shape, channels=6, layers=2, first_kernel=3)
    MODELS["gated-pixelcnn"] = lambda shape: GatedPixelCNN(shape, channels=6, layers=2, num_classes=3)
except ImportError:
    pass


def _sharpen(model: torch.nn.Module, scale: float = 3.0) -> torch.nn.Module:
    """Random weights scaled up, so the distribution is far from uniform (a test with teeth)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * scale / math.sqrt(max(p.shape[-1], 1)) if p.dim() > 1
                    else torch.randn_like(p))
    return model.double().eval()


def _cond(model, n):
    return torch.arange(n) % 3 if getattr(model, "num_classes", 0) else None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_autoregressive_property_by_gradient(name):
    shape = (1, 3, 4)
    D = 12
    model = _sharpen(MODELS[name](shape))
    masks = [0, 2] if name == "made-order-agnostic" else [None]
    for m in masks:
        if m is not None:
            model.made.set_mask(m)
        order = model.generation_order.tolist()
        pos = {d: p for p, d in enumerate(order)}
        x = torch.rand(5, *shape, dtype=torch.float64, requires_grad=True)
        y = _cond(model, 5)
        J = torch.zeros(D, D, dtype=torch.float64)
        for i in range(D):
            x.grad = None
            model.logits(x, y).reshape(5, D)[:, i].sum().backward()
            J[i] = x.grad.reshape(5, D).abs().sum(0)
        for i in range(D):
            for j in range(D):
                if pos[j] >= pos[i]:
                    assert J[i, j] == 0, (name, i, j)   # d logit_i / d x_j = 0 for j at or after i
        # and the model does use the past: most conditionals after the first see some earlier dim
        sees = [bool(J[order[p]].sum() > 0) for p in range(1, D)]
        assert sum(sees) >= D // 2 and sees[-1], (name, sees)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_log_prob_sums_to_one_over_all_binary_inputs(name):
    shape = (1, 3, 3)
    model = _sharpen(MODELS[name](shape))
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)), dtype=torch.float64).view(-1, *shape)
    with torch.no_grad():
        if getattr(model, "num_classes", 0):
            for c in range(3):
                lp = model.log_prob(xs, torch.full((len(xs),), c))
                assert abs(float(torch.logsumexp(lp, 0))) < 1e-10
        else:
            lp = model.log_prob(xs)
            assert abs(float(torch.logsumexp(lp, 0))) < 1e-10   # sum_x p(x) = 1 (float64 arithmetic)
            assert torch.allclose(bits_per_dim(model, xs), -lp / (9 * math.log(2)))
            assert lp.std() > 0.5                                 # and it is not uniform


def test_made_mask_ensemble_is_a_normalized_mixture():
    model = _sharpen(BinaryMADE((1, 2, 3), (10,), num_masks=4, order_agnostic=True, seed=2))
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64).view(-1, 1, 2, 3)
    with torch.no_grad():
        ens = model.log_prob(xs, masks=4)
        singles = []
        for m in range(4):
            model.made.set_mask(m)
            singles.append(model.log_prob(xs).exp())
    assert abs(float(torch.logsumexp(ens, 0))) < 1e-10
    assert torch.allclose(ens.exp(), torch.stack(singles).mean(0), atol=1e-12)   # p = mean_m p_m
    assert not torch.allclose(singles[0], singles[1])                              # the masks differ


def test_made_masks_connect_exactly_the_allowed_paths():
    """A MADE output d is connected to input e (some path through the masks) iff degree(e) < degree(d)."""
    made = MADE(6, (20, 20), out_multiplier=2, order=[3, 1, 5, 0, 4, 2], seed=0)
    paths = made.output.mask
    for layer in reversed(made.hidden):
        paths = paths @ layer.mask                                  # [2D, D] number of paths
    deg = made.degrees.repeat(2)
    allowed = deg[:, None] > made.degrees[None, :]
    assert torch.all((paths > 0) <= allowed)
    assert made.degrees.tolist() == [4, 2, 6, 1, 5, 3]             # m^0 = position in the order + 1
    assert made(torch.randn(4, 6)).shape == (4, 2, 6)


def test_made_training_cycles_masks_by_step():
    model = BinaryMADE((1, 2, 3), (8,), num_masks=3, order_agnostic=True, seed=0).train()
    x = torch.bernoulli(torch.full((4, 1, 2, 3), 0.5))
    orders = []
    for _ in range(4):
        model.loss({"x": x})
        orders.append(model.generation_order.tolist())
    assert orders[0] == orders[3] and orders[0] != orders[1]
    assert int(model.made.mask_step) == 4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sampling_frequencies_match_log_prob(name):
    shape = (1, 1, 3)
    model = _sharpen(MODELS[name](shape), scale=2.0)
    n = 20000
    y = torch.full((n,), 1) if getattr(model, "num_classes", 0) else None
    s = model.sample(n, y, generator=generator(0)).reshape(n, 3)
    idx = (s * torch.tensor([4.0, 2.0, 1.0], dtype=s.dtype)).sum(1).long()
    counts = torch.bincount(idx, minlength=8).double()
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64).view(8, *shape)
    with torch.no_grad():
        p = model.log_prob(xs, None if y is None else y[:8]).exp()
    expected = n * p
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30.0, (name, counts.tolist(), expected.tolist())   # chi^2_7 quantile 0.9999 ~ 29.9


def _reached(model, shape, i, j):
    """Input pixels with a nonzero gradient of logit (i, j) (summed over a batch of random inputs)."""
    model = model.double()
    torch.manual_seed(1)
    x = torch.rand(4, *shape, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(4, dtype=torch.long) if getattr(model, "num_classes", 0) else None
    model.logits(x, y)[:, 0, i, j].sum().backward()
    return x.grad.abs().sum((0, 1)) > 0                                  # [H, W]


def test_pixelcnn_receptive_field_and_blind_spot():
    from mlcanon.generative.autoregressive.pixelcnn import PixelCNN
    shape, (i, j) = (1, 15, 15), (10, 7)
    for layers in (1, 3):
        R = 3 + layers                                                   # 7x7 mask A, then 3x3 mask-B layers
        seen = _reached(PixelCNN(shape, channels=8, layers=layers, first_kernel=7), shape, i, j)
        rows, cols = torch.nonzero(seen, as_tuple=True)
        assert rows.min() == i - R and rows.max() == i                   # the receptive field's extent ...
        assert cols.min() == j - R and cols.max() == j + R
        assert seen[i].nonzero().flatten().tolist() == list(range(j - R, j))   # ... its own row: the left only
        assert not seen[i + 1:].any() and not seen[i, j:].any()         # nothing at or after (i, j)
        # the blind spot: (i-1, j+R) lies inside the box, and pixels above it in its column are seen, yet no
        # path reaches it (the seen part of row i-r ends at column j+3+r-1: a triangle is missing)
        assert seen[i - (R - 2), j + R] and not seen[i - 1, j + R]


def test_gated_pixelcnn_has_no_blind_spot():
    from mlcanon.generative.autoregressive.pixelcnn import GatedPixelCNN
    shape, (i, j) = (1, 15, 15), (10, 7)
    for num_classes in (0, 3):
        seen = _reached(GatedPixelCNN(shape, channels=8, layers=2, first_kernel=7, num_classes=num_classes),
                        shape, i, j)
        above = seen[:i]
        rows, cols = torch.nonzero(above, as_tuple=True)
        box = above[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()                                                 # every pixel of the cone above: no hole
        assert above[i - 1, j + 4]                                       # where the plain PixelCNN is blind
        assert rows.max() == i - 1 and cols.min() <= j - 4 and cols.max() >= j + 4
        assert seen[i, :j].any() and not seen[i, j:].any() and not seen[i + 1:].any()


@pytest.mark.parametrize("name", ["pixelcnn", "gated-pixelcnn"])
def test_pixelcnn_position_bias_starts_at_the_training_marginals(name):
    """With the convolutional path silenced (last 1 x 1 conv zero), logit_ij = b_ij, so after init_from_data
    the model is the independent-pixel model with the smoothed marginals (n_ij + 1/2) / (N + 1):
    log p(x) = sum_ij [x_ij log p_ij + (1 - x_ij) log(1 - p_ij)]."""
    torch.manual_seed(0)
    shape = (1, 4, 5)
    p_true = torch.linspace(0.05, 0.95, 20).reshape(shape)              # marginals that vary with position
    x = torch.bernoulli(p_true.expand(200, *shape))
    model = MODELS[name](shape).double()
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
    model.init_from_data(x.double())
    p = (x.sum(0, dtype=torch.float64) + 0.5) / (200 + 1)
    y = torch.zeros(7, dtype=torch.long) if getattr(model, "num_classes", 0) else None
    xt = torch.bernoulli(p_true.expand(7, *shape)).double()
    expected = (xt * p.log() + (1 - xt) * (1 - p).log()).sum((1, 2, 3))
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(xt, y), expected, rtol=1e-12, atol=1e-10)


def test_class_conditional_gated_pixelcnn_depends_on_the_label():
    from mlcanon.generative.autoregressive.pixelcnn import GatedPixelCNN
    model = _sharpen(GatedPixelCNN((1, 3, 3), channels=4, layers=2, first_kernel=3, num_classes=3))
    x = torch.bernoulli(torch.full((2, 1, 3, 3), 0.5, dtype=torch.float64))
    with torch.no_grad():
        a, b = model.log_prob(x, torch.tensor([0, 0])), model.log_prob(x, torch.tensor([2, 2]))
    assert (a - b).abs().min() > 1e-3


@pytest.mark.parametrize("name", ["fvsbn", "nade", "made"])
def test_maximum_likelihood_recovers_a_markov_chain(name):
    """A binary Markov chain (x_1 ~ B(0.8), x_{i+1} = x_i w.p. 0.9) is representable by every model; minimizing
    the exact cross-entropy -sum_x p*(x) log q(x) drives KL(p* || q) to ~0."""
    shape, D = (1, 1, 4), 4
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D))).view(-1, *shape)
    flat = xs.view(-1, D)
    p = torch.where(flat[:, 0] == 1, 0.8, 0.2)
    for i in range(1, D):
        p = p * torch.where(flat[:, i] == flat[:, i - 1], 0.9, 0.1)
    torch.manual_seed(0)
    model = {"fvsbn": lambda: FVSBN(shape), "nade": lambda: NADE(shape, hidden=16),
             "made": lambda: BinaryMADE(shape, (32,), seed=0)}[name]()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        loss = -(p * model.log_prob(xs)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        kl = float((p * (p.log() - model.log_prob(xs))).sum())
    assert kl < 0.01, (name, kl)
