"""Semantic segmentation with a U-Net on generated shapes: ``mlcanon train segmentation``.

Data: grey images with 1..``max_shapes`` filled circles, squares and triangles (the same intensity, so the
network must use shape, not brightness) plus Gaussian noise; the per-pixel label is 0 background,
1 circle, 2 square, 3 triangle (a later shape covers an earlier one). Model: :class:`mlcanon.nn.unet.UNet`
(skip connections concatenate encoder features to the decoder's). Loss: per-pixel cross-entropy.

Metrics: ``pixel_accuracy``; ``mean_iou`` = mean over images of the image's class-mean IoU,
IoU_c = |pred=c AND true=c| / |pred=c OR true=c| over the classes present in truth or prediction
(this is what ``val/mean_iou`` reports each epoch); at the end ``test/dataset_mean_iou`` is the PASCAL-VOC
figure, mean_c (sum of intersections / sum of unions over the whole test set).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.nn.unet import UNet
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer, evaluate_in_batches

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt

CLASSES = ("background", "circle", "square", "triangle")


@dataclasses.dataclass
class SegmentationConfig(TrainConfig):
    """U-Net segmentation of generated shapes; every field is a CLI flag."""

    dataset: str = option("shapes", "data set: shapes (generated circles / squares / triangles)",
                          choices=("shapes",))
    image_size: int = option(32, "image height and width (divisible by 2^depth)", min=8)
    max_shapes: int = option(3, "up to this many shapes per image", min=1)
    noise: float = option(0.1, "std of the Gaussian pixel noise", min=0.0)
    num_train: int = option(2000, "generated training images", min=1)
    num_val: int = option(200, "generated validation images", min=1)
    num_test: int = option(500, "generated test images", min=1)
    base_channels: int = option(16, "U-Net channels at the first level (doubled per level)", min=1)
    depth: int = option(2, "U-Net down-sampling steps", min=1, max=6)
    epochs: int = option(15, "passes over the training set", min=1)
    batch_size: int = option(32, "global mini-batch size", min=1)
    lr: float = option(2e-3, "learning rate", min=0.0)

    def check(self) -> None:
        k = 2 ** self.depth
        if self.image_size % k:
            raise UserError(f"--image-size {self.image_size} must be divisible by 2^depth = {k}; "
                            f"use e.g. --image-size {self.image_size // k * k or k}")


# ------------------------------------------------------------------------------------------------- data
def make_shapes(n: int, size: int, max_shapes: int = 3, noise: float = 0.1, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images [n, 1, size, size] in [0, 1] (+noise) and labels [n, size, size] (0 bg, 1 circle, 2 square, 3 tri)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    labels = torch.zeros(n, size, size, dtype=torch.long)
    r_lo, r_hi = max(2.0, size / 10), max(3.0, size / 4.5)
    for i in range(n):
        k = int(torch.randint(1, max_shapes + 1, (1,), generator=g))
        for _ in range(k):
            cls = int(torch.randint(1, 4, (1,), generator=g))
            r = float(r_lo + (r_hi - r_lo) * torch.rand(1, generator=g))
            cx, cy = (r + (size - 1 - 2 * r) * torch.rand(2, generator=g)).tolist()
            if cls == 1:    # circle: (x-cx)^2 + (y-cy)^2 <= r^2
                m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            elif cls == 2:  # square: max(|x-cx|, |y-cy|) <= r * 0.85 (about the circle's area)
                m = torch.maximum((xx - cx).abs(), (yy - cy).abs()) <= 0.85 * r
            else:           # triangle pointing up: apex (cx, cy-r), base y = cy+r, |x-cx| <= 0.6 (y-top)
                top = cy - r
                m = (yy >= top) & (yy <= cy + r) & ((xx - cx).abs() <= (yy - top) * 0.6)
            labels[i][m] = cls
    x = (labels > 0).float().unsqueeze(1)
    x = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, labels


def splits(config: SegmentationConfig) -> dict[str, dict[str, torch.Tensor]]:
    """train / valid / test sets {"x": images, "y": label maps}, each from its own seed (derived from --seed)."""
    c = config
    out = {}
    for k, (name, n) in enumerate((("train", c.num_train), ("valid", c.num_val), ("test", c.num_test))):
        x, y = make_shapes(n, c.image_size, c.max_shapes, c.noise, seed=1000 * c.seed + k)
        out[name] = {"x": x, "y": y}
    return out


# ---------------------------------------------------------------------------------------------- metrics
def confusion(pred: torch.Tensor, y: torch.Tensor, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """Per-image confusion counts [B, K, K]: C[b, t, p] = #pixels with truth t predicted p."""
    B = y.shape[0]
    idx = y.reshape(B, -1) * num_classes + pred.reshape(B, -1)
    return F.one_hot(idx, num_classes * num_classes).sum(1).reshape(B, num_classes, num_classes)


