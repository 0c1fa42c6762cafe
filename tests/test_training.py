"""The training core alone: schedules, TrainState round trips, batches, accumulation, EMA, early stopping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mlcanon.runs import Run, load_checkpoint
from mlcanon.training import (
    EMA,
    Loop,
    TensorBatches,
    TrainConfig,
    Trainer,
    TrainState,
    WindowBatches,
    lr_at,
    make_optimizer,
)


def test_lr_schedules_are_their_closed_forms():
    assert lr_at(0, 0.1, 100, "cosine") == pytest.approx(0.1)
    assert lr_at(50, 0.1, 100, "cosine") == pytest.approx(0.05)
    assert lr_at(100, 0.1, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(77, 0.1, 100, "constant") == 0.1
    assert lr_at(25, 0.1, 100, "linear") == pytest.approx(0.075)
    # warm-up: lr (t+1)/W, then the decay runs over the remaining T - W steps
    assert [lr_at(t, 1.0, 110, "cosine", 10) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, 1.0, 110, "cosine", 10) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 110, "cosine", 10) == pytest.approx(0.5)
    assert lr_at(60, 1.0, 110, "linear", 10) == pytest.approx(0.5)


def _state():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    return TrainState(net=net, opt=opt, tg=torch.Generator().manual_seed(5), ng=np.random.default_rng(7))


def test_train_state_round_trip_continues_every_random_stream(tmp_path):
    a = _state()
    a.counters["episodes"] = 3
    run = Run(tmp_path)
    a.save(run, step=11)
    expect = (torch.rand(3, generator=a["tg"]), a["ng"].random(3), torch.rand(2), np.random.rand())
    b = _state()
    torch.rand(5, generator=b["tg"])
    b["ng"].random(9)
    with torch.no_grad():
        b["net"].weight.add_(1.0)
    ck, step = load_checkpoint(tmp_path)
    b.load_state_dict(ck)
    assert step == 11 and b.step == 11 and b.counters == {"episodes": 3}
    got = (torch.rand(3, generator=b["tg"]), b["ng"].random(3), torch.rand(2), np.random.rand())
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1])
    assert torch.equal(got[2], expect[2]) and got[3] == expect[3]       # global RNGs restored too
    assert torch.equal(b["net"].weight, a["net"].weight)
    assert b["opt"].state_dict()["state"][0]["exp_avg"].equal(a["opt"].state_dict()["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="cannot be saved"):
        TrainState(bad=object())


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_is_fused_where_it_can_be_and_is_the_per_tensor_update(name):
    """make_optimizer's Adam/AdamW use torch's fused kernel for float CPU tensors; it must be the same update as
    the per-tensor reference loop, up to float32 rounding (a few ulps per step, accumulated over the steps)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(7, 5, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt = make_optimizer(name, params, 1e-2, weight_decay=0.01)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    opt_ref = cls(ref, lr=1e-2, weight_decay=0.01, foreach=False, fused=False)
    assert opt.defaults["fused"] and not opt_ref.defaults["fused"]
    steps = 30
    for _ in range(steps):
        for p, r in zip(params, ref):
            p.grad = torch.randn(p.shape, generator=g)
            r.grad = p.grad.clone()
        opt.step()
        opt_ref.step()
    eps = torch.finfo(torch.float32).eps
    for p, r in zip(params, ref):
        assert (p - r).abs().max() <= steps * 8 * eps * r.abs().max()
    # moved at all (the comparison above is not between two untouched copies)
    assert not torch.equal(params[0].detach(), torch.randn(7, 5, generator=torch.Generator().manual_seed(0)))
    # complex parameters have no fused kernel: the per-tensor loop is used
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    assert not make_optimizer(name, [z], 1e-2).defaults["fused"]


def test_tensor_batches_cover_each_epoch_once_and_are_pure_functions_of_the_step():
    x = torch.arange(10)
    data = TensorBatches({"x": x, "y": -x}, 4, seed=3)
    assert data.steps_per_epoch == 3
    for epoch in range(2):
        seen = torch.cat([data.get(epoch * 3 + k)[0]["x"] for k in range(3)])
        assert sorted(seen.tolist()) == list(range(10))
    b = data.get(4)[0]
    assert torch.equal(b["y"], -b["x"])
    fresh = TensorBatches({"x": x, "y": -x}, 4, seed=3)
    assert torch.equal(fresh.get(4)[0]["x"], b["x"])                     # no hidden iterator state
    shards = [data.get(4, rank, 2)[0]["x"] for rank in (0, 1)]
    assert sorted(torch.cat(shards).tolist()) == sorted(b["x"].tolist()) and data.get(4, 0, 2)[1] == 4


def test_window_batches_are_shifted_windows_of_the_stream():
    tokens = torch.arange(1000)
    data = WindowBatches(tokens, context=16, batch_size=8, seed=1)
    b = data.get(5)[0]
    assert b["x"].shape == (8, 16)
    assert torch.equal(b["y"], b["x"] + 1)                               # y_t = x_{t+1}
    assert torch.equal(b["x"][:, 1:] - b["x"][:, :-1], torch.ones(8, 15, dtype=torch.long))
    assert torch.equal(data.get(5)[0]["x"], b["x"]) and not torch.equal(data.get(6)[0]["x"], b["x"])


class _Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, dtype=torch.float64))


