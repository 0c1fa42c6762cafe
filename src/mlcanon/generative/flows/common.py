"""What every flow model shares: its config fields, data (toy 2-D points or dequantized 8-bit images), the
maximum-likelihood training loop, evaluation (test NLL in nats, bits/dim, KL to a closed-form truth), sampling
and the run folder's pictures. Each model file (planar.py, nice.py, realnvp.py, glow.py, maf.py, iaf.py) only
builds its :class:`~mlcanon.generative.flows.flow.Flow` and calls :func:`train_flow`.

Image data: x in {0, 1/255, ..., 1} is dequantized to y = (255 x + u) / 256, u ~ U[0, 1)^D (a fresh u per
training step, a fixed seeded u for validation and test), then the flow's first layer is the logit
pre-processing z = logit(alpha + (1 - 2 alpha) y) (RealNVP 4.1), whose log-det is part of log p(y). Reported:

    bits/dim = (E[-log p(y)] + D ln 256) / (D ln 2)      (uniform dequantization; Theis et al. 2016)

an upper bound on the discrete data's bits/dim. Toy sets with a closed-form density (8gaussians, checkerboard,
rings) also report KL(p_true || p_model) = E_{x ~ p_true}[log p_true(x) - log p_model(x)], estimated on the
test points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from mlcanon.config import option
from mlcanon.data import load
from mlcanon.data.images import save_image_grid
from mlcanon.data.toy2d import CLOSED_FORM
from mlcanon.errors import UserError
from mlcanon.generative.flows.flow import Flow
from mlcanon.generative.flows.layers import dequantize
from mlcanon.metrics.likelihood import bits_per_dim
from mlcanon.registry import EvalOptions, SampleOptions, algorithm_of_run
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer, evaluate_in_batches, generator

IMAGE_SETS = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
BITS = 8

#: name -> build(config, data_shape, image) -> Flow; filled by each model file, used to reload runs
BUILDERS: dict[str, Callable[..., Flow]] = {}


@dataclasses.dataclass
class FlowConfig(TrainConfig):
    """Fields every flow shares (data, pre-processing, evaluation subset)."""

    dataset: str = option("toy2d:moons", "data set: toy2d:<moons|8gaussians|checkerboard|swissroll|rings>, "
                                         "mnist, fashion-mnist, cifar10")
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    toy_points: int = option(10000, "points per split of a toy2d set", min=100)
    val_fraction: float = option(0.1, "fraction of the image train set held out for validation", min=0.01,
                                 max=0.5)
    train_subset: int = option(0, "use only the first N training examples (0: all)", min=0)
    eval_subset: int = option(0, "validate and test on the first N examples only (0: all)", min=0)
    alpha: float = option(0.05, "images: logit pre-processing z = logit(alpha + (1 - 2 alpha) y)", min=0.0,
                          max=0.49)

    @property
    def is_image(self) -> bool:
        return self.dataset in IMAGE_SETS

    def check(self) -> None:
        super().check()
        if not (self.is_image or self.dataset.startswith("toy2d:")):
            raise UserError(f"--dataset {self.dataset}: flows train on toy2d:<name> or 8-bit images "
                            f"({', '.join(IMAGE_SETS)})")


def data_shape(config: FlowConfig) -> tuple[int, ...]:
    return IMAGE_SETS[config.dataset] if config.is_image else (2,)


# ------------------------------------------------------------------------------------------------ data
def load_split(config: FlowConfig, split: str, subset: int = 0):
    """The split's data set (its ``.x``: toy points [N, 2] or images [N, C, H, W] in [0, 1]). Toy points are
    the fixed draw of ``mlcanon.data.toy2d`` (data seed 0, whatever the training seed)."""
    if config.is_image:
        ds = load(config.dataset, split, data_dir=config.data_dir, val_fraction=config.val_fraction)
    else:
        ds = load(config.dataset, split, n=config.toy_points)
    if subset:
        ds.x = ds.x[:subset]
    return ds


def eval_tensor(config: FlowConfig, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Validation / test inputs: images dequantized once with a seeded u (so the figure repeats)."""
    return dequantize(x, generator(seed, 2718), BITS) if config.is_image else x


@torch.no_grad()
def flow_metrics(model: Flow, config: FlowConfig, ds, seed: int, prefix: str, device="cpu") -> dict[str, float]:
    """{prefix/nll_nats, prefix/bits_per_dim (images), prefix/kl_to_truth_nats (closed-form toys)}."""
    x = eval_tensor(config, ds.x, seed)
    was = model.training
    model.eval()
    m = evaluate_in_batches(lambda b: {"nll": -model.log_prob(b["x"]).mean()}, {"x": x}, batch_size=500, device=device)
    model.train(was)
    out = {f"{prefix}/nll_nats": m["nll"]}
    if config.is_image:
        out[f"{prefix}/bits_per_dim"] = bits_per_dim(m["nll"], model.num_dims, BITS)
    elif ds.toy in CLOSED_FORM:   # KL(p || q) = E_p[log p - log q] = E_p[log p] + NLL, on points drawn from p
        out[f"{prefix}/kl_to_truth_nats"] = float(ds.log_prob(x.double()).mean()) + m["nll"]
    return out


