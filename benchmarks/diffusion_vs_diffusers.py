"""Speed side by side: mlcanon's DDPM (U-Net + schedule + DDIM sampler) vs Hugging Face diffusers'
``UNet2DModel`` + ``DDPMScheduler`` / ``DDIMScheduler``, same channels, depth, attention level and batch.

    python benchmarks/diffusion_vs_diffusers.py --device cpu --batch 64
    python benchmarks/diffusion_vs_diffusers.py --device cuda --batch 256 --precision bf16 --channels-last --compile

Measured for each library (the function a user calls is the one timed; both get the same warm-up and repeats):
- training images/s: forward (noise a batch, predict eps), MSE, backward, Adam step;
- sampling images/s: a DDIM loop of ``--sample-steps`` steps (eta = 0) from noise, batch ``--batch``;
- loss after ``--train-steps`` steps on MNIST (same data order and lr) so the throughputs compare models that
  learn alike.

Architectures: channels (32, 64, 64) at resolutions 28, 14, 7 with self-attention at 7x7, GroupNorm(8), SiLU,
sinusoidal time embedding. diffusers' UNet2DModel has at least one ResNet block per level going down and two
per level going up, plus a mid block (ResNet, attention, ResNet); mlcanon's U-Net has one block per level each
way and one bottleneck block. The parameter counts are printed beside the speeds: the models are not the same
size, and the ratio is reported as measured, with both counts. diffusers is a bench-only extra
(``pip install diffusers``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mlcanon.generative.diffusion.model import GaussianDiffusion, ImageDenoiser
from mlcanon.generative.diffusion.samplers import DDIMSampler
from mlcanon.generative.diffusion.schedules import NoiseSchedule


def mnist_batches(n_steps: int, batch: int, device, seed: int = 0):
    """Real MNIST in [-1, 1] (``MLCANON_DATA``), the same order for both libraries; noise if unavailable."""
    from mlcanon.data import load
    from mlcanon.errors import UserError
    try:
        x = load("mnist", "train").x[: max(batch * 50, 10_000)] * 2 - 1
    except UserError as e:
        print(f"# MNIST unavailable ({e}); timing on random images", file=sys.stderr)
        x = torch.rand(batch * 50, 1, 28, 28) * 2 - 1
    g = torch.Generator().manual_seed(seed)
    idx = [torch.randint(len(x), (batch,), generator=g) for _ in range(n_steps)]
    x = x.to(device)
    return [x[i.to(device)] for i in idx]


def ours(device, channels_last: bool):
    net = ImageDenoiser(1, (28, 28), base_channels=32, depth=2, channel_mult=(1, 2, 2), attn_levels=(2,), heads=4,
                        dropout=0.0)
    model = GaussianDiffusion(net, NoiseSchedule.make("linear", 1000), (1, 28, 28), clip=(-1.0, 1.0)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def theirs(device, channels_last: bool):
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=8, attention_head_dim=16).to(device)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return unet, DDPMScheduler(num_train_timesteps=1000), DDIMScheduler(num_train_timesteps=1000)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device, precision):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def bench(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = mnist_batches(args.train_steps, args.batch, device)
    res: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
                 "batch": args.batch, "precision": args.precision, "channels_last": args.channels_last,
                 "compile": args.compile, "torch": torch.__version__}
    import diffusers
    res["diffusers"] = diffusers.__version__

    # ---------------------------------------------------------------------------------- ours
    model = ours(device, args.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step_fn = torch.compile(model.loss) if args.compile else model.loss

    def our_step(x):
        with autocast(device, args.precision):
            loss = step_fn({"x": x})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    # ------------------------------------------------------------------------------- diffusers
    unet, ddpm, ddim = theirs(device, args.channels_last)
    opt2 = torch.optim.Adam(unet.parameters(), lr=args.lr)
    fwd = torch.compile(unet) if args.compile else unet

    def their_step(x):
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (x.shape[0],), device=device)
        with autocast(device, args.precision):
            pred = fwd(ddpm.add_noise(x, noise, t), t).sample
            loss = F.mse_loss(pred.float(), noise)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()
        return loss

    res["params_ours"] = sum(p.numel() for p in model.parameters())
    res["params_diffusers"] = sum(p.numel() for p in unet.parameters())
    for name, step in (("ours", our_step), ("diffusers", their_step)):
        torch.manual_seed(1)
        losses = []
        for i, x in enumerate(data):
            if i == args.warmup:
                sync(device)
                t0 = time.perf_counter()
            loss = step(x)
            if i % 10 == 0 or i >= len(data) - 50:
                losses.append(float(loss.detach()))
        sync(device)
        dt = time.perf_counter() - t0
        res[f"train_images_per_s_{name}"] = (len(data) - args.warmup) * args.batch / dt
        tail = losses[-50:]
        res[f"final_loss_{name}"] = sum(tail) / len(tail)
        print(json.dumps({k: v for k, v in res.items() if name in k}), flush=True)   # partial results survive a timeout

    # ---------------------------------------------------------------------------------- sampling
    model.eval()
    unet.eval()
    sampler = DDIMSampler(model.schedule, steps=args.sample_steps, eta=0.0, clip=(-1.0, 1.0))
    eps_fn = torch.compile(model.eps) if args.compile else model.eps

    def our_sample():
        x = torch.randn(args.batch, 1, 28, 28, device=device)
        with autocast(device, args.precision):
            return sampler.sample(lambda x, t: eps_fn(x, t).float(), x)

    @torch.no_grad()
    def their_sample():
        ddim.set_timesteps(args.sample_steps)
        x = torch.randn(args.batch, 1, 28, 28, device=device)
        for t in ddim.timesteps:
            with autocast(device, args.precision):
                eps = fwd(x, t.to(device)).sample.float()
            x = ddim.step(eps, t, x, eta=0.0).prev_sample
        return x

    for name, fn in (("ours", our_sample), ("diffusers", their_sample)):
        fn()                                    # warm-up (and compilation)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.sample_repeats):
            fn()
        sync(device)
        res[f"sample_images_per_s_{name}"] = args.sample_repeats * args.batch / (time.perf_counter() - t0)
        print(json.dumps({f"sample_images_per_s_{name}": res[f"sample_images_per_s_{name}"]}), flush=True)
    res["train_ratio"] = res["train_images_per_s_ours"] / res["train_images_per_s_diffusers"]
    res["sample_ratio"] = res["sample_images_per_s_ours"] / res["sample_images_per_s_diffusers"]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sample-repeats", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    res = bench(args)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
