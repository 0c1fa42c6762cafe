"""The fixed MNIST feature network: "MNIST-FID" means the same numbers for every user.

A small CNN classifier (3 conv blocks, a 64-d linear embedding, a 10-way head) trained once by

    nice -n 10 python -m mlcanon.metrics.train_feature_net

(fixed seed, CPU) and shipped as package data ``mnist_features.safetensors``. The file is pinned by its
sha256 (a retrain on another CPU may differ in the last bits, so the hash, not the command, defines the
network). Features are the 64-d embedding *before* its ReLU, so their covariance is full rank with a few
thousand samples (FID needs an invertible-ish covariance; post-ReLU features have dead units).

API: :func:`load_feature_net`, :func:`mnist_features` ([N, 1, 28, 28] in [0, 1] -> [N, 64]),
:func:`mnist_probs`, :func:`mnist_fid`, :func:`mnist_precision_recall`, :func:`mnist_kid`,
:func:`mnist_inception_score` (IS on the fixed classifier's posteriors), :func:`label_accuracy`, and
:data:`FEATURE_NET_ID` for report rows. Inception FID (:func:`inception_fid`) runs only on Inception
weights the user supplies as a file.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from mlcanon.errors import UserError
from mlcanon.metrics import sample_quality as sq

WEIGHTS_FILE = Path(__file__).with_name("mnist_features.safetensors")
#: sha256 of the shipped weights file; load_feature_net refuses any other file.
SHA256 = "a8e1b415bc305cda4c687a80664d3fc9b03cdeccda8e47b2f03b3473a054e847"
#: test accuracy of the shipped network on the 10,000 official MNIST test images (printed by the command;
#: validation accuracy 99.35%). Trained 2026-11-25 on 1 thread of a shared 2-core machine: 6 epochs, 429 s
#: user CPU (94 s wall per epoch when the machine was quiet; 24-31 min wall under a load of 6-12). A second
#: run of the command on the same machine gave bitwise-identical weights and this same file.
TEST_ACCURACY = 0.9956
#: the command that produced the shipped file.
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 python -m mlcanon.metrics.train_feature_net"
#: the name every report row gives for the features it used.
FEATURE_NET_ID = "mnist-features-v1:" + SHA256[:12]

EMBED_DIM = 64
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081   # input standardization (the usual MNIST pixel mean / std)


class FeatureNet(nn.Module):
    """conv5-32 / conv3-64 / conv3-64 (each BN, ReLU, 2x2 max-pool: 28 -> 14 -> 7 -> 3) -> linear 576 -> 64
    (the embedding) -> ReLU, dropout -> linear 64 -> 10. Inputs [N, 1, 28, 28] in [0, 1]."""

    def __init__(self, embed_dim: int = EMBED_DIM, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.embed = nn.Linear(64 * 3 * 3, embed_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(embed_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, 28, 28] in [0, 1] -> the [N, embed_dim] embedding (pre-ReLU)."""
        _, C, H, W = x.shape
        if (C, H, W) != (1, 28, 28):
            raise ValueError(f"expected [N, 1, 28, 28] images, got {tuple(x.shape)}")
        return self.embed(self.conv((x - MNIST_MEAN) / MNIST_STD).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, num_classes]."""
        return self.head(self.features(x))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_feature_net(path: str | Path | None = None, expected_sha256: str | None = SHA256) -> FeatureNet:
    """The shipped network in eval mode, after checking the file's sha256 (UserError on a mismatch).

    ``path`` defaults to the package file; ``expected_sha256=None`` skips the check (for a retrained file).
    """
    path = Path(path) if path is not None else WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"MNIST feature network weights not found at {path}; reinstall mlcanon or rebuild "
                        f"them with `{COMMAND}`")
    if expected_sha256 is not None:
        got = file_sha256(path)
        if got != expected_sha256:
            raise UserError(f"{path} has sha256 {got}, expected {expected_sha256}: the MNIST feature network "
                            "is not the shipped one, so its FIDs would not be comparable; reinstall mlcanon")
    net = FeatureNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


@functools.lru_cache(maxsize=1)
def _shipped_net() -> FeatureNet:
    return load_feature_net()


def _check_images(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise UserError(f"images must be a torch.Tensor [N, 1, 28, 28] in [0, 1], got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise UserError(f"MNIST metrics need images of shape [N, 1, 28, 28], got {tuple(x.shape)}")
    x = x.detach().float().cpu()
    if len(x) and (float(x.min()) < -0.5 or float(x.max()) > 1.5):   # a common slip: [-1, 1] or [0, 255] data
        raise UserError(f"MNIST metrics need pixels in [0, 1], got values in [{float(x.min()):.3g}, "
                        f"{float(x.max()):.3g}]: rescale the samples first")
    return x


@torch.no_grad()
def _apply(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def mnist_features(x: torch.Tensor, net: FeatureNet | None = None, batch_size: int = 1000) -> torch.Tensor:
    """The fixed embedding of images ``x`` ([N, 1, 28, 28] in [0, 1]) -> [N, 64] float32."""
    net = net or _shipped_net()
    return _apply(net.features, _check_images(x), batch_size)


def mnist_probs(x: torch.Tensor, net: FeatureNet | None = None, batch_size: int = 1000) -> torch.Tensor:
    """The fixed classifier's class posteriors p(y|x) [N, 10]."""
    return mnist_features_and_probs(x, net, batch_size)[1]


