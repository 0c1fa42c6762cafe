"""RealNVP on toy2d:moons, mlcanon vs the ``normflows`` package (pip install 'mlcanon[bench]' normflows).

Same model on both sides, as normflows' own RealNVP example builds it: K affine couplings with alternating
masks, each followed by ActNorm, over a standard normal; normflows uses two MLPs (s and t, [2, H, H, 2]) per
coupling, mlcanon one MLP [2, H', H', 4] with H' chosen so the parameter counts match (H = 64 -> H' = 90).
mlcanon's model is the one ``mlcanon train realnvp --dataset toy2d:moons --norm actnorm --hidden 90`` builds
(``realnvp.build``: its couplings and ActNorms run as one fused autograd node), its optimizer the trainer's
(``mlcanon.training.make_optimizer``: fused Adam). normflows gets its fastest configuration: torch's Adam with
``fused=True`` too (on CPU the default per-tensor loop is about half as fast, on both sides).
Same data (10,000 training points, 10,000 test points), same batches, same learning rate, same number of
steps. The two trainings run interleaved in rounds, so a change of machine load hits both alike. Timed: the
training step a user writes (loss, backward, optimizer step); the data-dependent ActNorm initialization on the
first batch is a one-off set-up cost, reported in its own column. Reported: steps/s and test NLL (nats) of each.

    OMP_NUM_THREADS=1 python benchmarks/flows_vs_normflows.py --steps 2000

``--model glow``: Glow on MNIST (28 x 28, dequantized y = (255 x + u) / 256 as both packages' examples do),
L levels of K steps (ActNorm, LU-decomposed invertible 1x1 convolution, affine coupling on the channel halves
with a conv 3x3 - ReLU - conv 1x1 - ReLU - conv 3x3 net of ``--hidden`` channels), half of the channels factored
out after each level but the last. mlcanon: ``glow.build`` (``mlcanon train glow --levels L --steps K --hidden
H``; coupling net input: the kept C/2 channels, output C as Glow 3.3, ``--coupling masked``: the older
channel-mask coupling, net input the masked C channels, output 2C; scale sigmoid(h + 2) as Glow's code and
normflows, ``--scale tanh``: the older exp(c tanh h); learned conditional prior of the factored half);
normflows: ``GlowBlock`` + ``MultiscaleFlow`` as its examples/glow.ipynb (net input C/2, output C; sigmoid
scale; a learned diagonal Gaussian per level), in channels-last memory (model and batches) by default, its
fastest configuration on CPU as ours (``--peer-layout default``: NCHW, about 1.2x slower). Same dequantized
batches; reported: steps/s and test bits/dim (NLL + D ln 256) / (D ln 2) on the first ``--test-images`` test
digits (dequantized once, seeded).

    OMP_NUM_THREADS=1 python benchmarks/flows_vs_normflows.py --model glow --steps 200 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from mlcanon.data import load, toy2d
from mlcanon.generative.flows import glow, realnvp
from mlcanon.generative.flows.flow import Flow
from mlcanon.generative.flows.layers import dequantize
from mlcanon.training import make_optimizer


def ours(K: int, hidden: int) -> Flow:
    """The model of ``mlcanon train realnvp --dataset toy2d:moons --norm actnorm --couplings K --hidden H``."""
    config = realnvp.RealNVPConfig(dataset="toy2d:moons", couplings=K, hidden=hidden, norm="actnorm")
    return realnvp.build(config, (2,), False)


def theirs(K: int, hidden: int):
    import normflows as nf
    b = torch.tensor([1.0 if i % 2 == 0 else 0.0 for i in range(2)])
    flows = []
    for k in range(K):
        s = nf.nets.MLP([2, hidden, hidden, 2], init_zeros=True)
        t = nf.nets.MLP([2, hidden, hidden, 2], init_zeros=True)
        flows += [nf.flows.MaskedAffineFlow(b if k % 2 == 0 else 1 - b, t, s), nf.flows.ActNorm(2)]
    return nf.NormalizingFlow(nf.distributions.base.DiagGaussian(2, trainable=False), flows)


def ours_glow(levels: int, steps: int, hidden: int, coupling: str = "half") -> Flow:
    """The model of ``mlcanon train glow --dataset mnist --levels L --steps K --hidden H --coupling C``."""
    config = glow.GlowConfig(dataset="mnist", levels=levels, steps=steps, hidden=hidden, coupling=coupling)
    return glow.build(config, (1, 28, 28), True)


def theirs_glow(levels: int, steps: int, hidden: int, shape=(1, 28, 28)):
    """normflows' examples/glow.ipynb, unconditional: level i (0 = the deepest) has K GlowBlocks on
    C 2^(L+1-i) channels and a Squeeze; a learned diagonal Gaussian base per level."""
    import normflows as nf
    C, H, W = shape
    q0, merges, flows = [], [], []
    for i in range(levels):
        flows.append([nf.flows.GlowBlock(C * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                      for _ in range(steps)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (C * 2 ** (levels - i), H // 2 ** (levels - i), W // 2 ** (levels - i))
        else:
            latent = (C * 2 ** (levels + 1), H // 2 ** levels, W // 2 ** levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def toy_setup(args):
    train = toy2d.load("moons", "train", n=10000).x
    test = toy2d.load("moons", "test", n=10000).x
    models = {"mlcanon": ours(args.couplings, 90), "normflows": theirs(args.couplings, 64)}
    nll = {"mlcanon": lambda m, x: m.loss({"x": x})["loss"], "normflows": lambda m, x: m.forward_kld(x)}
    log_prob = {"mlcanon": lambda m, x: m.log_prob(x), "normflows": lambda m, x: m.log_prob(x)}
    g = torch.Generator().manual_seed(args.seed)
    batches = [train[torch.randint(len(train), (args.batch_size,), generator=g)] for _ in range(args.steps)]
    return models, nll, log_prob, batches, test, None


def glow_setup(args):
    train = load("mnist", "train").x
    test = load("mnist", "test").x[:args.test_images]
    models = {"mlcanon": ours_glow(args.levels, args.flow_steps, args.hidden, args.coupling),
              "normflows": theirs_glow(args.levels, args.flow_steps, args.hidden)}
    fmt = torch.channels_last if args.peer_layout == "channels-last" else torch.contiguous_format
    models["normflows"] = models["normflows"].to(memory_format=fmt)       # NHWC convolutions: faster on CPU
    nll = {"mlcanon": lambda m, x: m.loss({"x": x})["loss"],
           "normflows": lambda m, x: m.forward_kld(x.contiguous(memory_format=fmt))}
    log_prob = {"mlcanon": lambda m, x: m.log_prob(x),
                "normflows": lambda m, x: m.log_prob(x.contiguous(memory_format=fmt), None)}
    g = torch.Generator().manual_seed(args.seed)
    batches = [dequantize(train[torch.randint(len(train), (args.batch_size,), generator=g)], g)
               for _ in range(args.steps)]                    # y = (255 x + u) / 256, the same y for both
    return models, nll, log_prob, batches, dequantize(test, torch.Generator().manual_seed(2718)), 28 * 28


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("realnvp", "glow"), default="realnvp",
                    help="realnvp: toy2d:moons; glow: MNIST")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--couplings", type=int, default=8, help="realnvp: affine couplings")
    ap.add_argument("--levels", type=int, default=2, help="glow: levels L")
    ap.add_argument("--flow-steps", type=int, default=4, help="glow: steps K per level")
    ap.add_argument("--hidden", type=int, default=64, help="glow: hidden channels of each coupling's net")
    ap.add_argument("--coupling", choices=("half", "masked"), default="half",
                    help="glow: mlcanon's coupling (half: Glow's, the default of mlcanon train glow)")
    ap.add_argument("--peer-layout", choices=("channels-last", "default"), default="channels-last",
                    help="glow: normflows' memory format (channels-last: its fastest on CPU)")
    ap.add_argument("--test-images", type=int, default=1000, help="glow: test digits scored")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 256 (realnvp), 32 (glow)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.batch_size is None:
        args.batch_size = 256 if args.model == "realnvp" else 32
    torch.manual_seed(args.seed)
    models, nll, log_prob, batches, test, num_dims = (toy_setup if args.model == "realnvp" else glow_setup)(args)
    opts = {"mlcanon": make_optimizer("adam", models["mlcanon"].parameters(), args.lr),           # fused Adam
            "normflows": torch.optim.Adam(models["normflows"].parameters(), lr=args.lr, fused=True)}
    setup = {}
    for name, m in models.items():   # data-dependent ActNorm initialization on the first batch: one-off set-up
        t = time.perf_counter()
        with torch.no_grad():
            nll[name](m, batches[0])
        setup[name] = time.perf_counter() - t
    wall = dict.fromkeys(models, 0.0)
    per_round = args.steps // args.rounds
    for r in range(args.rounds):
        for name, m in models.items():
            t = time.perf_counter()
            for x in batches[r * per_round:(r + 1) * per_round]:
                loss = nll[name](m, x)          # E[-log p(x)] in nats (normflows: forward KL up to a constant)
                opts[name].zero_grad()
                loss.backward()
                opts[name].step()
            wall[name] += time.perf_counter() - t
    out = {}
    for name, m in models.items():
        m.eval()
        with torch.no_grad():
            lp = torch.cat([log_prob[name](m, x) for x in test.split(250)])
        finite = torch.isfinite(lp)
        out[name] = {"steps_per_s": per_round * args.rounds / wall[name], "test_nll_nats": float(-lp.mean()),
                     "test_nll_nats_finite_points": float(-lp[finite].mean()),
                     "non_finite_test_points": int((~finite).sum()),
                     "params": sum(p.numel() for p in m.parameters()), "setup_s": setup[name],
                     "optimizer": type(opts[name]).__name__ + (" (fused)" if opts[name].defaults.get("fused") else "")}
        if num_dims is not None:   # bits/dim = (NLL_y + D ln 256) / (D ln 2), the dequantization term included
            out[name]["test_bits_per_dim"] = (float(-lp.mean()) + num_dims * math.log(256)) / (num_dims * math.log(2))
    out["steps_per_s_ratio_mlcanon_over_normflows"] = out["mlcanon"]["steps_per_s"] / out["normflows"]["steps_per_s"]
    out["config"] = vars(args) | {"threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
