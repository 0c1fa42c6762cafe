"""Diffusion benchmarks: MNIST-FID / precision / recall of DDPM (1000 steps) and DDIM (50, 20 steps) on a fixed
number of samples, the classifier-free guidance trade-off (FID vs label accuracy over w), the variational bound
in bits/dim, and the speed side by side with diffusers (``benchmarks/diffusion_vs_diffusers.py``).

Also a script, for a GPU machine or a long CPU run (writes a JSON file and ``cfg_tradeoff.png``)::

    python -m mlcanon.bench.diffusion --device cuda --steps 6000 --num-samples 2000 --out-dir DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlcanon.bench import Row, bench

NUM_SAMPLES = 2000        # the same count for every model in the table
GUIDANCE = (0.0, 1.0, 2.0, 4.0)


def ddpm_mnist(device: str = "auto", steps: int = 6000, batch_size: int = 128, num_samples: int = NUM_SAMPLES,
               guidance=GUIDANCE, bound_examples: int = 256, out_dir: str | None = None, seed: int = 0,
               log=print, extra_flags: tuple[str, ...] = (), samplers=("ddpm1000", "ddim50", "ddim20"),
               cfg_steps: int = 50, bound_t_samples: int = 0) -> dict:
    """Train a class-conditional DDPM on MNIST for ``steps`` steps, then measure every figure of the table."""
    from mlcanon.config import build_config
    from mlcanon.generative.diffusion.ddpm import DDPMEvalOptions, bound_metrics, generate, load_model
    from mlcanon.generative.diffusion.ddpm import DDPMSampleOptions as SO
    from mlcanon.generative.diffusion.ddpm import sample_metrics as metrics
    from mlcanon.generative.diffusion.model import load_diffusion_data
    from mlcanon.registry import get

    algo = get("ddpm")
    flags = ["--dataset", "mnist", "--max-steps", str(steps), "--batch-size", str(batch_size), "--device", device,
             "--seed", str(seed), "--progress", "false", "--lr-schedule", "cosine", "--out-dir", tempfile.mkdtemp(),
             *extra_flags]
    shown = [f for i, f in enumerate(flags) if f != "--out-dir" and (i == 0 or flags[i - 1] != "--out-dir")]
    res: dict = {"command": "mlcanon train ddpm " + " ".join(shown)}
    t0 = time.perf_counter()
    run_dir = algo.train(build_config(algo, flags))["run_dir"]
    res["train_s"] = time.perf_counter() - t0
    log(json.dumps({"train_s": res["train_s"], "run_dir": run_dir}))
    if out_dir:   # the run's own figures: 64 samples (DDPM, classes cycling) and the denoising strip
        import shutil
        for f in ("samples.png", "samples-progress.png"):
            shutil.copy(Path(run_dir) / f, Path(out_dir) / f"ddpm_mnist_{f}")
    model = load_model(run_dir)
    dev = torch.device("cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    model.to(dev)

    def draw(options, n: int = num_samples, chunk: int = 1000):
        xs, ys = [], []
        t = time.perf_counter()
        for i in range(0, n, chunk):
            options.seed = seed * 1_000_003 + i
            x, y, _, _ = generate(model, min(chunk, n - i), options, device=dev)
            xs.append(x)
            ys.append(y)
        return (torch.cat(xs) + 1) / 2, torch.cat(ys), time.perf_counter() - t

    options = {"ddpm1000": SO(sampler="ddpm"), "ddim50": SO(sampler="ddim", steps=50),
               "ddim20": SO(sampler="ddim", steps=20)}
    for name in samplers:
        x, y, dt = draw(options[name])
        res[name] = {**metrics(x, y), "sample_s": dt}
        log(json.dumps({name: res[name]}))
    res["cfg"] = {}
    for w in guidance:
        x, y, dt = draw(SO(sampler="ddim", steps=cfg_steps, guidance=w))
        res["cfg"][str(w)] = {**metrics(x, y), "sample_s": dt}
        log(json.dumps({f"cfg w={w}": res["cfg"][str(w)]}))
    test = load_diffusion_data("mnist", "test")
    t = time.perf_counter()
    with torch.no_grad():
        res["bound"] = bound_metrics(model, test, DDPMEvalOptions(bound_examples=bound_examples, batch_size=256,
                                                                 bound_t_samples=bound_t_samples), dev)
    res["bound"]["bound_s"] = time.perf_counter() - t
    log(json.dumps({"bound": res["bound"]}))
    if out_dir:
        plot_tradeoff(res["cfg"], Path(out_dir) / "cfg_tradeoff.png")
    return res


def plot_tradeoff(cfg: dict, path: Path) -> Path:
    """MNIST-FID and label accuracy against the classifier-free guidance weight w."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ws = sorted(cfg, key=float)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([float(w) for w in ws], [cfg[w]["eval/fid"] for w in ws], "o-", label="MNIST-FID")
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel("MNIST-FID (lower is better)")
    ax2 = ax.twinx()
    ax2.plot([float(w) for w in ws], [100 * cfg[w]["eval/label_accuracy"] for w in ws], "s--", c="C1",
             label="label accuracy")
    ax2.set_ylabel("label accuracy (%)")
    fig.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rows_of(res: dict, hardware: str) -> list[Row]:
    cmd = res["command"]
    rows = []
    for name, label in (("ddpm1000", "DDPM 1000 steps"), ("ddim50", "DDIM 50 steps"), ("ddim20", "DDIM 20 steps")):
        if name not in res:
            continue
        r = res[name]
        rows.append(Row(name=f"ddpm mnist {label}: MNIST-FID ({NUM_SAMPLES} samples)", command=cmd,
                        ours=r["eval/fid"], unit="FID", higher_is_better=False, wall_s=res["train_s"],
                        notes=f"precision {r['eval/precision']:.3f}, recall {r['eval/recall']:.3f}, "
                              f"label acc {100 * r['eval/label_accuracy']:.1f}%, sampling {r['sample_s']:.0f}s; "
                              f"{hardware}"))
    best = max(res["cfg"].items(), key=lambda kv: kv[1]["eval/label_accuracy"])
    rows.append(Row(name="ddpm mnist classifier-free guidance: label accuracy (DDIM 50)", command=cmd,
                    ours=100 * best[1]["eval/label_accuracy"], unit="%", reference=98.0, reference_label="target",
                    notes=f"w = {best[0]}, FID {best[1]['eval/fid']:.2f}; " + ", ".join(
                        f"w={w}: {100 * v['eval/label_accuracy']:.1f}% / FID {v['eval/fid']:.2f}"
                        for w, v in res["cfg"].items())))
    rows.append(Row(name="ddpm mnist variational bound (bits/dim)", command=cmd, ours=res["bound"]["eval/bits_per_dim"],
                    unit="bits/dim", higher_is_better=False,
                    notes=f"{res['bound']['bound_examples']} test images, exact sum over all 1000 t"))
    return rows


