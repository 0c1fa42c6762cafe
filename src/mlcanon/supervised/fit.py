"""fit / evaluate for models trained on in-memory tensors, in the spirit of Keras' compile/fit/evaluate.

One loop serves every supervised task (classification, segmentation, sequence-to-sequence): the caller
gives per-example losses and per-batch metric sums; :func:`fit` handles mini-batches, the optimizer, L2
weight decay, gradient clipping, bf16 autocast, torch.compile, DDP under torchrun, validation with early
stopping and a ``best`` checkpoint, periodic atomic checkpoints, exact resume, TensorBoard/metrics.jsonl
logging and a progress bar.

Determinism: epoch ``e``'s shuffling comes from a generator seeded by ``(seed, e)`` and a batch's random
transforms from ``(seed, step)``, so resuming mid-epoch just skips the batches already done; dropout uses the
global torch RNG, whose state is checkpointed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from mlcanon.config import CommonConfig, option
from mlcanon.devices import DistInfo, autocast, maybe_compile
from mlcanon.errors import UserError
from mlcanon.runs import Run, rng_state, set_rng_state

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")


@dataclasses.dataclass
class FitConfig(CommonConfig):
    """The fields :func:`mlcanon.supervised.fit.fit` reads (epochs, batch, optimizer, regularizers)."""

    epochs: int = option(20, "passes over the training set", min=1)
    batch_size: int = option(64, "global mini-batch size", min=1)
    lr: float = option(1e-3, "learning rate", min=0.0)
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.9, "momentum for the momentum / nesterov optimizers", min=0.0, max=1.0)
    weight_decay: float = option(0.0, "L2 penalty coefficient lambda (adds lambda*w to the gradient)", min=0.0)
    max_grad_norm: float = option(0.0, "clip the global gradient norm to this value (0: off)", min=0.0)
    patience: int = option(0, "early stopping: epochs without val improvement before stopping (0: off)", min=0)
    lr_schedule: str = option("constant", "learning-rate schedule over the run: constant, or cosine decay to 0",
                              choices=("constant", "cosine"))

# loss_fn(output, y) -> per-example losses [B]; metric_fn(output, y) -> {name: sum over the batch}
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
TransformFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def scheduled_lr(base_lr: float, schedule: str, step: int, total_steps: int) -> float:
    """The learning rate for optimizer step ``step`` (0-based), a pure function of the step (resume-safe)."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":   # lr_t = lr * (1 + cos(pi t / T)) / 2   (Loshchilov & Hutter 2017, no restarts)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    raise UserError(f"--lr-schedule {schedule!r}: use constant or cosine")


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch.optim by name; weight_decay adds the L2 penalty's gradient lambda*w (AdamW: decoupled decay)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)  # w -= lr * (g + wd*w)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)  # v = mu v + g
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)  # G += g^2; w -= lr g/sqrt(G)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)  # E[g^2] moving average
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)     # bias-corrected m, v
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"--optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


@dataclasses.dataclass
class FitResult:
    step: int
    epoch: int
    best_value: float | None
    best_step: int
    stopped_early: bool
    history: list[dict]


def _generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    h = 0
    for k in keys:
        h = (h * 1_000_003 + int(k) + 1) % (2**63 - 1)
    return g.manual_seed(h)


