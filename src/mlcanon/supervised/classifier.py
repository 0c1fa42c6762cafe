"""Image classifiers trained with cross-entropy or MSE: ``mlcanon train classifier``.

Model zoo in :mod:`mlcanon.supervised.models` (mlp, cnn, resnet, vit, lstm); the training loop is
:func:`mlcanon.supervised.fit.fit`. Regularizers: L2 weight decay, dropout, early stopping (``--patience``),
input noise, label noise, weight noise, data augmentation and ensembles (average of N models' probabilities).

Losses (per example, averaged over the batch by the loop):
- cross-entropy: ``-log softmax(z)_y``  (optionally label-smoothed)
- mse: ``||softmax(z) - onehot(y)||^2 / K``
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.devices import device_for_rank, init_distributed, resolve_device
from mlcanon.errors import UserError
from mlcanon.registry import register
from mlcanon.runs import Run, load_checkpoint, seed_everything
from mlcanon.supervised.fit import FitConfig, evaluate_tensors, fit
from mlcanon.supervised.models import MODELS, build_model

AUGMENTATIONS = ("crop", "flip", "rotate")


@dataclasses.dataclass
class ClassifierConfig(FitConfig):
    """Train an image classifier; every field is a CLI flag (``--batch-size 128``)."""

    dataset: str = option("digits", "data set: digits, mnist, fashion-mnist, cifar10 (see mlcanon.data)")
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    model: str = option("mlp", "architecture: mlp, cnn, resnet, vit, lstm")
    width: int = option(256, "hidden units (mlp), channels (cnn/resnet), model dim (vit/lstm)", min=1)
    depth: int = option(2, "hidden layers (mlp), conv blocks (cnn), residual stages (resnet), layers (vit/lstm)",
                        min=1)
    dropout: float = option(0.0, "dropout probability", min=0.0, max=0.99)
    loss: str = option("cross-entropy", "loss function", choices=("cross-entropy", "mse"))
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", min=0.0, max=1.0)
    val_fraction: float = option(0.1, "fraction of train held out for validation (where no official split)",
                                 min=0.0, max=0.5)
    train_subset: int = option(0, "use only the first N training examples (0: all)", min=0)
    input_noise: float = option(0.0, "std of Gaussian noise added to training inputs", min=0.0)
    label_noise: float = option(0.0, "probability that a training label is replaced by a random one",
                                min=0.0, max=1.0)
    weight_noise: float = option(0.0, "std of Gaussian noise added to the weights for each training step",
                                 min=0.0)
    augment: str = option("", "comma-separated augmentations: crop, flip, rotate (empty: none)")
    ensemble: int = option(1, "number of independently initialized models whose probabilities are averaged",
                           min=1)

    def check(self) -> None:
        if self.model not in MODELS:
            raise UserError(f"--model {self.model!r}: choose one of {', '.join(sorted(MODELS))}")
        bad = [a for a in self.augmentations if a not in AUGMENTATIONS]
        if bad:
            raise UserError(f"--augment: unknown {', '.join(bad)}; choose from {', '.join(AUGMENTATIONS)}")

    @property
    def augmentations(self) -> list[str]:
        return [a.strip() for a in self.augment.split(",") if a.strip()]


class Ensemble(nn.Module):
    """Average of M members' class probabilities; forward returns log(mean_m softmax(z_m)) as logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:   # [M, B, K]: each member trained on its own loss
            return torch.stack([m(x) for m in self.members])
        logp = torch.stack([F.log_softmax(m(x).float(), -1) for m in self.members])  # [M, B, K]
        return torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(len(self.members))))  # log mean p


class WeightNoise(nn.Module):
    """Adds N(0, sigma^2) to every weight for the forward/backward pass of a training step, then removes it."""

    def __init__(self, module: nn.Module, sigma: float):
        super().__init__()
        self.module, self.sigma = module, sigma

    def forward(self, x):
        if not self.training or self.sigma == 0:
            return self.module(x)
        return torch.func.functional_call(
            self.module, {n: p + self.sigma * torch.randn_like(p) for n, p in self.module.named_parameters()}, (x,))


