"""Bad input and faults, tried as a new user would: one line naming the file or value and the fix, exit 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mlcanon import runs
from mlcanon.cli import main
from mlcanon.registry import get
from mlcanon.training import TrainConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    c = get("classifier").config_cls(dataset="digits", model="mlp", width=8, epochs=1, train_subset=128,
                                     batch_size=64, out_dir=str(out), progress=False, device="cpu")
    return Path(get("classifier").train(c)["run_dir"])


def _one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and all(n in err[0] for n in names), err[0]
    return err[0]


DAMAGE = {
    "empty": b"",
    "truncated": None,            # the first half of the real file
    "garbage": os.urandom(64),
}


@pytest.mark.parametrize("tag", ["checkpoint", "best"])
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_checkpoints_are_one_line_under_eval_and_resume(run_dir, tmp_path, capsys, tag, kind):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    f = d / f"{tag}.safetensors"
    data = DAMAGE[kind] if DAMAGE[kind] is not None else f.read_bytes()[: f.stat().st_size // 2]
    f.write_bytes(data)
    if tag == "best":
        assert main(["eval", str(d)]) == 2
        _one_line_error(capsys, f"{tag}.safetensors", "delete it")
    else:
        assert main(["train", "--resume", str(d)]) == 2
        _one_line_error(capsys, f"{tag}.safetensors")


def test_sample_into_a_missing_folder(run_dir, capsys):
    assert main(["sample", str(run_dir), "--out", "/no/such/dir/x.png"]) == 2
    _one_line_error(capsys, "/no/such/dir", "does not exist")


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', '{"algorithm": 3}', "{not json"])
def test_resume_of_a_folder_whose_config_is_not_a_run_config(tmp_path, capsys, content):
    (tmp_path / "config.json").write_text(content)
    assert main(["train", "--resume", str(tmp_path)]) == 2
    _one_line_error(capsys, "config.json")


def test_classifier_on_an_unlabelled_data_set_says_which_work(capsys):
    assert main(["train", "classifier", "--dataset", "toy2d:moons"]) == 2
    _one_line_error(capsys, "toy2d", "digits, mnist")


def test_stale_temporary_files_of_killed_writes_are_removed(tmp_path):
    dead = tmp_path / ".checkpoint.safetensors.tmp-999999999"      # no such process
    dead.write_bytes(b"half a checkpoint")
    run = runs.Run(tmp_path)
    run.save({"w": 1}, step=1)
    assert not dead.exists() and (tmp_path / "checkpoint.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_bad_adam_betas_and_unknown_eval_option(run_dir, capsys):
    from mlcanon import config as cfg
    from mlcanon.errors import UserError
    with pytest.raises(UserError, match="adam-betas"):
        cfg.from_flags(TrainConfig, ["--adam-betas", "0.5"], prog="x")
    assert main(["eval", str(run_dir), "--iwae-k", "5"]) == 2
    _one_line_error(capsys, "--iwae-k")
    assert json.loads((run_dir / "config.json").read_text())["algorithm"] == "classifier"
