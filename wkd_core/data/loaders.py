"""Data loaders whose order depends only on (seed, epoch), on one process or under DDP.

Batch semantics: ``batch_size`` is the **global** batch. Under DistributedDataParallel each
of the W processes loads ``batch_size // W`` samples per step, so that W processes see, step
by step, exactly the samples one process would see at ``batch_size`` (the training sampler
gives rank r the positions r, r+W, r+2W, … of the shared epoch permutation). The authors'
``train_with_ddp.py`` instead uses BATCH_SIZE per process (a global batch W times larger).

Reproducibility: the epoch permutation is drawn from a generator seeded from
(seed, epoch), and the loader's own generator (which seeds worker processes and random
transforms run in them) is re-seeded from (seed, epoch, rank) by :func:`set_loader_epoch`.
So epoch e is the same whether the run went through epochs 1…e−1 or resumed from a
checkpoint. With ``num_workers=0`` random transforms draw from the global torch RNG, whose
state the trainer's checkpoint stores.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (seed, epoch, rank …)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0]) >> 1


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one rank, fixed by (seed, epoch).

    Args:
        data: the dataset (only its length is used).
        seed: base seed of the permutations.
        shuffle: permute per epoch (training) or keep the order (evaluation).
        rank, world_size: this process's shard: positions rank, rank+W, … .
        pad: repeat the first indices so every rank gets the same count (training, where
            ranks must take the same number of steps); evaluation uses ``pad=False`` so
            that every sample counts exactly once.
    """

    def __init__(
        self,
        data: Sized,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        self.n = len(data)
        self.seed, self.shuffle, self.pad = seed, shuffle, pad
        self.rank, self.world_size = rank, world_size
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()
        if self.pad and self.n % self.world_size:
            indices += indices[: self.world_size - self.n % self.world_size]
        return iter(indices[self.rank :: self.world_size])

    def __len__(self) -> int:
        if self.pad:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process: the process group's, else torchrun's, else (0, 1).

    Reading torchrun's environment lets the loaders be built before ``fit`` joins the group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _check_batch(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def build_loaders(
    train_set: Dataset,
    val_set: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool | None = None,
    eval_batch_size: int | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Training and evaluation loaders wired for reproducible epochs (see the module doc).

    Args:
        train_set, val_set: datasets yielding (image, label).
        batch_size: the global training batch, an int >= 1; divided by the world size under
            DDP.
        num_workers: loader worker processes.
        seed: base seed of the shuffling and of the workers.
        distributed: shard over the processes; ``None`` (default) detects torchrun's
            RANK / WORLD_SIZE (or an initialised process group), False never shards.
        eval_batch_size: global evaluation batch, an int >= 1 (default: ``batch_size``).
        drop_last: drop the last incomplete training batch (the authors keep it).
        pin_memory: page-locked host memory, for CUDA.

    Returns:
        (train_loader, val_loader); call :func:`set_loader_epoch` before each epoch (``fit``
        does).
    """
    _check_batch("batch_size", batch_size)
    if eval_batch_size is not None:
        _check_batch("eval_batch_size", eval_batch_size)
    rank, world = process_rank() if distributed is not False else (0, 1)
    if distributed and world == 1:
        raise ValueError("distributed=True but neither torchrun nor a process group is set up")
    if batch_size % world:
        raise ValueError(f"global batch {batch_size} is not divisible by world size {world}")
    eval_batch = max((eval_batch_size or batch_size) // world, 1)
    train_sampler = EpochSampler(train_set, seed=seed, rank=rank, world_size=world)
    val_sampler = EpochSampler(val_set, shuffle=False, rank=rank, world_size=world, pad=False)
    common = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        common["persistent_workers"] = False  # workers re-seeded from the generator per epoch
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size // world,
        sampler=train_sampler,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(mix_seed(seed, 0, rank)),
        **common,
    )
    # A generator also for evaluation: creating an iterator then draws its worker seed from
    # it rather than from the global RNG, so evaluating leaves the training stream unchanged.
    val_loader = DataLoader(
        val_set,
        batch_size=eval_batch,
        sampler=val_sampler,
        generator=torch.Generator().manual_seed(mix_seed(seed, 1, rank)),
        **common,
    )
    return train_loader, val_loader


def set_loader_epoch(loader: DataLoader, epoch: int, *, seed: int = 0, rank: int = 0) -> None:
    """Fix the order and the worker seeds of ``loader`` for ``epoch`` (1-based).

    Works for our :class:`EpochSampler`, for ``DistributedSampler`` and for any sampler
    with ``set_epoch``; a loader built with a ``generator`` has it re-seeded from
    (seed, epoch, rank). A loader with its own ``set_epoch`` (the device-resident
    ``wkd_core.data.device.DeviceLoader``) is simply told the epoch.
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(mix_seed(seed, epoch, rank, 2))
