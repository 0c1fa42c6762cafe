"""Autoregressive-model benchmarks: char-level tiny-shakespeare validation loss (nats/token) of gpt and
lstm-lm against nanoGPT's published figures, and test NLL (nats) of the binary-MNIST models against their
papers. Each row states its training budget in its command."""

from __future__ import annotations

import tempfile
import time

from mlcanon.bench import Row, bench
from mlcanon.config import build_config
from mlcanon.registry import get

# (name, algorithm, CLI flags, reference, reference label, metric key in the result, unit)
CASES = {
    "gpt-nanogpt-cpu": ("gpt", ("--layers 4 --heads 4 --width 128 --context 64 --batch-size 12 --max-steps 2000 "
                                "--lr 1e-3 --warmup-steps 100 --lr-schedule cosine --dropout 0"),
                        1.88, "nanoGPT shakespeare-char CPU config, val loss (README)", "val_loss", "nats/token"),
    "lstm-lm-cpu": ("lstm-lm", "--layers 2 --width 256 --context 64 --batch-size 12 --max-steps 2000",
                    None, "", "val_loss", "nats/token"),
    "gpt-nanogpt-gpu": ("gpt", ("--layers 6 --heads 6 --width 384 --context 256 --batch-size 64 --max-steps 5000 "
                                "--lr 1e-3 --warmup-steps 100 --dropout 0.2 --device cuda --precision bf16"),
                        1.47, "nanoGPT shakespeare-char GPU config, val loss (README)", "val_loss", "nats/token"),
    "made-binarized-mnist": ("made", "--hidden 500 --epochs 20 --batch-size 100", 88.4,
                             "Germain et al. 2015, 1 mask, 500 units", "test_nll_nats", "nats"),
    "nade-binarized-mnist": ("nade", "--hidden 500 --epochs 20 --batch-size 100", 88.3,
                             "Uria et al. 2016, NADE 500 units", "test_nll_nats", "nats"),
    "fvsbn-binarized-mnist": ("fvsbn", "--epochs 20 --batch-size 100", 97.5,
                              "Larochelle & Murray 2011 (FVSBN)", "test_nll_nats", "nats"),
    "pixelcnn-binarized-mnist": ("pixelcnn", "--channels 64 --layers 6 --epochs 5 --batch-size 64", 81.3,
                                 "van den Oord et al. 2016a (PixelCNN)", "test_nll_nats", "nats"),
}


def run_case(key: str) -> Row:
    """Train one case in a temporary folder; the row holds its figure, the reference and the wall-clock."""
    algo_name, flags, ref, ref_label, metric, unit = CASES[key]
    algo = get(algo_name)
    with tempfile.TemporaryDirectory() as d:
        config = build_config(algo, flags.split() + ["--out-dir", d, "--progress", "false"])
        t = time.perf_counter()
        result = algo.train(config)
        wall = time.perf_counter() - t
    return Row(name=f"{algo_name} {key}: {metric.replace('_', ' ')}", command=f"mlcanon train {algo_name} {flags}",
               ours=float(result[metric]), unit=unit, reference=ref, reference_label=ref_label,
               higher_is_better=False, wall_s=wall, notes=f"seed 0, {result['step']} steps")


@bench("gpt-nanogpt-cpu", suites=("full",), description="gpt at nanoGPT's CPU configuration (target <= 1.88)")
def gpt_cpu() -> list[Row]:
    return [run_case("gpt-nanogpt-cpu")]


@bench("lstm-lm-cpu", suites=("full",), description="lstm-lm on tiny-shakespeare, same budget as gpt-nanogpt-cpu")
def lstm_cpu() -> list[Row]:
    return [run_case("lstm-lm-cpu")]


@bench("gpt-nanogpt-gpu", suites=("gpu",), description="gpt at nanoGPT's GPU configuration (target <= 1.47)")
def gpt_gpu() -> list[Row]:
    return [run_case("gpt-nanogpt-gpu")]


@bench("binary-mnist-autoregressive", suites=("full",),
       description="FVSBN, NADE, MADE, PixelCNN test NLL on binarized MNIST against the papers")
def binary_mnist() -> list[Row]:
    return [run_case(k) for k in ("fvsbn-binarized-mnist", "nade-binarized-mnist", "made-binarized-mnist",
                                  "pixelcnn-binarized-mnist")]


if __name__ == "__main__":   # python -m mlcanon.bench.autoregressive CASE: one case, printed
    import sys
    row = run_case(sys.argv[1])
    print(row)