def _fit(tmp_path, name, **cfg):
    torch.manual_seed(0)
    x = torch.randn(32, 3, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    model = _Quadratic()
    config = TrainConfig(out_dir=str(tmp_path / name), progress=False, optimizer="sgd", lr=0.1, batch_size=32,
                         device="cpu", **cfg)
    run = Run.start(name, config)
    trainer = Trainer(model, config, run)
    trainer.fit(lambda b: {"loss": ((b["x"] @ model.w - b["y"]) ** 2).mean()},
                TensorBatches({"x": x, "y": y}, 32, seed=0))
    run.close()
    return model, trainer


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    full, _ = _fit(tmp_path, "full", epochs=5)
    acc, _ = _fit(tmp_path, "acc", epochs=5, grad_accum=4)
    # same gradient up to float64 summation order (~1e-16 relative)
    torch.testing.assert_close(acc.w, full.w, rtol=1e-12, atol=1e-12)
    assert not torch.equal(full.w, torch.zeros(3, dtype=torch.float64))


def test_ema_follows_its_recursion(tmp_path):
    model, trainer = _fit(tmp_path, "ema", epochs=4, ema_decay=0.5)
    # replay: the model's weights after each of the 4 steps, averaged with d_t = min(0.5, (1+t)/(10+t))
    ws, w = [], torch.zeros(3, dtype=torch.float64)
    torch.manual_seed(0)
    x = torch.randn(32, 3, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for _ in range(4):
        w = w - 0.1 * 2 * x.T @ (x @ w - y) / 32
        ws.append(w)
    ema = torch.zeros(3, dtype=torch.float64)
    for t, w in enumerate(ws):
        d = min(0.5, (1 + t) / (10 + t))
        ema = d * ema + (1 - d) * w
    torch.testing.assert_close(trainer.ema.module.w, ema, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.w, ws[-1], rtol=1e-12, atol=1e-12)
    assert isinstance(trainer.ema, EMA)


def test_early_stopping_and_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = _Quadratic()
    config = TrainConfig(out_dir=str(tmp_path), progress=False, optimizer="sgd", lr=0.0, epochs=50, patience=3,
                         batch_size=4, device="cpu")
    run = Run.start("stop", config)
    trainer = Trainer(model, config, run)
    vals = iter([1.0, 0.5, 0.7, 0.6, 0.9, 0.1])
    fit = trainer.fit(lambda b: {"loss": (model.w.sum() * b["x"]).mean()},
                      TensorBatches({"x": torch.ones(4, dtype=torch.float64)}, 4), val_fn=lambda: {"val/loss":
                                                                                                   next(vals)})
    assert fit.stopped_early and fit.step == 5 and fit.best_value == 0.5 and fit.best_step == 2
    assert load_checkpoint(run.dir, tag="best")[1] == 2


def test_loop_logs_averages_and_checkpoints_on_its_cadence(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), progress=False, device="cpu")
    run = Run.start("loop", config)
    state = TrainState(g=torch.Generator().manual_seed(0))
    loop = Loop(run, state, total=10, log_every=4, checkpoint_every=5, progress=False)
    while not loop.finished:
        loop.advance(1, {"train/x": float(loop.step)})
    loop.close()
    run.close()
    lines = [{k: v for k, v in r.items() if not k.startswith("perf")} for r in run.read_metrics()]
    # lines at 4 (mean of 0..3), 5 (flushed before the checkpoint: 4), 8 (5..7), 10 (8, 9)
    assert lines == [{"step": 4, "train/x": 1.5}, {"step": 5, "train/x": 4.0}, {"step": 8, "train/x": 6.0},
                     {"step": 10, "train/x": 8.5}]
    assert load_checkpoint(run.dir)[1] == 10 and load_checkpoint(run.dir)[0]["done"]
    assert math.isfinite(run.read_metrics()[0]["perf/steps_per_s"])
