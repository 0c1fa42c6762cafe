"""The resnet / vit / lstm classifier builders: [B, classes] outputs and learning a tiny task."""

from types import SimpleNamespace

import pytest
import torch

from mlcanon.errors import UserError
from mlcanon.supervised.models import MODELS, build_model


def _quadrant_task(n=64, seed=0):
    """8x8 images with one bright 4x4 quadrant; the label is the quadrant."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for i, q in enumerate(y.tolist()):
        r, c = divmod(q, 2)
        x[i, 0, 4 * r: 4 * r + 4, 4 * c: 4 * c + 4] += 1.0
    return x, y


@pytest.mark.parametrize("name", ["resnet", "vit", "lstm"])
def test_builder_shapes(name):
    assert name in MODELS
    cfg = SimpleNamespace(width=16, depth=1, dropout=0.0)
    for shape in [(1, 28, 28), (3, 8, 8)]:
        torch.manual_seed(0)
        model = build_model(name, shape, 10, cfg)
        assert model(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("name,width,lr", [("resnet", 32, 2e-2), ("vit", 16, 1e-2), ("lstm", 16, 2e-2)])
def test_builder_learns_a_tiny_task(name, width, lr):
    torch.manual_seed(0)
    x, y = _quadrant_task()
    model = build_model(name, (1, 8, 8), 4, SimpleNamespace(width=width, depth=1, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xt, yt = _quadrant_task(seed=1)
    assert (model(xt).argmax(1) == yt).float().mean() >= 0.9


def test_builders_reject_flat_inputs_and_bad_widths():
    cfg = SimpleNamespace(width=18, depth=1, dropout=0.0)
    with pytest.raises(UserError, match="image inputs"):
        build_model("resnet", (64,), 10, cfg)
    with pytest.raises(UserError, match="divisible by 4"):
        build_model("vit", (1, 28, 28), 10, cfg)
