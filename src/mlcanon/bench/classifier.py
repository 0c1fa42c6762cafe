"""Classifier benchmarks: test accuracy against the issue's targets, with the exact command."""

from __future__ import annotations

import statistics
import tempfile
import time

from mlcanon.bench import Row, bench
from mlcanon.config import build_config
from mlcanon.registry import get

# (name, CLI flags, target accuracy %, suites)
CASES = [
    ("digits mlp", "--dataset digits --model mlp --epochs 30 --batch-size 32 --lr 1e-3", 95.0),
    ("mnist mlp (<=5 epochs)", ("--dataset mnist --model mlp --width 1024 --depth 2 --dropout 0.2 --epochs 5 "
                                "--batch-size 128 --lr 1e-3 --lr-schedule cosine"), 98.0),
    ("mnist cnn (<=5 epochs)", ("--dataset mnist --model cnn --width 128 --depth 2 --dropout 0.1 --epochs 5 "
                                "--batch-size 128 --lr 2e-3 --convs-per-block 2 --lr-schedule constant "
                                "--warmup-steps 0"), 99.0),
]


def _run(name: str, flags: str, target: float, seeds: tuple[int, ...] = (0,)) -> Row:
    """Train once per seed; the row's figure is the median test accuracy (DESIGN.md 8), wall is per run."""
    algo = get("classifier")
    accs, walls = [], []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as d:
            config = build_config(algo, flags.split() + ["--seed", str(seed), "--out-dir", d, "--progress", "false"])
            t = time.perf_counter()
            result = algo.train(config)
            walls.append(time.perf_counter() - t)
        accs.append(100 * result["test_accuracy"])
    spread = (f"median of seeds {', '.join(map(str, seeds))}: " + ", ".join(f"{a:.2f}" for a in accs)
              if len(seeds) > 1 else f"seed {seeds[0]} (one seed: a long CPU run)")
    return Row(name=f"classifier {name}: test accuracy", command=f"mlcanon train classifier {flags}",
               ours=statistics.median(accs), unit="%", reference=target, reference_label="target",
               wall_s=statistics.median(walls), notes=f"{result['epochs']} epochs, {spread}; CPU, wall per run")


@bench("classifier-digits", suites=("quick", "full"), description="MLP on the 8x8 digits (target >= 95%)")
def digits() -> list[Row]:
    return [_run(*CASES[0], seeds=(0, 1, 2))]


@bench("classifier-mnist-mlp", suites=("full",), description="MLP on MNIST in <= 5 epochs (target >= 98%)")
def mnist_mlp() -> list[Row]:
    return [_run(*CASES[1])]


@bench("classifier-mnist-cnn", suites=("full",), description="CNN on MNIST in <= 5 epochs (target >= 99%)")
def mnist_cnn() -> list[Row]:
    return [_run(*CASES[2])]


@bench("classifier-mnist-gpu", suites=("gpu",), description="MLP and CNN on MNIST on a CUDA GPU, fp32 and bf16")
def mnist_gpu() -> list[Row]:
    rows = []
    for case in CASES[1:]:
        for precision in ("fp32", "bf16"):
            name, flags, target = case
            rows.append(_run(f"{name} cuda {precision}", f"{flags} --device cuda --precision {precision}", target))
    return rows
