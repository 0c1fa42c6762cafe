"""Contract tests over the whole registry: every algorithm, present and future, proves the same things.

For each registered algorithm, with the tiny config it declares (``register(..., tiny={...})``):

* it trains and writes the run folder (config.json, metrics.jsonl, checkpoint, result.json);
* the same seed gives identical metrics.jsonl (perf/* aside), result.json (timings aside) and checkpoint: a
  child process, seeded alike, that kills itself with SIGKILL right after its first checkpoint and is resumed in
  this process, ends with bitwise-identical checkpoint tensors and identical metrics and result (algorithms
  that finish in one step, ``one_shot=True``, are exempt from the kill and run twice instead);
* ``mlcanon eval`` and ``mlcanon sample`` succeed with default options, and ``--help`` lists the options;
* every config field has help text, and a bad flag gives one line and exit 2.

One algorithm per loop type also gets a real ``mlcanon train`` subprocess killed with SIGKILL and resumed with
``mlcanon train --resume`` (``test_real_sigkill_and_cli_resume``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlcanon import config as cfg
from mlcanon import registry, runs
from mlcanon.cli import main
from mlcanon.runs import Run, read_metrics

ALGORITHMS = [a.name for a in registry.all_algorithms()]
# one algorithm per loop type: data loop, own loop (GAN), tabular learner, deep agent
REAL_KILL = [n for n in ("classifier", "gan", "q-learning", "dqn") if n in ALGORITHMS]
_VOLATILE = ("time", "wall", "perf", "run_dir", "seconds")


def tiny(name: str, out_dir: Path, **extra):
    algo = registry.get(name)
    c = algo.config_cls(**{**algo.tiny, "out_dir": str(out_dir), "progress": False, **extra})
    if "device" in {f.name for f in cfg.fields(c)} and getattr(type(c), "uses_torch", True):
        c.device = "cpu"
    cfg.validate(c)
    return c


def only_run(parent: Path) -> Path:
    (d,) = [p for p in Path(parent).iterdir() if p.is_dir()]
    return d


def stable_metrics(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(run_dir)]


def stable_result(run_dir) -> dict:
    res = json.loads((Path(run_dir) / "result.json").read_text())
    return {k: v for k, v in res.items() if not any(s in k for s in _VOLATILE) and not k.endswith("_s")}


def assert_same_checkpoint(a_dir: Path, b_dir: Path) -> None:
    a = load_file(str(a_dir / "checkpoint.safetensors"))
    b = load_file(str(b_dir / "checkpoint.safetensors"))
    assert sorted(a) == sorted(b)
    diff = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
            or not a[k].contiguous().view(-1).view(torch.uint8).equal(b[k].contiguous().view(-1).view(torch.uint8))]
    assert not diff, f"checkpoint tensors differ: {diff[:8]}"
    ha = json.loads((a_dir / "state.json").read_text())
    hb = json.loads((b_dir / "state.json").read_text())
    assert ha["step"] == hb["step"] and ha["state"] == hb["state"]


def kill_after_first_checkpoint(name: str, out_dir: Path) -> int:
    """Train in a forked child that SIGKILLs itself right after writing its first checkpoint."""
    pid = os.fork()
    if pid == 0:   # child
        try:
            real = runs.save_checkpoint

            def save_then_die(directory, obj, *, tag="checkpoint", step=0):
                path = real(directory, obj, tag=tag, step=step)
                if tag == "checkpoint":
                    os.kill(os.getpid(), signal.SIGKILL)
                return path

            runs.save_checkpoint = save_then_die
            registry.get(name).train(tiny(name, out_dir))
        finally:
            os._exit(3)   # only reached when no checkpoint was written
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("name", ALGORITHMS)
def test_contract(name, tmp_path):
    algo = registry.get(name)
    # --- help text on every field, a bad flag is one line
    missing = [f.name for f in cfg.fields(algo.config_cls) if not f.metadata.get("help")]
    assert not missing, f"{name}: config fields without help text: {missing}"
    for opts in (algo.eval_options, algo.sample_options):
        assert all(f.metadata.get("help") for f in cfg.fields(opts)), opts

    # --- trains and writes the run folder
    a = algo.train(tiny(name, tmp_path / "a"))
    a_dir = only_run(tmp_path / "a")
    assert isinstance(a, dict) and Path(a["run_dir"]) == a_dir
    for f in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "state.json", "result.json"):
        assert (a_dir / f).is_file(), f"{name}: run folder lacks {f}"
    assert read_metrics(a_dir), f"{name}: nothing logged"

    # --- same seed, same result: a second run (for algorithms that checkpoint more than once, the killed and
    # resumed run below is that second run - it must equal the first bitwise, which is a stronger check)
    if algo.one_shot:
        algo.train(tiny(name, tmp_path / "b"))
        b_dir = only_run(tmp_path / "b")
        assert stable_metrics(a_dir) == stable_metrics(b_dir)
        assert stable_result(a_dir) == stable_result(b_dir)
        assert_same_checkpoint(a_dir, b_dir)

    # --- killed right after its first checkpoint, resumed: bitwise the uninterrupted run
    else:
        status = kill_after_first_checkpoint(name, tmp_path / "c")
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
            f"{name}: the child wrote no checkpoint before finishing (status {status})"
        c_dir = only_run(tmp_path / "c")
        final_step = runs.checkpoint_step(a_dir)
        killed_step = runs.checkpoint_step(c_dir)   # 0 when the first checkpoint was a sub-run's (transfer)
        assert killed_step < final_step, f"{name}: tiny config must checkpoint at least twice"
        run, step = Run.reopen(c_dir)
        assert step == killed_step
        _, config = registry.algorithm_of_run(c_dir)
        algo.train(config, run)
        assert stable_metrics(c_dir) == stable_metrics(a_dir)
        assert stable_result(c_dir) == stable_result(a_dir)
        assert_same_checkpoint(a_dir, c_dir)

    # --- eval, sample, load_run
    if algo.evaluate is not None:
        assert main(["eval", str(a_dir)]) == 0
        assert json.loads((a_dir / "eval.json").read_text())
    if algo.sample is not None:
        out = tmp_path / "sample-out"
        out.mkdir()
        assert main(["sample", str(a_dir), "-n", "4", "--out", str(out / "s.png")]) == 0
        assert any(out.iterdir()), f"{name}: sample wrote nothing"
    if algo.load is not None:
        loaded = registry.load_run(a_dir)
        assert loaded.algorithm == name and loaded.model is not None


@pytest.mark.parametrize("name", ALGORITHMS)
def test_bad_flags_are_one_line(name, capsys):
    assert main(["train", name, "--no-such-flag", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-such-flag" in err[0]


def test_eval_and_sample_help_lists_options(tmp_path, capsys):
    a = registry.get("classifier").train(tiny("classifier", tmp_path))
    for cmd in ("eval", "sample"):
        with pytest.raises(SystemExit) as e:
            main([cmd, a["run_dir"], "--help"])
        assert e.value.code == 0
        assert "--seed" in capsys.readouterr().out
    assert main(["eval", a["run_dir"], "--no-such-option", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-such-option" in err[0]


_KILLER = textwrap.dedent("""
    import os, signal, sys
    import mlcanon.runs as runs
    real = runs.save_checkpoint
    def save_then_die(directory, obj, *, tag="checkpoint", step=0):
        path = real(directory, obj, tag=tag, step=step)
        if tag == "checkpoint":
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    runs.save_checkpoint = save_then_die
    from mlcanon.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _flags(name: str, out_dir: Path) -> list[str]:
    algo = registry.get(name)
    out = []
    for k, v in {**algo.tiny, "out_dir": str(out_dir), "progress": False}.items():
        out += [cfg.flag(k), ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)]
    return out


@pytest.mark.parametrize("name", REAL_KILL)
def test_real_sigkill_and_cli_resume(name, tmp_path):
    """A real `mlcanon train` process killed with SIGKILL after its first checkpoint; `--resume` finishes it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _KILLER, "train", name, *_flags(name, tmp_path / "k")], env=env,
                       capture_output=True, text=True, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    k_dir = only_run(tmp_path / "k")
    r = subprocess.run([sys.executable, "-m", "mlcanon", "train", "--resume", str(k_dir)], env=env,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    registry.get(name).train(tiny(name, tmp_path / "s"))
    s_dir = only_run(tmp_path / "s")
    assert stable_metrics(k_dir) == stable_metrics(s_dir)
    assert_same_checkpoint(s_dir, k_dir)
