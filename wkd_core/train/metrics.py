"""Per-epoch metrics, the result of ``fit`` and the top-k count.

Accuracies are percentages (0–100), as mdistiller logs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class EpochMetrics:
    """One row of the training curve.

    Attributes:
        epoch: 1-based epoch.
        lr: learning rate used during the epoch.
        train_loss: sample-weighted mean of the summed loss terms over the epoch.
        train_top1: training accuracy (%, of the augmented batches, in train mode).
        test_top1, test_top5: evaluation accuracy (%); top-5 is top-min(5, C).
        test_loss: mean cross-entropy on the evaluation set.
        loss_terms: epoch mean of each named term (``loss_ce``, ``loss_kd`` …).
        seconds: wall time of the epoch, training and evaluation.
    """

    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    test_top1: float
    test_top5: float
    test_loss: float
    loss_terms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """One flat dict (the loss terms as columns), for CSV."""
        row = self.to_dict()
        return {**row, **row.pop("loss_terms")}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> EpochMetrics:
        return cls(**{**row, "loss_terms": dict(row.get("loss_terms", {}))})


@dataclass
class FitResult:
    """What ``fit`` returns.

    Attributes:
        best_top1: highest ``test_top1`` over the epochs (the authors' "best_acc"); 0.0 when
            no epoch completed.
        best_epoch: epoch of ``best_top1`` (0 when no epoch completed).
        last_top1: ``test_top1`` of the last completed epoch (0.0 when none).
        history: one :class:`EpochMetrics` per completed epoch, resumed ones included.
        stopped: a callback raised ``StopTraining`` before the last epoch.
    """

    best_top1: float
    best_epoch: int
    last_top1: float
    history: list[EpochMetrics]
    stopped: bool = False


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...]) -> list[Tensor]:
    """Number of samples whose target is among the k largest logits, for each k.

    Args:
        logits: (B, C) scores.
        targets: (B,) int64 labels.
        ks: the k values; each is clipped to C.

    Returns:
        one 0-dim int64 tensor per k, on the logits' device (no host sync).
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax), best first
    hit = top == targets[:, None]  # (B, kmax): at most one True per row
    return [hit[:, : min(k, kmax)].sum() for k in ks]


def best_of(history: list[EpochMetrics]) -> tuple[float, int]:
    """(best test top-1, its epoch); the first epoch wins a tie."""
    if not history:
        return 0.0, 0
    best = max(history, key=lambda m: (m.test_top1, -m.epoch))
    return best.test_top1, best.epoch


def summed(values: dict[str, Tensor]) -> Tensor:
    """Sum of float32 loss terms (the trainer's objective), never under autocast."""
    return torch.stack([v.float() for v in values.values()]).sum()
