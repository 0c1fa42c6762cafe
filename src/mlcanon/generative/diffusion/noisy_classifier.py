"""A classifier of noisy images p_phi(y | x_t, t), trained for classifier guidance: ``mlcanon train noisy-classifier``.

Dhariwal & Nichol 2021, section 4: the classifier sees x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at a
uniform t of the *same* noise schedule as the diffusion model it will guide, and minimizes the cross-entropy
-log p_phi(y | x_t, t). Sampling then uses grad_x log p_phi(y | x_t, t) (see
:func:`mlcanon.generative.diffusion.samplers.classifier_guided_eps`):

    mlcanon train noisy-classifier --dataset mnist --schedule linear --timesteps 1000
    mlcanon sample DDPM_RUN --classifier CLASSIFIER_RUN --guidance 2 --label 3

Network: the U-Net's encoder half - residual blocks with the time embedding added, 2x2 average pooling
between levels - then global average pooling and a linear layer to the class logits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.generative.diffusion.model import ScheduleConfig, load_diffusion_data
from mlcanon.generative.diffusion.schedules import NoiseSchedule
from mlcanon.nn.unet import _ResBlock, timestep_embedding
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, Trainer, evaluate_in_batches, generator


@dataclasses.dataclass
class NoisyClassifierConfig(ScheduleConfig):
    """Train a time-conditioned classifier on noisy images (use the diffusion model's --schedule/--timesteps)."""

    dataset: str = option("mnist", "labelled image data set: mnist, fashion-mnist or digits")
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    train_subset: int = option(0, "use only the first N training examples (0: all)", min=0)
    base_channels: int = option(32, "channels at full resolution (doubled at each level)", min=1)
    depth: int = option(2, "levels, each halving the resolution", min=1)
    epochs: int = option(3, "passes over the training set (the budget unless --max-steps is set)", min=1)
    batch_size: int = option(128, "global mini-batch size", min=1)
    val_fraction: float = option(0.1, "fraction of train held out for validation", min=0.0, max=0.5)


class NoisyClassifier(nn.Module):
    """logits = W pool(E(x_t, t)): residual blocks with the time embedding, average pooling between levels."""

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 32, depth: int = 2):
        super().__init__()
        self.num_classes, self.time_dim = num_classes, 2 * base_channels
        emb = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        chans = [base_channels * 2 ** i for i in range(depth + 1)]
        self.inp = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.blocks = nn.ModuleList(_ResBlock(chans[i], chans[i + 1], emb, "group", 0.0) for i in range(depth))
        self.head = nn.Sequential(nn.GroupNorm(8 if chans[-1] % 8 == 0 else 1, chans[-1]), nn.SiLU())
        self.out = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t [B, C, H, W], t [B] -> logits [B, K]."""
        e = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))
        h = self.inp(x)
        for i, block in enumerate(self.blocks):
            h = block(h if i == 0 else F.avg_pool2d(h, 2, ceil_mode=True), e)
        return self.out(self.head(h).mean((2, 3)))   # global average pool -> linear


class NoisyClassifierModel(nn.Module):
    """The classifier with the schedule it was trained on; ``loss`` is the cross-entropy at a uniform t."""

    def __init__(self, net: NoisyClassifier, schedule: NoiseSchedule):
        super().__init__()
        self.net, self.schedule, self.num_classes = net, schedule, net.num_classes

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t)

    def noisy(self, x0: torch.Tensor, g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B = x0.shape[0]
        dev = g.device if g is not None else x0.device
        t = torch.randint(self.schedule.T, (B,), generator=g, device=dev).to(x0.device)        # t ~ U{1..T}
        eps = torch.randn(x0.shape, generator=g, device=dev, dtype=x0.dtype).to(x0.device)     # eps ~ N(0, I)
        return self.schedule.q_sample(x0, t, eps), t

    def loss(self, batch: dict, g: torch.Generator | None = None) -> dict:
        x_t, t = self.noisy(batch["x"], g)
        logits = self.net(x_t, t).float()
        y = batch["y"]
        return {"loss": F.cross_entropy(logits, y),                          # -log p_phi(y | x_t, t)
                "accuracy": (logits.argmax(-1) == y).float().mean()}


def make_model(config: NoisyClassifierConfig, shape, num_classes: int) -> NoisyClassifierModel:
    return NoisyClassifierModel(NoisyClassifier(shape[0], num_classes, config.base_channels, config.depth),
                                config.make_schedule())


def _data(config: NoisyClassifierConfig, split: str, subset: int = 0):
    data = load_diffusion_data(config.dataset, split, config.data_dir, subset)
    if not data.is_image or data.y is None:
        raise UserError(f"--dataset {config.dataset}: the noisy classifier needs labelled images "
                        "(mnist, fashion-mnist, digits)")
    return data


def train(config: NoisyClassifierConfig, run: Run | None = None) -> dict:
    run = Run.start("noisy-classifier", config, run)
    data = _data(config, "train", config.train_subset)
    val = _data(config, "valid", 2000) if config.val_fraction > 0 else None
    model = make_model(config, data.shape, data.num_classes)
    trainer = Trainer(model, config, run)
    batches = TensorBatches({"x": data.x, "y": data.y}, config.batch_size, seed=config.seed)

    def val_fn() -> dict:   # fixed noise draws: the same t and eps at every validation
        g = generator(config.seed, 17)
        m = evaluate_in_batches(lambda b: model.loss(b, g), {"x": val.x, "y": val.y}, device=run.device)
        return {"val/loss": m["loss"], "val/accuracy": m["accuracy"]}

    fit = trainer.fit(model.loss, batches, val_fn=val_fn if val is not None else None, monitor="val/accuracy",
                      mode="max", postfix_keys=("train/loss", "train/accuracy"))
    out = {"run_dir": str(run.dir), "step": fit.step, "best_val_accuracy": fit.best_value}
    if run.dist.is_main:
        run.finish(out, step=fit.step)
    return out


def load_classifier(run_dir: str | Path, tag: str = "best") -> tuple[NoisyClassifierModel, NoisyClassifierConfig]:
    config = config_of(run_dir, "noisy-classifier")
    data = _data(config, "test", 2)
    return load_weights(make_model(config, data.shape, data.num_classes), run_dir, tag), config


@dataclasses.dataclass
class NoisyClassifierEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a noisy-classifier run."""

    noise_levels: int = option(5, "report test accuracy at this many evenly spaced timesteps", min=1)
    examples: int = option(2000, "test examples", min=1)


