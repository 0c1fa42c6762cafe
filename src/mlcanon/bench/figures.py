"""The report's figures, written into docs/figures/ by ``mlcanon bench --suite quick --only report-figures``.

1. Learning curves with bands over seeds: tabular Q-learning and SARSA on mlcanon/GridWorld-v0 (20 seeds in one
   array; mean and 95% Student-t band, drawn by ``mlcanon.rl.plots``) and the digits MLP classifier (3 seeds;
   median and interquartile band of each run's metrics.jsonl, final scores summarised by the IQM with a
   stratified bootstrap interval, Agarwal et al. 2021).
2. Sample grids: a small DDPM on digits (8x8) beside real digits, and DDPM / DDIM samples of toy2d:8gaussians.
3. Speed against quality of samplers: DDPM (all T steps) and DDIM at several step counts on the toy model
   (quality: the energy distance to fresh data, Szekely & Rizzo 2013), and MAF against IAF of the same size
   (density evaluation is one pass for MAF and D passes for IAF; sampling the other way round: Papamakarios
   et al. 2017, section 3.3; Kingma et al. 2016).

Every run is small and seeded so the entry takes a few minutes on a 2-core CPU; the figures show trends, not the
converged numbers of the other sections.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from mlcanon.bench import Row, bench
from mlcanon.config import build_config
from mlcanon.data import toy2d
from mlcanon.data.images import make_grid
from mlcanon.generative.diffusion.model import load_diffusion_data
from mlcanon.generative.flows.maf import MAFConfig, build, build_iaf
from mlcanon.metrics.rl import iqm, mean_ci95, stratified_bootstrap_ci
from mlcanon.registry import get
from mlcanon.rl import exploration as ex
from mlcanon.rl import tabular_learning as tl
from mlcanon.rl.envs import mdp_of
from mlcanon.runs import read_metrics

FIG_DIR = Path("docs/figures")
TOY = "toy2d:8gaussians"
DDIM_STEPS = (2, 5, 10, 20, 50, 200)


# ----------------------------------------------------------------------------------------------- plots
def plot_bands(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, xlabel: str = "step", ylabel: str = "",
               band: str = "iqr", smooth: int = 1, ylim: tuple[float, float] | None = None, title: str = "") -> Path:
    """One line and band per label; ``curves`` maps label -> (x [T], Y [N seeds, T]).

    ``band``: "iqr" (median and 25-75% quantiles over seeds) or "ci95" (mean and the 95% Student-t interval of the
    mean, ``mlcanon.metrics.rl.mean_ci95``). ``smooth`` > 1: moving average of that width over each seed first."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, (x, Y) in curves.items():
        Y = np.atleast_2d(np.asarray(Y, dtype=np.float64))
        x = np.asarray(x)
        if smooth > 1:
            ker = np.ones(smooth) / smooth
            Y = np.stack([np.convolve(row, ker, mode="valid") for row in Y])
            x = x[smooth - 1:]
        if band == "iqr":
            lo, mid, hi = np.quantile(Y, [0.25, 0.5, 0.75], axis=0)
        elif band == "ci95":
            mid, half = mean_ci95(Y, axis=0)
            lo, hi = mid - half, mid + half
        else:
            raise ValueError(f"band must be 'iqr' or 'ci95', got {band!r}")
        line, = ax.plot(x, mid, label=f"{name} (n={Y.shape[0]})")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.25)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(title or {"iqr": "median and interquartile band over seeds",
                           "ci95": "mean and 95% interval over seeds"}[band])
    return _save(fig, path)


