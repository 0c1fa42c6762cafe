"""Variational autoencoders: ``vae``, ``beta-vae`` and ``cvae`` (conditional).

Model (Kingma & Welling 2014): p(z) = N(0, I), decoder p_theta(x | z) (Bernoulli logits, or a Gaussian with a
learned per-pixel sigma), encoder q_phi(z | x) = N(mu(x), diag sigma^2(x)).

- ELBO: log p(x) >= E_q[log p(x | z)] - KL(q(z | x) || p(z))                          (Kingma & Welling, eq. 3)
- reparameterization: z = mu + sigma * eps, eps ~ N(0, I)                              (eq. 4 / section 2.4)
- closed-form KL to N(0, I): 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)       (appendix B)
- beta-VAE (Higgins et al. 2017): maximize E_q[log p(x | z)] - beta KL; beta > 1 favours disentangled codes,
  shown by latent traversals (decode z with one coordinate swept over [-3, 3], the others fixed).
- CVAE (Sohn et al. 2015): q(z | x, y), p(x | z, y) with the label y as a one-hot input to both; sampling a
  chosen digit is p(x | z, y = 7) with z ~ p(z).
- IWAE bound (Burda et al. 2016, eq. 8): log p(x) ~ log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q; it is
  tighter than the ELBO and tends to log p(x) as k grows. Computed k in chunks by
  :func:`mlcanon.metrics.likelihood.iwae_log_prob` (chunked running logsumexp in float64).

Losses are per-example sums over pixels (nats), averaged over the batch. ``mlcanon eval RUN_DIR --iwae-k 5000``
reports the test ELBO and the IWAE NLL in nats (on binarized MNIST: the standard figure; on grey images with
the Bernoulli decoder the "likelihood" is of the grey levels as probabilities, and with ``--binarize dynamic``
test images are binarized with a fixed seed).
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
from mlcanon.devices import resolve_device
from mlcanon.errors import UserError
from mlcanon.generative.autoencoder import (
    IMAGE_DATASETS,
    Decoder,
    Encoder,
    interpolate,
    save_latent_scatter,
    save_reconstructions,
)
from mlcanon.metrics.likelihood import iwae_log_prob
from mlcanon.registry import EvalOptions, SampleOptions, algorithm_of_run, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer, evaluate_in_batches

LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------ the maths
def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) per example [B] (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def diag_gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag e^logvar) summed over the last axis: -1/2 sum (log 2 pi + logvar + (z-mu)^2 e^-logvar)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample whose gradient flows to mu and sigma (K&W 2014, 2.4)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device) if generator is not None \
        else torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


# -------------------------------------------------------------------------------------------- model
class VAE(nn.Module):
    """A (conditional) VAE on images [B, C, H, W] with an MLP or conv encoder/decoder.

    ``decoder="bernoulli"``: log p(x | z) = sum_i x_i log s_i + (1 - x_i) log(1 - s_i), s = sigmoid(logits).
    ``decoder="gaussian"``: log p(x | z) = sum_i log N(x_i; m_i, sigma_i^2) with a learned per-pixel log sigma.
    ``num_classes > 0`` makes it a CVAE: every method takes the labels ``y``.
    """

    def __init__(self, input_shape: tuple[int, ...], latent: int = 32, *, arch: str = "mlp", hidden: int = 512,
                 channels: int = 32, decoder: str = "bernoulli", beta: float = 1.0, num_classes: int = 0):
        super().__init__()
        if decoder not in ("bernoulli", "gaussian"):
            raise ValueError(f"decoder must be bernoulli or gaussian, got {decoder!r}")
        self.input_shape, self.latent, self.likelihood = tuple(input_shape), latent, decoder
        self.beta, self.num_classes = float(beta), num_classes
        self.encoder = Encoder(input_shape, 2 * latent, arch=arch, hidden=hidden, channels=channels,
                               n_cond=num_classes)
        self.decoder = Decoder(latent, input_shape, arch=arch, hidden=hidden, channels=channels, n_cond=num_classes)
        if decoder == "gaussian":
            self.log_sigma = nn.Parameter(torch.full(self.input_shape, -1.0))

    # -- pieces ----------------------------------------------------------------------------------
    def _cond(self, y: torch.Tensor | None, B: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError("a conditional VAE needs the labels y")
        if y.shape != (B,):
            raise ValueError(f"labels must be [B] = [{B}], got {tuple(y.shape)}")
        return F.one_hot(y.long(), self.num_classes).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | x, y), each [B, latent]."""
        h = self.encoder(x, self._cond(y, x.shape[0]))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per example: x [..., C, H, W], decoder output ``out`` of the same shape."""
        out, x = torch.broadcast_tensors(out, x)
        if self.likelihood == "bernoulli":   # -BCE with logits = sum x log s + (1-x) log(1-s)
            ll = -F.binary_cross_entropy_with_logits(out, x, reduction="none")
        else:                                # log N(x; m, sigma^2)
            ls = self.log_sigma.clamp(-7.0, 2.0)
            ll = -0.5 * (LOG_2PI + 2 * ls + (x - out).pow(2) * torch.exp(-2 * ls))
        return ll.flatten(-len(self.input_shape)).sum(-1)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's mean image E[x | z, y] (sigmoid of the logits, or the Gaussian mean)."""
        out = self.decoder(z, self._cond(y, z.shape[0]))
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    # -- objectives --------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_q log p(x | z) estimated with one reparameterized sample, KL(q || p) in closed form), each [B]."""
        B = x.shape[0]
        mu, logvar = self.encode(x, y)
        z = reparameterize(mu, logvar)                                  # z = mu + sigma eps
        rec = self.log_likelihood(x, self.decoder(z, self._cond(y, B)))
        kl = gaussian_kl(mu, logvar)
        assert rec.shape == (B,) and kl.shape == (B,), (rec.shape, kl.shape)
        return rec, kl

    def elbo(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """[B] single-sample ELBO = log p(x | z) - KL(q(z | x) || p(z)) in nats (beta = 1: the true bound)."""
        rec, kl = self.elbo_terms(x, y)
        return rec - kl

    def loss(self, batch: dict, kl_weight: float = 1.0) -> dict:
        """-(E_q log p(x|z) - w beta KL), averaged over the batch; logs the ELBO, reconstruction and KL terms.

        ``kl_weight`` w in [0, 1] is the KL warm-up factor (Sonderby et al. 2016, sec. 2.3: w rises linearly from 0
        to 1 over the first epochs, so that latent units become active before the KL term can switch them off)."""
        rec, kl = self.elbo_terms(batch["x"], batch.get("y"))
        return {"loss": -(rec - kl_weight * self.beta * kl).mean(), "elbo": (rec - kl).mean(), "recon": -rec.mean(),
                "kl": kl.mean()}

    def log_weights(self, x: torch.Tensor, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """[n, B] log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x), z_i ~ q(z | x) (Burda et al. 2016)."""
        B = x.shape[0]
        mu, logvar = self.encode(x, y)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(n, *mu.shape, device=mu.device, dtype=mu.dtype)  # [n, B, L]
        c = self._cond(y, B)
        out = self.decoder(z.reshape(n * B, -1), None if c is None else c.repeat(n, 1))
        log_px = self.log_likelihood(x, out.reshape(n, B, *self.input_shape))
        log_pz = diag_gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        log_qz = diag_gaussian_log_prob(z, mu, logvar)
        return log_px + log_pz - log_qz

    def log_prob_iwae(self, x: torch.Tensor, k: int, y: torch.Tensor | None = None, chunk: int = 100) -> torch.Tensor:
        """[B] the k-sample IWAE estimate of log p(x) (a lower bound in expectation), k drawn ``chunk`` at a time."""
        return iwae_log_prob(lambda xx, n: self.log_weights(xx, n, y), x, k, chunk=chunk)

    @torch.no_grad()
    def sample(self, n: int, label: int | torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n images E[x | z, y] with z ~ N(0, temperature^2 I); a CVAE takes ``label`` (an int or [n] labels)."""
        z = temperature * torch.randn(n, self.latent, generator=generator)
        p = next(self.parameters())
        y = None
        if self.num_classes:
            if label is None:
                raise ValueError("a conditional VAE samples a chosen class: give label=")
            y = torch.full((n,), int(label)) if not isinstance(label, torch.Tensor) else label
            y = y.to(p.device)
        return self.decode(z.to(p), y)


# ------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class VAEConfig(TrainConfig):
    """Train a VAE on images; every field is a CLI flag (``--latent 32 --arch conv``)."""

    dataset: str = option("binarized-mnist", "data set: binarized-mnist, mnist, fashion-mnist, digits",
                          choices=IMAGE_DATASETS)
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    arch: str = option("mlp", "encoder/decoder: mlp (two hidden layers) or conv (strided convs)",
                       choices=("mlp", "conv"))
    decoder: str = option("bernoulli", "p(x|z): bernoulli (binary or [0, 1] images) or gaussian (learned sigma)",
                          choices=("bernoulli", "gaussian"))
    latent: int = option(32, "latent dimensions", min=1)
    hidden: int = option(512, "hidden units of the MLP layers", min=1)
    channels: int = option(32, "channels of the first conv layer (--arch conv)", min=1)
    beta: float = option(1.0, "weight of the KL term (beta-VAE: > 1)", min=0.0)
    kl_warmup_epochs: float = option(0.0, "KL warm-up: the KL weight rises linearly from 0 to --beta over this many "
                                          "epochs (Sonderby et al. 2016; keeps more latent units active; 0: off)",
                                     min=0.0)
    binarize: str = option("none", "dynamic: binarize grey training images afresh each step (x ~ Bernoulli(x)); "
                                   "test images once with a fixed seed", choices=("none", "dynamic"))
    train_subset: int = option(0, "use only the first N training examples (0: all)", min=0)
    val_subset: int = option(2000, "validate on the first N validation examples (0: all)", min=0)

    @property
    def conditional(self) -> bool:
        return False


@dataclasses.dataclass
class BetaVAEConfig(VAEConfig):
    """beta-VAE: a VAE whose KL term is weighted by beta > 1 (Higgins et al. 2017); latent traversals written."""

    dataset: str = option("mnist", "data set: mnist, fashion-mnist, binarized-mnist, digits", choices=IMAGE_DATASETS)
    beta: float = option(4.0, "weight of the KL term (> 1 favours disentangled codes)", min=0.0)
    latent: int = option(10, "latent dimensions", min=1)


@dataclasses.dataclass
class CVAEConfig(VAEConfig):
    """Conditional VAE (Sohn et al. 2015): encoder and decoder see the one-hot label; sample a chosen digit."""

    dataset: str = option("mnist", "labelled data set: mnist, fashion-mnist, digits",
                          choices=("mnist", "fashion-mnist", "digits"))
    latent: int = option(8, "latent dimensions (8: the decoder must read the digit from the label, so class "
                            "samples keep their class: 96.2% label accuracy at 20 epochs on MNIST, 16: 89.0% at 10)",
                         min=1)
    binarize: str = option("dynamic", "dynamic: binarize grey training images afresh each step (x ~ Bernoulli(x)); "
                                      "test images once with a fixed seed", choices=("none", "dynamic"))

    @property
    def conditional(self) -> bool:
        return True


NAMES = {"vae": VAEConfig, "beta-vae": BetaVAEConfig, "cvae": CVAEConfig}


def build(config: VAEConfig, input_shape, num_classes: int = 0) -> VAE:
    return VAE(input_shape, config.latent, arch=config.arch, hidden=config.hidden, channels=config.channels,
               decoder=config.decoder, beta=config.beta, num_classes=num_classes if config.conditional else 0)


def load_split(config: VAEConfig, split: str, seed: int = 0) -> dict:
    """{"x": images (binarized once with ``seed`` for non-training splits under --binarize dynamic), "y"}."""
    from mlcanon.data import load
    ds = load(config.dataset, split, data_dir=config.data_dir)
    out = {"x": ds.x}
    if config.conditional:
        if getattr(ds, "targets", None) is None:
            raise UserError(f"--dataset {config.dataset} has no labels; the conditional VAE needs them")
        out["y"] = ds.targets
    if config.binarize == "dynamic" and split != "train":
        out["x"] = torch.bernoulli(ds.x, generator=torch.Generator().manual_seed(10_007 + seed))
    return out


def _labels(config: VAEConfig, split: str) -> torch.Tensor | None:
    from mlcanon.data import load
    return getattr(load(config.dataset, split, data_dir=config.data_dir), "targets", None)


def _limit(data: dict, n: int) -> dict:
    return {k: v[:n] for k, v in data.items()} if n else data


# ------------------------------------------------------------------------------------------- figures
def write_figures(model: VAE, data: dict, run_dir: Path, seed: int, traversals: bool) -> None:
    """samples.png, reconstructions.png, latent.png, interpolations.png (+ traversals.png, per-class samples)."""
    g = torch.Generator().manual_seed(seed)
    x, y = data["x"], data.get("y")
    with torch.no_grad():
        n = min(len(x), 2000)
        mu = torch.cat([model.encode(x[i:i + 500], None if y is None else y[i:i + 500])[0] for i in range(0, n, 500)])
        labels = data["labels"][:n] if "labels" in data else (y[:n] if y is not None else None)
        save_latent_scatter(mu, labels, run_dir / "latent.png", "VAE posterior means")
        yy = None if y is None else y[:32]
        save_reconstructions(x[:32], model.decode(mu[:32], yy), run_dir / "reconstructions.png")
        P = min(6, n // 2)
        zi = interpolate(mu[:P], mu[P:2 * P])
        yi = None if y is None else y[:P].repeat_interleave(10)
        save_image_grid(model.decode(zi, yi), run_dir / "interpolations.png", nrow=10)
        if model.num_classes:   # row c: 10 samples of class c
            lab = torch.arange(model.num_classes).repeat_interleave(10)
            z = torch.randn(len(lab), model.latent, generator=g)
            save_image_grid(model.decode(z, lab), run_dir / "samples.png", nrow=10)
        else:
            save_image_grid(model.sample(64, generator=g), run_dir / "samples.png")
        if traversals:           # row j: coordinate j swept over [-3, 3], the others at a posterior mean
            L = min(model.latent, 10)
            base = mu[0].repeat(L * 9, 1)
            sweep = torch.linspace(-3, 3, 9)
            for j in range(L):
                base[j * 9:(j + 1) * 9, j] = sweep
            yt = None if y is None else y[0].repeat(L * 9)
            save_image_grid(model.decode(base, yt), run_dir / "traversals.png", nrow=9)


# ------------------------------------------------------------------------------------------- train

def make_train(name: str):
    def train(config: VAEConfig, run: Run | None = None) -> dict:
        run = Run.start(name, config, run)
        data = _limit(load_split(config, "train"), config.train_subset)
        val = _limit(load_split(config, "valid", config.seed), config.val_subset)
        x = data["x"]
        if config.dataset == "binarized-mnist" and config.binarize == "dynamic":
            raise UserError("binarized-mnist is already binary: drop --binarize dynamic")
        model = build(config, tuple(x.shape[1:]), 10)
        trainer = Trainer(model, config, run)
        transform = None
        if config.binarize == "dynamic":
            def transform(batch: dict, g: torch.Generator) -> dict:   # x ~ Bernoulli(grey level), fresh per step
                return {**batch, "x": torch.bernoulli(batch["x"], generator=g)}
        batches = TensorBatches(data, config.batch_size, seed=config.seed, transform=transform)
        if run.device.type == "cuda" and transform is None:
            batches.to(run.device)

        warmup_steps = config.kl_warmup_epochs * batches.steps_per_epoch

        def step_fn(batch: dict) -> dict:      # KL warm-up: w = min(1, step / warm-up steps), from the saved step
            w = min(1.0, trainer.state.step / warmup_steps) if warmup_steps else 1.0
            out = model.loss(batch, kl_weight=w)
            return {**out, "kl_weight": w} if warmup_steps else out

        def val_fn() -> dict:                  # the full objective (w = 1), so best-val selection is comparable
            m = evaluate_in_batches(model.loss, val, device=run.device, precision=config.precision)
            return {"val/loss": m["loss"], "val/elbo": m["elbo"]}

        fit = trainer.fit(step_fn, batches, val_fn=val_fn, monitor="val/loss", mode="min",
                          postfix_keys=("train/loss", "train/kl"))
        out = {"run_dir": str(run.dir), "step": fit.step, "best_val_loss": fit.best_value}
        if run.dist.is_main:
            load_weights(model, run.dir, "best")
            test = load_split(config, "test", config.seed)
            torch.manual_seed(config.seed)
            tm = evaluate_in_batches(model.loss, test, device=run.device)
            labels = _labels(config, "test")
            fig_data = test if labels is None else {**test, "labels": labels}   # colours of the latent scatter
            write_figures(model.cpu(), fig_data, run.dir, config.seed, traversals=True)
            out["test_elbo"] = tm["elbo"]
            run.finish(out, step=fit.step, metrics={"test/elbo": tm["elbo"]})
        out["model"] = model
        return out
    train.__name__ = train.__qualname__ = "train_" + name.replace("-", "_")
    train.__doc__ = f"Train a {name} (see mlcanon.generative.vae); returns the result dict."
    return train


# -------------------------------------------------------------------------------------- eval / sample
def _config(run_dir) -> tuple[str, VAEConfig]:
    algo, config = algorithm_of_run(run_dir)
    if algo.name not in NAMES:
        raise UserError(f"{run_dir} is a {algo.name} run, not a VAE run")
    return algo.name, config


def load_model(run_dir: str | Path, config: VAEConfig | None = None, tag: str = "best") -> VAE:
    from mlcanon.data import load
    config = config or _config(run_dir)[1]
    ds = load(config.dataset, "test", data_dir=config.data_dir)
    return load_weights(build(config, tuple(ds.x.shape[1:]), 10), run_dir, tag)


@dataclasses.dataclass
class VAEEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a VAE run."""

    split: str = option("test", "which split to score", choices=("test", "valid"))
    dataset: str = option("", "score this data set's split instead of the run's (same image shape), e.g. "
                              "binarized-mnist (the fixed binarization) for a run trained on mnist with "
                              "--binarize dynamic; empty: the run's own", choices=("",) + IMAGE_DATASETS)
    iwae_k: int = option(1000, "importance samples of the IWAE bound (5000 for the published figure)", min=1)
    num_examples: int = option(0, "score only the first N examples (0: all)", min=0)
    batch_size: int = option(100, "examples per IWAE batch", min=1)
    chunk: int = option(100, "importance samples drawn at a time (memory: chunk x batch decoder passes)", min=1)
    label_samples: int = option(1000, "CVAE: samples per class scored by the fixed MNIST classifier (0: off)", min=0)
    device: str = option("auto", "where to evaluate: cpu, cuda, or auto", choices=("auto", "cpu", "cuda"))


def evaluate(run_dir: str | Path, options: VAEEvalOptions | None = None) -> dict:
    """Test ELBO and IWAE NLL (nats per example); CVAE on MNIST: label accuracy of its class samples."""
    options = options or VAEEvalOptions()
    name, config = _config(run_dir)
    device = resolve_device(options.device)
    model = load_model(run_dir, config).to(device)
    # another data set of the same shape (under --binarize dynamic a binary set stays as it is: Bernoulli(0 or 1))
    data_config = dataclasses.replace(config, dataset=options.dataset or config.dataset)
    data = _limit(load_split(data_config, options.split, config.seed), options.num_examples)
    if tuple(data["x"].shape[1:]) != tuple(model.input_shape):
        raise UserError(f"--dataset {options.dataset}: its images are {tuple(data['x'].shape[1:])}, the run's model "
                        f"takes {tuple(model.input_shape)}; choose a data set of the run's shape")
    torch.manual_seed(options.seed)
    elbo, nll = [], []
    with torch.no_grad():
        for i in range(0, len(data["x"]), options.batch_size):
            b = {k: v[i:i + options.batch_size].to(device) for k, v in data.items()}
            elbo.append(model.elbo(b["x"], b.get("y")).double())
            nll.append(-model.log_prob_iwae(b["x"], options.iwae_k, b.get("y"), chunk=options.chunk).double())
    elbo_t, nll_t = torch.cat(elbo), torch.cat(nll)
    s = options.split
    out = {f"{s}/elbo": float(elbo_t.mean()), "eval/nll_nats": float(nll_t.mean()),
           "eval/nll_nats_sem": float(nll_t.std() / math.sqrt(len(nll_t))) if len(nll_t) > 1 else 0.0,
           "iwae_k": options.iwae_k, "n": len(nll_t), "dataset": data_config.dataset}
    if name == "cvae" and options.label_samples and tuple(model.input_shape) == (1, 28, 28) \
            and config.dataset == "mnist":
        from mlcanon.metrics.mnist_features import label_accuracy  # lazy: loads the fixed feature network
        g = torch.Generator().manual_seed(options.seed)
        lab = torch.arange(10).repeat_interleave(options.label_samples)
        x = torch.cat([model.sample(len(lab[i:i + 1000]), label=lab[i:i + 1000], generator=g).cpu()
                       for i in range(0, len(lab), 1000)])
        out["eval/label_accuracy"] = float(label_accuracy(x, lab))
    return out


@dataclasses.dataclass
class VAESampleOptions(SampleOptions):
    """Options of `mlcanon sample` on a VAE run."""

    temperature: float = option(1.0, "z ~ N(0, temperature^2 I)", min=0.0)
    label: int = option(-1, "CVAE: the class to sample (-1: n samples of each class in rows)", min=-1)


def sample(run_dir: str | Path, n: int = 64, out: str | Path | None = None,
           options: VAESampleOptions | None = None) -> Path:
    """A PNG grid of n samples (CVAE: of --label, or rows of every class)."""
    options = options or VAESampleOptions()
    model = load_model(run_dir)
    g = torch.Generator().manual_seed(options.seed)
    out = Path(out) if out else Path(run_dir) / "samples.png"
    if model.num_classes and options.label < 0:
        per = max(1, math.ceil(n / model.num_classes))
        lab = torch.arange(model.num_classes).repeat_interleave(per)[:max(n, model.num_classes)]
        return save_image_grid(model.sample(len(lab), label=lab, temperature=options.temperature, generator=g), out,
                               nrow=per)
    if options.label >= 0 and not model.num_classes:
        raise UserError("--label needs a conditional model (cvae)")
    label = options.label if model.num_classes else None
    return save_image_grid(model.sample(n, label=label, temperature=options.temperature, generator=g), out)


_TINY = {"dataset": "digits", "hidden": 16, "latent": 4, "max_steps": 8, "train_subset": 256, "val_subset": 64,
         "batch_size": 32, "checkpoint_every": 4}
_DESCRIPTIONS = {
    "vae": "variational autoencoder (MLP/conv, Bernoulli/Gaussian decoder); ELBO and IWAE NLL in nats",
    "beta-vae": "beta-VAE (KL weighted by beta > 1) with latent traversals",
    "cvae": "conditional VAE: encoder and decoder see the label; sample a chosen digit",
}
for _name, _cls in NAMES.items():
    register(_name, family="generative", config=_cls, description=_DESCRIPTIONS[_name], evaluate=evaluate,
             sample=sample, load=load_model, eval_options=VAEEvalOptions, sample_options=VAESampleOptions,
             tiny=_TINY)(make_train(_name))
