"""Callbacks: everything around the training loop (progress, metric files, cancellation).

``fit`` calls, in this order::

    on_fit_start(state)
    for each epoch:   on_batch_end(state, batch_index, num_batches, loss_terms) per batch
                      on_epoch_end(state, metrics)       (after the checkpoint is written)
    on_fit_end(state, result)                            (also after a StopTraining)

``loss_terms`` is ``None`` except every ``log_every`` batches and on the last batch of an
epoch, where it holds the running epoch means (floats; reading them syncs the device, so the
loop only does it then). Under DistributedDataParallel callbacks run on rank 0 only.

Raising :class:`StopTraining` from any hook ends training cleanly: the current epoch is
abandoned (the last completed epoch's checkpoint stays the resume point), ``on_fit_end``
still runs and ``fit`` returns the result so far with ``stopped=True``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from wkd_core.train.metrics import EpochMetrics, FitResult

if TYPE_CHECKING:
    from wkd_core.distillers.base import Distiller
    from wkd_core.train.config import TrainConfig


class StopTraining(Exception):  # noqa: N818  (a control-flow signal, like StopIteration)
    """Raised by a callback to end ``fit`` early and cleanly."""


@dataclass
class TrainState:
    """What callbacks can read (and should not modify) during ``fit``.

    Attributes:
        distiller: the (unwrapped) distiller being trained.
        optimizer, scaler: the SGD optimizer and the AMP GradScaler.
        config: the run's ``TrainConfig``.
        device: where training runs.
        epoch: current 1-based epoch (0 before the first one).
        start_epoch: first epoch of this call (> 1 after a resume).
        history: completed epochs, resumed ones included.
        best_top1, best_epoch: best test top-1 so far.
        rank, world_size: process rank and count (0 and 1 without DDP).
    """

    distiller: Distiller
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    config: TrainConfig
    device: torch.device
    epoch: int = 0
    start_epoch: int = 1
    history: list[EpochMetrics] = field(default_factory=list)
    best_top1: float = 0.0
    best_epoch: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def total_epochs(self) -> int:
        return self.config.epochs


class Callback:
    """Base class: override the hooks you need; all default to doing nothing."""

    def on_fit_start(self, state: TrainState) -> None:
        pass

    def on_batch_end(
        self,
        state: TrainState,
        batch_index: int,
        num_batches: int,
        loss_terms: dict[str, float] | None,
    ) -> None:
        pass

    def on_epoch_end(self, state: TrainState, metrics: EpochMetrics) -> None:
        pass

    def on_fit_end(self, state: TrainState, result: FitResult) -> None:
        pass


class ProgressBar(Callback):
    """tqdm bars over epochs and over the batches of the current epoch.

    Args:
        disable: draw nothing.
        leave_batches: keep each finished epoch's batch bar on screen.
        file: stream to draw on (default: tqdm's, stderr).
    """

    def __init__(
        self, *, disable: bool = False, leave_batches: bool = False, file: IO[str] | None = None
    ) -> None:
        self.disable = disable
        self.leave_batches = leave_batches
        self.file = file
        self._epochs: Any = None
        self._batches: Any = None

    def on_fit_start(self, state: TrainState) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._epochs = tqdm(
            total=state.total_epochs, initial=state.start_epoch - 1, desc="epochs",
            disable=self.disable, unit="ep", file=self.file,
        )  # fmt: skip

    def on_batch_end(self, state, batch_index, num_batches, loss_terms) -> None:
        if self._batches is None:
            self._batches = self._tqdm(
                total=num_batches, desc=f"epoch {state.epoch}", leave=self.leave_batches,
                disable=self.disable, unit="batch", file=self.file,
            )  # fmt: skip
        self._batches.update(1)
        if loss_terms is not None:
            self._batches.set_postfix({k: f"{v:.4f}" for k, v in loss_terms.items()})

    def on_epoch_end(self, state: TrainState, metrics: EpochMetrics) -> None:
        self._close_batches()
        self._epochs.update(1)
        self._epochs.set_postfix(
            loss=f"{metrics.train_loss:.4f}", top1=f"{metrics.test_top1:.2f}",
            best=f"{state.best_top1:.2f}",
        )  # fmt: skip

    def on_fit_end(self, state: TrainState, result: FitResult) -> None:
        self._close_batches()
        if self._epochs is not None:
            self._epochs.close()

    def _close_batches(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None


class MetricsLogger(Callback):
    """Writes ``metrics.csv`` and ``metrics.jsonl`` (one row per epoch) into ``out_dir``.

    Both files are rewritten from the whole history at every epoch (atomically), so a
    resumed run never duplicates or loses rows.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def on_epoch_end(self, state: TrainState, metrics: EpochMetrics) -> None:
        write_metrics(state.history, self.out_dir)


def write_metrics(history: list[EpochMetrics], out_dir: str | Path) -> dict[str, Path]:
    """Write ``history`` as ``metrics.csv`` and ``metrics.jsonl`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [m.flat() for m in history]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    paths = {"csv": out_dir / "metrics.csv", "jsonl": out_dir / "metrics.jsonl"}
    tmp = {k: p.with_name(f".{p.name}.tmp") for k, p in paths.items()}
    with tmp["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with tmp["jsonl"].open("w") as f:
        f.writelines(json.dumps(m.to_dict()) + "\n" for m in history)
    for k, p in paths.items():
        os.replace(tmp[k], p)
    return paths