def _batch_transform(config: FlowConfig):
    if not config.is_image:
        return None

    def transform(batch: dict, g: torch.Generator) -> dict:
        return {"x": dequantize(batch["x"], g, BITS)}   # a fresh u ~ U[0, 1)^D for every step
    return transform


# ----------------------------------------------------------------------------------------------- train
def train_flow(name: str, config: FlowConfig, build: Callable[..., Flow], run: Run | None = None) -> dict:
    """Maximum likelihood: minimize E[-log p(x)] (nats); keep the best model by validation NLL; report test
    figures and draw the run folder's pictures. Returns the result dict (with the model under "model")."""
    run = Run.start(name, config, run)
    train_ds = load_split(config, "train", config.train_subset)
    val_ds = load_split(config, "valid", config.eval_subset)
    model = build(config, data_shape(config), config.is_image)
    trainer = Trainer(model, config, run)
    data = TensorBatches({"x": train_ds.x}, config.batch_size, seed=config.seed, transform=_batch_transform(config))
    val_x = eval_tensor(config, val_ds.x, config.seed)

    def val_fn() -> dict:
        m = evaluate_in_batches(lambda b: model.loss(b), {"x": val_x}, batch_size=500, device=run.device)
        out = {"val/nll_nats": m["nll_nats"]}
        if "bits_per_dim" in m:
            out["val/bits_per_dim"] = m["bits_per_dim"]
        return out

    fit = trainer.fit(model.loss, data, val_fn=val_fn, monitor="val/nll_nats", mode="min",
                      postfix_keys=("train/loss", "train/bits_per_dim"))
    out = {"run_dir": str(run.dir), "step": fit.step, "epochs": fit.epoch, "best_val_nll_nats": fit.best_value}
    if run.dist.is_main:
        load_weights(model, run.dir, "best")
        test_ds = load_split(config, "test", config.eval_subset)
        metrics = flow_metrics(model, config, test_ds, config.seed, "test", run.device)
        out.update({k.replace("/", "_"): v for k, v in metrics.items()})
        if config.is_image:
            out["dequantization"] = dequantization_note(model.num_dims)
        draw(model, config, test_ds, run.dir, seed=config.seed)
        run.finish(out, step=fit.step, metrics=metrics)
    out["model"] = model
    return out


def dequantization_note(D: int) -> str:
    return (f"uniform dequantization y = (255 x + u) / 256, u ~ U[0,1)^D; bits/dim = (NLL_y + D ln 256) / "
            f"(D ln 2) with D = {D} (an upper bound on the discrete bits/dim)")


# ------------------------------------------------------------------------------------------- pictures
def draw(model: Flow, config: FlowConfig, ds, out_dir: Path, seed: int = 0, n: int = 64) -> None:
    """Toys: ``density.png`` (model density heat-map beside the truth where known) and ``samples.png``;
    images: ``samples.png`` (a grid at temperature 1)."""
    g = generator(seed, 31337)
    if config.is_image:
        save_image_grid(model.sample(n, generator=g).clamp(0, 1).cpu(), out_dir / "samples.png")
        return
    save_points(model.sample(1000, generator=g).cpu(), ds.x[:1000], out_dir / "samples.png")
    save_density(model, ds, out_dir / "density.png")


def _limits(x: torch.Tensor) -> float:
    return float(x.abs().max()) * 1.1


