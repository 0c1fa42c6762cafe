"""What the autoregressive models of binary images share: their data, training loop, scoring and sampling.

The models (``fvsbn``, ``nade``, ``made``, ``pixelcnn``, ``gated-pixelcnn``) give the exact likelihood of a
binary image x in {0,1}^D by the chain rule in a fixed order (Bengio & Bengio 2000; Larochelle & Murray 2011):

    log p(x) = sum_i log p(x_{o_i} | x_{o_<i}),   p(x_i = 1 | x_<i) = sigmoid(logit_i(x_<i))

and each is an ``nn.Module`` with ``log_prob(x, y=None) -> [B]`` (nats), ``loss(batch) -> {"loss": mean NLL}``
(teacher forcing: every conditional is evaluated on the true previous pixels, in one pass where the model
allows) and ``sample(n, y=None, generator=None) -> [n, 1, H, W]`` (one pixel at a time, in the order).

Data: ``binarized-mnist`` (the fixed binarization of Larochelle & Murray 2011, official 50k/10k/10k splits) or
``mnist`` binarized by thresholding the grey levels at 0.5 (labels kept, for the class-conditional model).
Reported: ``eval/nll_nats`` (nats per image) and ``eval/bits_per_dim`` = NLL / (D ln 2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.data.images import save_image_grid
from mlcanon.errors import UserError
from mlcanon.metrics.likelihood import nats_to_bits_per_dim
from mlcanon.registry import EvalOptions, SampleOptions, config_of
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer, evaluate_in_batches, generator

DATASETS = ("binarized-mnist", "mnist")


@dataclasses.dataclass
class BinaryImageConfig(TrainConfig):
    """Fields every autoregressive model of binary images shares."""

    dataset: str = option("binarized-mnist", "data set: binarized-mnist (fixed binarization) or mnist "
                                             "(grey levels thresholded at 0.5; has labels)", choices=DATASETS)
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    train_subset: int = option(0, "use only the first N training images (0: all)", min=0)
    eval_subset: int = option(0, "score only the first N validation / test images (0: all)", min=0)
    eval_batch_size: int = option(500, "images per batch when scoring", min=1)
    samples: int = option(16, "images sampled into samples.png at the end of training (0: none)", min=0)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i [x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)] over every dim but the first: [B]."""
    B = x.shape[0]
    lp = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return lp.reshape(B, -1).sum(-1)


