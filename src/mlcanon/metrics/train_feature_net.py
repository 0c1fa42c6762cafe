"""Train the fixed MNIST feature network once: ``python -m mlcanon.metrics.train_feature_net [--out PATH]``.

Seed 0, CPU, the official train split minus the fixed validation carve (54,000 images), small random affine
augmentation (rotation +-8 degrees, scale +-8%, shift +-2 px), Adam with cosine decay from 3e-3 to 0 over 6
epochs, batch 128. Prints per-epoch validation accuracy, the final test accuracy and the file's sha256; the
shipped file's hash and accuracy are recorded in :mod:`mlcanon.metrics.mnist_features`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mlcanon.data import load
from mlcanon.metrics.mnist_features import WEIGHTS_FILE, FeatureNet, file_sha256


def random_affine(x: torch.Tensor, g: torch.Generator, max_rot_deg: float = 8.0, max_scale: float = 0.08,
                  max_shift_px: float = 2.0) -> torch.Tensor:
    """A random rotation, isotropic scale and shift per image (bilinear resampling, zero padding)."""
    N, _, _, W = x.shape
    u = torch.rand(N, 4, generator=g) * 2 - 1
    a = u[:, 0] * math.radians(max_rot_deg)
    s = 1 + u[:, 1] * max_scale
    theta = torch.zeros(N, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a) / s, -torch.sin(a) / s      # output -> input sampling map
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a) / s, torch.cos(a) / s
    theta[:, :, 2] = u[:, 2:] * (2 * max_shift_px / W)                         # shift in [-1, 1] coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def accuracy(net: FeatureNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    net.eval()
    correct = sum(int((net(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def train(epochs: int = 6, batch_size: int = 128, lr: float = 3e-3, seed: int = 0, data_dir=None,
          log=print) -> tuple[FeatureNet, dict]:
    torch.manual_seed(seed)                                   # weights init and dropout
    g = torch.Generator().manual_seed(seed)                   # batch order and augmentation
    tr, va, te = (load("mnist", split=s, data_dir=data_dir) for s in ("train", "valid", "test"))
    net = FeatureNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(tr.x) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))   # cosine: lr factor from 1 to 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(tr.x), generator=g)
        loss_sum = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(net(random_affine(tr.x[idx], g)), tr.targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: train loss {loss_sum / len(perm):.4f}, "
            f"valid accuracy {100 * accuracy(net, va.x, va.targets):.2f}%, {time.perf_counter() - t0:.0f} s")
    info = {"valid_accuracy": accuracy(net, va.x, va.targets),
            "test_accuracy": accuracy(net, te.x, te.targets),
            "wall_s": time.perf_counter() - t0, "epochs": epochs, "seed": seed}
    return net.eval(), info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlcanon.metrics.train_feature_net",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(WEIGHTS_FILE), help="where to write the safetensors file")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the shipped file)")
    p.add_argument("--data-dir", default=None)
    ns = p.parse_args(argv)
    torch.set_num_threads(ns.threads)
    net, info = train(epochs=ns.epochs, seed=ns.seed, data_dir=ns.data_dir)
    out = Path(ns.out)
    tmp = out.with_suffix(".tmp")
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    # no metadata: safetensors writes its metadata map in hash order, so the same weights would give files with
    # different sha256s from run to run; without it equal weights give equal bytes
    save_file(state, str(tmp))
    tmp.replace(out)
    print(f"test accuracy {100 * info['test_accuracy']:.2f}% (valid {100 * info['valid_accuracy']:.2f}%), "
          f"{info['wall_s']:.0f} s; wrote {out}, sha256 {file_sha256(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
