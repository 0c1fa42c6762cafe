"""Autoencoders: ``mlcanon train autoencoder --kind linear|mlp|conv|denoising``.

An encoder f maps x to a code z = f(x) and a decoder g maps it back; both are trained to minimize the
reconstruction error L(x, g(f(x))) (Goodfellow, Bengio & Courville 2016, ch. 14).

- linear: f(x) = W_e x + b_e, g(z) = W_d z + b_d with squared error. Its optimum spans the same subspace as
  the top-k principal components of the centred data (Baldi & Hornik 1989; Bourlard & Kamp 1988): the columns
  of W_d span the leading k right singular vectors of X - mean (tested by principal angles).
- mlp / conv: deep nonlinear encoder and decoder (strided convolutions, transposed convolutions).
  ``--latent`` below the input size is undercomplete, above it overcomplete (then only the bottleneck-free
  reconstruction is learnt unless noise or a penalty regularizes it).
- denoising: the encoder sees x~ = x + sigma eps (eps ~ N(0, I)), the loss compares g(f(x~)) with the clean x
  (Vincent et al. 2008), which keeps even an overcomplete code from learning the identity.

Generation by decoding latent points: after training a Gaussian N(m, S) is fitted to the training codes and
``sample(n)`` decodes z ~ N(m, S) (an autoencoder has no prior of its own; the VAE adds one). Run folders get
``latent.png`` (2-D codes, or their first two principal components, coloured by label), ``reconstructions.png``,
``interpolations.png`` and ``samples.png``.

The MLP / conv encoder and decoder below are shared with :mod:`mlcanon.generative.vae`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.data.images import save_image_grid
from mlcanon.errors import UserError
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer, evaluate_in_batches

IMAGE_DATASETS = ("digits", "mnist", "fashion-mnist", "binarized-mnist")
KINDS = ("linear", "mlp", "conv", "denoising")


# ------------------------------------------------------------------------------ encoder / decoder nets
def _conv_sizes(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
        raise UserError(f"the conv encoder/decoder needs images whose height and width are multiples of 4, "
                        f"got input shape {tuple(input_shape)}; use --arch mlp")
    return input_shape


class Encoder(nn.Module):
    """x [B, *input_shape] (+ a condition vector c [B, n_cond]) -> [B, out_dim].

    ``arch="mlp"``: flatten, two hidden ReLU layers. ``arch="conv"``: two stride-2 4x4 convolutions (H -> H/4),
    then a hidden ReLU layer. The condition is concatenated to the flattened features (CVAE, Sohn et al. 2015).
    """

    def __init__(self, input_shape: tuple[int, ...], out_dim: int, *, arch: str = "mlp", hidden: int = 256,
                 channels: int = 32, n_cond: int = 0):
        super().__init__()
        self.arch, self.n_cond = arch, n_cond
        if arch == "mlp":
            self.body, feat = nn.Flatten(), math.prod(input_shape)
        elif arch == "conv":
            C, H, W = _conv_sizes(input_shape)
            self.body = nn.Sequential(nn.Conv2d(C, channels, 4, 2, 1), nn.ReLU(),            # H -> H/2
                                      nn.Conv2d(channels, 2 * channels, 4, 2, 1), nn.ReLU(),  # H/2 -> H/4
                                      nn.Flatten())
            feat = 2 * channels * (H // 4) * (W // 4)
        else:
            raise ValueError(f"unknown arch {arch!r}")
        self.head = nn.Sequential(nn.Linear(feat + n_cond, hidden), nn.ReLU(),
                                  *((nn.Linear(hidden, hidden), nn.ReLU()) if arch == "mlp" else ()),
                                  nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)
        if self.n_cond:
            h = torch.cat([h, c.to(h.dtype)], 1)
        return self.head(h)


class Decoder(nn.Module):
    """z [B, latent] (+ condition [B, n_cond]) -> [B, *output_shape] (logits or means; no output activation).

    ``arch="conv"``: a linear layer to 2C x H/4 x W/4, then two stride-2 4x4 transposed convolutions."""

    def __init__(self, latent: int, output_shape: tuple[int, ...], *, arch: str = "mlp", hidden: int = 256,
                 channels: int = 32, n_cond: int = 0):
        super().__init__()
        self.output_shape, self.arch, self.n_cond = tuple(output_shape), arch, n_cond
        if arch == "mlp":
            D = math.prod(output_shape)
            self.net = nn.Sequential(nn.Linear(latent + n_cond, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                     nn.ReLU(), nn.Linear(hidden, D))
        elif arch == "conv":
            C, H, W = _conv_sizes(output_shape)
            self.net = nn.Sequential(
                nn.Linear(latent + n_cond, hidden), nn.ReLU(),
                nn.Linear(hidden, 2 * channels * (H // 4) * (W // 4)), nn.ReLU(),
                nn.Unflatten(1, (2 * channels, H // 4, W // 4)),
                nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1), nn.ReLU(),   # H/4 -> H/2
                nn.ConvTranspose2d(channels, C, 4, 2, 1))                          # H/2 -> H
        else:
            raise ValueError(f"unknown arch {arch!r}")

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_cond:
            z = torch.cat([z, c.to(z.dtype)], 1)
        return self.net(z).reshape(-1, *self.output_shape)


# -------------------------------------------------------------------------------------------- model
class Autoencoder(nn.Module):
    """x -> z = f(x) -> x_hat = g(z); ``loss`` is the per-example reconstruction error averaged over the batch.

    ``recon="mse"``: sum_i (x_i - x_hat_i)^2; ``recon="bce"``: sum_i BCE(x_i, sigmoid(logit_i)) (images in
    [0, 1]). ``noise > 0`` makes it a denoising autoencoder (the input is x + noise * eps).
    """

    def __init__(self, input_shape: tuple[int, ...], latent: int, *, kind: str = "mlp", hidden: int = 256,
                 channels: int = 32, recon: str = "mse", noise: float = 0.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
        if recon not in ("mse", "bce"):
            raise ValueError(f"recon must be mse or bce, got {recon!r}")
        self.input_shape, self.latent, self.kind, self.recon, self.noise = tuple(input_shape), latent, kind, recon, noise
        D = math.prod(input_shape)
        if kind == "linear":          # f(x) = W_e x + b_e, g(z) = W_d z + b_d
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(D, latent))
            self.decoder = nn.Sequential(nn.Linear(latent, D), nn.Unflatten(1, self.input_shape))
        else:
            arch = "conv" if kind == "conv" else "mlp"
            self.encoder = Encoder(input_shape, latent, arch=arch, hidden=hidden, channels=channels)
            self.decoder = Decoder(latent, input_shape, arch=arch, hidden=hidden, channels=channels)
        # Gaussian fitted to the training codes (fit_latent), decoded by sample()
        self.register_buffer("z_mean", torch.zeros(latent))
        self.register_buffer("z_scale_tril", torch.eye(latent))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x_hat in data space (sigmoid of the logits for ``recon="bce"``)."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.recon == "bce" else out

    def reconstruction_error(self, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
        """[B] per-example error of reconstructing x from x_in (default x itself)."""
        B = x.shape[0]
        out = self.decoder(self.encoder(x if x_in is None else x_in))
        if self.recon == "mse":
            err = ((out - x) ** 2).flatten(1).sum(1)                                     # ||x - g(f(x))||^2
        else:
            err = F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        assert err.shape == (B,), err.shape
        return err

    def loss(self, batch: dict) -> dict:
        x = batch["x"]
        x_in = x + self.noise * torch.randn_like(x) if self.training and self.noise > 0 else x   # x~ = x + s eps
        return {"loss": self.reconstruction_error(x, x_in).mean()}

    @torch.no_grad()
    def fit_latent(self, x: torch.Tensor, batch_size: int = 1000) -> None:
        """Fit N(m, S) to the codes of x (S = L L^T, with a small ridge), for :meth:`sample`."""
        z = torch.cat([self.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).double()
        m = z.mean(0)
        S = torch.cov(z.T).reshape(self.latent, self.latent) + 1e-6 * torch.eye(self.latent, dtype=z.dtype)
        self.z_mean.copy_(m)
        self.z_scale_tril.copy_(torch.linalg.cholesky(S))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n codes z = m + L eps, eps ~ N(0, I) (the Gaussian fitted by :meth:`fit_latent`)."""
        eps = torch.randn(n, self.latent, generator=generator).to(self.z_mean)
        return self.decode(self.z_mean + eps @ self.z_scale_tril.T)


