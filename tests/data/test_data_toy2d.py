"""toy2d: exact densities integrate to one, samples follow them, determinism, and no fake closed forms."""

from __future__ import annotations

import math

import pytest
import torch

import mlcanon.data as D
from mlcanon.data import toy2d
from mlcanon.errors import UserError

L, M = 6.0, 480  # grid [-L, L]^2 of M x M cells, evaluated at cell midpoints (never exactly at 0)


def grid_midpoints():
    h = 2 * L / M
    c = -L + h * (torch.arange(M, dtype=torch.float64) + 0.5)
    gx, gy = torch.meshgrid(c, c, indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), h


@pytest.mark.parametrize("name", toy2d.CLOSED_FORM)
def test_density_integrates_to_one(name):
    pts, h = grid_midpoints()
    mass = (toy2d.log_prob(name, pts).exp().sum() * h * h).item()
    assert abs(mass - 1) < 2e-3, mass


@pytest.mark.parametrize("name", toy2d.CLOSED_FORM)
def test_samples_histogram_matches_density(name):
    """Total variation between the sample histogram and the density's mass per 0.5 x 0.5 bin is small."""
    pts, h = grid_midpoints()
    dens = toy2d.log_prob(name, pts).exp() * h * h  # mass of each fine cell
    k = 20  # fine cells per coarse bin side (480 / 20 = 24 bins of 0.5 per side)
    coarse = dens.reshape(M // k, k, M // k, k).sum((1, 3))  # [row (y), col (x)]
    n = 40000
    x = D.load(f"toy2d:{name}", "train", n=n, seed=3).x.double()
    ix = ((x[:, 0] + L) / (2 * L / (M // k))).floor().long()
    iy = ((x[:, 1] + L) / (2 * L / (M // k))).floor().long()
    inside = (ix >= 0) & (ix < M // k) & (iy >= 0) & (iy < M // k)
    hist = torch.zeros(M // k, M // k, dtype=torch.float64)
    hist.index_put_((iy[inside], ix[inside]), torch.ones(int(inside.sum()), dtype=torch.float64), accumulate=True)
    tv = 0.5 * (hist / n - coarse).abs().sum().item()
    assert tv < 0.04, tv
    # and a density with the Jacobian or fold left out would be far off: sanity of the test's power
    if name == "rings":
        r = pts.norm(dim=1)
        wrong = (toy2d.log_prob(name, pts) + torch.log(2 * math.pi * r)).exp()  # forgot / (2 pi r)
        wrong = wrong / wrong.sum()
        assert 0.5 * (hist / n - wrong.reshape(M // k, k, M // k, k).sum((1, 3))).abs().sum().item() > 0.1


def test_closed_form_values():
    s = toy2d.DEFAULT_NOISE["8gaussians"]
    mu0 = torch.tensor([[toy2d.GAUSS_RADIUS, 0.0]], dtype=torch.float64)
    R = toy2d.GAUSS_RADIUS
    # p(mu_0) = 1/8 sum_k N(mu_0; mu_k, s^2 I), |mu_0 - mu_k|^2 = (2 R sin(k pi / 8))^2
    expect = math.log(sum(math.exp(-((2 * R * math.sin(k * math.pi / 8)) ** 2) / (2 * s**2)) for k in range(8))
                      / (8 * 2 * math.pi * s**2))
    assert abs(toy2d.log_prob("8gaussians", mu0).item() - expect) < 1e-12
    cb = toy2d.log_prob("checkerboard", torch.tensor([[-3.0, -3.0], [-1.0, -3.0], [1.0, 1.0], [4.5, 0.5]]))
    assert cb[0].item() == pytest.approx(-math.log(32)) and cb[2].item() == pytest.approx(-math.log(32))
    assert cb[1].item() == -math.inf and cb[3].item() == -math.inf
    x = D.load("toy2d:checkerboard", "test", n=5000).x
    assert torch.isfinite(toy2d.log_prob("checkerboard", x)).all()  # every sample on a black square


@pytest.mark.parametrize("name", ["moons", "swissroll"])
def test_no_closed_form_raises(name):
    ds = D.load(f"toy2d:{name}", "train", n=100)
    assert ds.x.shape == (100, 2) and ds.input_shape == (2,) and ds.kind == "points" and ds.targets is None
    with pytest.raises(UserError, match="no closed-form"):
        toy2d.log_prob(name, ds.x)
    with pytest.raises(UserError, match="no closed-form"):
        ds.log_prob(ds.x)


def test_determinism_splits_and_options():
    a = D.load("toy2d:8gaussians", "train", n=50, seed=1).x
    assert torch.equal(a, D.load("toy2d:8gaussians", "train", n=50, seed=1).x)
    assert not torch.equal(a, D.load("toy2d:8gaussians", "valid", n=50, seed=1).x)
    assert not torch.equal(a, D.load("toy2d:8gaussians", "train", n=50, seed=2).x)
    ds = D.load("toy2d:rings", "train", n=1000, noise=0.3)
    assert torch.allclose(ds.log_prob(ds.x[:5].double()), toy2d.log_prob("rings", ds.x[:5].double(), noise=0.3))
    with pytest.raises(UserError, match="unknown toy2d"):
        D.load("toy2d:spiral")
    with pytest.raises(UserError, match="no noise"):
        D.load("toy2d:checkerboard", noise=0.1)
    with pytest.raises(UserError, match="does not take"):
        D.load("toy2d:moons", size=3)
    with pytest.raises(UserError, match="positive int"):
        D.load("toy2d:moons", n=0)
    with pytest.raises(UserError, match=r"\[N, 2\]"):
        toy2d.log_prob("rings", torch.zeros(3))
