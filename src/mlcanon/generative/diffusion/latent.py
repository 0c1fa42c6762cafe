"""Latent diffusion: ``mlcanon train latent-diffusion --autoencoder RUN_DIR`` (Rombach et al. 2022).

A frozen autoencoder E, D trained first (an ``autoencoder``, ``vae`` or ``beta-vae`` run) maps images to codes
z = E(x) (the VAE's posterior mean); a diffusion model is trained on the standardized codes
z' = (z - m) / s (per-dimension mean and std of the training codes: unit variance, as the "scale factor" of
Rombach et al., section 4.3.2 and appendix G), with the same objective, samplers and guidance as pixel space
(an MLP denoiser on the flat codes), and samples are decoded: x = D(s z' + m).

The autoencoder run is named by ``--autoencoder``; the config is validated when it is built: the folder must
be a finished autoencoder/vae/beta-vae run, and the sha256 of its checkpoint is recorded in config.json
(``autoencoder_sha256``) and checked again whenever the run is loaded, so a latent-diffusion run never decodes
with other weights than it was trained on. With ``--autoencoder`` empty, a small MLP autoencoder is trained
first inside the run folder (``<run>/autoencoder-*``; the default that works out of the box).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from mlcanon.config import option
from mlcanon.devices import resolve_device
from mlcanon.errors import UserError
from mlcanon.generative.diffusion.ddpm import (
    DDPMEvalOptions,
    DDPMSampleOptions,
    draw_figures,
    generate,
    load_weights_into,
    sample_metrics,
)
from mlcanon.generative.diffusion.model import DiffusionConfig, DiffusionData, GaussianDiffusion, MLPDenoiser
from mlcanon.registry import config_of, load_run, register
from mlcanon.runs import Run, read_config, seed_everything
from mlcanon.training import TensorBatches, Trainer

AUTOENCODERS = ("autoencoder", "vae", "beta-vae")


def checkpoint_file(run_dir: str | Path) -> Path:
    """The weights a latent-diffusion run decodes with: the run's best checkpoint (else its last)."""
    d = Path(run_dir)
    for name in ("best.safetensors", "checkpoint.safetensors"):
        if (d / name).is_file():
            return d / name
    raise UserError(f"--autoencoder {run_dir}: the run has no checkpoint yet; finish it first")


def file_sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass
class LatentDiffusionConfig(DiffusionConfig):
    """Train a diffusion model in the latent space of a frozen autoencoder / VAE run."""

    autoencoder: str = option("", "run folder of a trained autoencoder, vae or beta-vae (kept frozen); empty: a "
                                  "small MLP autoencoder (--latent, --ae-steps) is trained first inside this run")
    autoencoder_sha256: str = option("", "sha256 of that run's checkpoint: recorded when the config is built, "
                                         "checked when the run is loaded (another file is refused)")
    dataset: str = option("mnist", "image data set (with --autoencoder it must be the autoencoder's)")
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    train_subset: int = option(0, "use only the first N training examples (0: all)", min=0)
    latent: int = option(16, "code size of the autoencoder trained when --autoencoder is empty", min=1)
    ae_steps: int = option(3000, "optimizer steps of the autoencoder trained when --autoencoder is empty", min=1)
    width: int = option(256, "hidden units of the MLP denoiser on the codes", min=1)
    mlp_layers: int = option(4, "hidden layers of the MLP denoiser", min=1)
    epochs: int = option(20, "passes over the training codes (the budget unless --max-steps is set)", min=1)
    batch_size: int = option(256, "global mini-batch size", min=1)
    lr: float = option(1e-3, "peak learning rate (Adam)", min=0.0)
    warmup_steps: int = option(200, "linear learning-rate warm-up from 0 over this many steps", min=0)
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this value (0: off)", min=0.0)
    ema_decay: float = option(0.999, "EMA of the weights (used for sampling; 0: off)", min=0.0, max=1.0)

    def check(self) -> None:
        super().check()
        if not self.autoencoder:
            if self.autoencoder_sha256:
                raise UserError("--autoencoder-sha256 is set but --autoencoder is empty")
            return
        data = read_config(self.autoencoder)      # UserError when it is not a run folder
        if data["algorithm"] not in AUTOENCODERS:
            raise UserError(f"--autoencoder {self.autoencoder} is a {data['algorithm']} run; give an "
                            f"{', '.join(AUTOENCODERS)} run")
        ae_dataset = data["config"].get("dataset")
        if ae_dataset != self.dataset:
            raise UserError(f"--autoencoder {self.autoencoder} was trained on {ae_dataset}; use --dataset "
                            f"{ae_dataset}")
        sha = file_sha256(checkpoint_file(self.autoencoder))
        if not self.autoencoder_sha256:
            self.autoencoder_sha256 = sha          # recorded in config.json by Run.create
        elif sha != self.autoencoder_sha256:
            raise UserError(f"--autoencoder {self.autoencoder}: its checkpoint has sha256 {sha[:12]}..., not the "
                            f"{self.autoencoder_sha256[:12]}... this run was trained with (it was retrained or "
                            "resumed since); latent codes would not match")


