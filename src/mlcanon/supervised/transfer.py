"""Transfer learning: pretrain on digits 0-4, fine-tune on 5-9 from few labels: ``mlcanon train transfer``.

One run does four trainings, each in its own sub-folder of the run (``pretrain/``, ``head-only/``,
``full/``, ``scratch/``, every one checkpointed and resumable by :meth:`mlcanon.training.Trainer.fit`; the run's
own checkpoint records the phases finished):

1. pretrain  f = h o g (body g, linear head h) on all training images of classes 0-4;
2. head-only: keep g frozen (weights and batch-norm statistics), new head h' on 5-9, trained on
   ``labels_per_class`` images per class:  min_{h'} sum_i CE(h'(g(x_i)), y_i);
3. full fine-tune: start from g, new head, train every weight on the same few labels;
4. scratch: the same architecture from a random init, same few labels, same epochs.
Reported: the accuracy of 2, 3, 4 on the whole test split of classes 5-9 (and 1's on 0-4).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import CommonConfig, option
from mlcanon.data import load
from mlcanon.errors import UserError
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.runs import Run, load_checkpoint, seed_everything
from mlcanon.supervised.models import MODELS, build_model
from mlcanon.training import OPTIMIZERS, TensorBatches, TrainConfig, Trainer, TrainState, evaluate_in_batches

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt

SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
VARIANTS = ("head-only", "full", "scratch")


@dataclasses.dataclass
class TransferConfig(CommonConfig):
    """Pretrain on classes 0-4, then head-only / full fine-tuning vs scratch on 5-9 with few labels."""

    dataset: str = option("mnist", "data set: mnist or digits (8x8, quick)", choices=("mnist", "digits"))
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    model: str = option("cnn", "architecture: mlp, cnn, resnet, vit, lstm (see the classifier)")
    width: int = option(128, "hidden units (mlp), channels (cnn/resnet), model dim (vit/lstm)", min=1)
    depth: int = option(2, "hidden layers / conv blocks / residual stages / layers", min=1)
    dropout: float = option(0.0, "dropout probability", min=0.0, max=0.99)
    labels_per_class: int = option(10, "labelled fine-tuning images per class of 5-9 (few labels)", min=1)
    pretrain_epochs: int = option(3, "passes over the 0-4 training images", min=1)
    finetune_epochs: int = option(50, "passes over the few 5-9 labels (head-only, full and scratch alike)", min=1)
    batch_size: int = option(64, "mini-batch size (capped at the number of few labels when fine-tuning)", min=1)
    lr: float = option(1e-3, "learning rate for pretraining and for training from scratch", min=0.0)
    head_lr: float = option(1e-2, "learning rate of the head-only fine-tune (a linear model: larger steps)",
                            min=0.0)
    finetune_lr: float = option(1e-3, "learning rate of the full fine-tune", min=0.0)
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.9, "momentum for the momentum / nesterov optimizers", min=0.0, max=1.0)
    weight_decay: float = option(0.0, "L2 penalty coefficient lambda", min=0.0)
    max_grad_norm: float = option(0.0, "clip the global gradient norm to this value (0: off)", min=0.0)
    val_fraction: float = option(0.1, "fraction of train held out to pick the best pretrained model",
                                 min=0.0, max=0.5)

    def check(self) -> None:
        if self.model not in MODELS:
            raise UserError(f"--model {self.model!r}: choose one of {', '.join(sorted(MODELS))}")


# ------------------------------------------------------------------------------------------------- data
def _subset(ds, classes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.isin(ds.targets, torch.tensor(classes))
    return ds.x[keep], ds.targets[keep] - classes[0]   # labels 0..4 in both tasks


def few_labels(x: torch.Tensor, y: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` examples of each class, drawn by a permutation seeded by ``seed``."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    idx = []
    for c in range(int(y.max()) + 1):
        of_c = perm[y[perm] == c][:k]
        if len(of_c) < k:
            raise UserError(f"--labels-per-class {k}: class {c} has only {len(of_c)} training images")
        idx.append(of_c)
    idx = torch.cat(idx).sort().values
    return x[idx], y[idx]


def load_data(config: TransferConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """source train/valid/test (0-4), few-label target train (5-9), target test (5-9)."""
    kw = {"data_dir": config.data_dir}
    train = load(config.dataset, "train", val_fraction=config.val_fraction, **kw)
    test = load(config.dataset, "test", **kw)
    out = {"source_train": _subset(train, SOURCE), "source_test": _subset(test, SOURCE),
           "target_test": _subset(test, TARGET)}
    out["target_few"] = few_labels(*_subset(train, TARGET), config.labels_per_class, config.seed)
    if config.val_fraction > 0:
        out["source_val"] = _subset(load(config.dataset, "valid", val_fraction=config.val_fraction, **kw), SOURCE)
    return out


# ------------------------------------------------------------------------------------------------ model
def head_of(model: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the last nn.Linear: the classification head of every MODELS entry."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = name
    if found is None:
        raise UserError("transfer: the model has no linear head to replace")
    parent_name, _, attr = found.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, attr


def new_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Replace the head by a freshly initialised Linear(in_features, num_classes); returns it."""
    parent, attr = head_of(model)
    old = getattr(parent, attr)
    head = nn.Linear(old.in_features, num_classes)
    setattr(parent, attr, head)
    return head


