"""Run folders: atomic safetensors checkpoints (no pickle), RNG round trips, metric truncation on resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from mlcanon import runs
from mlcanon.errors import UserError


def test_checkpoint_round_trip_of_nested_state(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    obj = {"model": model.state_dict(), "opt": opt.state_dict(), "arr": np.arange(6).reshape(2, 3),
           "t": (1, 2.5, None, "x"), "inf": float("inf"), "ints": {0: 1.0, 3: 2.0}}
    runs.save_checkpoint(tmp_path, obj, step=7)
    back, step = runs.load_checkpoint(tmp_path)
    assert step == 7
    m2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    m2.load_state_dict(back["model"])
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    o2 = torch.optim.Adam(m2.parameters(), lr=0.1)
    o2.load_state_dict(back["opt"])
    assert torch.equal(o2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert back["t"] == (1, 2.5, None, "x") and back["inf"] == float("inf") and back["ints"] == {0: 1.0, 3: 2.0}
    np.testing.assert_array_equal(back["arr"], obj["arr"])
    # nothing pickled: the files are safetensors + plain JSON
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["step"] == 7
    assert not list(tmp_path.glob(".*tmp*"))


def test_rng_state_round_trip():
    runs.seed_everything(3)
    st = runs.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    runs.set_rng_state(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_interrupted_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    runs.save_checkpoint(tmp_path, {"w": torch.ones(3)}, step=1)

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(runs.os, "replace", boom)
    with pytest.raises(OSError):
        runs.save_checkpoint(tmp_path, {"w": torch.zeros(3)}, step=2)
    monkeypatch.undo()
    back, step = runs.load_checkpoint(tmp_path)
    assert step == 1 and torch.equal(back["w"], torch.ones(3))


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.ones(2)}, str(tmp_path / "checkpoint.safetensors"))
    with pytest.raises(UserError, match="not an mlcanon checkpoint"):
        runs.load_checkpoint(tmp_path)


def test_run_folder_naming_logging_and_truncation(tmp_path):
    from mlcanon.supervised.classifier import ClassifierConfig
    c = ClassifierConfig(out_dir=str(tmp_path), dataset="toy2d:8gaussians")
    r1 = runs.Run.create("classifier", c)
    r2 = runs.Run.create("classifier", c)
    assert r1.dir != r2.dir and r1.dir.name.startswith("classifier-toy2d-8gaussians-")
    meta = json.loads((r1.dir / "config.json").read_text())
    assert meta["algorithm"] == "classifier" and meta["torch"] == torch.__version__ and meta["seed"] == 0
    for s in range(1, 6):
        r1.log(s, {"train/loss": 1.0 / s})
    r1.save({"w": torch.ones(1)}, 3)
    r1.close()
    assert (r1.dir / "curves.png").stat().st_size > 1000
    assert list(r1.dir.glob("events.out.tfevents.*"))
    r3, step = runs.Run.reopen(r1.dir)
    assert step == 3 and [m["step"] for m in r3.read_metrics()] == [1, 2, 3]