class LatentDiffusion(nn.Module):
    """The diffusion model on standardized codes, with the code statistics (m, s) it was trained on."""

    def __init__(self, diffusion: GaussianDiffusion, latent: int):
        super().__init__()
        self.diffusion = diffusion
        self.register_buffer("z_mean", torch.zeros(latent))
        self.register_buffer("z_std", torch.ones(latent))
        self.decoder_module: nn.Module | None = None     # the frozen autoencoder (not part of the state)

    def loss(self, batch: dict) -> dict:
        return self.diffusion.loss(batch)

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.z_mean) / self.z_std                    # z' = (z - m) / s

    def to_image(self, z_std: torch.Tensor) -> torch.Tensor:
        """x = D(s z' + m), images in [0, 1]."""
        if self.decoder_module is None:
            raise ValueError("attach the autoencoder first (load_model does)")
        with torch.no_grad():
            z = z_std.to(self.z_std.device) * self.z_std + self.z_mean
            decoder = self.decoder_module.to(z.device)       # not a submodule: it follows the model here
            return decoder.decode(z).clamp(0, 1).to(z_std.device)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, **sampler_options) -> torch.Tensor:
        """n decoded images [n, C, H, W] (sampler options as :meth:`GaussianDiffusion.sample`)."""
        return self.to_image(self.diffusion.sample(n, y, **sampler_options))


