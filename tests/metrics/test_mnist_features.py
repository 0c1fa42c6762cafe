"""The shipped MNIST feature network: its hash check, its features, and the reference sanity of the metrics on
real images (2,000 train / 2,000 test images, the network loaded once for the module)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mlcanon.bench.metrics import gaussian_blur
from mlcanon.data import load
from mlcanon.errors import UserError
from mlcanon.metrics import mnist_features as mf
from mlcanon.metrics import sample_quality as sq

N = 2000


@pytest.fixture(scope="module")
def mnist():
    """First N train and test images, their labels, features and class posteriors, and the features of
    blurred and uniform-noise images (computed once: the network's forward passes are the cost). Like
    conftest's ``real_data`` (which is per test): skip without ../shared/data, fail under CI=true."""
    d = os.environ.get("MLCANON_DATA")
    if not d or not (Path(d) / "mnist").is_dir():
        msg = f"real MNIST not found (MLCANON_DATA={d!r})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " - CI must have ../shared/data")
        pytest.skip(msg)
    tr, te = load("mnist", "train"), load("mnist", "test")
    m = {"xtr": tr.x[:N], "xte": te.x[:N], "yte": te.targets[:N]}
    m["ftr"] = mf.mnist_features(m["xtr"])
    m["fte"], m["pte"] = mf.mnist_features_and_probs(m["xte"])
    noise = torch.rand(m["xte"].shape, generator=torch.Generator().manual_seed(0))
    m["fblur"], m["fnoise"] = mf.mnist_features(gaussian_blur(m["xte"])), mf.mnist_features(noise)
    return m


def test_shipped_file_matches_recorded_hash_and_a_changed_file_is_refused(tmp_path):
    assert mf.file_sha256(mf.WEIGHTS_FILE) == mf.SHA256
    assert mf.FEATURE_NET_ID == "mnist-features-v1:" + mf.SHA256[:12]
    assert mf.WEIGHTS_FILE.stat().st_size < 500_000
    bad = tmp_path / "w.safetensors"
    shutil.copy(mf.WEIGHTS_FILE, bad)
    with open(bad, "r+b") as f:                    # flip one bit of the last weight
        f.seek(-1, 2)
        b = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(UserError, match="sha256"):
        mf.load_feature_net(bad)
    assert isinstance(mf.load_feature_net(bad, expected_sha256=None), mf.FeatureNet)   # opt-out for retrains
    with pytest.raises(UserError, match="not found"):
        mf.load_feature_net(tmp_path / "missing.safetensors")


def test_features_shape_determinism_and_batching(mnist):
    f = mnist["fte"]
    assert f.shape == (N, mf.EMBED_DIM) and f.dtype == torch.float32
    again = mf.mnist_features(mnist["xte"][:300], batch_size=64)
    # same images in other batch sizes: equal up to float32 summation order over 576 inputs
    torch.testing.assert_close(again, f[:300], rtol=0, atol=576 * 4 * torch.finfo(torch.float32).eps
                               * float(f.abs().max()))
    # full-rank covariance (what FID needs): smallest eigenvalue well above round-off
    lam = np.linalg.eigvalsh(np.cov(f.double().numpy(), rowvar=False))
    assert lam.min() > 1e-6 * lam.max()
    with pytest.raises(UserError, match="shape"):
        mf.mnist_features(torch.zeros(3, 3, 28, 28))
    with pytest.raises(UserError, match="rescale"):
        mf.mnist_features(mnist["xte"][:4] * 2 - 1)    # [-1, 1] data


def test_label_accuracy_of_real_digits(mnist):
    pred = mnist["pte"].argmax(-1)
    assert float((pred == mnist["yte"]).double().mean()) >= 0.99    # recorded on all 10,000: >= 99.3%
    x, y = mnist["xte"][:200], mnist["yte"][:200]                    # the API on a few: the same argmax
    assert mf.label_accuracy(x, y) == float((pred[:200] == y).double().mean())
    wrong = (y + 1) % 10                                              # every requested class wrong
    assert mf.label_accuracy(x, wrong) == float((pred[:200] == wrong).double().mean()) <= 0.02
    with pytest.raises(UserError):
        mf.label_accuracy(x, y[:10])


def test_reference_sanity_fid_ordering(mnist):
    fid_real = sq.fid_from_features(mnist["ftr"], mnist["fte"])
    fid_blur = sq.fid_from_features(mnist["fte"], mnist["fblur"])
    fid_noise = sq.fid_from_features(mnist["fte"], mnist["fnoise"])
    assert 0 < fid_real < fid_blur < fid_noise
    assert fid_real < 0.05 * fid_noise
    # the image-level API: the same images on both sides give 0 up to float64 round-off
    x = mnist["xte"][:300]
    assert 0 <= mf.mnist_fid(x, reference=x) < 1e-8 * float(mnist["fte"].var(0).sum())


def test_reference_sanity_precision_recall_and_is(mnist):
    assert sq.precision_recall(mnist["fte"], mnist["fte"]) == (1.0, 1.0)
    p, r = sq.precision_recall(mnist["fte"], mnist["ftr"])
    assert p > 0.7 and r > 0.7                     # real train digits lie on the real test manifold
    is_mean, _ = sq.inception_score(mnist["pte"], splits=2)
    assert 9.0 < is_mean <= 10.0                   # near the number of classes, its upper bound
    assert mf.mnist_inception_score(mnist["xte"][:100], splits=1)[0] == pytest.approx(
        sq.inception_score(mnist["pte"][:100], splits=1)[0], rel=1e-5)


def test_inception_fid_needs_user_weights(tmp_path, mnist):
    with pytest.raises(UserError, match="Inception-v3 weights"):
        mf.inception_fid(mnist["xte"][:10], mnist["xte"][10:20])
    with pytest.raises(UserError, match="not found"):
        mf.inception_fid(mnist["xte"][:10], mnist["xte"][10:20], weights=tmp_path / "nope.pt")

    class FakeInception(torch.nn.Module):             # the inception-2015-12-05.pt calling convention
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            f = x.float().mean(dim=(2, 3))
            return torch.cat([f, f**2 / 255], dim=1)

    path = tmp_path / "fake.pt"
    torch.jit.script(FakeInception()).save(str(path))
    x = mnist["xte"][:50]
    assert mf.inception_fid(x, x, weights=path) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_training_command_reproduces_the_accuracy(tmp_path, mnist):
    # the shipping command end to end (about 8 CPU-minutes): >= 99.3% test accuracy, loadable without the hash
    from mlcanon.metrics.train_feature_net import main

    out = tmp_path / "retrained.safetensors"
    assert main(["--out", str(out)]) == 0
    net = mf.load_feature_net(out, expected_sha256=None)
    te = load("mnist", "test")
    acc = float((mf.mnist_probs(te.x, net=net).argmax(-1) == te.targets).double().mean())
    assert acc >= 0.993
    assert abs(acc - mf.TEST_ACCURACY) <= 0.002    # another CPU may differ in the last bits, not in accuracy
