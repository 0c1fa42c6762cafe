"""Denoising diffusion probabilistic models: ``mlcanon train ddpm`` (Ho et al. 2020).

Pixel-space diffusion on images (MNIST, Fashion-MNIST, digits; a U-Net with residual blocks, low-resolution
self-attention and a class embedding with a null label) or on ``toy2d:*`` points (an MLP denoiser). The
objective, the bound and the network live in :mod:`.model`, the samplers in :mod:`.samplers`: this file is
the algorithm - config, train (Algorithm 1, EMA weights via ``--ema-decay``), evaluate, sample, register.

    mlcanon train ddpm --dataset mnist --epochs 5
    mlcanon sample RUN_DIR --sampler ddim --steps 50 --guidance 3 --label 7 -n 64 --out grid.png
    mlcanon eval RUN_DIR            # MNIST-FID / precision / recall / label accuracy, bound in bits/dim
    mlcanon train ddpm --dataset toy2d:moons --max-steps 3000   # + a reverse-trajectory plot
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import torch
from torch import nn

from mlcanon.config import option
from mlcanon.data.images import save_image_grid
from mlcanon.devices import resolve_device
from mlcanon.errors import UserError
from mlcanon.generative.diffusion.figures import save_progress_strip, save_trajectories
from mlcanon.generative.diffusion.model import (
    DiffusionConfig,
    DiffusionData,
    GaussianDiffusion,
    build_denoiser,
    load_diffusion_data,
)
from mlcanon.generative.diffusion.samplers import VARIANCES
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.runs import Run, load_checkpoint
from mlcanon.training import TensorBatches, Trainer, generator


@dataclasses.dataclass
class DDPMConfig(DiffusionConfig):
    """Train a DDPM; every field is a CLI flag (``--schedule cosine --prediction v``)."""

    dataset: str = option("mnist", "data set: mnist, fashion-mnist, digits (U-Net) or toy2d:<name> (MLP)")
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    train_subset: int = option(0, "use only the first N training examples (0: all)", min=0)
    toy_points: int = option(20000, "training points drawn for toy2d:* data sets", min=2)
    epochs: int = option(10, "passes over the training set (the budget unless --max-steps is set)", min=1)
    batch_size: int = option(128, "global mini-batch size (also under torchrun)", min=1)
    lr: float = option(5e-4, "peak learning rate (Adam)", min=0.0)
    warmup_steps: int = option(200, "linear learning-rate warm-up from 0 over this many steps", min=0)
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this value (0: off; Ho et al.: 1)",
                                  min=0.0)
    ema_decay: float = option(0.999, "EMA of the weights (used for sampling and evaluation; 0: off)",
                              min=0.0, max=1.0)


# ----------------------------------------------------------------------------------------------- model
def make_model(config: DiffusionConfig, data: DiffusionData) -> GaussianDiffusion:
    K = data.num_classes if config.class_cond else 0
    return GaussianDiffusion(build_denoiser(config, data.shape, K), config.make_schedule(), data.shape,
                             prediction=config.prediction, num_classes=K, p_uncond=config.p_uncond,
                             clip=(-1.0, 1.0) if data.is_image else None)


def load_weights_into(model: nn.Module, run_dir: str | Path, tag: str = "best", ema: bool = True) -> nn.Module:
    """The EMA weights when the run kept them (``ema=True``), else the trained ones; eval mode."""
    ck = load_checkpoint(run_dir, tag=tag) or load_checkpoint(run_dir)
    if ck is None:
        raise UserError(f"{run_dir} has no checkpoint yet; continue it with `mlcanon train --resume {run_dir}`")
    st = ck[0]
    if ema and "ema" in st:   # EMA's state_dict: "module.<name>" + its update counter
        weights = {k[len("module."):]: v for k, v in st["ema"].items() if k.startswith("module.")}
    elif "model" in st:
        weights = st["model"]
    else:
        raise UserError(f"{run_dir}: its checkpoint has no model weights; it was written by another version")
    model.load_state_dict(weights)
    return model.eval()


def _data_of(config: DDPMConfig, split: str = "train", subset: int | None = None) -> DiffusionData:
    return load_diffusion_data(config.dataset, split, config.data_dir,
                               config.train_subset if subset is None else subset, config.toy_points, config.seed)


def load_model(run_dir: str | Path, config: DDPMConfig | None = None, tag: str = "best", ema: bool = True
               ) -> GaussianDiffusion:
    """The trained DDPM of a run folder (EMA weights where kept)."""
    config = config or config_of(run_dir, "ddpm")
    return load_weights_into(make_model(config, _data_of(config, "train", subset=2)), run_dir, tag, ema)


# ----------------------------------------------------------------------------------------------- train
def train(config: DDPMConfig, run: Run | None = None) -> dict:
    """Algorithm 1 of Ho et al. on the training set; samples.png (DDIM, 50 steps; + trajectories for toys) at the end."""
    run = Run.start("ddpm", config, run)
    data = _data_of(config)
    model = make_model(config, data)
    trainer = Trainer(model, config, run)
    tensors = {"x": data.x} if model.num_classes == 0 else {"x": data.x, "y": data.y}
    batches = TensorBatches(tensors, config.batch_size, seed=config.seed)
    if run.device.type == "cuda":
        batches.to(run.device)
    fit = trainer.fit(model.loss, batches)
    out = {"run_dir": str(run.dir), "step": fit.step, "epochs": fit.epoch}
    if run.dist.is_main:
        sampler_model = trainer.ema.module if trainer.ema is not None else model
        sampler_model.eval()
        draw_figures(sampler_model, data, run.dir / "samples.png", n=64, options=DDPMSampleOptions(sampler="ddim"),
                     device=run.device, titles=False)
        run.finish(out, step=fit.step)
    return out


# --------------------------------------------------------------------------------------------- sample
@dataclasses.dataclass
class DDPMSampleOptions(SampleOptions):
    """Options of `mlcanon sample` on a diffusion run."""

    sampler: str = option("ddpm", "ddpm (ancestral, all T steps) or ddim (--steps, --eta)", choices=("ddpm", "ddim"))
    steps: int = option(50, "DDIM steps (at most T)", min=1)
    eta: float = option(0.0, "DDIM stochasticity (0: deterministic; 1 with every step: DDPM)", min=0.0)
    variance: str = option("small", "DDPM reverse variance: small (beta~_t) or large (beta_t)", choices=VARIANCES)
    guidance: float = option(0.0, "guidance weight: classifier-free w (eps* = (1+w) eps(x,y) - w eps(x)), or the "
                                  "classifier scale s with --classifier", min=0.0)
    label: int = option(-1, "class of every sample (-1: cycle through the classes of a class-conditional model)",
                        min=-1)
    unconditional: bool = option(False, "sample a class-conditional model with the null label")
    classifier: str = option("", "noisy-classifier run folder for classifier guidance (scale --guidance)")
    device: str = option("auto", "where to sample: cpu, cuda, or auto (cuda when available)",
                         choices=("auto", "cpu", "cuda"))


def _labels(model: GaussianDiffusion, n: int, options: DDPMSampleOptions, classifier_classes: int = 0
            ) -> torch.Tensor | None:
    K = model.num_classes or classifier_classes
    if options.unconditional or K == 0:
        if options.label >= 0 and K == 0:
            raise UserError("--label: this model is unconditional (trained without labels); train it with "
                            "--class-cond true on labelled data, or guide it with --classifier RUN_DIR")
        return None
    if options.label >= K:
        raise UserError(f"--label {options.label}: the model knows classes 0..{K - 1}")
    return torch.full((n,), options.label) if options.label >= 0 else torch.arange(n) % K


def load_guidance_classifier(options, model_config) -> nn.Module | None:
    if not options.classifier:
        return None
    from mlcanon.generative.diffusion.noisy_classifier import load_classifier
    clf, clf_config = load_classifier(options.classifier)
    if not clf_config.same_schedule(model_config):
        raise UserError(f"--classifier {options.classifier} was trained on another noise schedule "
                        f"({clf_config.schedule}, T={clf_config.timesteps}) than this model "
                        f"({model_config.schedule}, T={model_config.timesteps}); train it with the same "
                        "--schedule and --timesteps")
    return clf


def generate(model: GaussianDiffusion, n: int, options: DDPMSampleOptions, *, classifier: nn.Module | None = None,
             device: torch.device | str = "cpu", strip: int = 0, trajectory: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor], torch.Tensor | None]:
    """(samples, labels, progress frames of the first ``strip`` samples, trajectory [S, n, D] or None)."""
    device = torch.device(device)
    model = model.to(device).eval()
    if classifier is not None:
        classifier = classifier.to(device).eval()
    labels = _labels(model, n, options, getattr(classifier, "num_classes", 0) if classifier is not None else 0)
    steps = min(options.steps, model.schedule.T)
    g = generator(options.seed)
    visits = model.schedule.T if options.sampler == "ddpm" else steps
    keep = {round(i * (visits - 1) / 9) for i in range(10)} if visits > 1 else {0}
    frames: list[torch.Tensor] = []
    path: list[torch.Tensor] = []

    def record(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if strip and i in keep:
            frames.append(x0[:strip].detach().cpu())
        if trajectory:
            path.append(x.detach().cpu())

    x_T = torch.randn((n, *model.shape), generator=g)
    with torch.no_grad():
        x = model.sample(n, labels.to(device) if labels is not None else None, sampler=options.sampler,
                         steps=steps, eta=options.eta, variance=options.variance, guidance=options.guidance,
                         classifier=classifier, generator=g, record=record, x_T=x_T.to(device))
    traj = torch.stack([x_T] + path) if trajectory else None
    return x.cpu(), labels, frames, traj


def draw_figures(model: GaussianDiffusion, data: DiffusionData, out: Path, n: int, options: DDPMSampleOptions,
                 *, classifier: nn.Module | None = None, device="cpu", to_image=None, titles: bool = True) -> Path:
    """Images: a grid + ``<out>-progress.png`` (x_0 estimates along the reverse process); points: a scatter with
    reverse trajectories. ``to_image`` maps samples to images in [0, 1] (latent diffusion decodes here).
    With ``titles`` each image is captioned with its class when the classes differ (slower: one axis each)."""
    x, labels, frames, traj = generate(model, n, options, classifier=classifier, device=device,
                                       strip=min(n, 8) if (data.is_image or to_image) else 0,
                                       trajectory=not (data.is_image or to_image))
    if traj is not None:
        return save_trajectories(traj, data.x[:5000], out, title=f"{n} samples ({options.sampler})")
    decode = to_image or (lambda z: (z.clamp(-1, 1) + 1) / 2)          # [-1, 1] -> [0, 1]
    captions = None
    if titles and labels is not None and n <= 64 and len(set(labels.tolist())) > 1:
        captions = [str(int(v)) for v in labels]
    save_image_grid(decode(x), out, titles=captions)
    save_progress_strip([decode(f) for f in frames], out.with_name(out.stem + "-progress.png"))
    return out


def sample(run_dir: str | Path, n: int = 64, out: str | Path | None = None,
           options: DDPMSampleOptions | None = None) -> Path:
    """A grid of n samples (``-progress.png`` beside it), or for toy2d a scatter with reverse trajectories."""
    options = options or DDPMSampleOptions()
    config = config_of(run_dir, "ddpm")
    model = load_model(run_dir, config)
    classifier = load_guidance_classifier(options, config)
    out = Path(out) if out else Path(run_dir) / "samples.png"
    data = _data_of(config, "test", subset=5000)
    return draw_figures(model, data, out, n, options, classifier=classifier, device=resolve_device(options.device))


# ------------------------------------------------------------------------------------------- evaluate
@dataclasses.dataclass
class DDPMEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a DDPM run."""

    num_samples: int = option(2000, "samples for MNIST-FID / precision / recall / label accuracy", min=2)
    sampler: str = option("ddpm", "sampler for the sample metrics", choices=("ddpm", "ddim"))
    steps: int = option(50, "DDIM steps", min=1)
    eta: float = option(0.0, "DDIM eta", min=0.0)
    guidance: float = option(0.0, "classifier-free guidance weight for the label accuracy and FID", min=0.0)
    bound_examples: int = option(256, "test examples for the variational bound (0: skip it)", min=0)
    bound_t_samples: int = option(0, "timesteps per example for the bound (0: all T, exact sum; else an unbiased "
                                     "estimate)", min=0)
    variance: str = option("small", "reverse variance in the bound and the DDPM sampler", choices=VARIANCES)
    batch_size: int = option(500, "examples per forward pass", min=1)
    device: str = option("auto", "where to evaluate: cpu, cuda, or auto (cuda when available)",
                         choices=("auto", "cpu", "cuda"))


