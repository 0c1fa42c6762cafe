"""Adversarial examples: FGSM is the exact L-inf maximizer for a linear model (brute force over the ball's
vertices), PGD stays in the eps-ball and [0, 1] and reaches at least FGSM's loss, robust accuracy, the fast
adversarial-training step, and `eval --attack pgd` on a classifier run."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.adversarial import (
    AdversarialTrainingConfig,
    adversarial_batch,
    fgsm,
    pgd,
    robust_accuracy,
)


def _loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def _in_ball(xa, x, eps):
    tol = 1e-6   # float32 rounding of x +- eps
    return bool(((xa - x).abs() <= eps + tol).all() and (xa >= 0).all() and (xa <= 1).all())


def test_fgsm_is_the_exact_maximizer_for_a_linear_model():
    torch.manual_seed(0)
    D, eps = 4, 0.1
    model = nn.Linear(D, 2).double()
    x = 0.2 + 0.6 * torch.rand(8, D, dtype=torch.float64)        # inside [eps, 1 - eps]: no clipping
    y = torch.randint(2, (8,))
    xa = fgsm(model, x, y, eps)
    # brute force: CE of a linear model is convex in x, so its max over the box is at one of the 2^D vertices
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=D)), dtype=torch.float64)   # [16, D]
    best = torch.stack([_loss(model, x + eps * s, y) for s in signs]).max(0).values
    assert torch.allclose(_loss(model, xa, y), best, rtol=1e-12, atol=1e-12)
    assert _in_ball(xa, x, eps)
    # PGD reaches the same maximum on a linear model
    xp = pgd(model, x, y, eps, steps=20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_loss(model, xp, y), best, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def mlp_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3))
    x = torch.rand(64, 1, 4, 4)
    y = model(x).argmax(-1).detach()            # labels the model gets right: the attack has work to do
    return model.eval(), x, y


def test_perturbations_stay_in_ball_and_raise_the_loss(mlp_and_data):
    model, x, y = mlp_and_data
    eps = 0.05
    clean = _loss(model, x, y)
    xf = fgsm(model, x, y, eps)
    xp = pgd(model, x, y, eps, steps=10, restarts=2, generator=torch.Generator().manual_seed(0))
    for xa in (xf, xp):
        assert _in_ball(xa, x, eps)
        assert (_loss(model, xa, y) >= clean - 1e-6).all() and _loss(model, xa, y).mean() > clean.mean()
    assert _loss(model, xp, y).mean() >= _loss(model, xf, y).mean()          # PGD >= FGSM in loss
    # pixels at the border of [0, 1] stay inside it
    x0 = torch.zeros_like(x)
    assert _in_ball(fgsm(model, x0, y, 0.3), x0, 0.3) and _in_ball(pgd(model, x0, y, 0.3, steps=3), x0, 0.3)


def test_robust_accuracy_bounds(mlp_and_data):
    model, x, y = mlp_and_data
    r0 = robust_accuracy(model, x, y, attack="pgd", eps=0.0, steps=2)
    assert r0["clean/accuracy"] == 1.0 and r0["robust/accuracy"] == 1.0         # eps = 0: nothing moves
    r = robust_accuracy(model, x, y, attack="pgd", eps=0.3, steps=10, restarts=2, seed=1, batch_size=16)
    f = robust_accuracy(model, x, y, attack="fgsm", eps=0.3)
    assert r["robust/accuracy"] <= f["robust/accuracy"] <= 1.0 and r["robust/accuracy"] < 1.0
    assert r == robust_accuracy(model, x, y, attack="pgd", eps=0.3, steps=10, restarts=2, seed=1, batch_size=16)


def test_fast_training_batch_in_ball(mlp_and_data):
    model, x, y = mlp_and_data
    cfg = AdversarialTrainingConfig(method="fast", eps=0.1)
    xa = adversarial_batch(model, x, y, cfg, cfg.eps)
    assert _in_ball(xa, x, 0.1) and cfg.step_size == pytest.approx(0.125)
    assert not any(p.grad is not None for p in model.parameters())          # the attack leaves .grad alone


def test_classifier_eval_with_attack(tmp_runs, real_data):
    from mlcanon.supervised.classifier import ClassifierConfig, ClassifierEvalOptions, evaluate
    from mlcanon.supervised.classifier import train as train_classifier
    out = train_classifier(ClassifierConfig(dataset="digits", model="mlp", width=16, epochs=2, train_subset=256,
                                            out_dir=str(tmp_runs), progress=False))
    m = evaluate(out["run_dir"], ClassifierEvalOptions(attack="pgd", eps=0.3, steps=5, restarts=1))
    assert m["clean/accuracy"] == pytest.approx(m["test/accuracy"], abs=1e-6)
    assert 0.0 <= m["robust/accuracy"] < m["clean/accuracy"]


def test_pgd_training_buys_robustness_that_plain_training_lacks(tmp_runs):
    """Madry et al. 2018, eq. 2.1: min_theta E max_{||delta|| <= eps} L(f(x + delta), y), the inner max by PGD.
    The same MLP, data, budget and seed trained with and without it, then both attacked by PGD-10 on the test set:
    the adversarially trained one must keep far more of its accuracy (measured: 0.74 vs 0.47 at eps 0.1)."""
    from mlcanon.adversarial import train
    from mlcanon.data import load
    from mlcanon.supervised.classifier import ClassifierConfig
    from mlcanon.supervised.classifier import train as train_plain
    kw = {"dataset": "digits", "model": "mlp", "width": 64, "epochs": 15, "batch_size": 32,
          "out_dir": str(tmp_runs), "progress": False, "seed": 0}
    adv = train(AdversarialTrainingConfig(method="pgd", eps=0.1, attack_steps=5, alpha=0.025, guard_examples=0, **kw))
    plain = train_plain(ClassifierConfig(**kw))
    test = load("digits", "test")
    r_adv, r_plain = (robust_accuracy(m.eval(), test.x, test.targets, attack="pgd", eps=0.1, steps=10, seed=0)
                      for m in (adv["model"], plain["model"]))
    assert r_adv["clean/accuracy"] > 0.85 and r_plain["clean/accuracy"] > 0.85      # both learned the task
    assert r_adv["robust/accuracy"] > r_plain["robust/accuracy"] + 0.15
    assert r_adv["robust/accuracy"] > 0.6