@torch.no_grad()
def init_bias_to_marginals(bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Set the output biases b_d to the logit of the training marginals, smoothed as (n_d + 1/2) / (N + 1):
    the model starts at the best independent-pixel fit instead of 0.5 everywhere (with Adam a bias moves about
    lr per step, so the border pixels' logits of about -11 would otherwise take ~10^4 steps to reach)."""
    xf = x.reshape(x.shape[0], -1)
    if xf.shape[1] != bias.numel():
        raise ValueError(f"bias has {bias.numel()} entries for {xf.shape[1]} pixels")
    p = (xf.sum(0, dtype=torch.float64) + 0.5) / (xf.shape[0] + 1)
    return bias.copy_((torch.log(p) - torch.log1p(-p)).reshape(bias.shape))   # logit(p_d)


def bits_per_dim(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """-log2 p(x) / D per image [B]: the NLL in nats over D ln 2."""
    return -model.log_prob(x, y) / (x[0].numel() * math.log(2))


def nll_loss(model: nn.Module, batch: dict) -> dict:
    """{"loss": mean NLL in nats of a batch, "bits_per_dim"} (teacher forcing)."""
    x = batch["x"]
    lp = model.log_prob(x, batch.get("y"))
    assert lp.shape == (x.shape[0],), lp.shape
    nll = -lp.mean()
    return {"loss": nll, "bits_per_dim": nats_to_bits_per_dim(nll.detach(), x[0].numel())}


def load_images(config: BinaryImageConfig, split: str, subset: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x [N, 1, 28, 28] in {0, 1}, labels [N] or None) of a split."""
    from mlcanon.data import load
    if config.dataset not in DATASETS:
        raise UserError(f"--dataset {config.dataset!r}: the binary-image models take {', '.join(DATASETS)}")
    ds = load(config.dataset, split, data_dir=config.data_dir)
    x, y = ds.x, getattr(ds, "targets", None)
    if config.dataset == "mnist":
        x = (x >= 0.5).float()                       # deterministic binarization of the grey levels
    if subset:
        x = x[:subset]
        y = y[:subset] if y is not None else None
    return x.float(), y


def batch_of(x: torch.Tensor, y: torch.Tensor | None, conditional: bool) -> dict:
    return {"x": x, "y": y} if conditional and y is not None else {"x": x}


def image_grid(samples: torch.Tensor, path: Path, titles=None) -> Path:
    save_image_grid(samples.float(), path, titles=titles)
    return path


def train_image_model(name: str, config: BinaryImageConfig, run: Run, model: nn.Module, *,
                      conditional: bool = False, init: Callable[[nn.Module, torch.Tensor], None] | None = None) -> dict:
    """Fit ``model`` by maximum likelihood (best by validation NLL), report test NLL and save samples.
    ``init(model, x_train)`` runs before training (data-dependent initialization; a resumed run's checkpoint
    then overwrites it)."""
    x, y = load_images(config, "train", config.train_subset)
    if init is not None:
        init(model, x)
    if conditional and y is None:
        raise UserError(f"--dataset {config.dataset} has no labels; class-conditional training needs --dataset mnist")
    vx, vy = load_images(config, "valid", config.eval_subset)
    tx, ty = load_images(config, "test", config.eval_subset)
    trainer = Trainer(model, config, run)
    data = TensorBatches(batch_of(x, y, conditional), config.batch_size, seed=config.seed)
    if run.device.type == "cuda":
        data.to(run.device)

    def score(xs, ys) -> dict:
        return evaluate_in_batches(lambda b: nll_loss(model, b), batch_of(xs, ys, conditional),
                                   batch_size=config.eval_batch_size, device=run.device, precision=config.precision)

    def val_fn() -> dict:
        m = score(vx, vy)
        return {"val/nll_nats": m["loss"], "val/bits_per_dim": m["bits_per_dim"]}

    fit = trainer.fit(lambda b: nll_loss(model, b), data, val_fn=val_fn, monitor="val/nll_nats", mode="min",
                      postfix_keys=("train/loss",))
    out = {"run_dir": str(run.dir), "step": fit.step, "epochs": fit.epoch, "best_val_nll_nats": fit.best_value}
    if run.dist.is_main:
        load_weights(model, run.dir, "best")
        with torch.no_grad():
            m = score(tx, ty)
        out.update({"test_nll_nats": m["loss"], "test_bits_per_dim": m["bits_per_dim"]})
        if config.samples:
            labels = torch.arange(config.samples) % 10 if conditional else None
            with torch.no_grad():
                s = model.sample(config.samples, labels.to(run.device) if labels is not None else None,
                                 generator=generator(config.seed, 31337))
            image_grid(s.cpu(), run.dir / "samples.png",
                       titles=[str(int(v)) for v in labels] if labels is not None else None)
        run.finish(out, step=fit.step, metrics={"test/nll_nats": m["loss"], "test/bits_per_dim": m["bits_per_dim"]})
    out["model"] = model
    return out


# ------------------------------------------------------------------------------------- eval / sample hooks
@dataclasses.dataclass
class ImageEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on an autoregressive image model: exact NLL of a split."""

    split: str = option("test", "which split to score", choices=("test", "valid", "train"))
    subset: int = option(0, "score only the first N images (0: all)", min=0)
    batch_size: int = option(500, "images per batch", min=1)


@dataclasses.dataclass
class ImageSampleOptions(SampleOptions):
    """Options of `mlcanon sample` on an autoregressive image model."""

    label: int = option(-1, "class of every sample for a class-conditional model (-1: cycle through 0..9)",
                        min=-1, max=9)


class ImageHooks:
    """load / evaluate / sample of one registered image model, built by ``build(config) -> nn.Module``.

    ``log_prob_kwargs(options)`` adds keyword arguments to ``model.log_prob`` at evaluation (MADE's ensemble).
    """

    def __init__(self, name: str, build: Callable[[BinaryImageConfig], nn.Module],
                 conditional: Callable[[BinaryImageConfig], bool] = lambda c: False,
                 log_prob_kwargs: Callable[[EvalOptions], dict] = lambda o: {}):
        self.name, self.build, self.conditional, self.log_prob_kwargs = name, build, conditional, log_prob_kwargs

    def load(self, run_dir: str | Path, config=None, tag: str = "best") -> nn.Module:
        config = config if config is not None else config_of(run_dir, self.name)
        return load_weights(self.build(config), run_dir, tag)

    def evaluate(self, run_dir: str | Path, options: ImageEvalOptions | None = None) -> dict:
        """Exact NLL (nats per image) and bits/dim of the best model on a split."""
        options = options or ImageEvalOptions()
        torch.manual_seed(options.seed)
        config = config_of(run_dir, self.name)
        model = self.load(run_dir, config)
        cond = self.conditional(config)
        x, y = load_images(config, options.split, options.subset)
        kw = self.log_prob_kwargs(options)
        m = evaluate_in_batches(lambda b: {"nll": -model.log_prob(b["x"], b.get("y"), **kw).mean()},
                                batch_of(x, y, cond), batch_size=options.batch_size)
        D = x[0].numel()
        return {"eval/nll_nats": m["nll"], "eval/bits_per_dim": float(nats_to_bits_per_dim(m["nll"], D)),
                "split": options.split, "n": len(x), **kw}

    def sample(self, run_dir: str | Path, n: int = 64, out: str | Path | None = None,
               options: ImageSampleOptions | None = None) -> Path:
        """A grid of n images drawn one pixel at a time (seeded: the same seed gives the same grid)."""
        options = options or ImageSampleOptions()
        config = config_of(run_dir, self.name)
        model = self.load(run_dir, config)
        labels = None
        if self.conditional(config):
            labels = torch.full((n,), options.label) if options.label >= 0 else torch.arange(n) % 10
        with torch.no_grad():
            s = model.sample(n, labels, generator=generator(options.seed, 271828))
        out = Path(out) if out else Path(run_dir) / "samples.png"
        return image_grid(s, out, titles=[str(int(v)) for v in labels] if labels is not None else None)
