"""Adversarial examples and adversarial training: FGSM, PGD, robust accuracy, ``mlcanon train adversarial-training``.

Attacks on a classifier f (logits) with the cross-entropy loss L, in the L-infinity ball of radius eps
around x, inside the valid pixel range [0, 1]:

- FGSM (Goodfellow et al. 2015, eq. 3): x' = clip_[0,1](x + eps sign(grad_x L(f(x), y))).
- PGD (Madry et al. 2018, eq. 4 / section 3): from a uniform random start x_0 = x + U(-eps, eps), k steps of
  x_{t+1} = Proj_{B(x, eps) and [0,1]}(x_t + alpha sign(grad L(f(x_t), y))); with R restarts the attack keeps,
  per example, the restart with the highest loss (a misclassified restart wins).
- ``robust_accuracy``: accuracy on the attacked inputs (an example counts as robust only if every restart
  fails), with the clean accuracy beside it.

Adversarial training (``adversarial-training``) minimizes E max_{||d|| <= eps} L(f(x + d), y) (Madry et al.,
eq. 2.1) with the inner maximization by

- ``--method pgd``: PGD with k steps (Madry et al.), or
- ``--method fast``: one FGSM step from a uniform random start with step alpha = 1.25 eps ("fast" adversarial
  training, Wong, Rice & Kolter 2020, Algorithm 3). Fast training can fall into catastrophic overfitting
  (PGD accuracy collapses to ~0 within a few steps while FGSM accuracy soars); the guard evaluates PGD accuracy
  on validation data at every validation, keeps the best-by-PGD checkpoint (the ``best`` that eval uses)
  and stops training when PGD accuracy falls by more than ``--overfit-drop`` below its best (Wong et al.,
  section 5.3: early stopping on a PGD check).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.devices import resolve_device
from mlcanon.errors import UserError
from mlcanon.registry import EvalOptions, register
from mlcanon.runs import Run, load_weights
from mlcanon.supervised.classifier import (
    ClassifierConfig,
    batch_metrics,
    load_splits,
    make_model,
    per_example_loss,
)
from mlcanon.training import TensorBatches, Trainer, evaluate_in_batches

ATTACKS = ("fgsm", "pgd")


# ----------------------------------------------------------------------------------------------- attacks
def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x of the summed cross-entropy, per-example losses) without touching the parameters' .grad."""
    x = x.detach().requires_grad_(True)
    losses = F.cross_entropy(model(x).float(), y, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), x)
    return g, losses.detach()


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Proj onto {||x' - x||_inf <= eps} and [0, 1]: clip to [x - eps, x + eps], then to [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """x' = clip_[0,1](x + eps sign(grad_x L)) (Goodfellow et al. 2015, eq. 3)."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    g, _ = _input_grad(model, x, y)
    return _project(x + eps * g.sign(), x, eps).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 40,
        alpha: float | None = None, restarts: int = 1, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """L-inf PGD (Madry et al. 2018): random start in the eps-ball, ``steps`` signed-gradient steps of size
    ``alpha`` (default 2.5 eps / steps) each projected back; per example the restart with the highest loss."""
    if eps < 0 or steps < 1 or restarts < 1:
        raise ValueError(f"need eps >= 0, steps >= 1, restarts >= 1; got {eps}, {steps}, {restarts}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    x = x.detach()
    best_x, best_loss = x.clone(), torch.full((len(x),), -float("inf"), device=x.device)
    for _ in range(restarts):
        if random_start:   # x_0 = x + U(-eps, eps)
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x_adv = _project(x + (2 * u - 1) * eps, x, eps)
        else:
            x_adv = x.clone()
        for _ in range(steps):
            g, _ = _input_grad(model, x_adv, y)
            x_adv = _project(x_adv + alpha * g.sign(), x, eps)          # x_{t+1} = Proj(x_t + alpha sign(g))
        with torch.no_grad():
            logits = model(x_adv).float()
            loss = F.cross_entropy(logits, y, reduction="none")
            loss = torch.where(logits.argmax(-1) != y, torch.full_like(loss, float("inf")), loss)  # fooled wins
            better = loss > best_loss
            best_x[better], best_loss[better] = x_adv[better], loss[better]
    return best_x.detach()


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, eps: float, *, steps: int = 40,
               restarts: int = 1, alpha: float | None = None, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """The adversarial inputs of attack ``name`` (fgsm or pgd)."""
    if name == "fgsm":
        return fgsm(model, x, y, eps)
    if name == "pgd":
        return pgd(model, x, y, eps, steps=steps, restarts=restarts, alpha=alpha, generator=generator)
    raise UserError(f"--attack {name!r}: use one of {', '.join(ATTACKS)}")


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd", eps: float = 0.3,
                    steps: int = 40, restarts: int = 1, seed: int = 0, alpha: float | None = None,
                    batch_size: int = 500) -> dict:
    """Clean and robust accuracy of ``model`` (eval mode) on (x, y) under the attack; a dict of metrics."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    clean = robust = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        with torch.no_grad():
            clean += int((model(xb).argmax(-1) == yb).sum())
        xa = run_attack(model, xb, yb, attack, eps, steps=steps, restarts=restarts, alpha=alpha, generator=g)
        with torch.no_grad():
            robust += int((model(xa).argmax(-1) == yb).sum())
    model.train(was)
    n = max(len(x), 1)
    return {"robust/accuracy": robust / n, "clean/accuracy": clean / n, "robust/eps": float(eps),
            "robust/steps": steps if attack == "pgd" else 1, "robust/restarts": restarts if attack == "pgd" else 1}


# ---------------------------------------------------------------------------------- adversarial training
@dataclasses.dataclass
class AdversarialTrainingConfig(ClassifierConfig):
    """Adversarial training of an image classifier (Madry et al. 2018; Wong et al. 2020); every field a flag."""

    dataset: str = option("mnist", "data set: mnist, fashion-mnist, digits")
    model: str = option("cnn", "architecture: mlp, cnn, resnet, vit, lstm")
    width: int = option(32, "channels (cnn/resnet), hidden units (mlp), model dim (vit/lstm)", min=1)
    epochs: int = option(10, "passes over the training set", min=1)
    batch_size: int = option(100, "global mini-batch size", min=1)
    method: str = option("fast", "inner maximization: fast (FGSM from a random start, Wong et al. 2020) or pgd "
                                 "(Madry et al. 2018)", choices=("fast", "pgd"))
    eps: float = option(0.3, "L-infinity radius of the training perturbations", min=0.0)
    alpha: float = option(0.0, "attack step size (0: 1.25 eps for fast, 0.01 for pgd as Madry et al.)", min=0.0)
    attack_steps: int = option(40, "PGD steps of the training attack (--method pgd)", min=1)
    eps_warmup_epochs: float = option(0.0, "ramp eps linearly from 0 over this many epochs (0: off)", min=0.0)
    guard_examples: int = option(500, "validation examples of the PGD check after each validation (0: off)", min=0)
    guard_steps: int = option(10, "PGD steps of that check", min=1)
    overfit_drop: float = option(0.2, "stop when PGD accuracy falls this far below its best (catastrophic "
                                      "overfitting)", min=0.0, max=1.0)

    #: no data-set recipe: unset fields take ClassifierConfig.BASE (lr 1e-3 constant, depth 2, 2 convs per block)
    RECIPES: ClassVar[dict[tuple[str, str], dict[str, Any]]] = {}

    @property
    def step_size(self) -> float:
        return self.alpha or (1.25 * self.eps if self.method == "fast" else 0.01)


def adversarial_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AdversarialTrainingConfig,
                      eps: float) -> torch.Tensor:
    """The inner maximization: x + delta with delta from FGSM-from-random-start or PGD (training mode)."""
    if config.method == "fast":   # Wong et al. 2020, Alg. 3: delta ~ U(-eps, eps); delta += alpha sign(g); clip
        delta = (2 * torch.rand_like(x) - 1) * eps
        g, _ = _input_grad(model, _project(x + delta, x, eps), y)
        return _project(x + delta + config.step_size * g.sign(), x, eps).detach()
    return pgd(model, x, y, eps, steps=config.attack_steps, alpha=config.step_size)


def train(config: AdversarialTrainingConfig, run: Run | None = None) -> dict:
    """Train on adversarial examples; keep the best model by validation PGD accuracy; report test accuracies."""
    run = Run.start("adversarial-training", config, run)
    config = config.effective()     # unset classifier fields -> their defaults (ClassifierConfig.BASE)
    train_ds, val_ds, test_ds = load_splits(config)
    if val_ds is None:
        raise UserError("adversarial training needs validation data for its PGD check: use --val-fraction > 0")
    x, y = train_ds.x, train_ds.targets
    if config.train_subset:
        x, y = x[:config.train_subset], y[:config.train_subset]
    K = train_ds.num_classes
    model = make_model(config, train_ds.input_shape, K)
    trainer = Trainer(model, config, run)
    data = TensorBatches({"x": x, "y": y}, config.batch_size, seed=config.seed)
    if run.device.type == "cuda":
        data.to(run.device)
    spe = data.steps_per_epoch

    def step_fn(batch: dict) -> dict:
        ramp = min(1.0, trainer.state.step / (config.eps_warmup_epochs * spe)) if config.eps_warmup_epochs else 1.0
        x_adv = adversarial_batch(model, batch["x"], batch["y"], config, config.eps * ramp)
        z = model(x_adv).float()
        loss = per_example_loss(config, z, batch["y"], K).mean()     # min_theta E max_delta L(f(x + delta), y)
        return {"loss": loss, "adv_accuracy": (z.argmax(-1) == batch["y"]).float().mean()}

    xv, yv = val_ds.x, val_ds.targets

    def val_fn() -> dict:
        m = evaluate_in_batches(lambda b: batch_metrics(model, config, K, b), {"x": xv, "y": yv}, device=run.device)
        out = {"val/accuracy": m["accuracy"], "val/loss": m["loss"]}
        if config.guard_examples:
            with torch.enable_grad():
                r = robust_accuracy(model, xv[:config.guard_examples], yv[:config.guard_examples], attack="pgd",
                                    eps=config.eps, steps=config.guard_steps, seed=config.seed)
            out["val/pgd_accuracy"] = r["robust/accuracy"]
            c = trainer.state.counters
            best = max(c.get("best_pgd", 0.0), r["robust/accuracy"])
            c["best_pgd"] = best
            if best - r["robust/accuracy"] > config.overfit_drop:    # catastrophic overfitting: stop here
                c["stopped_early"] = True
                c["catastrophic_overfitting_step"] = trainer.state.step
        return out

    monitor = "val/pgd_accuracy" if config.guard_examples else "val/accuracy"
    fit = trainer.fit(step_fn, data, val_fn=val_fn, monitor=monitor, mode="max",
                      postfix_keys=("train/loss", "train/adv_accuracy"))
    out = {"run_dir": str(run.dir), "step": fit.step, "epochs": fit.epoch, "best_val": fit.best_value,
           "stopped_early": fit.stopped_early,
           "catastrophic_overfitting_step": trainer.state.counters.get("catastrophic_overfitting_step")}
    if run.dist.is_main:
        load_weights(model, run.dir, "best")
        tm = evaluate_in_batches(lambda b: batch_metrics(model, config, K, b),
                                 {"x": test_ds.x, "y": test_ds.targets}, device=run.device)
        out["test_accuracy"] = tm["accuracy"]
        run.finish(out, step=fit.step, metrics={"test/accuracy": tm["accuracy"]})
    out["model"] = model
    return out


# ------------------------------------------------------------------------------------------ eval / sample
def load_model(run_dir: str | Path, config: AdversarialTrainingConfig | None = None, tag: str = "best") -> nn.Module:
    from mlcanon.data import load
    from mlcanon.registry import config_of
    config = (config or config_of(run_dir, "adversarial-training")).effective()
    ds = load(config.dataset, "test", data_dir=config.data_dir)
    return load_weights(make_model(config, ds.input_shape, ds.num_classes), run_dir, tag)


@dataclasses.dataclass
class RobustEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on an adversarial-training run (also what classifier runs accept)."""

    split: str = option("test", "which split to score", choices=("test", "valid"))
    attack: str = option("pgd", "attack: fgsm or pgd", choices=ATTACKS)
    eps: float = option(0.3, "L-infinity radius of the attack", min=0.0)
    steps: int = option(40, "PGD steps", min=1)
    restarts: int = option(1, "PGD random restarts", min=1)
    num_examples: int = option(0, "score only the first N examples (0: all)", min=0)
    device: str = option("auto", "where to evaluate: cpu, cuda, or auto", choices=("auto", "cpu", "cuda"))


def evaluate(run_dir: str | Path, options: RobustEvalOptions | None = None) -> dict:
    """Clean and robust accuracy of the run's best model (PGD-40 at eps 0.3 by default)."""
    from mlcanon.data import load
    from mlcanon.registry import config_of
    options = options or RobustEvalOptions()
    config = config_of(run_dir, "adversarial-training").effective()   # unset fields -> their defaults
    model = load_model(run_dir, config).to(resolve_device(options.device))
    ds = load(config.dataset, options.split, data_dir=config.data_dir, val_fraction=config.val_fraction)
    x, y = ds.x, ds.targets
    if options.num_examples:
        x, y = x[:options.num_examples], y[:options.num_examples]
    out = robust_accuracy(model, x, y, attack=options.attack, eps=options.eps, steps=options.steps,
                          restarts=options.restarts, seed=options.seed)
    out["n"] = len(x)
    return out


def sample(run_dir: str | Path, n: int = 64, out: str | Path | None = None, options=None) -> Path:
    """Test images and their PGD adversarial versions (rows: clean, adversarial), titled with predictions."""
    from mlcanon.data import load
    from mlcanon.data.images import save_image_grid
    from mlcanon.registry import config_of
    config = config_of(run_dir, "adversarial-training").effective()   # unset fields -> their defaults
    model = load_model(run_dir, config)
    ds = load(config.dataset, "test", data_dir=config.data_dir)
    k = max(1, min(n, 32) // 2)
    x, y = ds.x[:k], ds.targets[:k]
    xa = pgd(model, x, y, config.eps, steps=40, generator=torch.Generator().manual_seed(options.seed if options else 0))
    with torch.no_grad():
        p, pa = model(x).argmax(-1), model(xa).argmax(-1)
    titles = [f"{int(a)}/{int(t)}" for a, t in zip(p, y)] + [f"adv {int(a)}/{int(t)}" for a, t in zip(pa, y)]
    out = Path(out) if out else Path(run_dir) / "samples.png"
    return save_image_grid(torch.cat([x, xa]), out, nrow=k, titles=titles)


register("adversarial-training", family="supervised", config=AdversarialTrainingConfig,
         description="adversarial training: PGD (Madry et al.) or fast FGSM with random init (Wong et al.), "
                     "with a PGD check against catastrophic overfitting",
         evaluate=evaluate, sample=sample, load=lambda run_dir, config, tag: load_model(run_dir, config, tag),
         eval_options=RobustEvalOptions,
         tiny={"dataset": "digits", "model": "mlp", "width": 16, "epochs": 2, "train_subset": 128, "batch_size": 32,
               "checkpoint_every": 2, "guard_examples": 32, "guard_steps": 2, "eps": 0.1})(train)
