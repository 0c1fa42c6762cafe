"""The pytorch/examples MNIST recipe (github.com/pytorch/examples, mnist/main.py), re-typed as the peer of the
`mnist-time-to-99` bench entry (issue 15).

Its two-conv Net (conv 1->32 3x3, conv 32->64 3x3, max-pool 2, dropout .25, fc 9216->128, dropout .5,
fc 128->10, log_softmax), Adadelta lr 1.0, StepLR(step 1, gamma 0.7), batch 64 (test batch 1000), inputs
normalized by (0.1307, 0.3081), the test set scored after every epoch and its accuracy printed. As upstream,
it trains on all 60,000 training images and uses torch's default threads.

One change, generous to the peer: the batches are drawn from the MNIST tensors in memory (one shuffle per epoch,
the same tensors mlcanon loads) instead of torchvision's DataLoader + PIL transforms, so no data-loading cost
is counted on its side.

    python benchmarks/mnist_pytorch_examples.py --epochs 6 --seed 1 [--max-seconds 300]

prints one line per epoch: ``epoch E test_accuracy A elapsed_s T`` (T from the start of main()).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import StepLR

from mlcanon.data import load  # the same MNIST tensors mlcanon trains on

MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def train_epoch(model, x, y, optimizer, batch_size, g):
    model.train()
    perm = torch.randperm(len(x), generator=g)
    for i in range(0, len(x), batch_size):
        idx = perm[i:i + batch_size]
        optimizer.zero_grad()
        loss = F.nll_loss(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()


@torch.no_grad()
def test(model, x, y, batch_size=1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


def run(x_train, y_train, x_test, y_test, *, epochs=14, seed=1, batch_size=64, lr=1.0, gamma=0.7,
        max_seconds=float("inf"), t0=None, report=print) -> list[tuple[int, float, float]]:
    """Train as pytorch/examples does; [(epoch, test accuracy, seconds since t0)] after each epoch. Stops after
    ``epochs`` or after the first epoch that ends past ``max_seconds``. Inputs in [0, 1], [N, 1, 28, 28]."""
    t0 = time.perf_counter() if t0 is None else t0
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_train, x_test = (x_train - MEAN) / STD, (x_test - MEAN) / STD   # transforms.Normalize((0.1307,), (0.3081,))
    model = Net()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=gamma)
    out = []
    for epoch in range(1, epochs + 1):
        train_epoch(model, x_train, y_train, optimizer, batch_size, g)
        acc = test(model, x_test, y_test)
        scheduler.step()
        out.append((epoch, acc, time.perf_counter() - t0))
        report(f"epoch {epoch} test_accuracy {acc:.4f} elapsed_s {out[-1][2]:.2f}")
        if out[-1][2] > max_seconds:
            break
    return out


def main(argv=None) -> None:
    t0 = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=float("inf"))
    p.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    tr = load("mnist", "train", data_dir=a.data_dir, val_fraction=0.0)
    te = load("mnist", "test", data_dir=a.data_dir)
    run(tr.x, tr.targets, te.x, te.targets, epochs=a.epochs, seed=a.seed, max_seconds=a.max_seconds, t0=t0,
        report=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
