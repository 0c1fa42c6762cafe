"""Shared pieces of the supervised tasks (segmentation, GCNs, seq2seq, transfer): the fit-loop fields and run set-up.

The tasks themselves live one family per file: :mod:`~mlcanon.supervised.segmentation`,
:mod:`~mlcanon.supervised.graphs`, :mod:`~mlcanon.supervised.seq2seq`, :mod:`~mlcanon.supervised.transfer`,
and :mod:`~mlcanon.supervised.gradcam`. Each trains with the generic loop :func:`mlcanon.supervised.fit.fit`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlcanon.devices import resolve_device
from mlcanon.errors import UserError
from mlcanon.runs import Run, load_checkpoint, seed_everything
from mlcanon.supervised.fit import FitConfig  # noqa: F401  (re-exported: the tasks' configs inherit it)


def start(name: str, config, run: Run | None) -> tuple[Run, dict | None, torch.device]:
    """(run, resume state or None, device): a new run folder, or the reopened one passed by ``--resume``."""
    device = resolve_device(config.device)
    resume_state = None
    if run is None:
        run = Run.create(name, config, device=str(device))
        run.log_hparams(config)
    else:
        loaded = run.load()
        resume_state = loaded[0] if loaded else None
    seed_everything(config.seed)
    return run, resume_state, device


def load_weights(model: torch.nn.Module, run_dir: str | Path, tag: str = "best") -> torch.nn.Module:
    """Load the ``best`` (else the last) checkpoint's model weights into ``model``; eval mode."""
    ck = load_checkpoint(run_dir, tag=tag) or load_checkpoint(run_dir)
    if ck is None:
        raise UserError(f"{run_dir} has no checkpoint yet (the run stopped before its first checkpoint); "
                        f"continue it with `mlcanon train --resume {run_dir}`")
    model.load_state_dict(ck[0]["model"])
    return model.eval()


def config_of(run_dir: str | Path, name: str):
    """The config recorded in ``run_dir``; UserError when the run is of another algorithm."""
    from mlcanon.registry import algorithm_of_run
    algo, config = algorithm_of_run(run_dir)
    if algo.name != name:
        raise UserError(f"{run_dir} is a {algo.name} run, not a {name} run")
    return config
