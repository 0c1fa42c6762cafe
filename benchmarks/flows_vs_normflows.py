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
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mlcanon.data import toy2d
from mlcanon.generative.flows import realnvp
from mlcanon.generative.flows.flow import Flow
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--couplings", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    train = toy2d.load("moons", "train", n=10000).x
    test = toy2d.load("moons", "test", n=10000).x
    models = {"mlcanon": ours(args.couplings, 90), "normflows": theirs(args.couplings, 64)}
    nll = {"mlcanon": lambda m, x: m.loss({"x": x})["loss"], "normflows": lambda m, x: m.forward_kld(x)}
    opts = {"mlcanon": make_optimizer("adam", models["mlcanon"].parameters(), args.lr),           # fused Adam
            "normflows": torch.optim.Adam(models["normflows"].parameters(), lr=args.lr, fused=True)}
    g = torch.Generator().manual_seed(args.seed)
    batches = [train[torch.randint(len(train), (args.batch_size,), generator=g)] for _ in range(args.steps)]
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
            lp = m.log_prob(test)
        finite = torch.isfinite(lp)
        out[name] = {"steps_per_s": per_round * args.rounds / wall[name], "test_nll_nats": float(-lp.mean()),
                     "test_nll_nats_finite_points": float(-lp[finite].mean()),
                     "non_finite_test_points": int((~finite).sum()),
                     "params": sum(p.numel() for p in m.parameters()), "setup_s": setup[name],
                     "optimizer": type(opts[name]).__name__ + (" (fused)" if opts[name].defaults.get("fused") else "")}
    out["steps_per_s_ratio_mlcanon_over_normflows"] = out["mlcanon"]["steps_per_s"] / out["normflows"]["steps_per_s"]
    out["config"] = vars(args) | {"threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