def iou_from_confusion(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(IoU [..., K], present [..., K]): IoU_c = C_cc / (sum_p C_cp + sum_t C_tc - C_cc)."""
    inter = torch.diagonal(C, dim1=-2, dim2=-1).float()
    union = C.sum(-1).float() + C.sum(-2).float() - inter   # |true=c| + |pred=c| - |both|
    present = union > 0
    return torch.where(present, inter / union.clamp(min=1), torch.zeros_like(inter)), present


def per_image_mean_iou(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[B]: mean IoU over the classes present in the image's truth or prediction."""
    iou, present = iou_from_confusion(confusion(pred, y))
    return (iou * present).sum(-1) / present.sum(-1).clamp(min=1)


def batch_metrics(model: torch.nn.Module, batch: dict) -> dict:
    """Loss mean_pixels -log p(y_ij | x), pixel accuracy and per-image mean IoU of one batch {"x", "y"}."""
    logits, y = model(batch["x"]).float(), batch["y"]
    B, _, H, W = logits.shape
    assert y.shape == (B, H, W), (logits.shape, y.shape)
    pred = logits.argmax(1)
    return {"loss": F.cross_entropy(logits, y),
            "pixel_accuracy": (pred == y).float().mean(),
            "mean_iou": per_image_mean_iou(pred, y).mean()}


@torch.no_grad()
def dataset_metrics(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 200) -> dict:
    """PASCAL-VOC mean IoU over a data set (intersections and unions summed over all images) and per class."""
    model.eval()
    C = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
    for i in range(0, len(x), batch_size):
        C += confusion(model(x[i:i + batch_size]).argmax(1), y[i:i + batch_size]).sum(0)
    iou, present = iou_from_confusion(C)
    out = {"dataset_mean_iou": float(iou[present].mean())}
    out.update({f"iou_{name}": float(iou[k]) for k, name in enumerate(CLASSES)})
    return out


def build_model(config: SegmentationConfig) -> torch.nn.Module:
    """U-Net: 1 input channel -> one logit map per class."""
    return UNet(1, len(CLASSES), base_channels=config.base_channels, depth=config.depth, norm="batch")


# ---------------------------------------------------------------------------------------------- train
def _evaluate_model(model, data: dict) -> dict:
    model.eval()
    m = evaluate_in_batches(lambda b: batch_metrics(model, b), data, batch_size=200)
    return {**m, **dataset_metrics(model, data["x"], data["y"])}


def train(config: SegmentationConfig, run: Run | None = None) -> dict:
    """Train the U-Net, keep the best by val/mean_iou, report test metrics; returns a result dict."""
    run = Run.start("segmentation", config, run)
    data = splits(config)
    model = build_model(config)
    trainer = Trainer(model, config, run)

    def val_fn() -> dict:
        m = evaluate_in_batches(lambda b: batch_metrics(model, b), data["valid"], batch_size=200, device=run.device)
        return {f"val/{k}": v for k, v in m.items()}

    fit = trainer.fit(lambda b: batch_metrics(model, b), TensorBatches(data["train"], config.batch_size,
                                                                       seed=config.seed),
                      val_fn=val_fn, monitor="val/mean_iou", mode="max")
    load_weights(model, run.dir).to("cpu")
    tm = _evaluate_model(model, data["test"])
    out = {"run_dir": str(run.dir), "step": fit.step, "epochs": fit.epoch,
           "best_val_mean_iou": fit.best_value, **{f"test_{k}": v for k, v in tm.items()}}
    run.finish(out, step=fit.step, metrics={f"test/{k}": v for k, v in tm.items()})
    out["model"] = model
    return out


def load_model(run_dir: str | Path, tag: str = "best") -> tuple[torch.nn.Module, SegmentationConfig]:
    """The run's best U-Net (eval mode, CPU) and its config."""
    config = config_of(run_dir, "segmentation")
    return load_weights(build_model(config), run_dir, tag), config


@dataclasses.dataclass
class SplitOptions(EvalOptions):
    """Options of `mlcanon eval` on a segmentation run."""

    split: str = option("test", "which generated held-out split to score", choices=("test", "valid"))


def evaluate(run_dir: str | Path, options: SplitOptions | None = None) -> dict:
    """Loss, pixel accuracy, per-image and data-set mean IoU of the best model on the regenerated split."""
    options = options or SplitOptions()
    model, config = load_model(run_dir)
    m = _evaluate_model(model, splits(config)[options.split])
    return {f"{options.split}/{k}": v for k, v in m.items()}


def sample(run_dir: str | Path, n: int = 8, out: str | Path | None = None, options: SampleOptions | None = None
           ) -> Path:
    """PNG grid, one row per test image: input / truth / prediction (colour-coded classes)."""
    model, config = load_model(run_dir)
    test = splits(config)["test"]
    x, y = test["x"], test["y"]
    n = min(n, len(x))
    with torch.no_grad():
        pred = model(x[:n]).argmax(1)
    miou = per_image_mean_iou(pred, y[:n])
    cmap = ListedColormap(["black", "tab:red", "tab:green", "tab:blue"])
    fig, axes = plt.subplots(n, 3, figsize=(5.4, 1.9 * n), squeeze=False)
    for i in range(n):
        panels = [(x[i, 0], "gray", "input"), (y[i], cmap, "truth"), (pred[i], cmap, f"pred IoU {miou[i]:.2f}")]
        for ax, (im, cm, title) in zip(axes[i], panels):
            ax.imshow(im.numpy(), cmap=cm, vmin=0, vmax=1 if cm == "gray" else len(CLASSES) - 1,
                      interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("red circle, green square, blue triangle", fontsize=8)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "samples.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    Run(Path(run_dir)).write_json("samples.json", {"mean_iou": miou.tolist()})
    return out


register("segmentation", family="supervised", config=SegmentationConfig,
         description="U-Net semantic segmentation of generated circles / squares / triangles (mean IoU)",
         evaluate=evaluate, sample=sample, load=lambda run_dir, config, tag: load_model(run_dir, tag)[0],
         eval_options=SplitOptions,
         tiny={"image_size": 16, "num_train": 32, "num_val": 8, "num_test": 8, "base_channels": 4, "depth": 1,
               "epochs": 2, "batch_size": 16, "checkpoint_every": 2})(train)
