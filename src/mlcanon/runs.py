"""Run folders (DESIGN.md section 4): config, metrics, TensorBoard, safetensors checkpoints, resume.

Layout of ``runs/<name>-<dataset|env>-<YYYYmmdd-HHMMSS>[-N]/``:

- ``config.json``      algorithm name, the full config, library/torch/python versions, seed, device
- ``metrics.jsonl``    one JSON object per logged step: ``{"step": 100, "train/loss": 0.31, ...}``
- ``events.out.tfevents.*``  TensorBoard (written lazily; purged back to the checkpoint step on resume)
- ``checkpoint.safetensors`` + ``state.json``  the last checkpoint (``best.safetensors`` + ``best.json``)
- ``curves.png``       every logged metric against step

Checkpoints hold *any* nested structure of dicts/lists/tuples of tensors, numpy arrays and JSON scalars
(model and optimizer state_dicts, RNG states, ...). :func:`encode` moves every array into the safetensors
file and leaves a JSON skeleton of scalars that points at them, so loading never unpickles anything.
Writing is atomic: the safetensors file (which also carries the JSON skeleton in its metadata, making it
self-contained) is written to a temporary name and renamed; ``state.json`` is written last, the same way,
and marks the checkpoint complete.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

import mlcanon
from mlcanon.config import references, to_dict
from mlcanon.devices import DistInfo, device_for_rank, init_distributed, resolve_device
from mlcanon.errors import UserError

CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------------------- encoding
def encode(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Replace tensors/arrays in ``obj`` by references into ``tensors``; return the JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        key = path or "_"
        t = obj.detach().cpu()
        if not t.is_contiguous():
            t = t.contiguous()
        tensors[key] = t.clone() if t.untyped_storage().size() != t.numel() * t.element_size() else t
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = path or "_"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        out = {}
        keys = list(obj.keys())
        int_keys = all(isinstance(k, int) for k in keys) and keys
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint dict keys must be str or int, got {k!r}")
            out[str(k)] = encode(v, tensors, f"{path}.{k}" if path else str(k))
        return {"__intdict__": out} if int_keys else out
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"cannot checkpoint object of type {type(obj).__name__} at {path!r}")


def decode(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__ndarray__" in skel:
            return tensors[skel["__ndarray__"]].numpy()
        if "__tuple__" in skel:
            return tuple(decode(v, tensors) for v in skel["__tuple__"])
        if "__float__" in skel:
            return float(skel["__float__"])
        if "__intdict__" in skel:
            return {int(k): decode(v, tensors) for k, v in skel["__intdict__"].items()}
        return {k: decode(v, tensors) for k, v in skel.items()}
    if isinstance(skel, list):
        return [decode(v, tensors) for v in skel]
    return skel


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    for stale in path.parent.glob(f".{path.name}.tmp-*"):   # left by a write that was killed
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
        except ValueError:
            pid = -1
        if pid != os.getpid() and not _alive(pid):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(directory: str | Path, obj: dict, *, tag: str = "checkpoint", step: int = 0) -> Path:
    """Atomically write ``<tag>.safetensors`` then ``<state>.json`` (the completion marker)."""

    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    skel = encode(obj, tensors)
    header = {"format": CHECKPOINT_FORMAT, "mlcanon": mlcanon.__version__, "torch": torch.__version__,
              "step": int(step), "state": skel}
    text = json.dumps(header)
    st_path = directory / f"{tag}.safetensors"
    _atomic_write_bytes(st_path, save(tensors, metadata={"mlcanon": text}))
    state_name = "state.json" if tag == "checkpoint" else f"{tag}.json"
    _atomic_write_bytes(directory / state_name, json.dumps(header, indent=1).encode())
    return st_path


def load_checkpoint(directory: str | Path, *, tag: str = "checkpoint") -> tuple[dict, int] | None:
    """Read a checkpoint written by :func:`save_checkpoint`; ``None`` when there is none yet."""

    directory = Path(directory)
    st_path = directory / f"{tag}.safetensors"
    if not st_path.exists():
        return None
    header = _read_header(st_path)
    if header.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{st_path} was written by mlcanon {header.get('mlcanon')} in checkpoint format "
                        f"{header.get('format')}; this mlcanon ({mlcanon.__version__}) reads format "
                        f"{CHECKPOINT_FORMAT}. Install the matching mlcanon version to load it.")
    try:
        tensors = load_file(str(st_path))
        return decode(header["state"], tensors), int(header["step"])
    except (OSError, KeyError, RuntimeError, ValueError) as e:   # the safetensors reader raises these on damage
        raise UserError(_damaged(st_path, e)) from None


def _damaged(path: Path, err: Exception) -> str:
    fix = ("delete it and resume from the last checkpoint (`mlcanon train --resume RUN_DIR`)" if path.stem == "best"
           else "delete it to restart the run from scratch, or restore it from a backup")
    return f"{path} is damaged or not a checkpoint ({type(err).__name__}: {str(err)[:80]}); {fix}"


def _read_header(st_path: Path) -> dict:
    """The JSON header of a checkpoint (cheap: the safetensors metadata only)."""

    try:
        with safe_open(str(st_path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise UserError(_damaged(st_path, e)) from None
    if "mlcanon" not in meta:
        raise UserError(f"{st_path} is not an mlcanon checkpoint (no mlcanon metadata)")
    try:
        header = json.loads(meta["mlcanon"])
    except json.JSONDecodeError as e:
        raise UserError(_damaged(st_path, e)) from None
    if not isinstance(header, dict) or "state" not in header or "step" not in header:
        raise UserError(_damaged(st_path, ValueError("header without state/step")))
    return header


def checkpoint_step(directory: str | Path, *, tag: str = "checkpoint") -> int:
    """The step of a run's last checkpoint (0 when there is none), read from its header only."""
    st_path = Path(directory) / f"{tag}.safetensors"
    if not st_path.exists():
        return 0
    return int(_read_header(st_path)["step"])


