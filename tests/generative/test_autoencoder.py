"""Autoencoders: the linear one spans the PCA subspace; denoising noise; latent Gaussian; figures."""

from __future__ import annotations

import math

import pytest
import torch

from mlcanon.generative.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    interpolate,
    pca_principal_angles,
    train,
)


def _data(n=400, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([3.0, 2.0, 0.5, 0.3, 0.2, 0.1])[:D]      # a clear gap after the 2nd component
    R, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    x = (torch.randn(n, D, generator=g, dtype=torch.float64) * scales) @ R.T + 1.5
    return x.float()


def test_principal_angles_brute_force():
    t = 0.3
    a = torch.tensor([[1.0], [0.0], [0.0]])
    x = torch.zeros(200, 3)
    x[:, 0] = math.cos(t) * torch.linspace(-1, 1, 200)
    x[:, 1] = math.sin(t) * torch.linspace(-1, 1, 200)
    assert pca_principal_angles(a, x).item() == pytest.approx(t, abs=1e-6)   # float32 inputs: ~10 eps


def test_linear_autoencoder_spans_pca_subspace():
    torch.manual_seed(0)
    x = _data()
    model = Autoencoder((6,), 2, kind="linear", recon="mse")
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=300, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = model.loss({"x": x})["loss"]
        loss.backward()
        return loss

    opt.step(closure)
    ang = pca_principal_angles(model.decoder[0].weight.detach(), x)
    assert ang.shape == (2,)
    assert ang.max() < 1e-2                 # ~0 up to the optimizer's convergence (float32)
    # and the optimum's error is the variance outside the top-2 components (Eckart-Young)
    X = x.double() - x.double().mean(0)
    s = torch.linalg.svdvals(X)
    best = float((s[2:] ** 2).sum() / len(x))
    assert model.loss({"x": x})["loss"].item() == pytest.approx(best, rel=1e-3)


def test_denoising_noise_only_in_training():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    m = Autoencoder((1, 8, 8), 4, kind="denoising", hidden=16, noise=0.5, recon="bce")
    m.eval()
    clean = m.loss({"x": x})["loss"]
    assert torch.equal(clean, m.reconstruction_error(x).mean())
    m.train()
    noisy = m.loss({"x": x})["loss"]
    assert not torch.equal(noisy, clean)


def test_conv_autoencoder_shapes_and_latent_gaussian():
    torch.manual_seed(0)
    m = Autoencoder((1, 8, 8), 3, kind="conv", hidden=16, channels=4)
    x = torch.rand(500, 1, 8, 8)
    assert m.encode(x).shape == (500, 3) and m.decode(m.encode(x)).shape == x.shape
    m.fit_latent(x)
    z = m.encode(x).double()
    S = m.z_scale_tril.double() @ m.z_scale_tril.double().T
    assert torch.allclose(m.z_mean.double(), z.mean(0), atol=1e-5)
    assert torch.allclose(S, torch.cov(z.T), atol=1e-4)
    assert m.sample(7).shape == (7, 1, 8, 8)


def test_interpolation_endpoints():
    za, zb = torch.randn(3, 4), torch.randn(3, 4)
    z = interpolate(za, zb, steps=5).reshape(3, 5, 4)
    assert torch.equal(z[:, 0], za) and torch.allclose(z[:, -1], zb)


def test_train_writes_figures(tmp_runs, real_data):
    cfg = AutoencoderConfig(dataset="digits", kind="mlp", hidden=16, max_steps=4, batch_size=32, train_subset=128,
                            val_subset=32, out_dir=str(tmp_runs), progress=False)
    out = train(cfg)
    from pathlib import Path
    d = Path(out["run_dir"])
    for f in ("latent.png", "reconstructions.png", "interpolations.png", "samples.png", "result.json"):
        assert (d / f).exists(), f
