"""Reference sanity of the MNIST sample-quality metrics in the fixed feature network (issue 17).

Real images against real images must score as real: FID(train 10k, test 10k) small; FID(test, blurred test)
below FID(test, uniform noise); precision and recall of the test set against itself exactly 1; Inception
Score of real test images near the number of classes (10); the classifier's accuracy on real test images
(``label_accuracy``) equal to its recorded test accuracy. Every row names the feature network it used.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from mlcanon.bench import Row, bench
from mlcanon.data import load
from mlcanon.metrics import sample_quality as sq
from mlcanon.metrics.mnist_features import (
    FEATURE_NET_ID,
    TEST_ACCURACY,
    label_accuracy,
    mnist_features,
    mnist_features_and_probs,
)

COMMAND = "mlcanon bench --only metrics-mnist"


def gaussian_blur(x: torch.Tensor, sigma: float = 1.0, radius: int = 3) -> torch.Tensor:
    """Separable Gaussian blur of [N, 1, H, W] images (zero padding)."""
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(x, k.view(1, 1, -1, 1), padding=(radius, 0))


def sanity_figures(n: int = 10000, data_dir=None) -> dict[str, float]:
    """The sanity figures on ``n`` train and ``n`` test images (the bench uses 10,000; tests fewer)."""
    train, test = load("mnist", "train", data_dir), load("mnist", "test", data_dir)
    xtr, xte, yte = train.x[:n], test.x[:n], test.targets[:n]
    noise = torch.rand(xte.shape, generator=torch.Generator().manual_seed(0))
    f_tr = mnist_features(xtr)
    f_te, p_te = mnist_features_and_probs(xte)
    f_noise, f_blur = mnist_features(noise), mnist_features(gaussian_blur(xte))
    p_self, r_self = sq.precision_recall(f_te, f_te)
    p_tr, r_tr = sq.precision_recall(f_te, f_tr)
    kid, kid_sd = sq.kernel_inception_distance(f_tr, f_te, num_subsets=20, subset_size=1000)
    kid_blur, _ = sq.kernel_inception_distance(f_te, f_blur, num_subsets=20, subset_size=1000)
    return {"fid_train_test": sq.fid_from_features(f_tr, f_te),
            "fid_test_blur": sq.fid_from_features(f_te, f_blur),
            "fid_test_noise": sq.fid_from_features(f_te, f_noise),
            "kid_train_test": kid, "kid_train_test_sd": kid_sd, "kid_test_blur": kid_blur,
            "precision_self": p_self, "recall_self": r_self,
            "precision_train": p_tr, "recall_train": r_tr,
            "inception_score": sq.inception_score(p_te, splits=10)[0],
            "label_accuracy": label_accuracy(xte, yte)}


@bench("metrics-mnist", description="MNIST feature-network metrics on real data: FID, KID, precision/recall, "
                                    "IS, label accuracy (reference sanity)")
def metrics_mnist() -> list[Row]:
    t = time.perf_counter()
    f = sanity_figures()
    wall = time.perf_counter() - t
    feat = f"features {FEATURE_NET_ID}; 10k images each (train: first 10k of the train split)"

    def row(name, ours, unit="", reference=None, label="", higher=True, notes=""):
        return Row(name=name, command=COMMAND, ours=ours, unit=unit, reference=reference,
                   reference_label=label, higher_is_better=higher, wall_s=wall,
                   notes=f"{notes}; {feat}" if notes else feat)

    return [
        row("FID(train, test)", f["fid_train_test"], reference=f["fid_test_blur"],
            label="FID(test, blurred test)", higher=False,
            notes="real vs real: must be below the blurred row"),
        row("FID(test, blurred test)", f["fid_test_blur"], reference=f["fid_test_noise"],
            label="FID(test, uniform noise)", higher=False,
            notes="Gaussian blur sigma 1 px: below the noise row"),
        row("FID(test, uniform noise)", f["fid_test_noise"], notes="U[0,1) pixels, seed 0"),
        row("KID(train, test)", f["kid_train_test"], reference=f["kid_test_blur"],
            label="KID(test, blurred test)",
            higher=False, notes=f"unbiased MMD^2, kernel (x.y/64 + 1)^3, 20 subsets of 1000 (sd over subsets "
                                f"{f['kid_train_test_sd']:.3g}: 0 within its spread)"),
        row("precision(test vs test)", f["precision_self"], reference=1.0, label="exact", notes="k = 3"),
        row("recall(test vs test)", f["recall_self"], reference=1.0, label="exact", notes="k = 3"),
        row("precision(train vs test)", f["precision_train"], notes="k = 3, real test as the reference"),
        row("recall(train vs test)", f["recall_train"], notes="k = 3, real test as the reference"),
        row("Inception Score (classifier posteriors) of test", f["inception_score"], reference=9.5,
            label="target: near 10, the number of classes and the upper bound", notes="10 splits of 1000"),
        row("label accuracy of real test images", 100 * f["label_accuracy"], unit="%",
            reference=100 * TEST_ACCURACY, label="recorded test accuracy of the feature net",
            notes="must equal the recorded accuracy"),
    ]
