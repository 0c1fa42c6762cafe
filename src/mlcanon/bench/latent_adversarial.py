"""Benchmarks of issue 18: VAE IWAE NLL, GAN mode coverage and MNIST sample quality, robust accuracy.

Each row trains with the stated command (the training budget is in the command) and evaluates the run with
``mlcanon eval`` options; the figure is the median over the seeds listed in the notes.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from mlcanon import config as cfg
from mlcanon.bench import Row, bench
from mlcanon.config import build_config
from mlcanon.registry import get


def _train_eval(name: str, flags: str, eval_flags: list[str], seed: int) -> tuple[dict, dict, float]:
    """(train result, eval metrics, wall seconds of training) of one seed in a temporary folder."""
    algo = get(name)
    with tempfile.TemporaryDirectory() as d:
        config = build_config(algo, flags.split() + ["--seed", str(seed), "--out-dir", d, "--progress", "false"])
        t = time.perf_counter()
        result = algo.train(config)
        wall = time.perf_counter() - t
        options = cfg.from_flags(algo.eval_options, eval_flags, prog=f"mlcanon eval {name}", print_help=False)
        metrics = algo.evaluate(Path(result["run_dir"]), options)
    return result, metrics, wall


def _median_row(label: str, name: str, flags: str, eval_flags: list[str], key: str, seeds: tuple[int, ...], *,
                unit: str, reference: float | None, reference_label: str, higher_is_better: bool,
                scale: float = 1.0) -> Row:
    values, walls = [], []
    for s in seeds:
        _, m, w = _train_eval(name, flags, eval_flags, s)
        values.append(scale * m[key])
        walls.append(w)
    spread = ", ".join(f"{v:.3g}" for v in values)
    return Row(name=label, command=f"mlcanon train {name} {flags}; mlcanon eval RUN {' '.join(eval_flags)}",
               ours=statistics.median(values), unit=unit, reference=reference, reference_label=reference_label,
               higher_is_better=higher_is_better, wall_s=statistics.median(walls),
               notes=f"median of seeds {', '.join(map(str, seeds))}: {spread}; wall = training per seed")


VAE_FLAGS = "--dataset binarized-mnist --arch mlp --latent 32 --hidden 512 --epochs 200 --batch-size 100 --lr 1e-3"


@bench("vae-binarized-mnist", suites=("gpu",), description="MLP VAE IWAE NLL (k=5000) on binarized MNIST <= 89 nats")
def vae_nll() -> list[Row]:
    return [_median_row("vae mlp binarized-mnist: test IWAE NLL (k=5000)", "vae", VAE_FLAGS + " --device auto",
                        ["--iwae-k", "5000", "--batch-size", "20", "--chunk", "500"], "eval/nll_nats", (0,),
                        unit="nats", reference=89.0, reference_label="target (Burda et al. ~86.8, dynamic binar.)",
                        higher_is_better=False)]


TOY = "--dataset toy2d:8gaussians --arch mlp --latent 16 --hidden 128 --batch-size 256 --max-steps 5000"
MODE_CASES = [("gan", TOY), ("unrolled-gan", TOY + " --unroll 5"),
              ("wgan-gp", TOY + " --d-steps 5")]


@bench("gan-mode-coverage", suites=("full",), description="modes covered on toy2d:8gaussians: GAN, unrolled, WGAN-GP")
def mode_coverage() -> list[Row]:
    rows = []
    for name, flags in MODE_CASES:
        for key, unit, ref in (("eval/modes_covered", "modes", 8.0), ("eval/high_quality_fraction", "%", None)):
            rows.append(_median_row(f"{name} toy2d:8gaussians: {key.split('/')[1]}", name, flags,
                                    ["--num-samples", "2500"], key, (0, 1, 2, 3, 4), unit=unit, reference=ref,
                                    reference_label="all modes" if ref else "", higher_is_better=True,
                                    scale=100.0 if unit == "%" else 1.0))
    return rows


MNIST_GANS = [("gan", "--dataset mnist --arch mlp --latent 64 --hidden 512 --batch-size 128 --max-steps 20000"),
              ("dcgan", "--dataset mnist --max-steps 20000"),
              ("wgan-gp", "--dataset mnist --max-steps 20000"),
              ("cgan", "--dataset mnist --max-steps 20000"),
              ("acgan", "--dataset mnist --max-steps 20000")]


@bench("gan-mnist", suites=("gpu",), description="MNIST-FID of each GAN; cGAN/ACGAN label accuracy >= 95%")
def gan_mnist() -> list[Row]:
    rows = []
    for name, flags in MNIST_GANS:
        rows.append(_median_row(f"{name} mnist: MNIST-FID", name, flags + " --device auto", [], "eval/fid", (0,),
                                unit="FID", reference=None, reference_label="", higher_is_better=False))
        if name in ("cgan", "acgan"):
            rows.append(_median_row(f"{name} mnist: label accuracy", name, flags + " --device auto", [],
                                    "eval/label_accuracy", (0,), unit="%", reference=95.0, reference_label="target",
                                    higher_is_better=True, scale=100.0))
    return rows


FAST_AT = ("--dataset mnist --model cnn --width 32 --method fast --eps 0.3 --alpha 0.375 --epochs 10 "
           "--batch-size 100 --lr 1e-3 --lr-schedule cosine --eps-warmup-epochs 2")


@bench("adversarial-fast-mnist", suites=("full",), description="fast adversarial training, MNIST eps 0.3, PGD-40")
def fast_at() -> list[Row]:
    _, m, wall = _train_eval("adversarial-training", FAST_AT, ["--restarts", "1"], 0)
    cmd = f"mlcanon train adversarial-training {FAST_AT}; mlcanon eval RUN --attack pgd --eps 0.3 --steps 40"
    return [Row(name="fast adversarial training mnist: PGD-40 robust accuracy", command=cmd,
                ours=100 * m["robust/accuracy"], unit="%", reference=85.0, reference_label="target (Wong et al. 88.8)",
                wall_s=wall, notes="seed 0; CPU"),
            Row(name="fast adversarial training mnist: clean accuracy", command=cmd, ours=100 * m["clean/accuracy"],
                unit="%", reference=98.0, reference_label="target", wall_s=wall, notes="seed 0; CPU")]
