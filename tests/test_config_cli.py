"""Config dataclasses -> flags, validation, and the CLI's error contract (one line, non-zero exit)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from mlcanon import config as cfg
from mlcanon.cli import build_config, main
from mlcanon.errors import UserError
from mlcanon.registry import all_algorithms, get


@dataclasses.dataclass
class Toy(cfg.CommonConfig):
    lr: float = cfg.option(0.1, "learning rate", min=0.0)
    mode: str = cfg.option("a", "mode", choices=("a", "b"))
    layers: tuple[int, ...] = cfg.option((8, 8), "sizes")
    name: str | None = cfg.option(None, "optional")


def test_parse_values_and_validation():
    assert cfg.parse_value(float, "1e-3", "lr") == 1e-3
    assert cfg.parse_value(bool, "false", "x") is False
    assert cfg.parse_value(tuple[int, ...], "1,2,3", "layers") == (1, 2, 3)
    assert cfg.parse_value(str | None, "none", "name") is None
    with pytest.raises(UserError, match="--lr: cannot read 'abc' as float"):
        cfg.parse_value(float, "abc", "lr")
    with pytest.raises(UserError, match="--mode must be one of a, b"):
        cfg.validate(Toy(mode="c"))
    with pytest.raises(UserError, match="--lr must be >= 0"):
        cfg.validate(Toy(lr=-1.0))
    with pytest.raises(UserError, match="--seed must be int"):
        cfg.validate(Toy(seed="1"))  # nothing silently coerced


def test_round_trip_dict_and_unknown_keys(tmp_path):
    c = Toy(lr=0.5, layers=(3, 4))
    assert cfg.from_dict(Toy, cfg.to_dict(c)) == c
    with pytest.raises(UserError, match="unknown field"):
        cfg.from_dict(Toy, {"nope": 1})
    p = tmp_path / "c.toml"
    p.write_text('lr = 0.25\nmode = "b"\n')
    assert cfg.load_file(Toy, p) == Toy(lr=0.25, mode="b")


def test_every_registered_algorithm_has_defaults_that_validate_and_documented_fields():
    algos = all_algorithms()
    assert any(a.name == "classifier" for a in algos)
    for a in algos:
        c = a.config_cls()
        cfg.validate(c)
        for f in cfg.fields(c):
            assert f.metadata.get("help"), f"{a.name}.{f.name} has no help text"
        assert a.name == a.name.lower() and " " not in a.name and "_" not in a.name


def test_flags_generated_from_dataclass_and_file_override(tmp_path):
    algo = get("classifier")
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"epochs": 3, "lr": 0.01}))
    c = build_config(algo, ["--batch-size", "16", "--lr", "0.5", "--compile"], str(p))
    assert (c.batch_size, c.lr, c.epochs, c.compile) == (16, 0.5, 3, True)


@pytest.mark.parametrize("argv, needle", [
    (["train", "no-such-algo"], "unknown algorithm 'no-such-algo'"),
    (["train", "classifer"], "Did you mean classifier"),
    (["train", "classifier", "--epochs", "ten"], "--epochs: cannot read 'ten' as int"),
    (["train", "classifier", "--optimizer", "lbfgs"], "--optimizer must be one of"),
    (["train", "classifier", "--bogus-flag", "1"], "unrecognized arguments: --bogus-flag"),
    (["train", "classifier", "--dataset", "nope"], "nope"),
    (["eval", "/no/such/run"], "no such run folder"),
    (["train", "classifier", "--device", "cuda"], None),
])
def test_cli_errors_are_one_line(argv, needle, capsys, tmp_path):
    import torch
    if argv[-1] == "cuda":
        if torch.cuda.is_available():
            pytest.skip("a GPU is present: --device cuda is valid here")
        needle = "no CUDA GPU"
    rc = main(argv + (["--out-dir", str(tmp_path)] if argv[0] == "train" else []))
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert needle in err


def test_cli_subprocess_error_and_list():
    r = subprocess.run([sys.executable, "-m", "mlcanon", "train", "nope"], check=False, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "mlcanon", "list"], check=False, capture_output=True, text=True)
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert "classifier" in names


def test_train_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "classifier", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in cfg.fields(get("classifier").config_cls):
        assert "--" + f.name.replace("_", "-") in out


@pytest.mark.parametrize("flag", [["--precision", "bf16"], ["--compile"], ["--device", "cuda"]])
def test_numpy_only_algorithms_reject_torch_flags(flag, capsys, tmp_path):
    """--precision/--compile/--device must take effect or fail: never accepted and ignored."""
    rc = main(["train", "q-learning", *flag, "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and flag[0] in err and "Traceback" not in err


def test_fields_naming_another_run_are_validated_and_hashed(tmp_path):
    import dataclasses
    import hashlib
    import json

    from mlcanon.config import CommonConfig, option, validate
    from mlcanon.errors import UserError
    from mlcanon.runs import Run

    @dataclasses.dataclass
    class C(CommonConfig):
        frozen: str = option("", "a run folder", ref="run")
        data: str = option("", "a file", ref="file")

    with pytest.raises(UserError, match="not a run folder"):
        validate(C(frozen=str(tmp_path)))
    with pytest.raises(UserError, match="no such file"):
        validate(C(data=str(tmp_path / "nope.npz")))
    src = Run.create("src", C(out_dir=str(tmp_path)))
    with pytest.raises(UserError, match="no checkpoint yet"):
        validate(C(frozen=str(src.dir)))
    src.save({"w": 1}, step=1)
    (tmp_path / "t.npz").write_bytes(b"abc")
    c = C(frozen=str(src.dir), data=str(tmp_path / "t.npz"), out_dir=str(tmp_path / "o"))
    validate(c)
    meta = json.loads((Run.create("dst", c).dir / "config.json").read_text())
    assert meta["references"]["data"]["sha256"] == hashlib.sha256(b"abc").hexdigest()
    ck = (src.dir / "checkpoint.safetensors").read_bytes()
    assert meta["references"]["frozen"]["sha256"] == hashlib.sha256(ck).hexdigest()