def sample_metrics(x: torch.Tensor, labels: torch.Tensor | None, data_dir=None) -> dict:
    """MNIST-FID, precision, recall (and label accuracy for labelled samples) from the fixed feature network."""
    try:
        mf = importlib.import_module("mlcanon.metrics.mnist_features")   # written with the metrics issue
    except ModuleNotFoundError:
        raise UserError("mlcanon.metrics.mnist_features is missing: the MNIST sample metrics are not "
                        "installed") from None
    images = x.clamp(0, 1)
    out = {"eval/fid": mf.mnist_fid(images, "test", data_dir)}
    out["eval/precision"], out["eval/recall"] = mf.mnist_precision_recall(images, "test", data_dir)
    if labels is not None:
        out["eval/label_accuracy"] = mf.label_accuracy(images, labels)
    out["feature_net"] = mf.FEATURE_NET_ID
    return out


def bound_metrics(model: GaussianDiffusion, data: DiffusionData, options: DDPMEvalOptions, device) -> dict:
    """The variational bound (eq. 5) on test examples: bits/dim for 8-bit images, nats otherwise."""
    n = min(options.bound_examples, len(data.x))
    g = generator(options.seed, 1)
    total = {"prior": 0.0, "diffusion": 0.0, "decoder": 0.0, "total": 0.0}
    for i in range(0, n, options.batch_size):
        xb = data.x[i:min(i + options.batch_size, n)].to(device)
        yb = data.y[i:i + len(xb)].to(device) if (model.num_classes and data.y is not None) else None
        terms = model.variational_bound(xb, yb, variance=options.variance, t_samples=options.bound_t_samples,
                                        decoder="discrete" if data.eight_bit else "gaussian", generator=g)
        for k in total:
            total[k] += float(terms[k].double().sum())
    nats = {k: v / n for k, v in total.items()}
    D = int(torch.tensor(data.shape).prod())
    out = {"eval/bound_nats": nats["total"], "eval/bound_prior_nats": nats["prior"],
           "eval/bound_decoder_nats": nats["decoder"], "bound_examples": n}
    if data.eight_bit:
        from mlcanon.metrics.likelihood import nats_to_bits_per_dim
        out["eval/bits_per_dim"] = nats_to_bits_per_dim(nats["total"], D)   # discrete NLL <= bound
    return out