@bench("ddpm-mnist", suites=("gpu",), description="DDPM on MNIST: FID (DDPM/DDIM), CFG trade-off, bits/dim")
def ddpm_mnist_gpu() -> list[Row]:
    res = ddpm_mnist(device="cuda")
    return rows_of(res, torch.cuda.get_device_name(0))


LATENT_GUIDANCE = (0.0, 1.0, 3.0)


@bench("latent-diffusion-mnist", suites=("full",),
       description="latent diffusion on MNIST (defaults, ~1 min CPU): FID and guided label accuracy, 3 seeds")
def latent_diffusion_mnist() -> list[Row]:
    """`mlcanon train latent-diffusion --dataset mnist --seed S` (its own 16-d MLP autoencoder first), then
    `mlcanon eval RUN --sampler ddim --steps 20 --guidance W --num-samples 2000 --bound-examples 0` per w."""
    import statistics

    from mlcanon import config as cfg
    from mlcanon.config import build_config
    from mlcanon.registry import get
    algo, seeds = get("latent-diffusion"), (0, 1, 2)
    per_w: dict[float, list[dict]] = {w: [] for w in LATENT_GUIDANCE}
    walls = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as d:
            config = build_config(algo, ["--dataset", "mnist", "--seed", str(seed), "--out-dir", d,
                                         "--progress", "false"])
            t = time.perf_counter()
            run_dir = algo.train(config)["run_dir"]
            walls.append(time.perf_counter() - t)
            for w in LATENT_GUIDANCE:
                flags = ["--num-samples", str(NUM_SAMPLES), "--bound-examples", "0", "--sampler", "ddim", "--steps",
                         "20", "--guidance", str(w)]
                options = cfg.from_flags(algo.eval_options, flags, prog="mlcanon eval latent-diffusion",
                                         print_help=False)
                per_w[w].append(algo.evaluate(Path(run_dir), options))
    cmd = ("mlcanon train latent-diffusion --dataset mnist --seed S; mlcanon eval RUN --sampler ddim --steps 20 "
           f"--guidance W --num-samples {NUM_SAMPLES} --bound-examples 0")
    rows = []
    for w, ms in per_w.items():
        fid = [m["eval/fid"] for m in ms]
        acc = [100 * m["eval/label_accuracy"] for m in ms]
        spread = f"seeds {', '.join(map(str, seeds))}: FID {', '.join(f'{v:.1f}' for v in fid)}; label accuracy " \
                 f"{', '.join(f'{v:.2f}' for v in acc)}%"
        rows.append(Row(name=f"latent diffusion mnist DDIM-20 w = {w:g}: MNIST-FID ({NUM_SAMPLES} samples)",
                        command=cmd, ours=statistics.median(fid), unit="FID", higher_is_better=False,
                        wall_s=statistics.median(walls), notes=f"median; {spread}; wall = training per seed"))
        rows.append(Row(name=f"latent diffusion mnist DDIM-20 w = {w:g}: label accuracy", command=cmd,
                        ours=statistics.median(acc), unit="%", reference=98.0 if w else None,
                        reference_label="target (some w)" if w else "", wall_s=statistics.median(walls),
                        notes=f"median; {spread}"))
    return rows


