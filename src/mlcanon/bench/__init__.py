"""The benchmark suite: registered entries measured by `mlcanon bench`, written to docs/BENCHMARKS.md.

An entry is a function returning a list of :class:`Row`; it registers itself with :func:`bench` in a
module listed in ``_MODULES`` (same pattern as the algorithm registry). Rows hold what was measured here,
beside the target or the peer library's figure measured in the same run.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

_MODULES = [
    "mlcanon.bench.classifier",
    "mlcanon.bench.deep_rl",
    "mlcanon.bench.diffusion",
    "mlcanon.bench.figures",
    "mlcanon.bench.flows",
    "mlcanon.bench.metrics",
    "mlcanon.bench.mnist_speed",
    "mlcanon.bench.supervised_tasks",
    "mlcanon.bench.tabular",
    "mlcanon.bench.tabular_learning",
    "mlcanon.bench.autoregressive",
    "mlcanon.bench.latent_adversarial",
]


@dataclasses.dataclass
class Row:
    name: str                 # what is measured, e.g. "classifier cnn mnist test accuracy"
    command: str              # the command that reproduces it
    ours: float               # our figure
    unit: str                 # "%", "s", "steps/s", ...
    reference: float | None = None   # target, published, or peer figure
    reference_label: str = ""        # "target", "paper", "pymdptoolbox 4.0b3 (same run)", ...
    higher_is_better: bool = True
    wall_s: float | None = None
    notes: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference in (None, 0) or self.ours == 0:
            return None
        return self.ours / self.reference if self.higher_is_better else self.reference / self.ours

    is_target: bool = True           # False: the reference is a peer to compare with, not a target ("met" is "-")

    @property
    def met(self) -> bool | None:
        if self.reference is None or not self.is_target:
            return None
        return self.ours >= self.reference if self.higher_is_better else self.ours <= self.reference


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    suites: tuple[str, ...]
    fn: Callable[[], list[Row]]
    description: str
    footer: str = ""          # markdown written under the table (e.g. links to the figures the entry draws)


_ENTRIES: dict[str, Entry] = {}
_LOADED = False


def bench(name: str, *, suites: tuple[str, ...] = ("quick", "full"), description: str = "", footer: str = ""
          ) -> Callable:
    def deco(fn):
        _ENTRIES[name] = Entry(name, tuple(suites), fn, description, footer)
        return fn
    return deco


def entries(suite: str) -> list[Entry]:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for m in _MODULES:   # an import error is a bug: it propagates (peers are imported inside entries)
            importlib.import_module(m)
    return [e for e in _ENTRIES.values() if suite in e.suites]
