"""Data-parallel training through torch.distributed: torchrun is the engine, this is the glue.

One process per device. torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run
is a single process and every function here is a cheap no-op. Backend: nccl on CUDA, gloo
on the CPU. Only rank 0 writes files; every rank holds the whole in-memory dataset and
takes its slice of each global batch.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device_kind: str) -> torch.device | None:
    """Join the process group torchrun describes; returns this rank's CUDA device (None on the CPU)."""
    if env_world_size() <= 1:
        return None
    from sftcore.errors import ConfigError

    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run with one process")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return torch.device("cuda", local) if device_kind == "cuda" else None
    device = None
    if device_kind == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPUs; "
                "use --nproc_per_node at most the number of GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    extra: dict[str, Any] = {"device_id": device} if device is not None else {}
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **extra)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()  # DDP wrappers sit in reference cycles; free them before their process group
        dist.destroy_process_group()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (run directory name, a decision)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if active():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return tensor


def all_gather_objects(obj: Any) -> list:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_module_(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers into every rank's ``module``, in place."""
    if active():
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)


def broadcast_buffers_(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics) into every rank's ``module``."""
    if active():
        with torch.no_grad():
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


def barrier() -> None:
    if active():
        dist.barrier()


def shard(n: int, part: int | None = None, parts: int | None = None) -> tuple[int, int]:
    """``[lo, hi)`` of this rank's contiguous share of ``n`` items (sizes differ by at most one)."""
    part = rank() if part is None else part
    parts = world_size() if parts is None else parts
    base, extra = divmod(n, parts)
    lo = part * base + min(part, extra)
    return lo, lo + base + (1 if part < extra else 0)