def save_points(samples: torch.Tensor, data: torch.Tensor, path: Path) -> Path:
    """Scatter of model samples beside the data points."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    lim = _limits(data)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, pts, title in zip(axes, (data, samples), ("data", "flow samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=title, aspect="equal")
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


@torch.no_grad()
def density_grid(model: Flow, lim: float, n: int = 200) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(grid points [n*n, 2], model log-density there, cell area) on [-lim, lim]^2."""
    t = torch.linspace(-lim, lim, n, dtype=model.base_loc.dtype)
    xx, yy = torch.meshgrid(t, t, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    was = model.training
    model.eval()
    lp = torch.cat([model.log_prob(c.to(model.base_loc.device)).cpu() for c in pts.split(10000)])
    model.train(was)
    return pts, lp, float((t[1] - t[0]) ** 2)


def save_density(model: Flow, ds, path: Path, n: int = 120) -> Path:
    """Heat-map of the model density (and of the true one where closed-form) on a grid around the data."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    lim = _limits(ds.x)
    pts, lp, area = density_grid(model, lim, n)
    panels = [(lp.exp().view(n, n), f"flow density (mass on grid {float(lp.exp().sum()) * area:.3f})")]
    if ds.toy in CLOSED_FORM:
        panels.insert(0, (ds.log_prob(pts.double()).exp().view(n, n), "true density"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (img, title) in zip(axes[0], panels):
        ax.imshow(img.numpy(), origin="lower", extent=(-lim, lim, -lim, lim), cmap="magma")
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


@torch.no_grad()
def save_interpolation(model: Flow, x_a: torch.Tensor, x_b: torch.Tensor, path: Path, steps: int = 10) -> Path:
    """Decode z_t = (1 - t) f(x_a) + t f(x_b) for t in [0, 1] (Glow section 5, figure 5): one row per pair.

    ``x_a``, ``x_b``: [P, C, H, W] dequantized images (pairs)."""
    was = model.training
    model.eval()
    za, zb = model(x_a)[0], model(x_b)[0]
    t = torch.linspace(0, 1, steps, dtype=za.dtype, device=za.device)
    z = (1 - t[None, :, None]) * za.flatten(1)[:, None] + t[None, :, None] * zb.flatten(1)[:, None]  # [P, S, D]
    x = model.inverse(z.reshape(-1, *model.z_shape))[0]
    model.train(was)
    return save_image_grid(x.clamp(0, 1).cpu(), path, nrow=steps)


# ------------------------------------------------------------------------------------ eval, sample, load
@dataclasses.dataclass
class FlowEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a flow run (seed: the dequantization noise of images)."""

    split: str = option("test", "which split to score", choices=("test", "valid"))


@dataclasses.dataclass
class FlowSampleOptions(SampleOptions):
    """Options of `mlcanon sample` on a flow run."""

    temperature: float = option(1.0, "sample x = f^-1(T eps), eps ~ N(0, I) (Glow: T < 1 gives cleaner images)",
                                min=0.0)
    interpolate: bool = option(False, "images: also write <out>-interp.png, latent interpolations between "
                                      "pairs of test images")


def eval_device(config: FlowConfig) -> torch.device:
    """Where to evaluate / sample: the GPU for a run configured with cuda or auto when one is visible."""
    return torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")


def load_flow(run_dir: str | Path, config: FlowConfig | None = None, tag: str = "best") -> Flow:
    """The trained flow of a run folder (best weights by validation NLL, else the last), in eval mode."""
    algo, cfg = algorithm_of_run(run_dir)
    if algo.name not in BUILDERS:
        raise UserError(f"{run_dir} is a {algo.name} run, not a flow run")
    config = config or cfg
    model = BUILDERS[algo.name](config, data_shape(config), config.is_image)
    return load_weights(model, run_dir, tag)


def load_model(run_dir: Path, config, tag: str) -> Flow:
    """The registry's ``load`` hook (``mlcanon.load_run``)."""
    return load_flow(run_dir, config, tag)


def evaluate_flow(run_dir: str | Path, options: FlowEvalOptions | None = None) -> dict:
    """Test (or valid) NLL in nats; images also bits/dim (dequantization term stated); closed-form toys the KL
    to the true density."""
    options = options or FlowEvalOptions()
    _, config = algorithm_of_run(run_dir)
    device = eval_device(config)
    model = load_flow(run_dir, config).to(device)
    ds = load_split(config, options.split, config.eval_subset)
    out = flow_metrics(model, config, ds, options.seed, options.split, device)
    out["n"] = len(ds.x)
    if config.is_image:
        out["dequantization"] = dequantization_note(model.num_dims)
    return out


def sample_flow(run_dir: str | Path, n: int = 64, out: str | Path | None = None,
                options: FlowSampleOptions | None = None) -> Path:
    """Images: a grid of n samples; toys: a scatter of n samples beside the test points."""
    options = options or FlowSampleOptions()
    _, config = algorithm_of_run(run_dir)
    device = eval_device(config)
    model = load_flow(run_dir, config).to(device)
    out = Path(out) if out else Path(run_dir) / "samples.png"
    x = model.sample(n, options.temperature, generator=generator(options.seed, 31337)).cpu()
    ds = load_split(config, "test", config.eval_subset or 2000)
    if not config.is_image:
        return save_points(x, ds.x, out)
    save_image_grid(x.clamp(0, 1), out)
    if options.interpolate:
        y = eval_tensor(config, ds.x[:16], options.seed).to(device)
        save_interpolation(model, y[0::2], y[1::2], out.with_name(out.stem + "-interp.png"))
    return out


def toy_mass(model: Flow, lim: float = 8.0, n: int = 400) -> float:
    """Numerical integral of exp(log p) over [-lim, lim]^2 (Riemann sum): ~1 for a normalized 2-D density."""
    _, lp, area = density_grid(model, lim, n)
    return float(lp.exp().sum()) * area


__all__ = ["BUILDERS", "FlowConfig", "FlowEvalOptions", "FlowSampleOptions", "evaluate_flow", "load_model",
           "sample_flow", "train_flow"]
