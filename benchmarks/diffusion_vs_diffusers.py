"""Speed side by side, like for like: mlcanon's DDPM (``ImageDenoiser(res_blocks=N)`` + ``GaussianDiffusion`` +
DDIM) vs Hugging Face diffusers' ``UNet2DModel`` + ``DDPMScheduler`` / ``DDIMScheduler``, the same architecture.

    python benchmarks/diffusion_vs_diffusers.py --device cpu --batch 64
    python benchmarks/diffusion_vs_diffusers.py --device cuda --batch 256 --train-steps 50 --warmup 10 \\
        --sample-steps 50 --precision bf16 --channels-last --compile --json speed.json

The architecture (both sides): Ho et al. 2020's U-Net with channels (32, 64, 64) at 28x28, 14x14, 7x7,
``--res-blocks`` N ResNet blocks per level going down and N + 1 going up (skip connections from conv_in, every
down block and every downsample), a ResNet-attention-ResNet mid block, self-attention (4 heads of 16) after the
ResNet blocks of the 7x7 level, GroupNorm(8), SiLU, 3x3 conv downsampling (stride 2) and nearest + 3x3 conv
upsampling, a sinusoidal time embedding of width 32 through a 2-layer MLP of width 128, dropout 0. The two
networks have the same parameter tensors (checked at start-up: the script maps each of ours to its diffusers
name and stops if a shape differs), and by default (``--init same``) diffusers' model starts from our initial
weights. What still differs: diffusers' attention calls ``F.scaled_dot_product_attention`` where ours spells
softmax(QK^T/sqrt d)V out, and diffusers' noising (``add_noise``) and DDIM step run in its own code (the
noise schedule values are the same, Ho et al.'s linear betas).

Timed, for each library (the function a user calls; both get the same data, Adam, lr, batch, steps, warm-up,
repeats and RNG draws for t and eps):
- training images/s: ours ``GaussianDiffusion.loss({"x": x})`` (Algorithm 1); diffusers' training-example step
  ``add_noise`` + ``unet(x_t, t).sample`` + MSE; then backward and ``Adam.step`` on both;
- sampling images/s: ours ``GaussianDiffusion.sample(n, sampler="ddim", steps=S)``; diffusers the loop of its
  ``DDIMPipeline`` (``DDIMScheduler.set_timesteps`` / ``unet`` / ``step(eta=0)``) without the numpy
  conversion; both from the same x_T;
- ``--compile`` (= ``--compile model``) wraps the whole network (``model.net`` / the ``UNet2DModel``) in
  ``torch.compile`` on both sides; ``--compile blocks`` compiles each ResNet and attention block in place instead
  (regional compilation: our ``_ResBlock`` / ``SelfAttention2d``, diffusers' ``ResnetBlock2D`` / ``Attention``;
  one graph per block shape, about 8 per side here, so it is not much cheaper for a U-Net). The first step of each
  side (and one untimed sampling call) holds the compilation, reported apart (``compile_train_s``,
  ``compile_sample_s``: the first call minus a timed one), and ``graphs_compiled_in_timed_*`` counts any graph
  built inside a timed region (0 expected). A cold compile is slow: on an H200, ``--compile model`` took 85 s
  (ours) and 64 s (diffusers) for the training graphs alone (the sampling graphs come on top), so a compiled GPU
  run needs several minutes; the eager runs take about 30 s. CUDA, cuBLAS and cuDNN are initialized before either
  side runs;
- the timed steps run in ``--rounds`` rounds, the two sides alternating (ours first in even rounds), each side
  with its own RNG state, so a load change on a shared machine hits both; load averages are recorded.

diffusers is a bench-only extra (``pip install diffusers``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mlcanon.generative.diffusion.model import GaussianDiffusion, ImageDenoiser
from mlcanon.generative.diffusion.schedules import NoiseSchedule
from mlcanon.nn.unet import SelfAttention2d, _ResBlock

CHANNELS = (32, 64, 64)          # base 32 x channel_mult (1, 2, 2)
HEADS = 4                        # 64 channels at 7x7 -> 4 heads of 16
GROUPS = 8                       # GroupNorm groups (ours: gcd(8, C) = 8 for 32 and 64 channels)
T = 1000


# ---------------------------------------------------------------------------------------------- the models
def ours(res_blocks: int) -> GaussianDiffusion:
    net = ImageDenoiser(1, (28, 28), base_channels=CHANNELS[0], depth=len(CHANNELS) - 1,
                        channel_mult=tuple(c // CHANNELS[0] for c in CHANNELS), attn_levels=(len(CHANNELS) - 1,),
                        heads=HEADS, dropout=0.0, res_blocks=res_blocks)
    return GaussianDiffusion(net, NoiseSchedule.make("linear", T), (1, 28, 28), clip=(-1.0, 1.0))


def theirs(res_blocks: int):
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    L = len(CHANNELS)
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=CHANNELS,
                       down_block_types=("DownBlock2D",) * (L - 1) + ("AttnDownBlock2D",),
                       up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (L - 1), layers_per_block=res_blocks,
                       norm_num_groups=GROUPS, attention_head_dim=CHANNELS[-1] // HEADS, dropout=0.0,
                       flip_sin_to_cos=False, freq_shift=0)   # (sin, cos) order as ours; same frequencies
    sched = {"num_train_timesteps": T, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    return unet, DDPMScheduler(**sched), DDIMScheduler(**sched, clip_sample=True, clip_sample_range=1.0)


_RES = {"norm1": "norm1", "conv1": "conv1", "emb": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
        "skip": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "attn.q_proj": "to_q", "attn.k_proj": "to_k", "attn.v_proj": "to_v",
         "attn.out_proj": "to_out.0"}


def diffusers_name(name: str, res_blocks: int) -> str:
    """The diffusers ``UNet2DModel`` parameter name of our ``DDPMUNet`` parameter ``name`` (``unet.`` stripped)."""
    n = res_blocks
    sub = {"conv_in": "conv_in", "time_mlp.0": "time_embedding.linear_1", "time_mlp.2": "time_embedding.linear_2",
           "out.0": "conv_norm_out", "out.2": "conv_out"}
    m = re.fullmatch(r"(.+)\.(weight|bias)", name)
    mod, kind = m.group(1), m.group(2)
    if mod in sub:
        return f"{sub[mod]}.{kind}"
    parts = mod.split(".", 2)
    head, rest = parts[0], ".".join(parts[1:])
    if head in ("mid1", "mid2"):
        return f"mid_block.resnets.{int(head[-1]) - 1}.{_RES[rest]}.{kind}"
    if head == "mid_attn":
        return f"mid_block.attentions.0.{_ATTN[rest]}.{kind}"
    i, leaf = int(parts[1]), ".".join(parts[2:])
    if head == "downsample":
        return f"down_blocks.{i}.downsamplers.0.conv.{kind}"
    if head == "upsample":
        return f"up_blocks.{i}.upsamplers.0.conv.{kind}"
    if head in ("down", "down_attn"):
        blk, j = divmod(i, n)
        return f"down_blocks.{blk}." + (f"resnets.{j}.{_RES[leaf]}" if head == "down" else
                                        f"attentions.{j}.{_ATTN[leaf]}") + f".{kind}"
    if head in ("up", "up_attn"):
        blk, j = divmod(i, n + 1)
        return f"up_blocks.{blk}." + (f"resnets.{j}.{_RES[leaf]}" if head == "up" else
                                      f"attentions.{j}.{_ATTN[leaf]}") + f".{kind}"
    raise KeyError(name)


def to_diffusers_state(net_state: dict, res_blocks: int) -> dict:
    """Our ``ImageDenoiser`` state dict renamed to load into the diffusers model (shapes checked by the load)."""
    return {diffusers_name(k[len("unet."):], res_blocks): v for k, v in net_state.items()}


# ------------------------------------------------------------------------------------------------- helpers
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
    return [x[i.to(device)].contiguous() for i in idx]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device, precision):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class RNG:
    """One side's global RNG stream (CPU and CUDA), swapped in before each of its chunks: the two sides draw the
    same t and eps whatever the interleaving."""

    def __init__(self, seed: int, device):
        self.device = device
        torch.manual_seed(seed)
        self.save()

    def save(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def load(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def warm_up(device, precision):
    """CUDA context, cuBLAS / cuDNN handles and the allocator, paid before either side is measured."""
    x = torch.randn(8, 8, 16, 16, device=device, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, device=device, requires_grad=True)
    with autocast(device, precision):
        y = F.conv2d(x, w, padding=1).flatten(1) @ torch.randn(2048, 8, device=device)
    y.float().sum().backward()
    sync(device)


def compiled_graphs() -> int:
    """Graphs torch.compile has built so far in this process (all sides)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def load_avg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def chunks(n: int, k: int) -> list[int]:
    """n split into k near-equal positive parts (fewer parts if n < k)."""
    k = max(1, min(k, n))
    return [n // k + (i < n % k) for i in range(k)]


# --------------------------------------------------------------------------------------------------- bench
def bench(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True     # both sides: cuDNN picks its conv algorithms
    import diffusers
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                 else f"cpu x{torch.get_num_threads()} threads",
                 "batch": args.batch, "precision": args.precision, "channels_last": args.channels_last,
                 "compile": args.compile, "res_blocks": args.res_blocks, "channels": list(CHANNELS),
                 "attention": f"7x7 level and mid block, {HEADS} heads", "groupnorm_groups": GROUPS,
                 "time_embedding": f"sinusoid {CHANNELS[0]} -> MLP {4 * CHANNELS[0]}", "init": args.init,
                 "train_steps": args.train_steps, "warmup": args.warmup, "rounds": args.rounds, "lr": args.lr,
                 "sample_steps": args.sample_steps, "sample_repeats": args.sample_repeats,
                 "torch": torch.__version__, "diffusers": diffusers.__version__, "load_avg_start": load_avg()}
    t_start = time.perf_counter()
    data = mnist_batches(args.train_steps, args.batch, device, args.seed)

    torch.manual_seed(args.seed)
    model = ours(args.res_blocks)
    unet, ddpm, ddim = theirs(args.res_blocks)
    pairs = {k[len("unet."):]: (tuple(v.shape), diffusers_name(k[len("unet."):], args.res_blocks))
             for k, v in model.net.state_dict().items()}
    their_shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    bad = [(k, s, d, their_shapes.get(d)) for k, (s, d) in pairs.items() if their_shapes.get(d) != s]
    if bad or len(pairs) != len(their_shapes):
        raise SystemExit(f"architectures differ: {bad[:5]} ({len(pairs)} vs {len(their_shapes)} tensors)")
    if args.init == "same":
        unet.load_state_dict(to_diffusers_state(model.net.state_dict(), args.res_blocks))
    res["params_ours"] = sum(p.numel() for p in model.parameters())
    res["params_diffusers"] = sum(p.numel() for p in unet.parameters())
    print(f"# parameters: ours {res['params_ours']:,}, diffusers {res['params_diffusers']:,} "
          f"({len(pairs)} tensors, the same shapes)", flush=True)
    model.to(device)
    unet.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        unet.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    opt2 = torch.optim.Adam(unet.parameters(), lr=args.lr)
    fwd = unet
    if args.compile == "model":
        model.net = torch.compile(model.net)
        fwd = torch.compile(unet)
    elif args.compile == "blocks":   # regional compilation: each ResNet / attention block on both sides
        torch._dynamo.config.recompile_limit = 64    # one code object, many block shapes, train and no-grad
        from diffusers.models.attention_processor import Attention
        from diffusers.models.resnet import ResnetBlock2D
        for kinds, net in (((_ResBlock, SelfAttention2d), model.net), ((ResnetBlock2D, Attention), unet)):
            for m in net.modules():
                if isinstance(m, kinds):
                    m.compile()
    warm_up(device, args.precision)

    def our_step(x):
        with autocast(device, args.precision):
            loss = model.loss({"x": x})["loss"]                       # t ~ U, eps ~ N(0, I), ||eps - f||^2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def their_step(x):   # diffusers' train_unconditional example, the same draws in the same order as ours
        t = torch.randint(0, T, (x.shape[0],), device=device)
        noise = torch.randn_like(x)
        with autocast(device, args.precision):
            pred = fwd(ddpm.add_noise(x, noise, t), t).sample
            loss = F.mse_loss(pred.float(), noise)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()
        return loss.detach()

    sides = {"ours": our_step, "diffusers": their_step}
    rng = {name: RNG(args.seed + 1, device) for name in sides}
    losses: dict[str, list] = {name: [] for name in sides}

    def run(name, batches):
        rng[name].load()
        step = sides[name]
        for x in batches:
            losses[name].append(step(x))
        sync(device)
        rng[name].save()

    # warm-up (and compilation), untimed: the first step alone, then the rest of the warm-up
    for name in sides:
        sync(device)
        t0 = time.perf_counter()
        run(name, data[:1])
        res[f"first_step_s_{name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run(name, data[1:args.warmup])
        res[f"warmup_rest_s_{name}"] = time.perf_counter() - t0
    timed = data[args.warmup:]
    per_round = {name: [] for name in sides}
    graphs = compiled_graphs()
    start = 0
    for r, n in enumerate(chunks(len(timed), args.rounds)):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            run(name, timed[start:start + n])
            per_round[name].append((n * args.batch, time.perf_counter() - t0))
        start += n
    res["graphs_compiled_in_timed_training"] = compiled_graphs() - graphs   # 0 unless a recompilation was timed
    for name in sides:
        imgs, secs = sum(a for a, _ in per_round[name]), sum(b for _, b in per_round[name])
        res[f"train_images_per_s_{name}"] = imgs / secs if secs else float("nan")
        res[f"train_images_per_s_rounds_{name}"] = [a / b for a, b in per_round[name]]
        # compile time: the first step minus a timed step's mean
        res[f"compile_train_s_{name}"] = res[f"first_step_s_{name}"] - (secs / max(1, len(timed)))
        curve = [float(v) for v in losses[name]]
        res[f"loss_curve_{name}"] = curve
        tail = curve[-min(10, len(curve)):]
        res[f"final_loss_{name}"] = sum(tail) / len(tail)
        print(json.dumps({k: v for k, v in res.items() if k.endswith(name) and "curve" not in k}), flush=True)
    res["train_ratio"] = res["train_images_per_s_ours"] / res["train_images_per_s_diffusers"]
    n = len(res["loss_curve_ours"])
    w = max(1, n // 10)
    print(f"# loss curves (mean over windows of {w} steps; the first {args.warmup} steps are the warm-up)")
    print("# steps        ours    diffusers")
    for i in range(0, n, w):
        a, b = res["loss_curve_ours"][i:i + w], res["loss_curve_diffusers"][i:i + w]
        print(f"# {i + 1:5d}-{min(n, i + w):<5d} {sum(a) / len(a):8.4f} {sum(b) / len(b):10.4f}")

    # ---------------------------------------------------------------------------------------- sampling
    model.eval()
    unet.eval()
    g = torch.Generator().manual_seed(args.seed + 2)
    x_T = torch.randn(args.batch, 1, 28, 28, generator=g).to(device)

    def our_sample():
        with autocast(device, args.precision):
            return model.sample(args.batch, sampler="ddim", steps=args.sample_steps, eta=0.0, x_T=x_T)

    @torch.no_grad()
    def their_sample():   # DDIMPipeline.__call__'s loop
        ddim.set_timesteps(args.sample_steps)
        x = x_T
        for t in ddim.timesteps:
            with autocast(device, args.precision):
                eps = fwd(x, t.to(device)).sample
            x = ddim.step(eps.float(), t, x, eta=0.0).prev_sample
        return x

    samplers = {"ours": our_sample, "diffusers": their_sample}
    for name, fn in samplers.items():
        sync(device)
        t0 = time.perf_counter()
        fn()                                    # warm-up (and compilation of the no-grad graph)
        sync(device)
        res[f"first_sample_s_{name}"] = time.perf_counter() - t0
    times = {name: [] for name in samplers}
    graphs = compiled_graphs()
    for r in range(args.sample_repeats):
        for name in (list(samplers) if r % 2 == 0 else list(samplers)[::-1]):
            sync(device)
            t0 = time.perf_counter()
            samplers[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    res["graphs_compiled_in_timed_sampling"] = compiled_graphs() - graphs
    for k in ("graphs_compiled_in_timed_training", "graphs_compiled_in_timed_sampling"):
        if res[k]:
            print(f"# WARNING: {res[k]} graphs were compiled inside the timed region ({k}): raise --warmup",
                  flush=True)
    for name in samplers:
        res[f"sample_images_per_s_{name}"] = args.sample_repeats * args.batch / sum(times[name])
        res[f"sample_s_repeats_{name}"] = times[name]
        res[f"compile_sample_s_{name}"] = res[f"first_sample_s_{name}"] - sum(times[name]) / len(times[name])
        print(json.dumps({k: res[k] for k in (f"sample_images_per_s_{name}", f"compile_sample_s_{name}")}),
              flush=True)
    res["sample_ratio"] = res["sample_images_per_s_ours"] / res["sample_images_per_s_diffusers"]
    res["load_avg_end"] = load_avg()
    res["total_s"] = time.perf_counter() - t_start
    return res


def table(res: dict) -> str:
    rows = ["| | ours (mlcanon) | diffusers | ratio |", "|---|---|---|---|"]
    for label, key, fmt in (("parameters", "params", "{:,}"), ("train images/s", "train_images_per_s", "{:.1f}"),
                            ("DDIM sampling images/s", "sample_images_per_s", "{:.1f}"),
                            (f"loss, mean of the last 10 of {res['train_steps']} steps", "final_loss", "{:.4f}"),
                            ("compile / first train step, s", "compile_train_s", "{:.1f}"),
                            ("compile / first sampling call, s", "compile_sample_s", "{:.1f}")):
        a, b = res[f"{key}_ours"], res[f"{key}_diffusers"]
        rows.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f}x |" if b else
                    f"| {label} | {fmt.format(a)} | {fmt.format(b)} | |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", nargs="?", const="model", default="", choices=("model", "blocks"),
                   help="torch.compile on both sides: the whole network (model, the default) or each ResNet and "
                        "attention block (blocks)")
    p.add_argument("--res-blocks", type=int, default=2,
                   help="ResNet blocks per level down (N + 1 up) on both sides (Ho et al. and diffusers: 2)")
    p.add_argument("--init", choices=("same", "own"), default="same",
                   help="same: diffusers' model starts from our initial weights; own: each its own init")
    p.add_argument("--train-steps", type=int, default=60, help="training steps in all (warm-up included)")
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps (compilation, allocator)")
    p.add_argument("--rounds", type=int, default=4, help="the timed steps in this many rounds, sides alternating")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sample-repeats", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.train_steps <= args.warmup:
        p.error("need 1 <= --warmup < --train-steps")
    if args.res_blocks < 1 or args.sample_repeats < 1 or args.rounds < 1:
        p.error("--res-blocks, --sample-repeats and --rounds must be >= 1")
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    res = bench(args)
    print(table(res))
    print(json.dumps({k: v for k, v in res.items() if "curve" not in k}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