def evaluate(run_dir: str | Path, options: NoisyClassifierEvalOptions | None = None) -> dict:
    """Test accuracy at evenly spaced noise levels t (accuracy falls towards chance as t -> T)."""
    options = options or NoisyClassifierEvalOptions()
    model, config = load_classifier(run_dir)
    test = _data(config, "test", options.examples)
    T = model.schedule.T
    out = {}
    g = generator(options.seed)
    for k in range(options.noise_levels):
        t_idx = round(k * (T - 1) / max(options.noise_levels - 1, 1))
        t = torch.full((len(test.x),), t_idx, dtype=torch.long)
        x_t = model.schedule.q_sample(test.x, t, torch.randn(test.x.shape, generator=g))
        with torch.no_grad():
            acc = (model(x_t, t).argmax(-1) == test.y).float().mean()
        out[f"test/accuracy_t{t_idx + 1}"] = float(acc)
    return out


def sample(run_dir: str | Path, n: int = 64, out: str | Path | None = None, options: SampleOptions | None = None
           ) -> Path:
    """Test images noised to evenly spaced t, titled "t/predicted/true" (how far the classifier sees through)."""
    from mlcanon.data.images import save_image_grid
    options = options or SampleOptions()
    model, config = load_classifier(run_dir)
    test = _data(config, "test", n)
    n = len(test.x)
    T = model.schedule.T
    t = torch.tensor([round(i * (T - 1) / max(n - 1, 1)) for i in range(n)])
    x_t = model.schedule.q_sample(test.x, t, torch.randn(test.x.shape, generator=generator(options.seed)))
    with torch.no_grad():
        pred = model(x_t, t).argmax(-1)
    out = Path(out) if out else Path(run_dir) / "samples.png"
    titles = [f"t{int(s) + 1} {int(p)}/{int(y)}" for s, p, y in zip(t, pred, test.y)]
    return save_image_grid(((x_t.clamp(-1, 1) + 1) / 2), out, titles=titles)


register("noisy-classifier", family="generative", config=NoisyClassifierConfig,
         description="classifier of noisy images p(y | x_t, t) for classifier-guided diffusion sampling",
         evaluate=evaluate, sample=sample, load=lambda run_dir, config, tag: load_classifier(run_dir, tag)[0],
         eval_options=NoisyClassifierEvalOptions,
         tiny={"dataset": "digits", "train_subset": 128, "batch_size": 32, "max_steps": 8, "checkpoint_every": 4,
               "timesteps": 10, "base_channels": 8, "depth": 2})(train)
