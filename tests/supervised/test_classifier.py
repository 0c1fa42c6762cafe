"""The classifier track end to end: learning, CLI, eval/sample, SIGKILL + resume equality, DDP, bf16, compile."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlcanon.cli import build_config, main
from mlcanon.registry import get
from mlcanon.training import TrainConfig

ALGO = "classifier"


def cfg(tmp_runs, *flags):
    return build_config(get(ALGO), [*flags, "--out-dir", str(tmp_runs), "--progress", "false"])


def _metrics(run_dir):
    """metrics.jsonl without timing (perf/*) keys: those differ between any two runs."""
    out = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if not k.startswith("perf/")})
    return out


def test_digits_mlp_learns_and_writes_the_run_folder(tmp_runs):
    c = cfg(tmp_runs, "--dataset", "digits", "--epochs", "15", "--batch-size", "32")
    res = get(ALGO).train(c)
    assert res["test_accuracy"] >= 0.95, res
    d = Path(res["run_dir"])
    for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "state.json", "best.safetensors",
                 "curves.png", "result.json"):
        assert (d / name).exists(), name
    assert list(d.glob("events.out.tfevents.*"))
    recs = _metrics(d)
    assert recs[-1]["test/accuracy"] == pytest.approx(res["test_accuracy"])
    assert recs[0]["train/loss"] > recs[-2]["train/loss"]  # it learned


@pytest.mark.parametrize("flags", [
    ["--model", "cnn", "--width", "32", "--depth", "1", "--optimizer", "nesterov", "--lr", "0.05"],
    ["--optimizer", "rmsprop", "--loss", "mse", "--weight-decay", "1e-4", "--max-grad-norm", "1.0"],
    ["--optimizer", "adagrad", "--lr", "0.05", "--dropout", "0.2", "--ensemble", "2"],
    ["--optimizer", "momentum", "--lr", "0.05", "--augment", "crop,rotate", "--input-noise", "0.05",
     "--label-noise", "0.05", "--weight-noise", "0.001"],
])
def test_optimizers_losses_and_regularizers_learn(tmp_runs, flags):
    res = get(ALGO).train(cfg(tmp_runs, "--dataset", "digits", "--epochs", "12", *flags))
    assert res["test_accuracy"] >= 0.85, (flags, res)


def test_early_stopping_stops_and_keeps_the_best(tmp_runs):
    # a huge learning rate makes validation accuracy stall; patience 1 stops long before 50 epochs
    res = get(ALGO).train(cfg(tmp_runs, "--dataset", "digits", "--epochs", "50", "--patience", "1",
                              "--optimizer", "sgd", "--lr", "5.0"))
    assert res["stopped_early"] and res["epochs"] < 50
    best = json.loads((Path(res["run_dir"]) / "best.json").read_text())
    assert best["step"] <= res["step"]


def test_cli_train_eval_sample(tmp_runs, capsys):
    assert main(["train", "classifier", "--dataset", "digits", "--epochs", "2", "--model", "cnn", "--width", "32",
                 "--depth", "1", "--out-dir", str(tmp_runs), "--progress", "false"]) == 0
    run_dir = next(tmp_runs.iterdir())
    assert run_dir.name.startswith("classifier-digits-")
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "test/accuracy" in out
    acc = json.loads((run_dir / "eval.json").read_text())["test/accuracy"]
    assert acc == pytest.approx(json.loads((run_dir / "result.json").read_text())["test_accuracy"])
    png = tmp_runs / "grid.png"
    assert main(["sample", str(run_dir), "-n", "16", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    assert (tmp_runs / "grid-gradcam.png").stat().st_size > 1000   # Grad-CAM overlays for conv models
    assert main(["eval", str(run_dir), "--split", "valid"]) == 0      # held out: 10% of digits' train split
    # trained on every training image (--val-fraction 0): no validation split to score, and the error says so
    out_dir = tmp_runs / "noval"
    assert main(["train", "classifier", "--dataset", "digits", "--epochs", "1", "--val-fraction", "0",
                 "--out-dir", str(out_dir), "--progress", "false"]) == 0
    capsys.readouterr()
    assert main(["eval", str(next(out_dir.iterdir())), "--split", "valid"]) == 2
    assert "no validation split; use --split test" in capsys.readouterr().err


def _train_cmd(out_dir, *extra):
    return [sys.executable, "-m", "mlcanon", "train", "classifier", "--dataset", "digits", "--model", "mlp",
            "--epochs", "4", "--batch-size", "16", "--width", "512", "--dropout", "0.1", "--seed", "3",
            "--checkpoint-every", "5", "--log-every", "5", "--progress", "false", "--out-dir", str(out_dir), *extra]


def test_sigkill_mid_training_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    subprocess.run(_train_cmd(ref_dir), check=True, env=env, capture_output=True)
    p = subprocess.Popen(_train_cmd(kill_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        states = list(kill_dir.glob("*/state.json"))
        if states:
            try:
                step = json.loads(states[0].read_text())["step"]
            except (json.JSONDecodeError, OSError):
                step = 0
            if step >= 60:
                os.kill(p.pid, signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.005)
    p.wait()
    assert killed_at is not None and p.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    run_dir = next(kill_dir.iterdir())
    total = json.loads((next(ref_dir.iterdir()) / "state.json").read_text())["step"]
    assert json.loads((run_dir / "state.json").read_text())["step"] < total  # really interrupted
    r = subprocess.run([sys.executable, "-m", "mlcanon", "train", "--resume", str(run_dir), "--progress", "false"],
                       env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    ref_run = next(ref_dir.iterdir())
    assert _metrics(run_dir) == _metrics(ref_run)
    a = load_file(str(ref_run / "checkpoint.safetensors"))
    b = load_file(str(run_dir / "checkpoint.safetensors"))
    model_keys = [k for k in a if k.startswith("model.")]
    assert model_keys and all(torch.equal(a[k], b[k]) for k in model_keys)  # bitwise-equal weights


def test_ddp_two_gloo_processes_equal_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 4 SGD steps on 256 examples: the two runs differ only in the order floats are summed (each rank sums its
    # half of the batch, then all-reduce adds the halves), an O(n eps_32 |g|) ~ 1e-7 relative difference per
    # step; after 4 steps at lr 0.1 that stays far below rtol 1e-4 / atol 1e-5 on any CPU, while a wrong
    # gradient scale (e.g. a sum instead of a mean over ranks) moves weights by ~1e-2.
    common = ["train", "classifier", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--batch-size",
              "64", "--train-subset", "256", "--seed", "5", "--progress", "false", "--optimizer", "sgd",
              "--lr", "0.1"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "mlcanon", *common, "--out-dir", str(single)], check=True, env=env,
                   capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "mlcanon", *common, "--out-dir", str(multi)], env=env, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(multi.iterdir())) == 1  # only rank 0 wrote a run folder
    a = load_file(str(next(single.iterdir()) / "checkpoint.safetensors"))
    b = load_file(str(next(multi.iterdir()) / "checkpoint.safetensors"))
    keys = [k for k in a if k.startswith("model.")]
    assert keys
    for k in keys:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_bf16_takes_effect(tmp_runs, monkeypatch):
    seen = []
    orig = torch.nn.Linear.forward

    def spy(self, x):
        out = orig(self, x)
        seen.append(out.dtype)
        return out
    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    res = get(ALGO).train(cfg(tmp_runs, "--dataset", "digits", "--epochs", "2", "--precision", "bf16",
                              "--device", "cpu"))
    assert torch.bfloat16 in seen
    assert res["test_accuracy"] > 0.8


def test_compile_takes_effect(tmp_runs, monkeypatch):
    calls = []
    real = torch.compile

    def spy(m, *a, **k):
        calls.append(m)
        return real(m, *a, **k)
    monkeypatch.setattr(torch, "compile", spy)
    res = get(ALGO).train(cfg(tmp_runs, "--dataset", "digits", "--epochs", "1", "--compile", "--train-subset",
                              "256", "--batch-size", "64"))
    assert len(calls) == 1 and res["test_accuracy"] > 0.3


def test_mnist_cnn_on_a_real_subset(real_data, tmp_runs):
    res = get(ALGO).train(cfg(tmp_runs, "--dataset", "mnist", "--model", "cnn", "--width", "64", "--depth", "2",
                              "--epochs", "2", "--train-subset", "4000", "--batch-size", "64", "--lr", "2e-3"))
    assert res["test_accuracy"] >= 0.95, res


def test_missing_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLCANON_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))
    from mlcanon.data import files  # no network in tests: make any download attempt fail
    monkeypatch.setattr(files, "MIRRORS", {k: ["http://127.0.0.1:9/"] for k in getattr(files, "MIRRORS", {})},
                        raising=False)
    rc = main(["train", "classifier", "--dataset", "mnist", "--out-dir", str(tmp_path / "r"), "--data-dir",
               str(tmp_path / "nodata"), "--progress", "false"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "train-images-idx3-ubyte.gz" in err


def test_cosine_schedule_is_logged(tmp_runs):
    res = get(ALGO).train(cfg(tmp_runs, "--dataset", "digits", "--epochs", "3", "--lr-schedule", "cosine",
                              "--log-every", "1"))
    lrs = [r["train/lr"] for r in _metrics(res["run_dir"]) if "train/lr" in r]
    assert lrs[0] == pytest.approx(1e-3) and all(a >= b for a, b in itertools.pairwise(lrs)) and lrs[-1] < 1e-5


@pytest.mark.slow
def test_mnist_mlp_reaches_98_percent_in_5_epochs(real_data, tmp_runs):
    """Issue target (also in docs/BENCHMARKS.md): MLP >= 98.0% MNIST test accuracy in at most 5 epochs on CPU."""
    res = get(ALGO).train(cfg(tmp_runs, "--dataset", "mnist", "--model", "mlp", "--width", "1024", "--depth", "2",
                              "--dropout", "0.2", "--epochs", "5", "--batch-size", "128", "--lr", "1e-3",
                              "--lr-schedule", "cosine"))
    assert res["epochs"] <= 5 and res["test_accuracy"] >= 0.98, res


def test_recipe_resolution_mnist_cnn_vs_digits_mlp(tmp_runs):
    """Unset fields take the data set's recipe in effective() (a new object); flags the user gave always win."""
    user = cfg(tmp_runs, "--dataset", "mnist", "--model", "cnn", "--lr", "1e-3")
    eff = user.effective()
    assert user.epochs is None and user.lr == 1e-3          # the given config is untouched (config.json keeps it)
    assert (eff.epochs, eff.batch_size, eff.lr, eff.lr_schedule, eff.width, eff.depth, eff.convs_per_block,
            eff.label_smoothing, eff.val_fraction) == (1, 64, 1e-3, "cosine", 48, 3, 1, 0.1, 0.0)
    assert eff.effective() == eff                           # resolving twice changes nothing
    # any other data set or model: the defaults of the data loop (TrainConfig), not the mnist recipe
    base = cfg(tmp_runs, "--dataset", "digits").effective()
    loop = TrainConfig()
    assert (base.model, base.epochs, base.batch_size, base.lr, base.lr_schedule, base.warmup_steps) == \
        ("mlp", loop.epochs, loop.batch_size, loop.lr, loop.lr_schedule, loop.warmup_steps)
    assert cfg(tmp_runs, "--dataset", "mnist", "--model", "mlp").effective().epochs == loop.epochs
    assert base.label_smoothing == 0.0 and base.val_fraction == 0.1
