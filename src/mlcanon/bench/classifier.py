"""Classifier benchmarks: test accuracy against the issue's targets, with the exact command."""

from __future__ import annotations

import tempfile
import time

from mlcanon.bench import Row, bench

# (name, CLI flags, target accuracy %, suites)
CASES = [
    ("digits mlp", "--dataset digits --model mlp --epochs 30 --batch-size 32 --lr 1e-3", 95.0),
    ("mnist mlp (<=5 epochs)", ("--dataset mnist --model mlp --width 1024 --depth 2 --dropout 0.2 --epochs 5 "
                                "--batch-size 128 --lr 1e-3 --lr-schedule cosine"), 98.0),
    ("mnist cnn (<=5 epochs)", ("--dataset mnist --model cnn --width 128 --depth 2 --dropout 0.1 --epochs 5 "
                                "--batch-size 128 --lr 2e-3"), 99.0),
]


def _run(name: str, flags: str, target: float) -> Row:
    from mlcanon.cli import build_config
    from mlcanon.registry import get

    algo = get("classifier")
    with tempfile.TemporaryDirectory() as d:
        config = build_config(algo, flags.split() + ["--out-dir", d, "--progress", "false"])
        t = time.perf_counter()
        result = algo.train(config)
        wall = time.perf_counter() - t
    return Row(name=f"classifier {name}: test accuracy", command=f"mlcanon train classifier {flags}",
               ours=100 * result["test_accuracy"], unit="%", reference=target, reference_label="target",
               wall_s=wall, notes=f"{result['epochs']} epochs, seed 0, CPU")


@bench("classifier-digits", suites=("quick", "full"), description="MLP on the 8x8 digits (target >= 95%)")
def digits() -> list[Row]:
    return [_run(*CASES[0])]


@bench("classifier-mnist-mlp", suites=("full",), description="MLP on MNIST in <= 5 epochs (target >= 98%)")
def mnist_mlp() -> list[Row]:
    return [_run(*CASES[1])]


@bench("classifier-mnist-cnn", suites=("full",), description="CNN on MNIST in <= 5 epochs (target >= 99%)")
def mnist_cnn() -> list[Row]:
    return [_run(*CASES[2])]
