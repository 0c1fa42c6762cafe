"""Config dataclasses: one per algorithm, a help text on every field, turned into CLI flags.

Every algorithm's config inherits :class:`CommonConfig` (seed, device, precision, ...) and declares its own
fields with :func:`option`, which stores the one-line help text (shown by ``mlcanon train NAME --help``) and,
optionally, the allowed choices. ``validate(config)`` checks types, choices and bounds and raises
:class:`~mlcanon.errors.UserError` naming the field and the fix - nothing is silently coerced.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from mlcanon.errors import UserError

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, default_factory: Any = _MISSING, ref: str | None = None,
           absent: Any = _MISSING) -> Any:
    """A config field with its help text (the field's docstring), allowed choices and numeric bounds.

    ``ref="run"`` marks a field naming another run folder (a frozen autoencoder, a noisy classifier) and
    ``ref="file"`` one naming a file (a trajectory file): validated when the config is built, and the sha256 of
    the file (for a run: its best, else last, checkpoint) is recorded in config.json under "references".
    ``absent``: the value a run's config.json written before the field existed means (what those runs did),
    when it differs from the default of new runs (:func:`from_dict`; a ``--config`` file gets the default).
    """
    if ref not in (None, "run", "file"):
        raise ValueError(f"option(ref={ref!r}): use 'run' or 'file'")
    meta = {"help": help, "choices": choices, "min": min, "max": max, "ref": ref}
    if absent is not _MISSING:
        meta["absent"] = absent
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class CommonConfig:
    """Fields every algorithm shares; the names are the same everywhere (DESIGN.md section 3)."""

    seed: int = option(0, "first random seed; the same seed and config give the same metrics on CPU")
    device: str = option("auto", "where to run: cpu, cuda, or auto (cuda when available)",
                         choices=("auto", "cpu", "cuda"))
    precision: str = option("fp32", "fp32, or bf16 autocast for the forward pass", choices=("fp32", "bf16"))
    compile: bool = option(False, "wrap the model in torch.compile (slow to start on CPU)")
    out_dir: str = option("runs", "parent folder of run folders")
    checkpoint_every: int = option(0, "steps between checkpoints (0: once per epoch / every 10%)", min=0)
    log_every: int = option(0, "steps between logged metrics (0: an automatic choice)", min=0)
    progress: bool = option(True, "show a progress bar")

    #: False for numpy-only algorithms: validate() then rejects --precision bf16, --compile, --device cuda
    uses_torch: typing.ClassVar[bool] = True


def fields(cls_or_obj) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls_or_obj) if f.init]


def _resolve_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X`` / ``X | None`` annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parse_value(tp: Any, text: str, name: str) -> Any:
    """Parse a CLI string into the field's type; a bad value is a UserError naming the flag."""
    inner, optional = base_type(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    flag = "--" + name.replace("_", "-")
    try:
        if inner is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if inner is int:
            return int(text)
        if inner is float:
            return float(text)
        if inner is str:
            return text
        origin = typing.get_origin(inner)
        if origin in (tuple, list):
            (elem,) = {a for a in typing.get_args(inner) if a is not Ellipsis} or {str}
            parts = [p for p in text.replace(",", " ").split() if p]
            vals = [parse_value(elem, p, name) for p in parts]
            return tuple(vals) if origin is tuple else vals
    except ValueError:
        raise UserError(f"{flag}: cannot read {text!r} as {getattr(inner, '__name__', inner)}; "
                        f"give e.g. {flag} {_example(inner)}") from None
    raise TypeError(f"unsupported config field type {tp!r} for {name}")


def _example(tp):
    return {bool: "true", int: "10", float: "0.001", str: "name"}.get(tp, "1,2,3")


def validate(config) -> None:
    """Check every field's type, choices and bounds; raise UserError naming the flag and the fix."""
    hints = _resolve_types(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        inner, optional = base_type(hints[f.name])
        if value is None:
            if optional:
                continue
            raise UserError(f"{flag} must be set (got None)")
        if inner is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(config, f.name, value)
        ok = isinstance(value, inner) if isinstance(inner, type) else True
        if inner is int and isinstance(value, bool):
            ok = False
        if inner in (int, float) and isinstance(value, bool):
            ok = False
        if not ok:
            raise UserError(f"{flag} must be {inner.__name__}, got {value!r} ({type(value).__name__})")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{flag} must be one of {', '.join(map(str, choices))}; got {value!r}")
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None and value < lo:
            raise UserError(f"{flag} must be >= {lo}; got {value!r}")
        if hi is not None and value > hi:
            raise UserError(f"{flag} must be <= {hi}; got {value!r}")
    for f in fields(config):
        if f.metadata.get("ref") and getattr(config, f.name):
            referenced_file(getattr(config, f.name), f.metadata["ref"], "--" + f.name.replace("_", "-"))
    if not getattr(type(config), "uses_torch", True):   # numpy-only algorithms: torch options cannot apply
        if config.precision != "fp32":
            raise UserError(f"--precision {config.precision}: this algorithm runs in numpy float64; "
                            "remove --precision")
        if config.compile:
            raise UserError("--compile: this algorithm has no torch model to compile; remove --compile")
        if config.device == "cuda":
            raise UserError("--device cuda: this algorithm runs on the CPU in numpy; use --device cpu or auto")
    check = getattr(config, "check", None)
    if callable(check):
        check()


def to_dict(config) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def from_dict(cls, data: dict[str, Any], *, source: str = "config", stored: bool = True) -> Any:
    """Build a config from a dict (config.json / a --config file); unknown keys are a UserError.

    ``stored``: ``data`` is a run's config.json, so a field it lacks that declares ``option(absent=...)`` takes
    that value (the run was written before the field existed); otherwise (a --config file) the default."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{source}: unknown field(s) {', '.join(unknown)} for {cls.__name__}; "
                        f"known fields: {', '.join(sorted(names))}")
    hints = _resolve_types(cls)
    kwargs = {}
    for k, v in data.items():
        inner, _ = base_type(hints[k])
        if isinstance(v, list) and typing.get_origin(inner) is tuple:
            v = tuple(v)
        kwargs[k] = v
    if stored:
        for f in fields(cls):
            if f.name not in kwargs and "absent" in f.metadata:
                kwargs[f.name] = f.metadata["absent"]
    config = cls(**kwargs)
    validate(config)
    return config


def load_file(cls, path: str | Path) -> Any:
    """Read a config from a .json or .toml file (only the fields it names; defaults for the rest)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UserError(f"--config {path}: use a .toml or .json file")
    except (json.JSONDecodeError, ValueError) as e:
        raise UserError(f"--config {path}: cannot parse ({e})") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    data.pop("algorithm", None)
    return from_dict(cls, data, source=f"--config {path}", stored=False)


def replace(config, **changes):
    new = dataclasses.replace(config, **changes)
    validate(new)
    return new


# ------------------------------------------------------------------------------------ flags <-> fields
class FlagParser(argparse.ArgumentParser):
    """argparse that raises UserError (one clear line) instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flag_parser(cls, prog: str, description: str = "") -> argparse.ArgumentParser:
    """A parser with one flag per field of the dataclass ``cls``; unset flags are absent from the namespace."""
    p = FlagParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    hints = _resolve_types(cls)
    for f in fields(cls):
        inner, _ = base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" {{{', '.join(map(str, choices))}}}"
        help_text += f" (default: {default})"
        kw = {"help": help_text.replace("%", "%%"), "metavar": f.name.upper() if inner is not bool else "BOOL",
              "dest": f.name}
        if inner is bool:
            kw["nargs"] = "?"
            kw["const"] = "true"
        p.add_argument(flag(f.name), type=str, **kw)
    return p


def from_flags(cls, args: list[str], *, prog: str, description: str = "", config_file: str | None = None,
               print_help: bool = True):
    """Defaults, then ``--config FILE`` (training configs), then flags; validated. ``--help`` prints them."""
    parser = flag_parser(cls, prog, description)
    if print_help and any(a in ("-h", "--help") for a in args):
        parser.print_help()
        raise SystemExit(0)
    ns = vars(parser.parse_args(args))
    base = load_file(cls, config_file) if config_file else cls()
    hints = _resolve_types(cls)
    changes = {k: parse_value(hints[k], v, k) for k, v in ns.items()}
    config = dataclasses.replace(base, **changes)
    validate(config)
    return config


def build_config(algo, args: list[str], config_file: str | None = None):
    """An algorithm's config from defaults, then ``--config FILE``, then flags; validated."""
    return from_flags(algo.config_cls, args, prog=f"mlcanon train {algo.name}", description=algo.description,
                      config_file=config_file)


def referenced_file(value: str, ref: str, flag_name: str) -> Path:
    """The file a ``ref`` field points at (a run's best/last checkpoint, or the file); UserError when absent."""
    path = Path(value)
    if ref == "run":
        if not (path / "config.json").is_file():
            raise UserError(f"{flag_name} {value}: not a run folder (no config.json); give the folder that "
                            "`mlcanon train` printed")
        for name in ("best.safetensors", "checkpoint.safetensors"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{flag_name} {value}: that run has no checkpoint yet; finish it with "
                        f"`mlcanon train --resume {value}`")
    if not path.is_file():
        raise UserError(f"{flag_name} {value}: no such file")
    return path


def references(config) -> dict[str, dict]:
    """{field: {"path": absolute path, "sha256": hex}} for every set ``ref`` field of ``config``."""
    import hashlib

    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("ref") and value:
            path = referenced_file(value, f.metadata["ref"], flag(f.name))
            out[f.name] = {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return out