# ---------------------------------------------------------------------------------------------- data
def encode_images(ae: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E(x): the autoencoder's code, or the VAE's posterior mean mu(x)."""
    out = []
    dev = next(ae.parameters()).device
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            z = ae.encode(x[i:i + batch_size].to(dev))
            out.append((z[0] if isinstance(z, tuple) else z).float().cpu())   # VAE: (mu, logvar) -> mu
    return torch.cat(out)


def _images(config: LatentDiffusionConfig, split: str, subset: int = 0):
    from mlcanon.data import load
    ds = load(config.dataset, split, data_dir=config.data_dir)
    if ds.kind != "image":
        raise UserError(f"--dataset {config.dataset}: latent diffusion needs an image data set")
    x, y = ds.x.float(), getattr(ds, "targets", None)
    n = subset or len(x)
    return x[:n], (y[:n] if y is not None else None), int(ds.num_classes or 0)


def _train_own_autoencoder(config: LatentDiffusionConfig, run: Run) -> Path:
    """The default: a small MLP autoencoder trained first inside this run folder (reused on --resume)."""
    from mlcanon.config import validate
    from mlcanon.generative.autoencoder import AutoencoderConfig
    from mlcanon.generative.autoencoder import train as train_autoencoder
    done = [d for d in sorted(run.dir.glob("autoencoder-*")) if (d / "result.json").is_file()]
    if done:
        return done[0]
    for d in run.dir.glob("autoencoder-*"):     # a sub-run killed before it finished: start it again
        shutil.rmtree(d)
    ae_config = AutoencoderConfig(dataset=config.dataset, data_dir=config.data_dir, kind="mlp", latent=config.latent,
                                  max_steps=config.ae_steps, batch_size=128, train_subset=config.train_subset,
                                  seed=config.seed, device=config.device, out_dir=str(run.dir),
                                  progress=config.progress)
    validate(ae_config)
    return Path(train_autoencoder(ae_config)["run_dir"])


def _autoencoder_dir(config: LatentDiffusionConfig, run_dir: Path) -> Path:
    if config.autoencoder:
        return Path(config.autoencoder)
    found = sorted(Path(run_dir).glob("autoencoder-*"))
    if not found:
        raise UserError(f"{run_dir}: the autoencoder it trained first is missing")
    return found[0]


def load_autoencoder(ae_dir: Path) -> nn.Module:
    ae = load_run(ae_dir).model.eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    return ae


def make_model(config: LatentDiffusionConfig, latent: int, num_classes: int) -> LatentDiffusion:
    K = num_classes if config.class_cond else 0
    net = MLPDenoiser(latent, config.width, config.mlp_layers, num_classes=K)
    return LatentDiffusion(GaussianDiffusion(net, config.make_schedule(), (latent,), prediction=config.prediction,
                                             num_classes=K, p_uncond=config.p_uncond), latent)


# --------------------------------------------------------------------------------------------- train
def train(config: LatentDiffusionConfig, run: Run | None = None) -> dict:
    run = Run.start("latent-diffusion", config, run)
    ae_dir = Path(config.autoencoder) if config.autoencoder else _train_own_autoencoder(config, run)
    ae_sha = config.autoencoder_sha256 or file_sha256(checkpoint_file(ae_dir))
    ae = load_autoencoder(ae_dir).to(run.device)
    seed_everything(config.seed)          # the same global RNG whether the autoencoder was trained here or reused
    x, y, K = _images(config, "train", config.train_subset)
    z = encode_images(ae, x)                                    # frozen: codes computed once
    model = make_model(config, z.shape[1], K if y is not None else 0)
    model.z_mean.copy_(z.mean(0))
    model.z_std.copy_(z.std(0).clamp(min=1e-6))
    zs = model.standardize(z)
    trainer = Trainer(model, config, run)
    tensors = {"x": zs} if model.diffusion.num_classes == 0 else {"x": zs, "y": y}
    fit = trainer.fit(model.loss, TensorBatches(tensors, config.batch_size, seed=config.seed))
    out = {"run_dir": str(run.dir), "step": fit.step, "epochs": fit.epoch, "autoencoder_run_dir": str(ae_dir),
           "autoencoder_sha256": ae_sha, "latent": int(z.shape[1])}
    if run.dist.is_main:
        m = trainer.ema.module if trainer.ema is not None else model
        m.decoder_module = ae
        _figures(m, run.dir / "samples.png", 64, DDPMSampleOptions(sampler="ddim"), titles=False)
        run.finish(out, step=fit.step)
    return out


# ------------------------------------------------------------------------------------- load / sample
def load_model(run_dir: str | Path, config: LatentDiffusionConfig | None = None, tag: str = "best",
               ema: bool = True) -> LatentDiffusion:
    """The trained latent diffusion model (EMA weights where kept) with its frozen autoencoder attached."""
    config = config or config_of(run_dir, "latent-diffusion")   # re-validates: the autoencoder's sha256
    ae_dir = _autoencoder_dir(config, Path(run_dir))
    ae = load_autoencoder(ae_dir)
    x, y, K = _images(config, "test", 2)
    model = make_model(config, encode_images(ae, x).shape[1], K if y is not None else 0)
    load_weights_into(model, run_dir, tag, ema)
    model.decoder_module = ae
    return model


def _figures(model: LatentDiffusion, out: Path, n: int, options: DDPMSampleOptions, titles: bool = True) -> Path:
    data = DiffusionData(torch.zeros(0), None, model.diffusion.shape, model.diffusion.num_classes, False, False)
    return draw_figures(model.diffusion, data, out, n, options, to_image=model.to_image, titles=titles,
                        device=model.z_std.device)


def sample(run_dir: str | Path, n: int = 64, out: str | Path | None = None,
           options: DDPMSampleOptions | None = None) -> Path:
    """A grid of n decoded samples and ``-progress.png`` (decoded x_0 estimates along the reverse process)."""
    options = options or DDPMSampleOptions()
    if options.classifier:
        raise UserError("--classifier: classifier guidance needs a classifier of noisy *codes*; use classifier-free "
                        "guidance (--guidance W) with a class-conditional latent model")
    model = load_model(run_dir).to(resolve_device(options.device))
    out = Path(out) if out else Path(run_dir) / "samples.png"
    return _figures(model, out, n, options)


def evaluate(run_dir: str | Path, options: DDPMEvalOptions | None = None) -> dict:
    """MNIST-FID / precision / recall / label accuracy of decoded samples, and the sampling time per image
    (latent vs pixel space cost); the diffusion bound on the test codes in nats (continuous codes)."""
    options = options or DDPMEvalOptions()
    config = config_of(run_dir, "latent-diffusion")
    device = resolve_device(options.device)
    model = load_model(run_dir, config).to(device)
    out: dict = {"autoencoder_sha256": config.autoencoder_sha256 or file_sha256(checkpoint_file(
        _autoencoder_dir(config, Path(run_dir))))}
    if options.bound_examples:
        x, y, _ = _images(config, "test", options.bound_examples)
        zs = model.standardize(encode_images(model.decoder_module.to(device), x).to(device))
        yy = y if model.diffusion.num_classes and y is not None else None
        from mlcanon.training import generator
        terms = model.diffusion.variational_bound(zs, yy.to(device) if yy is not None else None, variance=options.variance,
                                                  t_samples=options.bound_t_samples, decoder="gaussian",
                                                  generator=generator(options.seed, 1))
        # nats of the standardized codes; + sum log s converts to the codes' own density
        out["eval/latent_bound_nats"] = float(terms["total"].mean() + model.z_std.log().sum())
    so = DDPMSampleOptions(seed=options.seed, sampler=options.sampler, steps=options.steps, eta=options.eta,
                           variance=options.variance, guidance=options.guidance)
    n = options.num_samples
    t0 = time.perf_counter()
    xs, labels = [], []
    for i in range(0, n, options.batch_size):
        k = min(options.batch_size, n - i)
        so.seed = options.seed * 1_000_003 + i
        z, lab, _, _ = generate(model.diffusion, k, so, device=device)
        xs.append(model.to_image(z.to(device)).cpu())
        labels.append(lab)
    out["perf/sample_s_per_image"] = (time.perf_counter() - t0) / n
    if config.dataset == "mnist":
        out.update(sample_metrics(torch.cat(xs), torch.cat(labels) if labels[0] is not None else None,
                                  config.data_dir))
    out["num_samples"] = n
    return out


register("latent-diffusion", family="generative", config=LatentDiffusionConfig,
         description="diffusion in the latent space of a frozen autoencoder/VAE run, decoded at the end",
         evaluate=evaluate, sample=sample, load=lambda run_dir, config, tag: load_model(run_dir, config, tag),
         eval_options=DDPMEvalOptions, sample_options=DDPMSampleOptions,
         tiny={"dataset": "digits", "latent": 4, "ae_steps": 6, "train_subset": 128, "batch_size": 32,
               "max_steps": 8, "checkpoint_every": 4, "timesteps": 10, "width": 16, "mlp_layers": 2,
               "warmup_steps": 0})(train)