# ------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class AutoencoderConfig(TrainConfig):
    """Train an autoencoder on images; every field is a CLI flag (``--kind conv --latent 2``)."""

    dataset: str = option("mnist", "data set: digits, mnist, fashion-mnist, binarized-mnist",
                          choices=IMAGE_DATASETS)
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    kind: str = option("mlp", "linear (spans the PCA subspace), mlp, conv, or denoising (MLP with input noise)",
                       choices=KINDS)
    latent: int = option(2, "code dimensions (below the input size: undercomplete; above: overcomplete)", min=1)
    hidden: int = option(256, "hidden units of the MLP layers", min=1)
    channels: int = option(32, "channels of the first conv layer (conv kind)", min=1)
    recon: str = option("bce", "reconstruction loss: bce (images in [0, 1]) or mse (the linear kind uses mse)",
                        choices=("bce", "mse"))
    noise: float = option(0.3, "std of the Gaussian input noise of the denoising kind", min=0.0)
    train_subset: int = option(0, "use only the first N training examples (0: all)", min=0)
    val_subset: int = option(2000, "validate on the first N validation examples (0: all)", min=0)

    @property
    def loss_name(self) -> str:
        return "mse" if self.kind == "linear" else self.recon


def build(config: AutoencoderConfig, input_shape) -> Autoencoder:
    return Autoencoder(input_shape, config.latent, kind=config.kind, hidden=config.hidden, channels=config.channels,
                       recon=config.loss_name, noise=config.noise if config.kind == "denoising" else 0.0)


