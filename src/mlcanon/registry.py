"""name -> algorithm: config dataclass, train function, one-line description, eval and sample hooks.

Adding an algorithm is one file plus one line here: the file calls :func:`register` at import time, and
its module path goes into ``_MODULES`` so that ``mlcanon list`` finds it. Modules are imported lazily (a
missing optional dependency only disables the algorithms that need it, with a clear message).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcanon import config as cfg
from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.runs import read_config

# Modules that register algorithms. One line per file.
_MODULES: list[str] = [
    "mlcanon.supervised.classifier",
    "mlcanon.supervised.segmentation",
    "mlcanon.supervised.graphs",
    "mlcanon.supervised.seq2seq",
    "mlcanon.supervised.transfer",
    "mlcanon.rl.tabular_cli",
    "mlcanon.rl.mdp_solve",
    "mlcanon.rl.ppo",
    "mlcanon.rl.dqn",
    "mlcanon.rl.a2c",
    "mlcanon.rl.reinforce",
    "mlcanon.rl.actor_critic",
    "mlcanon.rl.decision_transformer",
    "mlcanon.generative.diffusion.ddpm",
    "mlcanon.generative.diffusion.noisy_classifier",
    "mlcanon.generative.diffusion.latent",
    "mlcanon.generative.flows.planar",
    "mlcanon.generative.flows.nice",
    "mlcanon.generative.flows.realnvp",
    "mlcanon.generative.flows.glow",
    "mlcanon.generative.flows.maf",
    "mlcanon.generative.flows.iaf",
    "mlcanon.generative.autoregressive.made",
    "mlcanon.generative.autoregressive.fvsbn",
    "mlcanon.generative.autoregressive.nade",
    "mlcanon.generative.autoregressive.pixelcnn",
    "mlcanon.generative.autoregressive.lstm_lm",
    "mlcanon.generative.autoregressive.gpt",
    "mlcanon.generative.autoregressive.bert",
    "mlcanon.generative.autoregressive.wavenet",
    "mlcanon.generative.autoregressive.vrnn",
    "mlcanon.generative.autoencoder",
    "mlcanon.generative.vae",
    "mlcanon.generative.gan",
    "mlcanon.generative.gan_variants",
    "mlcanon.adversarial",
]


# Optional dependencies an algorithm may declare (``requires=``), with the command that installs them.
OPTIONAL_DEPENDENCIES: dict[str, str] = {
    "networkx": "pip install 'mlcanon[graph]'",
    "Box2D": "pip install 'mlcanon[box2d]'",
    "pygame": "pip install 'mlcanon[render]'",
}


@dataclasses.dataclass
class EvalOptions:
    """Options every ``mlcanon eval RUN_DIR`` takes; algorithms extend it with their own fields."""

    seed: int = option(0, "seed of everything random in the evaluation (it repeats exactly)")


@dataclasses.dataclass
class SampleOptions:
    """Options every ``mlcanon sample RUN_DIR`` takes (besides -n and --out); algorithms extend it."""

    seed: int = option(0, "seed of the sampler (the same seed gives the same samples)")


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str                       # kebab-case CLI name, e.g. "q-learning"
    family: str                     # "supervised", "rl-tabular", "rl-deep", "generative", ...
    config_cls: type                # the @dataclass config (inherits CommonConfig)
    train: Callable[..., Any]       # train(config, run=None) -> result (a dict with "run_dir" when run)
    description: str                # one line for `mlcanon list`
    evaluate: Callable[..., dict] | None = None   # evaluate(run_dir: Path, options) -> dict of metrics
    sample: Callable[..., Path] | None = None     # sample(run_dir: Path, n: int, out: Path | None, options) -> path
    load: Callable[..., Any] | None = None        # load(run_dir: Path, config, tag) -> model or agent
    eval_options: type = EvalOptions
    sample_options: type = SampleOptions
    tiny: dict = dataclasses.field(default_factory=dict)   # config overrides for a seconds-long contract run
    requires: tuple[str, ...] = ()  # optional packages (keys of OPTIONAL_DEPENDENCIES)
    one_shot: bool = False          # finishes in one step (DP, analytic bandits): exempt from the kill test

    def missing(self) -> list[str]:
        return [r for r in self.requires if importlib.util.find_spec(r) is None]

    def install_hint(self) -> str:
        return " and ".join(sorted({OPTIONAL_DEPENDENCIES.get(r, f"pip install {r}") for r in self.missing()}))


_REGISTRY: dict[str, Algorithm] = {}
_LOADED = False
_IMPORT_ERRORS: dict[str, str] = {}


def register(name: str, *, family: str, config: type, description: str, evaluate: Callable | None = None,
             sample: Callable | None = None, load: Callable | None = None, eval_options: type = EvalOptions,
             sample_options: type = SampleOptions, tiny: dict | None = None, requires: tuple[str, ...] = (),
             one_shot: bool = False) -> Callable:
    """Register an algorithm: call it at the bottom of the algorithm's file, after the functions it names::

        register("vae", family="generative", config=VAEConfig, description="...", train=train,
                 evaluate=evaluate, sample=sample, load=load_model, tiny={"epochs": 1})

    As a decorator on ``train`` it is ``@register(name, ...)`` (the older form; the function is returned).
    """
    for r in requires:
        if r not in OPTIONAL_DEPENDENCIES:
            raise ValueError(f"{name}: requires={r!r} is not a declared optional dependency")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].train is not fn:
            raise RuntimeError(f"algorithm {name!r} registered twice")
        _REGISTRY[name] = Algorithm(name, family, config, fn, description, evaluate, sample, load, eval_options,
                                    sample_options, dict(tiny or {}), tuple(requires), one_shot)
        return fn

    return deco


def _load(until: str | None = None) -> None:
    """Import the algorithm modules in order, stopping once ``until`` is registered (``None``: all of them), so
    `mlcanon train classifier` does not pay for importing every family. An import error is recorded with its
    module and shown by `mlcanon list` and by every lookup that fails (never hidden, never fatal to the others)."""
    global _LOADED
    if _LOADED:
        return
    for mod in _MODULES:
        if until is not None and until in _REGISTRY:
            return
        if mod in _IMPORT_ERRORS:
            continue
        try:
            importlib.import_module(mod)       # a no-op for a module imported before
        except ImportError as e:
            _IMPORT_ERRORS[mod] = f"{type(e).__name__}: {e}"
    _LOADED = True


def _load_all() -> None:
    _load(None)


def import_errors() -> dict[str, str]:
    _load_all()
    return dict(_IMPORT_ERRORS)


def all_algorithms() -> list[Algorithm]:
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda a: (a.family, a.name))


def get(name: str) -> Algorithm:
    _load(until=name)
    if name not in _REGISTRY:
        import difflib
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        broken = "".join(f" (module {m} failed to import: {err})" for m, err in _IMPORT_ERRORS.items())
        raise UserError(f"unknown algorithm {name!r}.{hint} Run `mlcanon list` to see every algorithm.{broken}")
    algo = _REGISTRY[name]
    if algo.missing():
        raise UserError(f"{name} needs {', '.join(algo.missing())}: {algo.install_hint()}")
    return algo


def config_of(run_dir: str | Path, name: str):
    """The config recorded in ``run_dir``; UserError when the run is of another algorithm."""
    algo, config = algorithm_of_run(run_dir)
    if algo.name != name:
        raise UserError(f"{run_dir} is a {algo.name} run, not a {name} run")
    return config


def algorithm_of_run(run_dir: str | Path) -> tuple[Algorithm, Any]:
    """The algorithm and config recorded in a run folder's config.json."""
    data = read_config(run_dir)
    algo = get(data["algorithm"])
    config = cfg.from_dict(algo.config_cls, data["config"], source=f"{run_dir}/config.json")
    return algo, config


@dataclasses.dataclass
class LoadedRun:
    """A trained run, ready to evaluate or sample from Python (:func:`load_run`)."""

    algorithm: str
    config: Any
    model: Any          # the nn.Module or agent the algorithm's ``load`` returns
    dir: Path


def load_run(run_dir: str | Path, tag: str = "best") -> LoadedRun:
    """``mlcanon.load_run(RUN_DIR)``: the config and the trained model or agent (best weights by default)."""
    algo, config = algorithm_of_run(run_dir)
    if algo.load is None:
        raise UserError(f"{algo.name} runs cannot be loaded from Python yet (no load hook)")
    return LoadedRun(algo.name, config, algo.load(Path(run_dir), config, tag), Path(run_dir))