@torch.no_grad()
def mnist_features_and_probs(x: torch.Tensor, net: FeatureNet | None = None,
                             batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Both the [N, 64] features and the [N, 10] class posteriors, in one pass over the images."""
    net = net or _shipped_net()
    x = _check_images(x)
    feats, probs = [], []
    for i in range(0, len(x), batch_size):
        f = net.features(x[i:i + batch_size])
        feats.append(f)
        probs.append(net.head(f).softmax(-1))
    return torch.cat(feats), torch.cat(probs)


@functools.lru_cache(maxsize=4)
def reference_features(reference: str = "test", data_dir: str | None = None,
                       n: int | None = None) -> torch.Tensor:
    """Features of MNIST split ``reference`` ("train" | "valid" | "test"); its first ``n`` images if given."""
    from mlcanon.data import load

    x = load("mnist", split=reference, data_dir=data_dir).x
    return mnist_features(x if n is None else x[:n])


def _features_of(images_or_split, data_dir=None) -> torch.Tensor:
    if isinstance(images_or_split, str):
        return reference_features(images_or_split, data_dir)
    return mnist_features(images_or_split)


def mnist_fid(samples: torch.Tensor, reference: str | torch.Tensor = "test",
              data_dir: str | None = None) -> float:
    """FID between ``samples`` and an MNIST split (or a second image tensor) in the fixed 64-d features.

    FID is biased upward at small sample sizes: compare figures computed on the same number of samples (the
    reference table in docs/BENCHMARKS.md uses 10,000 against the 10,000 test images).
    """
    return sq.fid_from_features(mnist_features(samples), _features_of(reference, data_dir))


def mnist_kid(samples: torch.Tensor, reference: str | torch.Tensor = "test", data_dir: str | None = None,
              **kid_options) -> tuple[float, float]:
    """KID (mean, std over subsets) between ``samples`` and a reference, in the fixed features."""
    return sq.kernel_inception_distance(mnist_features(samples), _features_of(reference, data_dir),
                                        **kid_options)


def mnist_precision_recall(samples: torch.Tensor, reference: str | torch.Tensor = "test",
                           data_dir: str | None = None, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds) of ``samples`` against a reference, fixed features."""
    return sq.precision_recall(_features_of(reference, data_dir), mnist_features(samples), k=k)


def mnist_inception_score(samples: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score computed with the fixed MNIST classifier's posteriors (mean, std over splits)."""
    return sq.inception_score(mnist_probs(samples), splits=splits)


def label_accuracy(samples: torch.Tensor, labels) -> float:
    """The fixed classifier's accuracy on ``samples`` generated for the requested ``labels`` (cGAN, CVAE,
    guided diffusion): the fraction classified as the class they were asked to be."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (len(samples),):
        raise UserError(f"label_accuracy: {len(samples)} samples but labels of shape {tuple(labels.shape)}")
    return float((mnist_probs(samples).argmax(-1) == labels).double().mean())


# --------------------------------------------------------------------------- Inception FID (optional)
def inception_features(images: torch.Tensor, weights: str | Path | None = None,
                       batch_size: int = 100) -> torch.Tensor:
    """2048-d Inception-v3 pool features from a TorchScript file the user supplies.

    The file must follow the convention of NVIDIA's ``inception-2015-12-05.pt`` (StyleGAN2-ADA, clean-fid):
    ``model(x_uint8 [N, 3, H, W], return_features=True) -> [N, 2048]``. mlcanon ships no Inception weights
    and does not depend on torchvision (it does not install beside our torch).
    """
    if weights is None:
        raise UserError("Inception FID needs Inception-v3 weights supplied as a file (a TorchScript "
                        "inception-2015-12-05.pt, as used by StyleGAN2-ADA and clean-fid); mlcanon ships "
                        "none. Use mnist_fid for MNIST, or pass weights=PATH")
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"Inception weights file {path} not found")
    try:
        model = torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as e:
        raise UserError(f"{path} is not a TorchScript Inception model ({e})") from e
    x = images.detach().float().cpu()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"Inception FID needs images [N, 1 or 3, H, W] in [0, 1], got {tuple(x.shape)}")
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)   # grey -> 3 channels
    return _apply(lambda b: model(b, return_features=True).float(), x, batch_size)


def inception_fid(samples: torch.Tensor, reference: torch.Tensor, weights: str | Path | None = None) -> float:
    """FID in Inception-v3 features (Heusel et al. 2017) from user-supplied weights (inception_features)."""
    return sq.fid_from_features(inception_features(samples, weights), inception_features(reference, weights))