def make_model(config: ClassifierConfig, input_shape, num_classes) -> nn.Module:
    members = [build_model(config.model, input_shape, num_classes, config) for _ in range(config.ensemble)]
    return members[0] if config.ensemble == 1 else Ensemble(members)


def _loss_fn(config: ClassifierConfig, num_classes: int):
    def per_example(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B = y.shape[0]
        if config.loss == "cross-entropy":   # -log p(y|x)
            out = F.cross_entropy(z, y, reduction="none", label_smoothing=config.label_smoothing)
        else:                                # ||softmax(z) - onehot(y)||^2 / K
            out = ((F.softmax(z, -1) - F.one_hot(y, num_classes).float()) ** 2).mean(-1)
        assert out.shape == (B,)
        return out

    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if z.dim() == 3:  # ensemble in training: sum of the members' losses (independent parameters)
            return sum(per_example(zm, y) for zm in z)
        return per_example(z, y)
    return loss


def _metric_fn(z: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    if z.dim() == 3:
        z = z.mean(0)
    return {"accuracy": float((z.argmax(-1) == y).sum())}


def _transform(config: ClassifierConfig, num_classes: int):
    from mlcanon.data import images
    augs = config.augmentations
    if not (augs or config.input_noise or config.label_noise):
        return None

    def transform(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        if "crop" in augs:
            x = images.random_crop(x, padding=max(1, x.shape[-1] // 14), generator=g)
        if "flip" in augs:
            x = images.random_hflip(x, generator=g)
        if "rotate" in augs:
            x = images.random_rotation(x, max_degrees=15.0, generator=g)
        if config.input_noise:
            x = x + config.input_noise * torch.randn(x.shape, generator=g)   # x~ = x + eps, eps ~ N(0, s^2)
        if config.label_noise:
            flip = torch.rand(y.shape, generator=g) < config.label_noise
            y = torch.where(flip, torch.randint(num_classes, y.shape, generator=g), y)
        return x, y
    return transform


def load_splits(config: ClassifierConfig):
    """(train, val, test) datasets; the classifier needs labelled image data."""
    from mlcanon.data import load
    kw = {"data_dir": config.data_dir}
    train = load(config.dataset, "train", val_fraction=config.val_fraction, **kw)
    if getattr(train, "targets", None) is None or train.num_classes is None:
        raise UserError(f"--dataset {config.dataset}: has no class labels; the classifier needs labelled data "
                        "(digits, mnist, fashion-mnist, cifar10)")
    val = load(config.dataset, "valid", val_fraction=config.val_fraction, **kw) if config.val_fraction > 0 else None
    test = load(config.dataset, "test", **kw)
    return train, val, test


@register("classifier", family="supervised", config=ClassifierConfig,
          description="image classifier (MLP/CNN/ResNet/ViT/LSTM) with CE or MSE loss, early stopping, regularizers",
          evaluate=lambda run_dir, **kw: evaluate(run_dir, **kw), sample=lambda *a, **kw: sample(*a, **kw))
def train(config: ClassifierConfig, run: Run | None = None) -> dict:
    """Train, keep the best model by validation accuracy, report test accuracy; returns a result dict."""
    device = resolve_device(config.device)
    dist = init_distributed(device)
    device = device_for_rank(device, dist)
    resume_state = None
    if run is None:
        run = Run.create("classifier", config, enabled=dist.is_main, device=str(device))
    else:
        loaded = run.load()
        resume_state = loaded[0] if loaded else None
    seed_everything(config.seed)
    train_ds, val_ds, test_ds = load_splits(config)
    x, y = train_ds.x, train_ds.targets
    if config.train_subset:
        x, y = x[:config.train_subset], y[:config.train_subset]
    model = make_model(config, train_ds.input_shape, train_ds.num_classes)
    if config.weight_noise:
        model = WeightNoise(model, config.weight_noise)
    if device.type == "cuda":
        x, y = x.to(device), y.to(device)
    if resume_state is None:
        run.log_hparams(config)
    loss_fn = _loss_fn(config, train_ds.num_classes)
    result = fit(model, train=(x, y), val=(val_ds.x, val_ds.targets) if val_ds is not None else None,
                 config=config, run=run, device=device, loss_fn=loss_fn, metric_fn=_metric_fn,
                 transform=_transform(config, train_ds.num_classes), dist=dist, resume_state=resume_state)
    out = {"run_dir": str(run.dir), "step": result.step, "epochs": result.epoch,
           "best_val_accuracy": result.best_value, "stopped_early": result.stopped_early}
    if dist.is_main:
        best = load_checkpoint(run.dir, tag="best")
        if best is not None:
            model.load_state_dict(best[0]["model"])
        tm = evaluate_tensors(model, test_ds.x, test_ds.targets, loss_fn=loss_fn, metric_fn=_metric_fn,
                              device=device, precision=config.precision)
        out.update({"test_accuracy": tm["accuracy"], "test_loss": tm["loss"]})
        run.finish(out, step=result.step, metrics={"test/accuracy": tm["accuracy"], "test/loss": tm["loss"]})
    out["model"] = model
    return out


def load_model(run_dir: str | Path, tag: str = "best") -> tuple[nn.Module, ClassifierConfig]:
    """The trained model (best by validation accuracy, else last) and its config, from a run folder."""
    from mlcanon.data import load
    from mlcanon.registry import algorithm_of_run
    algo, config = algorithm_of_run(run_dir)
    if algo.name != "classifier":
        raise UserError(f"{run_dir} is a {algo.name} run, not a classifier run")
    ds = load(config.dataset, "test", data_dir=config.data_dir)
    model = make_model(config, ds.input_shape, ds.num_classes)
    if config.weight_noise:
        model = WeightNoise(model, config.weight_noise)
    from mlcanon.supervised.tasks import load_weights
    return load_weights(model, run_dir, tag), config


def evaluate(run_dir: str | Path, split: str = "test", **_) -> dict:
    """Accuracy and loss of the run's best model on the test split."""
    from mlcanon.data import load
    model, config = load_model(run_dir)
    ds = load(config.dataset, split, data_dir=config.data_dir, val_fraction=config.val_fraction)
    m = evaluate_tensors(model, ds.x, ds.targets, loss_fn=_loss_fn(config, ds.num_classes), metric_fn=_metric_fn,
                         device=torch.device("cpu"))
    return {f"{split}/accuracy": m["accuracy"], f"{split}/loss": m["loss"], "n": len(ds)}


def sample(run_dir: str | Path, n: int = 64, out: str | Path | None = None, **_) -> Path:
    """A grid of test images titled with predicted and true labels (+ ``*-gradcam.png`` for conv models)."""
    from mlcanon.data import load
    from mlcanon.data.images import save_image_grid
    model, config = load_model(run_dir)
    ds = load(config.dataset, "test", data_dir=config.data_dir)
    x, y = ds.x[:n], ds.targets[:n]
    with torch.no_grad():
        pred = model(x).argmax(-1)
    titles = [f"{int(p)}/{int(t)}" + ("" if p == t else " x") for p, t in zip(pred, y)]
    out = Path(out) if out else Path(run_dir) / "samples.png"
    save_image_grid(x, out, titles=titles)  # caption: predicted/true, "x" marks a mistake
    (Path(run_dir) / "samples.json").write_text(json.dumps({"pred": pred.tolist(), "true": y.tolist()}))
    if config.model in ("cnn", "resnet") and config.ensemble == 1 and not config.weight_noise:
        from mlcanon.supervised.gradcam import save_overlays  # Grad-CAM heat maps beside the predictions
        save_overlays(run_dir, min(n, 32), out.with_name(out.stem + "-gradcam.png"))
    return out