def _subset(x: torch.Tensor, y: torch.Tensor | None, n: int):
    return (x[:n], None if y is None else y[:n]) if n else (x, y)


def load_data(config, split: str):
    """(x, labels or None) of an image data set split, with the UserError for non-image sets."""
    from mlcanon.data import load
    if config.dataset not in IMAGE_DATASETS:
        raise UserError(f"--dataset {config.dataset}: use an image data set ({', '.join(IMAGE_DATASETS)})")
    ds = load(config.dataset, split, data_dir=config.data_dir)
    return ds.x, getattr(ds, "targets", None)


# ------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def save_latent_scatter(z: torch.Tensor, labels: torch.Tensor | None, path: Path, title: str = "") -> Path:
    """2-D scatter of codes coloured by label (codes of more than 2 dims: their first two principal components)."""
    plt = _plt()
    z = z.detach().double().cpu()
    if z.shape[1] > 2:
        zc = z - z.mean(0)
        _, _, Vh = torch.linalg.svd(zc, full_matrices=False)
        z, title = zc @ Vh[:2].T, (title + " (first 2 principal components)").strip()
    elif z.shape[1] == 1:
        z = torch.cat([z, torch.zeros_like(z)], 1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=3)
    else:
        sc = ax.scatter(z[:, 0], z[:, 1], s=3, c=labels.numpy(), cmap="tab10")
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_title(title or "latent codes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_reconstructions(x: torch.Tensor, x_hat: torch.Tensor, path: Path) -> Path:
    """Originals (odd rows) above their reconstructions (even rows), 8 per row."""
    k = (min(len(x), 32) // 8) * 8 or min(len(x), 8)
    x, x_hat = x[:k].cpu(), x_hat[:k].cpu()
    rows = [t for i in range(0, k, 8) for t in (x[i:i + 8], x_hat[i:i + 8])]
    return save_image_grid(torch.cat(rows), path, nrow=min(8, k))


def interpolate(za: torch.Tensor, zb: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """[P * steps, latent]: z = (1 - t) za + t zb for t = 0..1, for each of the P pairs."""
    t = torch.linspace(0, 1, steps, dtype=za.dtype, device=za.device)[None, :, None]
    return ((1 - t) * za[:, None] + t * zb[:, None]).reshape(-1, za.shape[1])


def write_figures(model: Autoencoder, x: torch.Tensor, y: torch.Tensor | None, run_dir: Path, seed: int) -> None:
    """latent.png, reconstructions.png, interpolations.png, samples.png for a trained model on test data x."""
    with torch.no_grad():
        n = min(len(x), 2000)
        z = torch.cat([model.encode(x[i:i + 500]) for i in range(0, n, 500)])
        save_latent_scatter(z, None if y is None else y[:n], run_dir / "latent.png",
                            f"{model.kind} autoencoder codes")
        save_reconstructions(x[:32], model.decode(model.encode(x[:32])), run_dir / "reconstructions.png")
        P = min(6, n // 2)
        save_image_grid(model.decode(interpolate(z[:P], z[P:2 * P])), run_dir / "interpolations.png", nrow=10)
        save_image_grid(model.sample(64, generator=torch.Generator().manual_seed(seed)), run_dir / "samples.png")


# ------------------------------------------------------------------------------------------- train
def _metrics(model: Autoencoder, batch: dict) -> dict:
    err = model.reconstruction_error(batch["x"])
    return {"loss": err.mean()}


def train(config: AutoencoderConfig, run: Run | None = None) -> dict:
    run = Run.start("autoencoder", config, run)
    x, _ = load_data(config, "train")
    x = _subset(x, None, config.train_subset)[0]
    xv, _ = load_data(config, "valid")
    xv = _subset(xv, None, config.val_subset)[0]
    model = build(config, tuple(x.shape[1:]))
    trainer = Trainer(model, config, run)
    data = TensorBatches({"x": x}, config.batch_size, seed=config.seed)
    if run.device.type == "cuda":
        data.to(run.device)

    def val_fn() -> dict:
        m = evaluate_in_batches(lambda b: _metrics(model, b), {"x": xv}, device=run.device)
        return {"val/loss": m["loss"]}

    fit = trainer.fit(model.loss, data, val_fn=val_fn, monitor="val/loss", mode="min")
    out = {"run_dir": str(run.dir), "step": fit.step, "best_val_loss": fit.best_value}
    if run.dist.is_main:
        load_weights(model, run.dir, "best")
        model.fit_latent(x.to(run.device)[:10000])
        trainer.state.save(run, tag="best")     # the fitted latent Gaussian travels with the best weights
        xt, yt = load_data(config, "test")
        tm = evaluate_in_batches(lambda b: _metrics(model, b), {"x": xt}, device=run.device)
        write_figures(model.cpu(), xt, yt, run.dir, config.seed)
        out["test_loss"] = tm["loss"]
        run.finish(out, step=fit.step, metrics={"test/recon_loss": tm["loss"]})
    out["model"] = model
    return out


# -------------------------------------------------------------------------------------- eval / sample
def load_model(run_dir: str | Path, config: AutoencoderConfig | None = None, tag: str = "best") -> Autoencoder:
    config = config or config_of(run_dir, "autoencoder")
    x, _ = load_data(config, "test")
    return load_weights(build(config, tuple(x.shape[1:])), run_dir, tag)


def pca_principal_angles(decoder_weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians) between span(W_d) [D, k] and the top-k principal directions of x [N, D].

    cos(theta_i) are the singular values of Q_a^T Q_b with orthonormal bases Q_a, Q_b (Bjorck & Golub 1973).
    """
    X = x.flatten(1).double()
    k = decoder_weight.shape[1]
    _, _, Vh = torch.linalg.svd(X - X.mean(0), full_matrices=False)
    Qa, _ = torch.linalg.qr(decoder_weight.double())
    cos = torch.linalg.svdvals(Qa.T @ Vh[:k].T).clamp(-1, 1)
    return torch.arccos(cos)


@dataclasses.dataclass
class AutoencoderEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on an autoencoder run."""

    split: str = option("test", "which split to score", choices=("test", "valid", "train"))


def evaluate(run_dir: str | Path, options: AutoencoderEvalOptions | None = None) -> dict:
    """Reconstruction error on a split; for the linear kind also the largest principal angle to PCA."""
    options = options or AutoencoderEvalOptions()
    config = config_of(run_dir, "autoencoder")
    model = load_model(run_dir, config)
    x, _ = load_data(config, options.split)
    m = evaluate_in_batches(lambda b: _metrics(model, b), {"x": x})
    out = {f"{options.split}/recon_loss": m["loss"], "n": len(x)}
    if config.kind == "linear":
        xtr, _ = load_data(config, "train")
        xtr = _subset(xtr, None, config.train_subset)[0]
        ang = pca_principal_angles(model.decoder[0].weight.detach(), xtr)
        out["pca/max_principal_angle_deg"] = float(ang.max().rad2deg())
    return out


def sample(run_dir: str | Path, n: int = 64, out: str | Path | None = None,
           options: SampleOptions | None = None) -> Path:
    """Decode n latent points drawn from the Gaussian fitted to the training codes; a PNG grid."""
    options = options or SampleOptions()
    model = load_model(run_dir)
    x = model.sample(n, generator=torch.Generator().manual_seed(options.seed))
    out = Path(out) if out else Path(run_dir) / "samples.png"
    return save_image_grid(x, out)


register("autoencoder", family="generative", config=AutoencoderConfig,
         description="autoencoder: linear (= PCA subspace), MLP, convolutional, denoising; 2-D latent scatter",
         evaluate=evaluate, sample=sample, load=load_model, eval_options=AutoencoderEvalOptions,
         tiny={"dataset": "digits", "kind": "mlp", "hidden": 16, "max_steps": 8, "train_subset": 256,
               "val_subset": 64, "batch_size": 32, "checkpoint_every": 4})(train)