class HeadOnly(nn.Module):
    """Fine-tune only the head: body parameters frozen and the body kept in eval mode (batch-norm stats fixed)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self._head().parameters():
            p.requires_grad_(True)

    def _head(self) -> nn.Module:
        parent, attr = head_of(self.model)
        return getattr(parent, attr)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()        # g stays fixed: dropout off, running statistics not updated
        self._head().train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def batch_metrics(model: nn.Module, batch: tuple) -> dict:
    """{"loss": mean -log softmax(z)_y, "accuracy"} of a batch (x, y)."""
    x, y = batch
    z = model(x).float()
    assert z.shape[0] == y.shape[0] and z.dim() == 2
    return {"loss": F.cross_entropy(z, y), "accuracy": (z.argmax(-1) == y).float().mean()}


def _accuracy(model: nn.Module, data: tuple) -> float:
    model.eval()
    return evaluate_in_batches(lambda b: batch_metrics(model, b), data)["accuracy"]


def _phase_config(config: TransferConfig, epochs: int, lr: float, batch_size: int) -> TrainConfig:
    """The data-loop config of one phase: the run's shared fields with this phase's epochs, lr and batch."""
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)
              if hasattr(config, f.name) and f.name not in ("epochs", "lr", "batch_size")}
    return TrainConfig(**shared, epochs=epochs, lr=lr, batch_size=batch_size)


def build(config: TransferConfig, input_shape, phase: str, pretrained: dict | None = None) -> nn.Module:
    """The network of a phase: pretrain = f (5 outputs); else body g (pretrained unless scratch) + a new head
    for 5-9; head-only wraps it in :class:`HeadOnly`."""
    model = build_model(config.model, input_shape, len(SOURCE), config)
    if phase == "pretrain":
        return model
    if pretrained is not None:
        model.load_state_dict(pretrained)   # g from pretraining
    new_head(model, len(TARGET))            # fresh h' for 5-9
    return HeadOnly(model) if phase == "head-only" else model


def _run_phase(phase: str, k: int, config: TransferConfig, root: Run, data, shape,
               pretrained: dict | None) -> nn.Module:
    seed_everything(config.seed + 101 * k)   # each phase starts from its own seed (resume-safe)
    model = build(config, shape, phase, pretrained)
    sub = root.dir / phase
    if (sub / "state.json").exists():
        run, _ = Run.reopen(sub)
        loaded = load_checkpoint(sub)
        run.resume_state = loaded[0] if loaded else None
    else:
        sub.mkdir(exist_ok=True)
        run = Run(sub)
    run.device, run.dist = root.device, root.dist
    if phase == "pretrain":
        train, val = data["source_train"], data.get("source_val")
        cfg = _phase_config(config, config.pretrain_epochs, config.lr, config.batch_size)
    else:
        train, val = data["target_few"], None
        lr = {"head-only": config.head_lr, "full": config.finetune_lr, "scratch": config.lr}[phase]
        cfg = _phase_config(config, config.finetune_epochs, lr, min(config.batch_size, len(train[0])))
    trainer = Trainer(model, cfg, run, params=[p for p in model.parameters() if p.requires_grad])

    def val_fn() -> dict:
        m = evaluate_in_batches(lambda b: batch_metrics(model, b), val, device=run.device)
        return {f"val/{k}": v for k, v in m.items()}

    trainer.fit(lambda b: batch_metrics(model, b), TensorBatches(train, cfg.batch_size, seed=config.seed),
                val_fn=val_fn if val is not None else None, monitor="val/accuracy", mode="max")
    best = load_checkpoint(sub, tag="best")
    model.load_state_dict(best[0]["model"])
    run.close()
    return model.to("cpu")


def train(config: TransferConfig, run: Run | None = None) -> dict:
    """Pretrain, then the three fine-tuning variants; logs and returns all accuracies."""
    run = Run.start("transfer", config, run)
    state = TrainState()      # the run's own checkpoint: which phases are done and their accuracies
    state.restore(run)
    data = load_data(config)
    shape = tuple(data["source_train"][0].shape[1:])
    pre = _run_phase("pretrain", 0, config, run, data, shape, None)
    src_acc = _accuracy(pre, data["source_test"])
    if state.step < 1:
        run.log(1, {"test/pretrain_accuracy": src_acc})
        state.counters["pretrain_test_accuracy_0_4"] = src_acc
        state.save(run, step=1)
    pretrained = {k: v.clone() for k, v in pre.state_dict().items()}
    out = {"run_dir": str(run.dir), "pretrain_test_accuracy_0_4": src_acc,
           "labels_per_class": config.labels_per_class}
    for k, phase in enumerate(VARIANTS, start=1):
        model = _run_phase(phase, k, config, run, data, shape, None if phase == "scratch" else pretrained)
        acc = _accuracy(model, data["target_test"])
        if state.step < 1 + k:
            run.log(1 + k, {f"test/{phase}_accuracy": acc})
            state.counters[f"{phase}_accuracy"] = acc
            state.done = k == len(VARIANTS)
            state.save(run, step=1 + k)
        out[f"{phase.replace('-', '_')}_accuracy"] = acc
    return run.finish(out)


def _phase_model(run_dir: Path, config: TransferConfig, phase: str, shape) -> nn.Module:
    model = build(config, shape, phase)
    ck = load_checkpoint(run_dir / phase, tag="best")
    if ck is None:
        raise UserError(f"{run_dir}: phase {phase!r} has not finished; `mlcanon train --resume {run_dir}`")
    model.load_state_dict(ck[0]["model"])
    return model.eval()


def evaluate(run_dir: str | Path, options: EvalOptions | None = None) -> dict:
    """Test accuracies: pretrained model on 0-4; head-only, full fine-tune and scratch on 5-9."""
    run_dir = Path(run_dir)
    config = config_of(run_dir, "transfer")
    data = load_data(config)
    shape = tuple(data["source_train"][0].shape[1:])
    out = {}
    for phase in ("pretrain",) + VARIANTS:
        split = "source_test" if phase == "pretrain" else "target_test"
        out[f"test/{phase}_accuracy"] = _accuracy(_phase_model(run_dir, config, phase, shape), data[split])
    return out


def sample(run_dir: str | Path, n: int = 0, out: str | Path | None = None, options: SampleOptions | None = None
           ) -> Path:
    """Bar chart of the three 5-9 test accuracies (head-only, full fine-tune, scratch)."""
    run_dir = Path(run_dir)
    res_path = run_dir / "result.json"
    if res_path.exists():
        res = json.loads(res_path.read_text())
        accs = [res[f"{v.replace('-', '_')}_accuracy"] for v in VARIANTS]
        k = res["labels_per_class"]
    else:
        ev = evaluate(run_dir)
        accs = [ev[f"test/{v}_accuracy"] for v in VARIANTS]
        k = config_of(run_dir, "transfer").labels_per_class
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars = ax.bar(["head-only fine-tune", "full fine-tune", "from scratch"], [100 * a for a in accs],
                  color=["tab:blue", "tab:green", "tab:gray"])
    for b, a in zip(bars, accs):
        ax.text(b.get_x() + b.get_width() / 2, 100 * a + 1, f"{100 * a:.1f}%", ha="center", fontsize=9)
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy on digits 5-9 (%)")
    ax.set_title(f"pretrained on 0-4; {k} labels per class of 5-9", fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "samples.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


register("transfer", family="supervised", config=TransferConfig,
         description="transfer learning 0-4 -> 5-9 with few labels: head-only vs full fine-tune vs scratch",
         evaluate=evaluate, sample=sample,
         load=lambda run_dir, config, tag: _phase_model(Path(run_dir), config, "full",
                                                        tuple(load_data(config)["source_train"][0].shape[1:])),
         tiny={"dataset": "digits", "model": "mlp", "width": 8, "depth": 1, "pretrain_epochs": 1,
               "finetune_epochs": 2, "labels_per_class": 2, "batch_size": 64})(train)