def plot_speed_quality(points: list[tuple[str, str, float, float]], flows: dict[str, dict[str, float]], path,
                       quality: str = "energy distance to data (lower is better)", flow_dim: int = 0,
                       floor: float | None = None) -> Path:
    """Left: one point per sampler setting, (seconds, quality), ``points`` = (family, label, seconds, quality);
    right: MAF / IAF seconds for log_prob and for sampling (``flows`` = name -> {"log_prob": s, "sample": s}).
    ``floor``: the quality of a second data sample (the noise floor of the finite-sample estimate), a dashed line."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    for i, fam in enumerate(dict.fromkeys(p[0] for p in points)):
        pts = sorted((p for p in points if p[0] == fam), key=lambda p: p[2])
        xs, ys = [p[2] for p in pts], [p[3] for p in pts]
        ax.plot(xs, ys, "o-" if len(pts) > 1 else "s", c=f"C{i}", label=fam, ms=7)
        for p in pts:
            ax.annotate(p[1], (p[2], p[3]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if floor is not None:
        ax.axhline(floor, ls="--", c="0.4", lw=1, label="a second data sample (noise floor)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sampling time (s, log)")
    ax.set_ylabel(quality)
    ax.set_title("diffusion samplers: speed vs quality")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    names = list(flows)
    ops = ("log_prob", "sample")
    w = 0.38
    for j, op in enumerate(ops):
        vals = [flows[n][op] for n in names]
        bars = bx.bar(np.arange(len(names)) + (j - 0.5) * w, vals, w, label=op, color=f"C{j + 2}")
        bx.bar_label(bars, labels=[f"{v * 1e3:.3g} ms" for v in vals], fontsize=8)
    bx.set_xticks(np.arange(len(names)), names)
    bx.set_yscale("log")
    bx.set_ylabel("seconds per call (median, log)")
    bx.set_title(f"MAF vs IAF, same size{f', D = {flow_dim}' if flow_dim else ''}")
    bx.legend()
    bx.grid(alpha=0.3, axis="y", which="both")
    fig.tight_layout()
    return _save(fig, path)


def plot_toy_samples(data: torch.Tensor, samples: dict[str, torch.Tensor], path) -> Path:
    """Scatter panels: the data, then each sampler's points (same axes)."""
    panels = {"data": data, **samples}
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False)
    lim = float(data.abs().max()) * 1.3
    for ax, (name, x) in zip(axes[0], panels.items(), strict=True):
        x = x.detach().cpu().float()
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, c="0.4" if name == "data" else "C3")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ maths
def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013, eq. 2), V-statistic;
    zero iff the two laws are equal."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def median_seconds(fn, calls: int = 3) -> float:
    """Median wall time of ``calls`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _train(name: str, flags: list[str], use):
    """Train ``name`` with ``flags`` in a temporary folder and return ``use(run_dir)`` (the folder is then removed)."""
    algo = get(name)
    with tempfile.TemporaryDirectory(prefix="mlcanon-fig-") as tmp:
        cfg = build_config(algo, [*flags, "--progress", "false", "--out-dir", tmp])
        return use(algo.train(cfg)["run_dir"])


def _command(name: str, flags: list[str]) -> str:
    return f"mlcanon train {name} " + " ".join(flags)


# ------------------------------------------------------------------------------------------- the figures
def tabular_curves(out: Path, seeds: int = 20, episodes: int = 500, env: str = "CliffWalking-v1"
                   ) -> tuple[Path, dict]:
    """Q-learning and SARSA, eps = 0.1, alpha = 0.5, ``seeds`` seeds learned together (Sutton & Barto Example 6.6:
    on the cliff SARSA learns the safe path and earns more per episode, Q-learning the optimal edge path)."""
    curves, final = {}, {}
    for method in ("q-learning", "sarsa"):
        L = tl.Learner(method, mdp_of(env), episodes=episodes, num_seeds=seeds, alpha=0.5,
                       max_episode_steps=500, seed=0, schedule=ex.ConstantSchedule(0.1))
        res = L.run().result()
        curves[method] = (np.arange(1, episodes + 1), res.returns)          # [seeds, episodes]
        final[method] = res.returns[:, -max(1, episodes // 10):].mean(1)    # per seed, last 10% of episodes
    path = plot_bands(curves, out / "tabular_cliff_curves.png", xlabel="episode", ylabel="sum of rewards per episode",
                      band="ci95", smooth=10, ylim=(-120, 0),
                      title=f"{env}, eps = 0.1: mean and 95% band over {seeds} seeds (10-episode average)")
    return path, final


CLF_FLAGS = ["--dataset", "digits", "--model", "mlp", "--width", "64", "--epochs", "12", "--batch-size", "64",
             "--device", "cpu"]


def classifier_curves(out: Path, seeds: int = 3, flags: list[str] = CLF_FLAGS) -> tuple[Path, np.ndarray]:
    """``seeds`` runs of the digits classifier; median and IQR of val accuracy from metrics.jsonl."""
    acc = []
    for s in range(seeds):
        rows = _train("classifier", [*flags, "--seed", str(s)], read_metrics)
        acc.append([(r["step"], r["val/accuracy"]) for r in rows if "val/accuracy" in r])
    T = min(len(c) for c in acc)
    curve = (np.array([s for s, _ in acc[0][:T]]), np.array([[v for _, v in c[:T]] for c in acc]))   # x, [seeds, T]
    path = plot_bands({"val accuracy": curve}, out / "classifier_digits_curves.png",
                      ylabel="validation accuracy", band="iqr",
                      title=f"digits MLP classifier: median and interquartile band over {seeds} seeds")
    return path, curve[1][:, -1]


DDPM_TOY_FLAGS = ["--dataset", TOY, "--max-steps", "3000", "--batch-size", "256", "--width", "256", "--lr", "2e-3",
                  "--warmup-steps", "50", "--dropout", "0", "--ema-decay", "0.995", "--device", "cpu", "--seed", "0"]
DDPM_DIGITS_FLAGS = ["--dataset", "digits", "--max-steps", "1500", "--batch-size", "64", "--base-channels", "16",
                     "--lr", "2e-3", "--warmup-steps", "50", "--ema-decay", "0.99", "--device", "cpu", "--seed", "0"]


def diffusion_speed_quality(out: Path, flags: list[str] = DDPM_TOY_FLAGS, n: int = 2000,
                            ddim_steps=DDIM_STEPS, calls: int = 1) -> tuple[list, float]:
    """Train the toy DDPM, then (sampler, steps, seconds, energy distance) for DDPM-T and DDIM at ``ddim_steps``;
    also the energy distance between two data samples of the same size (the estimate's noise floor)."""
    from mlcanon.generative.diffusion.ddpm import load_model

    model = _train("ddpm", flags, load_model).eval()
    T = len(model.schedule.betas)
    data = toy2d.sample(TOY.split(":", 1)[1], n, generator=torch.Generator().manual_seed(123)).float()
    floor = energy_distance(toy2d.sample(TOY.split(":", 1)[1], n, generator=torch.Generator().manual_seed(321)).float(),
                            data)
    points, shown = [], {}
    settings = [("DDPM", "ddpm", T)] + [("DDIM (eta 0)", "ddim", k) for k in ddim_steps if k <= T]
    for fam, sampler, k in settings:
        def draw(sampler=sampler, k=k):
            return model.sample(n, sampler=sampler, steps=k, generator=torch.Generator().manual_seed(7))
        x = draw()
        dt = median_seconds(draw, calls)
        points.append((fam, f"{k}", dt, energy_distance(x, data)))
        if (sampler, k) in (("ddpm", T), ("ddim", 50), ("ddim", 10), ("ddim", 5)):
            shown[f"{fam.split()[0]} {k} steps"] = x
    plot_toy_samples(data, shown, out / "ddpm_toy2d_samples.png")
    return points, floor


def flow_speeds(dim: int = 64, n: int = 256, calls: int = 5) -> dict[str, dict[str, float]]:
    """Median seconds of log_prob on n points and of sampling n points, for MAF and IAF with the same layers."""
    cfg = MAFConfig(layers=5, hidden=128, hidden_layers=2)
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, builder in (("MAF", build), ("IAF", build_iaf)):
        torch.manual_seed(0)
        flow = builder(cfg, (dim,), False).eval()
        with torch.no_grad():
            out[name] = {"log_prob": median_seconds(lambda f=flow: f.log_prob(x), calls),
                         "sample": median_seconds(lambda f=flow: f.sample(n), calls)}
    return out


def plot_image_grids(grids: dict[str, torch.Tensor], path, nrow: int = 8) -> Path:
    """Side-by-side panels, one titled grid per entry of ``grids`` (each [N, 1, H, W] in [0, 1]), upscaled."""
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.5), squeeze=False)
    for ax, (title, imgs) in zip(axes[0], grids.items(), strict=True):
        g = make_grid(imgs.detach().cpu().float().clamp(0, 1), nrow=nrow, pad=1, pad_value=1.0)
        ax.imshow(g[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def digits_grid(out: Path, flags: list[str] = DDPM_DIGITS_FLAGS, n: int = 60) -> Path:
    """DDPM samples on digits (DDIM 50 steps, classes cycling) beside as many test digits, one PNG."""
    from mlcanon.generative.diffusion.ddpm import load_model

    model = _train("ddpm", flags, load_model).eval()
    y = torch.arange(n) % 10 if model.num_classes else None
    x = model.sample(n, y, sampler="ddim", steps=50, generator=torch.Generator().manual_seed(0))
    real = load_diffusion_data("digits", "test").x[:n]
    to01 = lambda z: (z.clamp(-1, 1) + 1) / 2                       # [-1, 1] -> [0, 1]
    return plot_image_grids({"DDPM samples (DDIM 50 steps)": to01(x), "test digits": to01(real)},
                            out / "ddpm_digits_samples.png", nrow=10)


FOOTER = """Learning curves with bands over seeds: Q-learning and SARSA on the cliff (20 seeds; as in Sutton & Barto
Fig. 6.4, SARSA's safe path earns more per episode under eps = 0.1 exploration), and the digits classifier (3 seeds).

![Q-learning and SARSA on CliffWalking-v1, 20 seeds](figures/tabular_cliff_curves.png)
![digits MLP validation accuracy over 3 seeds](figures/classifier_digits_curves.png)

Samples: a 1500-step DDPM on 8x8 digits (DDIM 50 steps) beside test digits, and the toy DDPM's samples per sampler.

![DDPM samples on digits beside test digits](figures/ddpm_digits_samples.png)
![toy2d:8gaussians: data, DDPM and DDIM samples](figures/ddpm_toy2d_samples.png)

Speed against quality: left, DDPM (all 1000 steps) and DDIM (eta 0) at 2 to 200 steps on the toy model (energy
distance of 2000 samples to 2000 fresh data points, dashed: a second data sample; time to draw them); right, MAF and IAF of the same size
(5 MADE layers, D = 64, 256 points): MAF evaluates densities in one pass and samples in D, IAF the other way round.

![sampler speed vs quality](figures/sampler_speed_quality.png)"""


@bench("report-figures", suites=("quick",), footer=FOOTER,
       description="figures: learning curves over seeds, sample grids, sampler speed vs quality (docs/figures/)")
def report_figures(out: str | Path = FIG_DIR) -> list[Row]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t = time.perf_counter()
    p, final = tabular_curves(out)
    for method, v in final.items():
        point, lo, hi = stratified_bootstrap_ci(v, iqm)
        rows.append(Row(name=f"{method} CliffWalking-v1: IQM of the last 10% episode returns, 20 seeds", ours=float(point),
                        unit="return", command=f"mlcanon train {method} --env CliffWalking-v1 --num-seeds 20 --episodes 500 --alpha 0.5 "
                        "--epsilon-schedule constant --epsilon-max 0.1 --max-episode-steps 500 --seed 0",
                        wall_s=time.perf_counter() - t,
                        notes=f"95% stratified bootstrap CI [{float(lo):.2f}, {float(hi):.2f}]; {p.name}"))
    t = time.perf_counter()
    p, acc = classifier_curves(out)
    point, lo, hi = stratified_bootstrap_ci(acc, iqm)
    rows.append(Row(name="classifier digits mlp: IQM of final val accuracy, 3 seeds", ours=100 * float(point),
                    unit="%", command=_command("classifier", CLF_FLAGS) + " --seed S (S = 0, 1, 2)",
                    wall_s=time.perf_counter() - t,
                    notes=f"95% stratified bootstrap CI [{100 * float(lo):.1f}, {100 * float(hi):.1f}]; {p.name}"))
    t = time.perf_counter()
    p = digits_grid(out)
    rows.append(Row(name="ddpm digits: 60 DDIM-50 samples (classes by column) beside 60 test digits", ours=1500,
                    unit="train steps", command=_command("ddpm", DDPM_DIGITS_FLAGS), wall_s=time.perf_counter() - t,
                    notes=p.name))
    t = time.perf_counter()
    points, floor = diffusion_speed_quality(out)
    flows = flow_speeds()
    p = plot_speed_quality(points, flows, out / "sampler_speed_quality.png", flow_dim=64, floor=floor)
    wall = time.perf_counter() - t
    for fam, k, dt, q in points:
        rows.append(Row(name=f"ddpm {TOY} {fam.split()[0]} {k} steps: energy distance (2000 samples)", ours=q,
                        unit="", higher_is_better=False, command=_command("ddpm", DDPM_TOY_FLAGS), wall_s=wall,
                        notes=f"sampling {dt:.3g} s; two data samples: {floor:.3g}; {p.name}"))
    for name, s in flows.items():
        rows.append(Row(name=f"{name} D=64, 5 layers: log_prob / sample of 256 points", ours=1e3 * s["log_prob"],
                        unit="ms (log_prob)", higher_is_better=False, command="flows.maf.build / build_iaf", wall_s=wall,
                        notes=f"sample {1e3 * s['sample']:.3g} ms; {p.name}"))
    return rows
