"""DistributedDataParallel under ``torchrun``: process group, wrapping, reductions.

``torchrun --nproc_per_node=W ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`setup`
then joins the process group (NCCL on CUDA, gloo on CPU) and picks ``cuda:LOCAL_RANK``.
Only the trainable part is synchronised: the frozen teacher's parameters have
``requires_grad=False``, which DDP leaves out of its gradient buckets, and the teacher's BN
buffers never change (it stays in eval mode), so broadcasting them is a no-op.

Batch semantics: the loaders of ``wkd_core.data.build_loaders`` take the *global* batch and
give each process ``batch / W`` samples, so W processes reproduce one process at the same
global batch (the authors' ``train_with_ddp.py`` uses the full batch per process instead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | torch.device = "cpu") -> DistContext:
    """Join the process group when launched by torchrun (idempotent); else a 1-process context.

    Args:
        device: ``"cpu"`` or ``"cuda"``; under torchrun ``cuda`` becomes
            ``cuda:LOCAL_RANK``.
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module`` itself."""
    if not ctx.enabled:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def all_reduce_sum(tensor: Tensor, ctx: DistContext) -> Tensor:
    """Sum ``tensor`` over processes, in place (a no-op without DDP)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, ctx: DistContext) -> bool:
    """True on every process when ``flag`` is True on at least one (a stop must be agreed)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: object, ctx: DistContext) -> list:
    """``[obj of rank 0, obj of rank 1, …]`` on every process (``[obj]`` without DDP)."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def teardown() -> None:
    """Leave the process group; call it once at the end of a torchrun script.

    Exiting with the group alive can abort the process ("terminate called without an
    active exception") while gloo's threads are torn down.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
