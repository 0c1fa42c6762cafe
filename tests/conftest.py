"""Shared test set-up: real data from ../shared/data, seeds, small torch thread counts.

``MLCANON_DATA`` is resolved to an absolute path (so subprocesses see it too). Tests that need the real
files use the ``real_data`` fixture: it skips when the shared data is missing, except under ``CI=true``,
where a missing copy is a failure (DESIGN.md section 6).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

if "MLCANON_DATA" in os.environ:
    os.environ["MLCANON_DATA"] = str(Path(os.environ["MLCANON_DATA"]).resolve())
elif SHARED_DATA.is_dir():
    os.environ["MLCANON_DATA"] = str(SHARED_DATA)

os.environ.setdefault("MPLBACKEND", "Agg")
# Tests train small models: one thread each is fastest, and it avoids OpenMP oversubscription when the
# suite runs subprocesses (or shares the machine). Subprocesses inherit OMP_NUM_THREADS.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def _data_dir() -> Path | None:
    d = os.environ.get("MLCANON_DATA")
    return Path(d) if d and Path(d).is_dir() else None


@pytest.fixture
def real_data():
    """Path of the real data folder (../shared/data); skip without it, fail under CI=true."""
    d = _data_dir()
    if d is None or not (d / "mnist").is_dir():
        msg = f"real data not found (MLCANON_DATA={os.environ.get('MLCANON_DATA')!r}, looked in {SHARED_DATA})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " - CI must have ../shared/data")
        pytest.skip(msg)
    return d


@pytest.fixture
def tmp_runs(tmp_path):
    """A parent folder for run folders."""
    d = tmp_path / "runs"
    d.mkdir()
    return d
