"""The training core every family shares: one state, one data loop, the helpers for loops of their own.

How to train an algorithm in one file (the shape of every ``train`` function in the library)::

    @dataclass
    class MyConfig(TrainConfig):          # epochs, batch size, optimizer, schedules, EMA, ... come with it
        dataset: str = option("mnist", "data set")

    def train(config: MyConfig, run: Run | None = None) -> dict:
        run = Run.start("my-algo", config, run)            # new run folder, or the one --resume reopened
        model = MyModel(...)
        trainer = Trainer(model, config, run)              # optimizer by name, EMA, compile, bf16, DDP
        data = TensorBatches({"x": x, "y": y}, config.batch_size, seed=config.seed)
        fit = trainer.fit(lambda batch: model.loss(batch), data, val_fn=..., monitor="val/loss")
        return run.finish({...})

* :class:`TrainState` holds the named stateful parts of a run (modules, optimizers, EMA copies, replay
  buffers, private ``torch.Generator`` / ``numpy.random.Generator`` streams, counters) and saves / restores
  them as one checkpoint together with the global RNG states, so a resumed run is bitwise the run that never
  stopped.
* :meth:`Trainer.fit` is the data loop: ``step_fn(batch) -> {"loss": tensor, **logged}`` over batches that
  are tuples or dicts of named tensors. Batches are pure functions of the step (:class:`TensorBatches`,
  :class:`WindowBatches`), so resuming mid-epoch needs nothing but the step.
* :class:`Loop` gives algorithms that own their loop (GAN alternation, DQN, PPO) the same logging, progress
  bar, checkpoint cadence and ``perf/steps_per_s``; their loop stays theirs, short and readable.

Logged metrics are flushed at every checkpoint, so nothing accumulated between a checkpoint and a kill is
needed to resume: a resumed run writes the same ``metrics.jsonl`` as the uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from mlcanon.config import CommonConfig, option
from mlcanon.devices import autocast, maybe_compile
from mlcanon.errors import UserError
from mlcanon.runs import Run, rng_state, set_rng_state

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "linear")


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class TrainConfig(CommonConfig):
    """The fields the data loop reads; every model trained on data inherits them."""

    epochs: int = option(20, "passes over the training set (the budget unless --max-steps is set)", min=1)
    max_steps: int = option(0, "optimizer steps to train for (0: --epochs decides)", min=0)
    batch_size: int = option(64, "global mini-batch size (also under torchrun)", min=1)
    lr: float = option(1e-3, "peak learning rate", min=0.0)
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.9, "momentum for the momentum / nesterov optimizers", min=0.0, max=1.0)
    adam_betas: tuple[float, ...] = option((0.9, 0.999), "Adam/AdamW (beta1, beta2), e.g. 0.5,0.999 for DCGAN")
    weight_decay: float = option(0.0, "L2 penalty coefficient lambda (adds lambda*w to the gradient; "
                                      "AdamW: decoupled)", min=0.0)
    max_grad_norm: float = option(0.0, "clip the global gradient norm to this value (0: off)", min=0.0)
    grad_accum: int = option(1, "split each global batch into this many micro-batches (gradient accumulation)",
                             min=1)
    lr_schedule: str = option("constant", "learning-rate decay after warm-up: constant, cosine (to --min-lr) or "
                                          "linear (to --min-lr)", choices=LR_SCHEDULES)
    min_lr: float = option(0.0, "the learning rate the cosine / linear decay ends at (nanoGPT: lr/10)", min=0.0)
    warmup_steps: int = option(0, "linear learning-rate warm-up from 0 over this many steps", min=0)
    ema_decay: float = option(0.0, "exponential moving average of the weights with this decay (0: off)",
                              min=0.0, max=1.0)
    patience: int = option(0, "early stopping: evaluations without improvement before stopping (0: off)", min=0)
    eval_every: int = option(0, "steps between validations (0: once per epoch)", min=0)

    def check(self) -> None:
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise UserError(f"--adam-betas {','.join(map(str, self.adam_betas))}: give two numbers in [0, 1), "
                            "e.g. --adam-betas 0.9,0.999")


# ------------------------------------------------------------------------------------ optimizer, schedule
def make_optimizer(name: str, params, lr: float, *, momentum: float = 0.9, weight_decay: float = 0.0,
                   betas: Iterable[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """torch.optim by name; weight_decay adds the L2 penalty's gradient lambda*w (AdamW: decoupled decay)."""
    betas = tuple(betas)
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
    if name in ("adam", "adamw"):
        params = [{**p, "params": list(p["params"])} if isinstance(p, dict) else p for p in params]
        # the same update as torch's per-tensor loop, in one kernel per step over all tensors: on CPU the loop's
        # ~10 small ops per tensor cost ~7% of an MNIST CNN step (measured); fused needs float tensors on cpu/cuda
        fused = _fusable(params)
        if name == "adam":   # m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; w -= lr m_hat/(sqrt(v_hat)+eps)
            return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)
    raise UserError(f"--optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def _fusable(params: list) -> bool:
    """Whether torch's fused Adam kernel takes these parameters (or param-group dicts): floating point, on CPU or
    CUDA, all on one device type."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    devices = {t.device.type for t in tensors}
    return bool(tensors) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(
        t.is_floating_point() for t in tensors)


def optimizer_from(config, params) -> torch.optim.Optimizer:
    """The optimizer a :class:`TrainConfig` names, over ``params``."""
    return make_optimizer(config.optimizer, params, config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, betas=config.adam_betas)


def lr_at(step: int, base_lr: float, total_steps: int, schedule: str = "constant", warmup_steps: int = 0,
          min_lr: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): a pure function of the step, so resume is exact.

    warm-up: lr_t = lr (t+1)/W for t < W; then with u = (t-W)/(T-W) in [0, 1]: constant lr;
    cosine min + (lr - min)(1 + cos(pi u))/2 (Loshchilov & Hutter 2017, eta_min, no restarts); linear
    min + (lr - min)(1 - u).
    """
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    u = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    if schedule == "cosine":
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * u))
    if schedule == "linear":
        return min_lr + (base_lr - min_lr) * (1.0 - u)
    raise UserError(f"--lr-schedule {schedule!r}: use one of {', '.join(LR_SCHEDULES)}")


