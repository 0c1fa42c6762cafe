"""Image utilities: grid layout, PNG grids with titles, reproducible batch augmentations."""

from __future__ import annotations

import math

import matplotlib.image
import pytest
import torch

from mlcanon.data import images
from mlcanon.errors import UserError


def batch(n=5, c=1, h=6, w=6):
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w) / (n * c * h * w)


def test_make_grid_layout():
    x = batch(5, 3, 4, 6)
    g = images.make_grid(x, nrow=2, pad=1, pad_value=-1.0)
    assert g.shape == (3, 3 * (4 + 1) + 1, 2 * (6 + 1) + 1)  # 3 rows of 2
    for k in range(5):
        r, c = divmod(k, 2)
        assert torch.equal(g[:, 1 + r * 5:1 + r * 5 + 4, 1 + c * 7:1 + c * 7 + 6], x[k])
    assert (g[:, 0, :] == -1).all() and (g[:, 11:15, 8:14] == -1).all()  # padding and the empty 6th slot


def test_save_image_grid_png(tmp_path):
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    p = images.save_image_grid(x, tmp_path / "g.png", nrow=3)
    assert matplotlib.image.imread(p).shape[:2] == (2 * 10 + 2, 3 * 10 + 2)
    p2 = images.save_image_grid(x[:, :1].repeat(1, 3, 1, 1), tmp_path / "t.png",
                                titles=[f"pred {i} / true {i}" for i in range(6)])
    assert p2.stat().st_size > 0 and matplotlib.image.imread(p2).ndim == 3
    with pytest.raises(UserError, match="titles"):
        images.save_image_grid(x, tmp_path / "bad.png", titles=["a"])
    with pytest.raises(UserError, match="channels"):
        images.save_image_grid(torch.rand(2, 2, 4, 4), tmp_path / "bad.png")


def test_random_crop_is_a_shifted_window_and_reproducible():
    x = batch(8, 2, 5, 5)
    assert torch.equal(images.random_crop(x, 0, torch.Generator().manual_seed(0)), x)
    out = images.random_crop(x, 2, torch.Generator().manual_seed(1))
    assert torch.equal(out, images.random_crop(x, 2, torch.Generator().manual_seed(1)))
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for k in range(8):  # each output is some 5x5 window of the zero-padded input
        assert any(torch.equal(out[k], xp[k, :, i:i + 5, j:j + 5]) for i in range(5) for j in range(5))
    assert not torch.equal(out, x)


def test_hflip():
    x = batch(16)
    assert torch.equal(images.random_hflip(x, torch.Generator().manual_seed(0), p=1.0), x.flip(-1))
    assert torch.equal(images.random_hflip(x, torch.Generator().manual_seed(0), p=0.0), x)
    out = images.random_hflip(x, torch.Generator().manual_seed(3))
    flipped = [torch.equal(out[k], x[k].flip(-1)) for k in range(16)]
    assert all(f or torch.equal(out[k], x[k]) for k, f in enumerate(flipped)) and 0 < sum(flipped) < 16


def test_rotation():
    x = torch.rand(3, 2, 7, 7, generator=torch.Generator().manual_seed(0))
    r90 = images.rotate(x, torch.full((3,), 90.0))
    assert torch.allclose(r90, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)  # counter-clockwise as displayed
    assert torch.allclose(images.rotate(x, torch.zeros(3)), x, atol=1e-6)
    assert torch.allclose(images.rotate(x, torch.full((3,), 180.0)), x.flip(-1).flip(-2), atol=1e-5)
    # a centred disc is invariant under any rotation (up to bilinear blur at its edge)
    yy, xx = torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij")
    disc = (((yy - 7) ** 2 + (xx - 7) ** 2) <= 16).float()[None, None].repeat(4, 1, 1, 1)
    out = images.random_rotation(disc, 45, torch.Generator().manual_seed(0))
    assert abs(out.sum().item() - disc.sum().item()) / disc.sum().item() < 0.05
    assert torch.equal(out, images.random_rotation(disc, 45, torch.Generator().manual_seed(0)))


def test_gaussian_noise_statistics():
    x = torch.zeros(64, 1, 16, 16)
    n = images.gaussian_noise(x, 0.5, torch.Generator().manual_seed(0))
    assert abs(n.mean().item()) < 0.02 and abs(n.std().item() - 0.5) < 0.02
    assert math.isclose(images.gaussian_noise(x, 0.0, torch.Generator()).abs().sum().item(), 0.0)
    with pytest.raises(UserError, match=r"\[N, C, H, W\]"):
        images.gaussian_noise(torch.zeros(3, 3), 0.1, torch.Generator())