@torch.no_grad()
def evaluate_tensors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss_fn: LossFn, metric_fn: MetricFn,
                     device: torch.device, precision: str = "fp32", batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and metric sums / N over (x, y), in eval mode (the mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    total_loss, sums, n = 0.0, {}, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        with autocast(device, precision):
            out = model(xb)
        out = out.float()
        total_loss += float(loss_fn(out, yb).sum())
        for k, v in metric_fn(out, yb).items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += len(xb)
    model.train(was_training)
    return {"loss": total_loss / max(n, 1), **{k: v / max(n, 1) for k, v in sums.items()}}


def fit(model: nn.Module, *, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None,
        config, run: Run, device: torch.device, loss_fn: LossFn, metric_fn: MetricFn,
        transform: TransformFn | None = None, monitor: str = "accuracy", mode: str = "max",
        dist: DistInfo | None = None, resume_state: dict | None = None,
        extra_state: Callable[[], dict] | None = None) -> FitResult:
    """Train ``model`` on ``train`` for ``config.epochs`` epochs; see the module docstring.

    ``config`` provides: seed, epochs, batch_size, lr, optimizer, momentum, weight_decay, max_grad_norm,
    patience, checkpoint_every, log_every, precision, compile, progress. ``resume_state`` is a checkpoint
    written by this function (``Run.reopen``); training continues exactly where it stopped.
    """
    dist = dist or DistInfo()
    x_train, y_train = train
    N = len(x_train)
    B = config.batch_size
    if N == 0:
        raise UserError("the training set is empty; check --dataset / --train-subset")
    if B > N:
        raise UserError(f"--batch-size {B} is larger than the training set ({N} examples); use --batch-size <= {N}")
    steps_per_epoch = math.ceil(N / B)
    total_steps = steps_per_epoch * config.epochs
    log_every = config.log_every or max(1, min(50, steps_per_epoch // 4))
    ckpt_every = config.checkpoint_every or steps_per_epoch

    model.to(device)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.momentum,
                               config.weight_decay)
    step, best_value, best_step, bad_epochs = 0, None, 0, 0
    acc = {"loss": 0.0, "n": 0, "grad_norm": 0.0, "steps": 0}
    acc_metrics: dict[str, float] = {}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        set_rng_state(resume_state["rng"])
        f = resume_state["fit"]
        step, best_value, best_step, bad_epochs = f["step"], f["best_value"], f["best_step"], f["bad_epochs"]
        acc, acc_metrics = f["acc"], f["acc_metrics"]
        if f.get("done"):
            return FitResult(step, step // steps_per_epoch, best_value, best_step, f.get("stopped_early", False), [])

    fwd = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = maybe_compile(fwd, config.compile)
    on_device = x_train.device == device

    def checkpoint(tag: str = "checkpoint", done: bool = False, stopped: bool = False) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                 "fit": {"step": step, "best_value": best_value, "best_step": best_step, "bad_epochs": bad_epochs,
                         "acc": acc, "acc_metrics": acc_metrics, "done": done, "stopped_early": stopped}}
        if extra_state is not None:
            state["extra"] = extra_state()
        run.save(state if tag == "checkpoint" else {"model": model.state_dict(), "step": step,
                                                      "value": best_value}, step, tag=tag)

    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    history: list[dict] = []
    bar = run.progress(total_steps, initial=step, desc="train", enabled=config.progress and dist.is_main)
    t0, s0 = time.perf_counter(), step
    stopped = False
    model.train()
    while step < total_steps:
        epoch, k = divmod(step, steps_per_epoch)
        perm = torch.randperm(N, generator=_generator(config.seed, epoch))
        for b in range(k, steps_per_epoch):
            idx = perm[b * B:(b + 1) * B]
            n_global = len(idx)
            idx = idx[dist.rank::dist.world_size]          # this rank's shard of the global batch
            xb, yb = x_train[idx], y_train[idx]
            if transform is not None:
                xb, yb = transform(xb, yb, _generator(config.seed, 7919, step))
            if not on_device:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with autocast(device, config.precision):
                out = fwd(xb)
            out = out.float()
            losses = loss_fn(out, yb)
            assert losses.shape == (len(xb),), f"loss_fn must return per-example losses [B], got {losses.shape}"
            # mean over the GLOBAL batch: DDP averages gradients over ranks, so scale by world/n_global
            loss = losses.sum() * (dist.world_size / n_global)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:   # g <- g * min(1, max_norm / ||g||)
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            else:
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            lr_now = scheduled_lr(config.lr, getattr(config, "lr_schedule", "constant"), step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            optimizer.step()
            step += 1
            with torch.no_grad():
                acc["loss"] += float(losses.sum())
                acc["n"] += len(xb)
                acc["grad_norm"] += float(gnorm)
                acc["steps"] += 1
                for name, v in metric_fn(out.detach(), yb).items():
                    acc_metrics[name] = acc_metrics.get(name, 0.0) + float(v)
            bar.update(1)
            epoch_end = b == steps_per_epoch - 1
            if step % log_every == 0 or epoch_end:
                rec = {"train/loss": acc["loss"] / max(acc["n"], 1),
                       "train/grad_norm": acc["grad_norm"] / max(acc["steps"], 1),
                       **{f"train/{k2}": v / max(acc["n"], 1) for k2, v in acc_metrics.items()},
                       "train/epoch": step / steps_per_epoch, "train/lr": lr_now}
                dt = time.perf_counter() - t0
                perf = {"perf/steps_per_s": (step - s0) / dt if dt > 0 else 0.0}
                if epoch_end and val is not None:
                    vm = evaluate_tensors(model, val[0], val[1], loss_fn=loss_fn, metric_fn=metric_fn,
                                          device=device, precision=config.precision)
                    rec.update({f"val/{k2}": v for k2, v in vm.items()})
                    value = vm[monitor]
                    if best_value is None or better(value, best_value):
                        best_value, best_step, bad_epochs = value, step, 0
                        checkpoint("best")
                    else:
                        bad_epochs += 1
                run.log(step, {**rec, **perf})
                history.append({"step": step, **rec})
                post = {"loss": f"{rec['train/loss']:.4f}"}
                if f"train/{monitor}" in rec:
                    post[monitor[:3]] = f"{rec[f'train/{monitor}']:.4f}"
                if f"val/{monitor}" in rec:
                    post[f"val_{monitor[:3]}"] = f"{rec[f'val/{monitor}']:.4f}"
                bar.set_postfix(post, refresh=False)
                acc = {"loss": 0.0, "n": 0, "grad_norm": 0.0, "steps": 0}
                acc_metrics = {}
                if epoch_end and config.patience and bad_epochs >= config.patience:
                    stopped = True
            if stopped or step % ckpt_every == 0 or epoch_end:
                checkpoint(done=stopped or step >= total_steps, stopped=stopped)
            if stopped:
                break
        if stopped:
            break
    bar.close()
    if val is None:  # no validation set: the last model is the best one
        best_step = step
        checkpoint("best")
    return FitResult(step, step // steps_per_epoch, best_value, best_step, stopped, history)
