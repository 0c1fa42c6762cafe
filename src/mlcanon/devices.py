"""One device flag, bf16 autocast, torch.compile, and torchrun-launched data parallelism.

``--precision bf16`` and ``--compile`` either take effect or raise a UserError; they are never accepted
and ignored. Distributed training goes through ``torch.distributed`` (launched by ``torchrun``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import torch

from mlcanon.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``auto`` -> a torch.device; cuda without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device {name!r}: use cpu, cuda or auto")


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op CPU threads set to ``n`` for the block (None or 0: left as they are), then restored."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def autocast(device: torch.device, precision: str):
    """Context for the forward pass: bf16 autocast when asked, else a no-op."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16: this GPU does not support bfloat16; use --precision fp32")
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise UserError(f"--precision {precision!r}: use fp32 or bf16")


def maybe_compile(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(module)`` when enabled (the uncompiled module stays the one that is saved)."""
    if not enabled:
        return module
    if not hasattr(torch, "compile"):
        raise UserError("--compile needs torch >= 2.0")
    return torch.compile(module)


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def device_for_rank(device: torch.device, info: DistInfo) -> torch.device:
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device
