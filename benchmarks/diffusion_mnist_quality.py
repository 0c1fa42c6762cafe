"""DDPM / DDIM sample quality on MNIST, resumable in chunks: MNIST-FID, precision / recall, label accuracy, the
variational bound in bits/dim, and the classifier-free guidance trade-off plot (issue 21).

    R=runs/ddpm-mnist-...; D=quality
    python benchmarks/diffusion_mnist_quality.py sample $R --out $D --sampler ddim --steps 20 --guidance 0 -n 2000
    python benchmarks/diffusion_mnist_quality.py sample $R --out $D --sampler ddpm -n 2000     # 1,000 steps
    python benchmarks/diffusion_mnist_quality.py bound $R --out $D --examples 1000 --t-samples 32
    python benchmarks/diffusion_mnist_quality.py metrics $D [--limit N]
    python benchmarks/diffusion_mnist_quality.py plot $D --sampler ddim --steps 20 --png docs/figures/ddpm_mnist_guidance.png

``plot`` reads ``$D/metrics.json`` ({tag: {"sampler", "steps", "guidance", "num_samples", "eval/fid",
"eval/label_accuracy", ...}}), which ``metrics`` writes; the latent-diffusion figure's file was written from
``mlcanon eval RUN --sampler ddim --steps 20 --guidance W`` (its eval.json per w) in the same layout.

``sample`` draws the samples exactly as ``mlcanon eval RUN --sampler S --steps N --guidance W --batch-size C
--num-samples n`` does (chunk i of C samples from seed ``seed * 1_000_003 + i``, labels cycling 0..9 in each chunk,
the run's EMA weights), but writes each chunk to ``OUT/<tag>/`` as it finishes, so a slow sampler (DDPM with all
T = 1,000 steps on a CPU) can be stopped and resumed, and its metrics read on the chunks done so far (``metrics
--limit N`` scores the first N samples of every tag, so rows on fewer samples are compared on the same count: FID is
biased upward at small sample sizes). ``metrics`` calls the same ``sample_metrics`` as ``mlcanon eval``
(the fixed MNIST feature net: FID, improved precision / recall with k = 3, label accuracy).

``bound`` is the variational bound of Ho et al. 2020, eq. 5, L = L_T + sum_{t>1} L_{t-1} + L_0 on the first
``--examples`` test images, with the sum over t estimated without bias from ``--t-samples`` uniform draws of t per
image (``--t-samples 0``: the exact sum over all T, T network calls per image); it reports the mean and its
standard error over images (the per-image estimates are independent), in nats and bits/dim
(bits/dim = L / (D ln 2), D = 784; an upper bound on the discrete negative log-likelihood).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from mlcanon.devices import resolve_device
from mlcanon.generative.diffusion.ddpm import (
    DDPMSampleOptions,
    _data_of,
    chunk_seed,
    generate,
    load_model,
    sample_metrics,
)
from mlcanon.registry import config_of
from mlcanon.training import generator


def tag_of(sampler: str, steps: int, guidance: float) -> str:
    return f"ddpm1000_w{guidance:g}" if sampler == "ddpm" else f"ddim{steps}_w{guidance:g}"


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cmd_sample(a) -> None:
    device = resolve_device(a.device)
    model = load_model(a.run_dir).to(device)
    out = Path(a.out) / tag_of(a.sampler, a.steps, a.guidance)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run_dir": str(a.run_dir), "sampler": a.sampler, "steps": a.steps if a.sampler == "ddim" else
            model.schedule.T, "guidance": a.guidance, "chunk": a.chunk, "seed": a.seed}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    so = DDPMSampleOptions(seed=a.seed, sampler=a.sampler, steps=a.steps, guidance=a.guidance)
    for i in range(0, a.n, a.chunk):
        f = out / f"chunk{i:06d}.pt"
        if f.exists():
            continue
        k = min(a.chunk, a.n - i)
        so.seed = chunk_seed(a.seed, i)           # as mlcanon eval: every chunk its own stream
        t0 = time.time()
        x, labels, _, _ = generate(model, k, so, device=device)
        dt = time.time() - t0
        tmp = f.with_suffix(".tmp")                # written whole, then renamed: a stopped run leaves no half chunk
        torch.save({"x": ((x + 1) / 2).float(), "labels": labels, "seconds": dt, "load": load_avg()}, tmp)
        tmp.rename(f)
        print(f"{out.name} chunk {i}: {k} samples in {dt:.1f} s ({k / dt:.2f} samples/s), load {load_avg()}",
              flush=True)


def load_tag(folder: Path, limit: int = 0):
    chunks = sorted(folder.glob("chunk*.pt"))
    parts = [torch.load(c) for c in chunks]
    if not parts:
        return None
    x = torch.cat([p["x"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts]) if parts[0]["labels"] is not None else None
    secs = sum(p["seconds"] for p in parts)
    if limit:
        x, labels = x[:limit], (labels[:limit] if labels is not None else None)
    return x, labels, secs, len(torch.cat([p["x"] for p in parts]))


def cmd_metrics(a) -> None:
    root = Path(a.out)
    results = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        got = load_tag(folder, a.limit)
        if got is None:
            continue
        x, labels, secs, n_done = got
        meta = json.loads((folder / "meta.json").read_text())
        config = config_of(meta["run_dir"], "ddpm")
        m = sample_metrics(x, labels, config.data_dir)
        m.update(meta)
        m.update({"num_samples": len(x), "samples_done": n_done, "sampling_seconds": secs})
        results[folder.name] = m
        print(folder.name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}, flush=True)
    name = f"metrics_limit{a.limit}.json" if a.limit else "metrics.json"
    (root / name).write_text(json.dumps(results, indent=1))


def cmd_bound(a) -> None:
    device = resolve_device(a.device)
    model = load_model(a.run_dir).to(device)
    config = config_of(a.run_dir, "ddpm")
    test = _data_of(config, "test", subset=0)
    n = min(a.examples, len(test.x))
    g = generator(a.seed, 1)
    totals, parts = [], {"prior": 0.0, "diffusion": 0.0, "decoder": 0.0}
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, n, a.batch_size):
            xb, yb = test.x[i:min(i + a.batch_size, n)].to(device), test.y[i:min(i + a.batch_size, n)].to(device)
            terms = model.variational_bound(xb, yb if model.num_classes else None, t_samples=a.t_samples,
                                            decoder="discrete", generator=g)
            totals.append(terms["total"].double().cpu())
            for k in parts:
                parts[k] += float(terms[k].double().sum())
    tot = torch.cat(totals)
    D = int(torch.tensor(test.shape).prod())
    bpd = 1.0 / (D * math.log(2))
    res = {"examples": n, "t_samples": a.t_samples, "labels": "conditional" if model.num_classes else "none",
           "bound_nats": float(tot.mean()), "bound_nats_stderr": float(tot.std() / math.sqrt(n)),
           "bits_per_dim": float(tot.mean()) * bpd, "bits_per_dim_stderr": float(tot.std() / math.sqrt(n)) * bpd,
           **{f"{k}_nats": v / n for k, v in parts.items()}, "seconds": time.time() - t0, "load": load_avg()}
    print(res, flush=True)
    (Path(a.out) / f"bound_{n}x{a.t_samples}.json").write_text(json.dumps(res, indent=1))


def cmd_plot(a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads((Path(a.out) / "metrics.json").read_text())
    rows = sorted((r["guidance"], r) for r in res.values() if r["sampler"] == a.sampler and r["steps"] == a.steps)
    w = [g for g, _ in rows]
    fid = [r["eval/fid"] for _, r in rows]
    acc = [100 * r["eval/label_accuracy"] for _, r in rows]
    n = {r["num_samples"] for _, r in rows}
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(w, fid, "o-", color="C0")
    ax[0].set_xlabel("guidance weight w")
    ax[0].set_ylabel("MNIST-FID (lower is better)", color="C0")
    acc_ax = ax[0].twinx()
    acc_ax.plot(w, acc, "s--", color="C1")
    acc_ax.axhline(98, color="grey", ls=":", lw=1)
    acc_ax.set_ylabel("label accuracy (%), target 98", color="C1")
    ax[1].plot(acc, fid, "o-")
    for wi, ai, fi in zip(w, acc, fid):
        ax[1].annotate(f"w={wi:g}", (ai, fi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax[1].axvline(98, color="grey", ls=":", lw=1)
    ax[1].set_xlabel("label accuracy of the fixed classifier (%)")
    ax[1].set_ylabel("MNIST-FID")
    fig.suptitle(f"{a.title}classifier-free guidance, {a.sampler.upper()}-{a.steps}, "
                 f"{'/'.join(map(str, n))} samples per w")
    fig.tight_layout()
    Path(a.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.png, dpi=120)
    print("wrote", a.png)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("run_dir")
    s.add_argument("--out", required=True)
    s.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--guidance", type=float, default=0.0)
    s.add_argument("-n", type=int, default=2000)
    s.add_argument("--chunk", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    m = sub.add_parser("metrics")
    m.add_argument("out")
    m.add_argument("--limit", type=int, default=0)
    b = sub.add_parser("bound")
    b.add_argument("run_dir")
    b.add_argument("--out", required=True)
    b.add_argument("--examples", type=int, default=1000)
    b.add_argument("--t-samples", type=int, default=32)
    b.add_argument("--batch-size", type=int, default=250)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    pl = sub.add_parser("plot")
    pl.add_argument("out")
    pl.add_argument("--sampler", default="ddim")
    pl.add_argument("--steps", type=int, default=20)
    pl.add_argument("--png", default="docs/figures/ddpm_mnist_guidance.png")
    pl.add_argument("--title", default="", help="prefix of the figure title, e.g. 'latent diffusion: '")
    a = p.parse_args()
    {"sample": cmd_sample, "metrics": cmd_metrics, "bound": cmd_bound, "plot": cmd_plot}[a.cmd](a)


if __name__ == "__main__":
    main()
