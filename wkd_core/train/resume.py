"""Resumable checkpoints of a training run: write one after each epoch, restore it.

What is saved (``format`` 1): the trainable weights (never the teacher), the optimizer (its
momentum buffers are also the fast step's), the GradScaler, the history and best epoch, every
rank's RNG states and the config. Split from ``trainer.py``, which calls both.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from wkd_core.data.loaders import mix_seed
from wkd_core.distillers.base import Distiller
from wkd_core.train import distributed
from wkd_core.train.callbacks import TrainState
from wkd_core.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_atomic,
    seed_everything,
)
from wkd_core.train.distributed import DistContext
from wkd_core.train.metrics import EpochMetrics


def save_checkpoint(state: TrainState, ctx: DistContext) -> Path | None:
    """Write ``checkpoint_dir/checkpoint.pt`` for the epoch just completed (rank 0 writes)."""
    rng = distributed.gather_objects(capture_rng_state(), ctx)  # every rank's streams
    if not ctx.is_main:
        return None
    payload = {
        "format": 1,
        "epoch": state.epoch,
        "distiller": state.distiller.trainable_state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "history": [m.to_dict() for m in state.history],
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
        "rng": rng,
        "config": state.config.to_dict(),
    }
    assert state.config.checkpoint_dir is not None
    return save_atomic(payload, Path(state.config.checkpoint_dir) / CHECKPOINT_NAME)


def resume_state(state: TrainState, ctx: DistContext) -> bool:
    """Restore ``state`` from the configured checkpoint; False when there is none."""
    config = state.config
    if config.resume is False or config.resume is None:
        return False
    if config.resume is True:
        if config.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        path = Path(config.checkpoint_dir) / CHECKPOINT_NAME
        if not path.exists():
            return False  # nothing to resume yet: a fresh run
    else:
        path = Path(config.resume)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    ckpt = load_checkpoint(path)
    load_trainable(state.distiller, ckpt["distiller"], path)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"] and state.scaler.is_enabled():
        state.scaler.load_state_dict(ckpt["scaler"])
    state.history = [EpochMetrics.from_dict(row) for row in ckpt["history"]]
    state.best_top1, state.best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
    state.start_epoch = ckpt["epoch"] + 1
    if len(ckpt["rng"]) == ctx.world_size:
        restore_rng_state(ckpt["rng"][ctx.rank])
    else:  # a different world size: the streams cannot continue, keep them distinct
        seed_everything(mix_seed(config.seed, ckpt["epoch"], ctx.rank))
    return True


def load_trainable(distiller: Distiller, saved: dict[str, Tensor], path: Path) -> None:
    """Load a ``trainable_state_dict``; a ValueError names the first differing keys/shapes."""
    current = distiller.trainable_state_dict()
    differ = sorted(current.keys() ^ saved.keys())
    differ += [
        f"{k}: {tuple(saved[k].shape)} vs {tuple(current[k].shape)}"
        for k in current.keys() & saved.keys()
        if saved[k].shape != current[k].shape
    ]
    if differ:
        raise ValueError(f"checkpoint {path} does not match the distiller: {differ[:5]}")
    distiller.load_state_dict(saved, strict=False)  # strict=False: the teacher is not in it