def load_weights(model: torch.nn.Module, run_dir: str | Path, tag: str = "best", key: str = "model"
                 ) -> torch.nn.Module:
    """Load the ``best`` (else the last) checkpoint's ``key`` weights into ``model``; eval mode."""
    ck = load_checkpoint(run_dir, tag=tag) or load_checkpoint(run_dir)
    if ck is None:
        raise UserError(f"{run_dir} has no checkpoint yet (the run stopped before its first checkpoint); "
                        f"continue it with `mlcanon train --resume {run_dir}`")
    if key not in ck[0]:
        raise UserError(f"{run_dir}: its checkpoint has no {key!r} weights; it was written by another version")
    model.load_state_dict(ck[0][key])
    return model.eval()


# ----------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """Python, numpy (legacy global) and torch RNG states, as tensors/ints (no pickle)."""
    py = random.getstate()
    np_state = np.random.get_state()
    st = {
        "python": {"version": py[0], "state": torch.tensor(py[1], dtype=torch.int64),
                   "gauss": py[2]},
        "numpy": {"keys": np_state[1].astype(np.uint32), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    p = st["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    n = st["numpy"]
    np.random.set_state(("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(st["cuda"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- run folder
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(text)).strip("-") or "run"


def run_label(config) -> str:
    """The dataset or env a run is about (part of the folder name)."""
    for key in ("dataset", "env", "task"):
        v = getattr(config, key, None)
        if v:
            return _slug(v)
    return ""


def new_run_dir(out_dir: str | Path, name: str, label: str = "") -> Path:
    out = Path(out_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = "-".join(p for p in (_slug(name), _slug(label) if label else "", stamp) if p)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        d = out / (base if i == 0 else f"{base}-{i}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {out}")


def read_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt config.json ({e}); it must be the JSON object mlcanon wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("algorithm"), str) \
            or not isinstance(data.get("config"), dict):
        raise UserError(f"{path}: not an mlcanon run config (expected a JSON object with 'algorithm' and "
                        "'config'); was it edited by hand?")
    return data


def environment_info(device: str | None = None) -> dict:
    info = {"mlcanon": mlcanon.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device:
        info["device"] = device
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


class Run:
    """A run folder being written. Only rank 0 of a distributed job writes (``enabled=False`` elsewhere)."""

    def __init__(self, directory: Path, *, enabled: bool = True):

        self.dir = Path(directory)
        self.enabled = enabled
        self.device = torch.device("cpu")
        self.dist = DistInfo()
        self.resume_state: dict | None = None     # the checkpoint read by Run.start on --resume
        self._tb = None
        self._purge_step: int | None = None
        self._metrics_file = None
        self._last: dict[str, float] = {}

    # -- creation / resume -------------------------------------------------------------------------
    @classmethod
    def create(cls, algorithm: str, config, *, enabled: bool = True, device: str | None = None) -> Run:

        if not enabled:
            return cls(Path(os.devnull), enabled=False)
        d = new_run_dir(config.out_dir, algorithm, run_label(config))
        run = cls(d)
        meta = {"algorithm": algorithm, "config": to_dict(config), "seed": config.seed,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **environment_info(device)}
        refs = references(config)
        if refs:
            meta["references"] = refs
        _atomic_write_bytes(d / "config.json", json.dumps(meta, indent=2).encode())
        return run

    @classmethod
    def start(cls, algorithm: str, config, run: Run | None = None) -> Run:
        """Every algorithm's first line: resolve the device, join torchrun's process group, seed, and open
        the run folder - a new one, or the one ``--resume`` reopened (whose checkpoint is read here, once,
        into ``run.resume_state``). Only rank 0 writes."""

        device = resolve_device(config.device)
        dist = init_distributed(device)
        device = device_for_rank(device, dist)
        if run is None:
            run = cls.create(algorithm, config, enabled=dist.is_main, device=str(device))
            run.log_hparams(config)
        else:
            loaded = load_checkpoint(run.dir)
            run.resume_state = loaded[0] if loaded else None
            run.enabled = run.enabled and dist.is_main
        run.device, run.dist = device, dist
        seed_everything(config.seed)
        return run

    @classmethod
    def reopen(cls, run_dir: str | Path, *, enabled: bool = True) -> tuple[Run, int]:
        """Reopen for resume: (run, step of its last checkpoint). Truncates metrics past that step; the
        checkpoint itself is read by :meth:`start`."""
        run = cls(Path(run_dir), enabled=enabled)
        step = checkpoint_step(run.dir)
        if enabled:
            run.truncate_metrics(step)
            run._purge_step = step + 1
        return run, step

    # -- metrics -----------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    def truncate_metrics(self, step: int) -> None:
        """Drop logged lines after ``step`` so a resumed run reads as if it had never stopped."""
        p = self.metrics_path
        if not p.exists():
            return
        keep = []
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if rec.get("step", 0) <= step:
                keep.append(line)
        _atomic_write_bytes(p, ("\n".join(keep) + ("\n" if keep else "")).encode())

    def tensorboard(self):
        if not self.enabled:
            return None
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # heavy (~1 s): imported when first written
            self._tb = SummaryWriter(str(self.dir), purge_step=self._purge_step)
        return self._tb

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One line in metrics.jsonl and one scalar per key in TensorBoard."""
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self._last.update(clean)
        if not self.enabled:
            return
        if self._metrics_file is None:
            self._metrics_file = open(self.metrics_path, "a")  # noqa: SIM115 (kept open for the run; closed in close())
        self._metrics_file.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._metrics_file.flush()
        tb = self.tensorboard()
        for k, v in clean.items():
            tb.add_scalar(k, v, int(step))

    def log_hparams(self, config) -> None:
        if not self.enabled:
            return
        text = "\n".join(f"| {k} | {v} |" for k, v in to_dict(config).items())
        self.tensorboard().add_text("hparams", "| field | value |\n|---|---|\n" + text, 0)

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.dir)

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self, obj: dict, step: int, *, tag: str = "checkpoint") -> None:
        if not self.enabled:
            return
        if self._metrics_file is not None:
            self._metrics_file.flush()
            os.fsync(self._metrics_file.fileno())
        if self._tb is not None:
            self._tb.flush()
        save_checkpoint(self.dir, obj, tag=tag, step=step)

    def load(self, tag: str = "checkpoint") -> tuple[dict, int] | None:
        return load_checkpoint(self.dir, tag=tag)

    def write_json(self, name: str, data: Any) -> None:
        if self.enabled:
            _atomic_write_bytes(self.dir / name, json.dumps(data, indent=2).encode())

    def finish(self, result: dict, *, step: int | None = None, metrics: dict[str, float] | None = None) -> dict:
        """End a run: log the final ``metrics`` at ``step``, write ``result.json``, close; returns ``result``."""
        if metrics:
            self.log(step if step is not None else 0, metrics)
        self.write_json("result.json", result)
        self.close()
        return result

    def close(self) -> None:
        if not self.enabled:
            return
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        plot_curves(self.dir)

    # -- progress bar ------------------------------------------------------------------------------
    def progress(self, total: int, *, initial: int = 0, unit: str = "step", desc: str = "", enabled=True):
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True,
                    disable=not (enabled and self.enabled), leave=True, file=sys.stderr)


def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_curves(run_dir: str | Path, records: Iterable[dict] | None = None, out: str | Path | None = None):
    """``curves.png``: one panel per metric namespace (train/, val/, eval/, rollout/, ...)."""
    records = list(records) if records is not None else read_metrics(run_dir)
    if not records:
        return None
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure registry

    series: dict[str, tuple[list, list]] = {}
    for r in records:
        for k, v in r.items():
            if k == "step" or k.endswith("/epoch") or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(r["step"])
            ys.append(v)
    groups: dict[str, list[str]] = {}
    for k in series:
        groups.setdefault(k.split("/")[-1] if "/" in k else k, []).append(k)
    names = sorted(groups)
    if not names:
        return None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    W, H = 4.5 * cols, 3.2 * rows
    fig = Figure(figsize=(W, H))
    # fixed margins in inches (room for tick labels, x label and title) instead of tight_layout, which measures
    # every text artist and took a third of this function's time
    fig.subplots_adjust(left=0.6 / W, right=1 - 0.15 / W, bottom=0.5 / H, top=1 - 0.3 / H, wspace=0.28,
                        hspace=1.1 / 3.2)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, g in zip(axes.flat, names):
        for k in sorted(groups[g]):
            xs, ys = series[k]
            ax.plot(xs, ys, label=k, marker="o" if len(xs) < 30 else None, ms=3)
        one = len(groups[g]) == 1   # one series: its full name is the title, no legend (a legend costs a search)
        ax.set_title(groups[g][0] if one else g, y=1.0)   # a set y skips matplotlib's title placement
        ax.locator_params(nbins=5)  # at most 6 ticks per axis: each tick is a set of artists to build and draw
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if not one:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=90)
    return out