def chunk_seed(seed: int, start: int) -> int:
    """The seed of the sample chunk that starts at sample ``start``: every chunk its own stream."""
    return seed * 1_000_003 + start


def evaluate(run_dir: str | Path, options: DDPMEvalOptions | None = None) -> dict:
    """Variational bound on the test set; for MNIST also FID / precision / recall / label accuracy."""
    options = options or DDPMEvalOptions()
    config = config_of(run_dir, "ddpm")
    device = resolve_device(options.device)
    model = load_model(run_dir, config).to(device)
    test = _data_of(config, "test", subset=0)
    out: dict = {"sampler": options.sampler, "steps": options.steps if options.sampler == "ddim" else
                 model.schedule.T}
    with torch.no_grad():
        if options.bound_examples:
            out.update(bound_metrics(model, test, options, device))
        if config.dataset == "mnist":
            so = DDPMSampleOptions(seed=options.seed, sampler=options.sampler, steps=options.steps, eta=options.eta,
                                   variance=options.variance, guidance=options.guidance)
            xs, labels = [], []
            for i in range(0, options.num_samples, options.batch_size):
                k = min(options.batch_size, options.num_samples - i)
                so.seed = chunk_seed(options.seed, i)
                x, lab, _, _ = generate(model, k, so, device=device)
                xs.append(x)
                labels.append(lab if lab is not None else None)
            x = (torch.cat(xs) + 1) / 2
            lab = torch.cat(labels) if labels[0] is not None else None
            out.update(sample_metrics(x, lab, config.data_dir))
            out["num_samples"] = options.num_samples
    return out


register("ddpm", family="generative", config=DDPMConfig,
         description="denoising diffusion (DDPM/DDIM samplers, eps/x0/v prediction, CFG) on images or toy2d points",
         evaluate=evaluate, sample=sample, load=lambda run_dir, config, tag: load_model(run_dir, config, tag),
         eval_options=DDPMEvalOptions, sample_options=DDPMSampleOptions,
         tiny={"dataset": "digits", "train_subset": 128, "batch_size": 32, "max_steps": 8, "checkpoint_every": 4,
               "timesteps": 10, "base_channels": 8, "channel_mult": (1, 2, 2), "heads": 2, "depth": 2,
               "attn_levels": (2,), "warmup_steps": 0})(train)
