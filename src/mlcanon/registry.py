"""name -> algorithm: config dataclass, train function, one-line description, eval and sample hooks.

Adding an algorithm is one file plus one line here: the file calls :func:`register` at import time, and
its module path goes into ``_MODULES`` so that ``mlcanon list`` finds it. Modules are imported lazily (a
missing optional dependency only disables the algorithms that need it, with a clear message).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcanon.errors import UserError

# Modules that register algorithms. One line per file.
_MODULES: list[str] = [
    "mlcanon.supervised.classifier",
    "mlcanon.supervised.segmentation",
    "mlcanon.supervised.graphs",
    "mlcanon.supervised.seq2seq",
    "mlcanon.supervised.transfer",
    "mlcanon.rl.tabular_cli",
]


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str                       # kebab-case CLI name, e.g. "q-learning"
    family: str                     # "supervised", "rl-tabular", "rl-deep", "generative", ...
    config_cls: type                # the @dataclass config (inherits CommonConfig)
    train: Callable[..., Any]       # train(config, run=None) -> result (a dict with "run_dir" when run)
    description: str                # one line for `mlcanon list`
    evaluate: Callable[..., dict] | None = None   # evaluate(run_dir: Path, **kw) -> dict of metrics
    sample: Callable[..., Path] | None = None     # sample(run_dir: Path, n: int, out: Path) -> written path


_REGISTRY: dict[str, Algorithm] = {}
_LOADED = False
_IMPORT_ERRORS: dict[str, str] = {}


def register(name: str, *, family: str, config: type, description: str,
             evaluate: Callable | None = None, sample: Callable | None = None) -> Callable:
    """Decorator on an algorithm's ``train(config, run=None)`` function."""

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].train is not fn:
            raise RuntimeError(f"algorithm {name!r} registered twice")
        _REGISTRY[name] = Algorithm(name, family, config, fn, description, evaluate, sample)
        return fn

    return deco


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # an optional dependency (or a module not written yet)
            _IMPORT_ERRORS[mod] = str(e)


def all_algorithms() -> list[Algorithm]:
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda a: (a.family, a.name))


def get(name: str) -> Algorithm:
    _load_all()
    if name not in _REGISTRY:
        import difflib
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown algorithm {name!r}.{hint} Run `mlcanon list` to see every algorithm.")
    return _REGISTRY[name]


def algorithm_of_run(run_dir: str | Path) -> tuple[Algorithm, Any]:
    """The algorithm and config recorded in a run folder's config.json."""
    from mlcanon import config as cfg
    from mlcanon.runs import read_config

    data = read_config(run_dir)
    algo = get(data["algorithm"])
    config = cfg.from_dict(algo.config_cls, data["config"], source=f"{run_dir}/config.json")
    return algo, config