def diffusers_speed(device: str, extra: tuple[str, ...] = ()) -> dict:
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "diffusion_vs_diffusers.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} (the side-by-side script lives in the source checkout)")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "speed.json"
        subprocess.run([sys.executable, str(script), "--device", device, "--json", str(out), *extra], check=True)
        return json.loads(out.read_text())


def speed_rows(res: dict) -> list[Row]:
    compile_flag = res["compile"] if isinstance(res["compile"], str) else ("model" if res["compile"] else "")
    cmd = (f"python benchmarks/diffusion_vs_diffusers.py --device {'cuda' if 'cpu' not in res['device'] else 'cpu'} "
           f"--batch {res['batch']} --precision {res['precision']}"
           + (f" --res-blocks {res['res_blocks']}" if "res_blocks" in res else "")
           + (" --channels-last" if res["channels_last"] else "") + (f" --compile {compile_flag}" if compile_flag else "")
           + (f" --train-steps {res['train_steps']} --warmup {res['warmup']}" if "train_steps" in res else ""))
    note = (f"{res['device']}; the same U-Net on both sides, params ours {res['params_ours']:,} vs diffusers "
            f"{res['params_diffusers']:,}; loss after the last steps {res['final_loss_ours']:.4f} vs "
            f"{res['final_loss_diffusers']:.4f}")
    if compile_flag and "compile_train_s_ours" in res:
        note += (f"; compile s (train, sample) ours {res['compile_train_s_ours']:.0f}, "
                 f"{res['compile_sample_s_ours']:.0f}; diffusers {res['compile_train_s_diffusers']:.0f}, "
                 f"{res['compile_sample_s_diffusers']:.0f}")
    return [Row(name=f"diffusion train images/s vs diffusers {res['diffusers']}", command=cmd,
                ours=res["train_images_per_s_ours"], unit="img/s", reference=res["train_images_per_s_diffusers"],
                reference_label=f"diffusers {res['diffusers']} (same run)", notes=note),
            Row(name=f"diffusion DDIM-{res.get('sample_steps', 50)} sampling images/s vs diffusers "
                     f"{res['diffusers']}", command=cmd,
                ours=res["sample_images_per_s_ours"], unit="img/s", reference=res["sample_images_per_s_diffusers"],
                reference_label=f"diffusers {res['diffusers']} (same run)", notes=note)]


@bench("diffusion-speed-cpu", suites=("full",), description="DDPM training/sampling images/s beside diffusers (CPU)")
def speed_cpu() -> list[Row]:
    return speed_rows(diffusers_speed("cpu", ("--batch", "32", "--train-steps", "24", "--warmup", "4", "--rounds", "4",
                                              "--sample-steps", "20", "--sample-repeats", "2")))


@bench("diffusion-speed-gpu", suites=("gpu",), description="DDPM training/sampling images/s beside diffusers (GPU)")
def speed_gpu() -> list[Row]:
    return speed_rows(diffusers_speed("cuda", ("--batch", "256", "--precision", "bf16", "--channels-last",
                                               "--train-steps", "200", "--warmup", "50")))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="DDPM on MNIST: the benchmark table's figures")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-samples", type=int, default=NUM_SAMPLES)
    p.add_argument("--bound-examples", type=int, default=256)
    p.add_argument("--out-dir", default=".")
    a = p.parse_args(argv)
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    res = ddpm_mnist(a.device, a.steps, a.batch_size, a.num_samples, bound_examples=a.bound_examples,
                     out_dir=a.out_dir)
    (Path(a.out_dir) / "ddpm_mnist.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
