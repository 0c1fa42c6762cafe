"""Normalizing-flow benchmarks: MAF vs IAF speed (the trade-off the theory predicts), toy 2-D KL to the true
density, and MNIST test bits/dim of RealNVP and Glow against the issue's targets (with the training budget).

MAF evaluates a density in one MADE pass per layer and samples in D; IAF the reverse (Papamakarios et al.
2017, section 2.3; Kingma et al. 2016). The speed rows time exactly the calls a user makes
(``Flow.log_prob`` and ``Flow.sample``) for two flows of the same size, same batch, same repeats.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from mlcanon.bench import Row, bench
from mlcanon.generative.flows.common import FlowConfig
from mlcanon.generative.flows.maf import MAFConfig, build, build_iaf


def _time(fn, repeats: int, device: torch.device) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def maf_vs_iaf(dim: int = 64, layers: int = 5, hidden: int = 256, batch: int = 256, repeats: int = 5,
               device: str = "cpu") -> dict[str, float]:
    """Seconds per call of log_prob(x) and sample(batch) for MAF and IAF of the same size (same init seed)."""
    dev = torch.device(device)
    config = MAFConfig(layers=layers, hidden=hidden, hidden_layers=2)
    out = {}
    for name, builder in (("maf", build), ("iaf", build_iaf)):
        torch.manual_seed(0)
        model = builder(config, (dim,), False).to(dev).eval()
        x = torch.randn(batch, dim, device=dev)
        out[f"{name}_density_s"] = _time(lambda m=model, x=x: m.log_prob(x), repeats, dev)
        out[f"{name}_sample_s"] = _time(lambda m=model: m.sample(batch), repeats, dev)
    return out


def speed_rows(dim: int = 64, device: str = "cpu", layers: int = 5, hidden: int = 256, batch: int = 256,
               repeats: int = 5) -> list[Row]:
    """Two rows: MAF's density time against IAF's, IAF's sampling time against MAF's (same size)."""
    t = maf_vs_iaf(dim=dim, layers=layers, hidden=hidden, batch=batch, repeats=repeats, device=device)
    cmd = f"python -c 'from mlcanon.bench.flows import maf_vs_iaf; print(maf_vs_iaf(dim={dim}, device=\"{device}\"))'"
    note = f"D={dim}, {layers} layers, MADE 2x{hidden}, batch {batch}, median of {repeats} calls, {device}"
    return [
        Row(f"MAF vs IAF density log_prob (D={dim}, {device})", cmd, 1e3 * t["maf_density_s"], "ms",
            1e3 * t["iaf_density_s"], "IAF, same size (same run)", higher_is_better=False, notes=note),
        Row(f"IAF vs MAF sampling (D={dim}, {device})", cmd, 1e3 * t["iaf_sample_s"], "ms",
            1e3 * t["maf_sample_s"], "MAF, same size (same run)", higher_is_better=False, notes=note),
    ]


@bench("flows-maf-vs-iaf", suites=("quick", "full"), description="MAF vs IAF: density and sampling speed, same size")
def maf_iaf_speed() -> list[Row]:
    rows = speed_rows(dim=64)
    if torch.cuda.is_available():
        rows += speed_rows(dim=784, device="cuda")
    return rows


def _train(name: str, flags: str) -> tuple[dict, float]:
    from mlcanon.config import build_config
    from mlcanon.registry import get
    algo = get(name)
    with tempfile.TemporaryDirectory() as d:
        config: FlowConfig = build_config(algo, [*flags.split(), "--out-dir", d, "--progress", "false"])
        t = time.perf_counter()
        result = algo.train(config)
        return result, time.perf_counter() - t


TOY_CASES = [("maf", "--dataset toy2d:8gaussians --epochs 20 --batch-size 256 --lr 1e-3"),
             ("realnvp", "--dataset toy2d:rings --epochs 20 --batch-size 256 --lr 1e-3 --hidden 64 --norm none")]


@bench("flows-toy2d", suites=("full",), description="MAF / RealNVP on toy 2-D sets: KL to the true density")
def toy() -> list[Row]:
    rows = []
    for name, flags in TOY_CASES:
        result, wall = _train(name, flags)
        rows.append(Row(f"{name} {flags.split()[1]}: KL(p_true || p_model) on the test set", f"mlcanon train {name} "
                        f"{flags}", result["test_kl_to_truth_nats"], "nats", None, "", higher_is_better=False,
                        wall_s=wall, notes=f"{result['epochs']:.0f} epochs, seed 0, CPU"))
    return rows


# the recipes of docs/BENCHMARKS.md's CPU rows (one thread each): RealNVP test 1.490 after 6,500 steps (69 CPU-min);
# Glow (2 levels x 8 steps, hidden 64, sigmoid(h + 2) coupling scale) test 1.486 after 14,000 steps, its best
# validation checkpoint (100 min wall on a loaded thread; with the old tanh scale 1.485 at step 6,000 of 14,000)
MNIST_CASES = [("realnvp", "--dataset mnist --max-steps 6500 --lr-schedule cosine --min-lr 1e-5 --eval-every 1000", 1.5),
               ("glow", ("--dataset mnist --hidden 64 --max-steps 14000 --lr-schedule cosine --min-lr 1e-5 "
                         "--warmup-steps 500 --eval-every 2000"), 1.5)]


@bench("flows-mnist", suites=("full",), description="RealNVP / Glow MNIST test bits/dim (target <= 1.5 on CPU)")
def mnist() -> list[Row]:
    rows = []
    for name, flags, target in MNIST_CASES:
        result, wall = _train(name, flags)
        rows.append(Row(f"{name} mnist: test bits/dim (dequantized, logit alpha 0.05)", f"mlcanon train {name} {flags}",
                        result["test_bits_per_dim"], "bits/dim", target, "target", higher_is_better=False,
                        wall_s=wall, notes=f"{result['epochs']:.1f} epochs, seed 0"))
    return rows