# --------------------------------------------------------------------------------------------------- EMA
class EMA(nn.Module):
    """Exponential moving average of a module's weights: theta_ema <- d theta_ema + (1 - d) theta.

    The decay warms up as d_t = min(d, (1 + t) / (10 + t)) (as TensorFlow's ExponentialMovingAverage with
    num_updates), so early averages are not dominated by the initial weights. Buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        t = int(self.updates)
        d = min(self.decay, (1 + t) / (10 + t))
        src = dict(unwrap(model).named_parameters())
        for name, p in self.module.named_parameters():
            p.lerp_(src[name].detach(), 1.0 - d)          # p = d p + (1-d) src
        for (_, b), (_, bs) in zip(self.module.named_buffers(), unwrap(model).named_buffers()):
            b.copy_(bs)
        self.updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DDP wrappers (the one whose state_dict is saved)."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


# ------------------------------------------------------------------------------------------ train state
def _seed_key(*keys: int) -> int:
    h = 0
    for k in keys:
        h = (h * 1_000_003 + int(k) + 1) % (2**63 - 1)
    return h


def generator(*keys: int) -> torch.Generator:
    """A private torch.Generator seeded by a tuple of integers (e.g. (seed, epoch)): independent streams."""
    return torch.Generator().manual_seed(_seed_key(*keys))


RESERVED = ("step", "rng", "counters", "done")


class TrainState:
    """Named stateful parts of a run, saved and restored as one checkpoint (with the global RNG states).

    Parts may be ``nn.Module``s, ``torch.optim.Optimizer``s, ``torch.Generator``s, ``numpy.random.Generator``s,
    or any object with ``state_dict()`` / ``load_state_dict(d)`` (replay buffers, EMA, vector envs).
    ``counters`` is a dict of JSON scalars (episode counts, best values, ...) saved with them; ``step``
    is the run's step counter.

    The checkpoint is a dict ``{part name: part state, "step": int, "counters": {...}, "rng": ...}``, so
    ``checkpoint["model"]`` is the model's state_dict.
    """

    def __init__(self, **parts: Any):
        self.parts: dict[str, Any] = {}
        self.step = 0
        self.counters: dict[str, Any] = {}
        self.done = False
        for name, part in parts.items():
            self.add(name, part)

    def add(self, name: str, part: Any) -> Any:
        if name in RESERVED:
            raise ValueError(f"{name!r} is a reserved TrainState key ({', '.join(RESERVED)})")
        if not (isinstance(part, (nn.Module, torch.optim.Optimizer, torch.Generator, np.random.Generator))
                or (hasattr(part, "state_dict") and hasattr(part, "load_state_dict"))):
            raise TypeError(f"TrainState part {name!r} of type {type(part).__name__} cannot be saved: give a "
                            "module, optimizer, generator or an object with state_dict/load_state_dict")
        self.parts[name] = part
        return part

    def __getitem__(self, name: str) -> Any:
        return self.parts[name]

    def __contains__(self, name: str) -> bool:
        return name in self.parts

    # -- (de)serialization ---------------------------------------------------------------------------
    @staticmethod
    def _state_of(part: Any) -> Any:
        if isinstance(part, nn.Module):
            return unwrap(part).state_dict()
        if isinstance(part, torch.Generator):
            return part.get_state()
        if isinstance(part, np.random.Generator):
            return _np_generator_state(part)
        return part.state_dict()

    @staticmethod
    def _load_into(part: Any, st: Any) -> None:
        if isinstance(part, nn.Module):
            unwrap(part).load_state_dict(st)
        elif isinstance(part, torch.Generator):
            part.set_state(st)
        elif isinstance(part, np.random.Generator):
            _set_np_generator_state(part, st)
        else:
            part.load_state_dict(st)

    def state_dict(self, *, modules_only: bool = False) -> dict:
        out = {name: self._state_of(p) for name, p in self.parts.items()
               if not modules_only or isinstance(p, nn.Module)}
        out.update(step=int(self.step), counters=dict(self.counters), done=bool(self.done))
        if not modules_only:
            out["rng"] = rng_state()
        return out

    def load_state_dict(self, st: dict) -> None:
        missing = [n for n in self.parts if n not in st]
        if missing:
            raise UserError(f"the checkpoint has no {', '.join(missing)}: it was written by another version of "
                            "this algorithm; start a new run")
        for name, part in self.parts.items():
            self._load_into(part, st[name])
        self.step = int(st["step"])
        self.counters.clear()
        self.counters.update(st.get("counters", {}))
        self.done = bool(st.get("done", False))
        if "rng" in st:
            set_rng_state(st["rng"])

    def save(self, run: Run, step: int | None = None, tag: str = "checkpoint") -> None:
        """Write the checkpoint (``tag="checkpoint"``: everything; other tags, e.g. ``best``: modules only)."""
        if step is not None:
            self.step = int(step)
        run.save(self.state_dict(modules_only=tag != "checkpoint"), self.step, tag=tag)

    def restore(self, run: Run) -> bool:
        """Load the checkpoint that :meth:`Run.start` read on ``--resume``; False when starting fresh."""
        if run.resume_state is None:
            return False
        self.load_state_dict(run.resume_state)
        return True


def _np_generator_state(g: np.random.Generator) -> dict:
    st = g.bit_generator.state
    return {"bit_generator": st["bit_generator"], "state": {k: str(v) for k, v in st["state"].items()},
            "has_uint32": int(st.get("has_uint32", 0)), "uinteger": str(st.get("uinteger", 0))}


def _set_np_generator_state(g: np.random.Generator, st: dict) -> None:
    cur = g.bit_generator.state
    if st["bit_generator"] != cur["bit_generator"]:
        raise UserError(f"checkpoint holds a {st['bit_generator']} generator, this run uses "
                        f"{cur['bit_generator']}")
    g.bit_generator.state = {"bit_generator": st["bit_generator"],
                             "state": {k: int(v) for k, v in st["state"].items()},
                             "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])}


# ------------------------------------------------------------------------------------------------ data
Batch = dict[str, torch.Tensor] | tuple


def _index(batch: Batch, idx) -> Batch:
    if isinstance(batch, dict):
        return {k: v[idx] for k, v in batch.items()}
    return tuple(v[idx] for v in batch)


def _first(batch: Batch) -> torch.Tensor:
    return next(iter(batch.values())) if isinstance(batch, dict) else batch[0]


def _to(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return tuple(v.to(device, non_blocking=True) for v in batch)


def _split(batch: Batch, parts: int) -> list[Batch]:
    n = len(_first(batch))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [_index(batch, slice(a, b)) for a, b in itertools.pairwise(bounds) if b > a]


class TensorBatches:
    """Shuffled mini-batches of named tensors (a dict, or a tuple) that share their first dimension.

    Epoch ``e`` is a permutation drawn from a generator seeded by ``(seed, e)``, and a batch's random
    transform gets a generator seeded by ``(seed, step)``, so batch ``step`` is a pure function of the step:
    resuming mid-epoch needs only the step. ``transform(batch, generator) -> batch`` (augmentation, noise).
    """

    def __init__(self, tensors: Batch, batch_size: int, *, seed: int = 0,
                 transform: Callable[[Batch, torch.Generator], Batch] | None = None):
        if not isinstance(tensors, (dict, tuple)):
            raise TypeError("TensorBatches takes a dict or a tuple of tensors")
        sizes = {len(v) for v in (tensors.values() if isinstance(tensors, dict) else tensors)}
        if len(sizes) != 1:
            raise ValueError(f"tensors must share their first dimension, got sizes {sorted(sizes)}")
        self.tensors, self.seed, self.transform = tensors, seed, transform
        self.n = sizes.pop()
        if self.n == 0:
            raise UserError("the training set is empty; check --dataset and the subset options")
        if batch_size > self.n:
            raise UserError(f"--batch-size {batch_size} is larger than the training set ({self.n} examples); "
                            f"use --batch-size <= {self.n}")
        self.batch_size = batch_size
        self.steps_per_epoch = math.ceil(self.n / batch_size)
        self._perm: tuple[int, torch.Tensor] | None = None

    def to(self, device: torch.device) -> TensorBatches:
        """Keep the whole data set on ``device`` (worth it on a GPU for data sets that fit)."""
        self.tensors = _to(self.tensors, device)
        return self

    def get(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[Batch, int]:
        """(this rank's shard of global batch ``step``, size of the global batch)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.n, generator=generator(self.seed, epoch)))
        idx = self._perm[1][k * self.batch_size:(k + 1) * self.batch_size]
        n_global = len(idx)
        idx = idx[rank::world_size]
        dev = _first(self.tensors).device
        batch = _index(self.tensors, idx.to(dev))
        if self.transform is not None:
            batch = self.transform(batch, generator(self.seed, 7919, step))
        return batch, n_global


class WindowBatches:
    """Random windows of a token stream (a language model's batches), never materialized.

    Batch ``step`` draws offsets o_b ~ U{0, .., N-T-1} from a generator seeded by ``(seed, step)`` and returns
    ``{"x": tokens[o:o+T], "y": tokens[o+1:o+T+1]}`` ([B, T] each, teacher forcing). An "epoch" is N / (B T)
    steps: as many tokens as the stream holds.
    """

    def __init__(self, tokens: torch.Tensor, context: int, batch_size: int, *, seed: int = 0):
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        if len(tokens) <= context + 1:
            raise UserError(f"the token stream ({len(tokens)} tokens) is shorter than the context ({context}) + 1; "
                            "use a smaller --context or a longer text")
        self.tokens, self.context, self.batch_size, self.seed = tokens, context, batch_size, seed
        self.steps_per_epoch = max(1, len(tokens) // (batch_size * context))
        self._ar = torch.arange(context + 1)

    def get(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[Batch, int]:
        g = generator(self.seed, 104729, step)
        offsets = torch.randint(len(self.tokens) - self.context - 1, (self.batch_size,), generator=g)
        offsets = offsets[rank::world_size]
        win = self.tokens[(offsets[:, None] + self._ar.to(offsets.device)).to(self.tokens.device)]  # [B, T+1]
        return {"x": win[:, :-1], "y": win[:, 1:]}, self.batch_size


# ------------------------------------------------------------------------------------------ logging loop
class _Meter:
    """Sums of logged values between two log lines (floats and tensors; tensors are read at log time)."""

    def __init__(self):
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if v is None:
                continue
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        out = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out

    def __bool__(self) -> bool:
        return bool(self.sums)


class Loop:
    """Progress bar, log cadence, checkpoint cadence and ``perf/steps_per_s`` for a loop of its own.

    ``total`` and ``advance(n)`` count in the loop's unit (optimizer steps, env steps, ...)::

        loop = Loop(run, state, total=config.total_steps, desc="dqn")
        while not loop.finished:
            ...                                   # one iteration of the algorithm
            loop.advance(n, {"train/loss": loss}) # logs every log_every, checkpoints every checkpoint_every
        loop.close()

    Metrics passed to ``advance`` are averaged over the log interval; ``log`` writes a line at once (e.g. an
    evaluation). Before each checkpoint the pending averages are flushed, so resume loses nothing.
    """

    def __init__(self, run: Run, state: TrainState, *, total: int, log_every: int = 0, checkpoint_every: int = 0,
                 desc: str = "train", unit: str = "step", progress: bool = True, postfix_keys: Iterable[str] = ()):
        self.run, self.state, self.total = run, state, int(total)
        self.log_every = log_every or max(1, self.total // 100)
        self.checkpoint_every = checkpoint_every or max(1, self.total // 10)
        self.meter = _Meter()
        self.postfix_keys = tuple(postfix_keys)
        self.bar = run.progress(self.total, initial=state.step, desc=desc, unit=unit,
                                enabled=progress and run.dist.is_main)
        self._t0, self._s0 = time.perf_counter(), state.step
        self._last_log = state.step
        self._last: dict[str, float] = {}

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def finished(self) -> bool:
        return self.state.step >= self.total or self.state.done

    def _crossed(self, before: int, after: int, every: int) -> bool:
        return after // every > before // every

    def advance(self, n: int = 1, metrics: dict[str, Any] | None = None) -> None:
        before = self.state.step
        self.state.step += n
        if metrics:
            self.meter.add(metrics)
        self.bar.update(n)
        after = self.state.step
        if self._crossed(before, after, self.log_every) or after >= self.total:
            self.flush()
        if self._crossed(before, after, self.checkpoint_every) or after >= self.total:
            self.checkpoint()

    def perf(self) -> dict[str, float]:
        dt = time.perf_counter() - self._t0
        return {"perf/steps_per_s": (self.state.step - self._s0) / dt if dt > 0 else 0.0}

    def flush(self) -> None:
        """Log the averages accumulated since the last line (with perf/steps_per_s)."""
        if self.meter or self.state.step != self._last_log:
            rec = {**self.meter.means(), **self.perf()}
            self.log(rec)

    def log(self, metrics: dict[str, Any]) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        self.run.log(self.state.step, metrics)
        self._last_log = self.state.step
        self._last.update(metrics)
        shown = {k.split("/")[-1]: f"{self._last[k]:.4g}" for k in self.postfix_keys if k in self._last}
        if shown:
            self.bar.set_postfix(shown, refresh=False)

    def checkpoint(self) -> None:
        self.flush()
        if self.state.step >= self.total:
            self.state.done = True
        self.state.save(self.run)

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------------ data loop
@dataclasses.dataclass
class FitResult:
    step: int
    epoch: float
    best_value: float | None
    best_step: int
    stopped_early: bool


class Trainer:
    """The data loop for models trained on data: optimizer by name, schedules, clipping, accumulation, bf16,
    compile, data parallelism under torchrun, EMA, validation with a best checkpoint and early stopping,
    checkpoints and exact mid-epoch resume.

    ``trainer.state`` is the :class:`TrainState` (``model``, ``optimizer``, ``ema`` when on); add parts of your
    own (a noise generator, ...) before :meth:`fit`. Under torchrun, gradients are averaged over the ranks with
    ``torch.distributed.all_reduce`` after the backward pass (one flat bucket), so ``step_fn`` may call any
    method of the model, not only ``forward``.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, run: Run, *, params=None,
                 optimizer: torch.optim.Optimizer | None = None):
        self.config, self.run = config, run
        self.device, self.dist = run.device, run.dist
        self.model = model.to(self.device)
        self.optimizer = optimizer or optimizer_from(config, params if params is not None else model.parameters())
        self.state = TrainState(model=self.model, optimizer=self.optimizer)
        self.ema = None
        if config.ema_decay > 0:
            self.ema = self.state.add("ema", EMA(self.model, config.ema_decay))
        self.best_value: float | None = None

    # ---------------------------------------------------------------------------------------------
    def _all_reduce_grads(self) -> None:
        import torch.distributed as tdist
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        tdist.all_reduce(flat)               # sum over ranks; each rank's loss is pre-scaled (see fit)
        off = 0
        for g in grads:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()

    def evaluate(self, val_fn: Callable[[], dict]) -> dict[str, float]:
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = val_fn()
        self.model.train(was)
        return {k: float(v) for k, v in out.items()}

    def fit(self, step_fn: Callable[[Batch], dict], data, *, val_fn: Callable[[], dict] | None = None,
            monitor: str = "val/loss", mode: str = "min", postfix_keys: Iterable[str] = ("train/loss",)) -> FitResult:
        """Train until the budget (``--max-steps``, else ``--epochs``) or early stopping; see the class doc.

        ``step_fn(batch) -> {"loss": scalar tensor, **logged}``: the loss is the mean over the batch it is given
        (a micro-batch, or this rank's shard); logged values are averaged between log lines as ``train/<key>``.
        ``val_fn() -> {"val/...": value}`` runs in eval mode under no_grad; ``monitor`` picks the value that
        decides the ``best`` checkpoint (``mode`` min or max) and early stopping (``--patience``).
        """
        cfg, run, dist, state = self.config, self.run, self.dist, self.state
        spe = data.steps_per_epoch
        total = cfg.max_steps or cfg.epochs * spe
        log_every = cfg.log_every or max(1, min(50, spe // 4, total // 20 or 1))
        eval_every = cfg.eval_every or spe
        ckpt_every = cfg.checkpoint_every or (spe if not cfg.max_steps else max(1, min(spe, total // 10)))
        state.counters.setdefault("best_value", None)
        state.counters.setdefault("best_step", 0)
        state.counters.setdefault("bad_evals", 0)
        state.counters.setdefault("stopped_early", False)
        state.restore(run)
        c = state.counters
        if state.done:
            return FitResult(state.step, state.step / spe, c["best_value"], c["best_step"], c["stopped_early"])
        better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        call = maybe_compile(step_fn, cfg.compile) if cfg.compile else step_fn
        params = [p for p in self.model.parameters() if p.requires_grad]
        meter = _Meter()
        bar = run.progress(total, initial=state.step, desc="train", enabled=cfg.progress and dist.is_main)
        t0, s0, n_seen = time.perf_counter(), state.step, 0
        last_shown: dict[str, str] = {}

        def log_line(extra: dict | None = None) -> None:
            nonlocal t0, s0, n_seen
            rec = {f"train/{k}" if "/" not in k else k: v for k, v in meter.means().items()}
            rec["train/epoch"] = state.step / spe
            rec["train/lr"] = lr_now
            dt = time.perf_counter() - t0
            rec["perf/steps_per_s"] = (state.step - s0) / dt if dt > 0 else 0.0
            rec["perf/samples_per_s"] = n_seen / dt if dt > 0 else 0.0
            rec.update(extra or {})
            run.log(state.step, rec)
            for k in (*postfix_keys, monitor):
                if k in rec:
                    last_shown[k.replace("train/", "").replace("/", "_")] = f"{rec[k]:.4g}"
            bar.set_postfix(last_shown, refresh=False)
            t0, s0, n_seen = time.perf_counter(), state.step, 0

        self.model.train()
        lr_now = lr_at(state.step, cfg.lr, total, cfg.lr_schedule, cfg.warmup_steps, cfg.min_lr)
        while state.step < total and not c["stopped_early"]:
            step = state.step
            batch, n_global = data.get(step, dist.rank, dist.world_size)
            if _first(batch).device != self.device:
                batch = _to(batch, self.device)
            n_local = len(_first(batch))
            logged: dict[str, Any] = {}
            for micro in (_split(batch, cfg.grad_accum) if cfg.grad_accum > 1 else [batch]):
                with autocast(self.device, cfg.precision):
                    out = call(micro)
                loss = out["loss"]
                if loss.dim() != 0:
                    raise ValueError(f"step_fn must return a scalar 'loss' (the batch mean), got shape "
                                     f"{tuple(loss.shape)}")
                # d/dtheta of the GLOBAL batch mean = sum over ranks and micro-batches of (n_micro / n_global)
                # * d(micro mean)/dtheta; all-reduce then sums the ranks' gradients
                weight = len(_first(micro)) / n_global
                (loss.float() * weight).backward()
                share = len(_first(micro)) / n_local        # this rank's batch mean = sum of shares * means
                for k, v in out.items():
                    v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
                    logged[k] = logged[k] + share * v if k in logged else share * v
            meter.add(logged)
            if dist.enabled:
                self._all_reduce_grads()
            # g <- g * min(1, max_norm / ||g||) (Pascanu et al. 2013); the norm is logged either way
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
            meter.add({"grad_norm": gnorm})
            lr_now = lr_at(step, cfg.lr, total, cfg.lr_schedule, cfg.warmup_steps, cfg.min_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr_now
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)
            state.step += 1
            n_seen += n_global
            bar.update(1)
            val = None
            if val_fn is not None and (state.step % eval_every == 0 or state.step == total):
                val = self.evaluate(val_fn)
                if monitor not in val:
                    raise ValueError(f"val_fn returned {sorted(val)}, which lacks the monitored {monitor!r}")
                if c["best_value"] is None or better(val[monitor], c["best_value"]):
                    c["best_value"], c["best_step"], c["bad_evals"] = val[monitor], state.step, 0
                    state.save(run, tag="best")
                else:
                    c["bad_evals"] += 1
                    if cfg.patience and c["bad_evals"] >= cfg.patience:
                        c["stopped_early"] = True
            if val is not None or state.step % log_every == 0 or state.step == total:
                log_line(val)
            if c["stopped_early"] or state.step % ckpt_every == 0 or state.step == total:
                if meter:
                    log_line()
                state.done = c["stopped_early"] or state.step >= total
                state.save(run)
        bar.close()
        if val_fn is None:   # no validation: the last model is the best one
            c["best_step"] = state.step
            state.save(run, tag="best")
        return FitResult(state.step, state.step / spe, c["best_value"], c["best_step"], c["stopped_early"])


@torch.no_grad()
def evaluate_in_batches(metric_fn: Callable[[Batch], dict], tensors: Batch, *, batch_size: int = 1000,
                        device: torch.device | str = "cpu", precision: str = "fp32") -> dict[str, float]:
    """Means over a whole data set of ``metric_fn(batch) -> {name: batch mean}``, weighted by batch size."""
    device = torch.device(device)
    n = len(_first(tensors))
    sums: dict[str, float] = {}
    for i in range(0, n, batch_size):
        batch = _to(_index(tensors, slice(i, i + batch_size)), device)
        with autocast(device, precision):
            out = metric_fn(batch)
        b = len(_first(batch))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
    return {k: v / max(n, 1) for k, v in sums.items()}
