"""Vanilla training: cross-entropy on the labels only (how teachers and baselines are trained)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.distillers.base import Distiller, DistillOutput
from wkd_core.registry import DISTILLERS


@DISTILLERS.register("vanilla")
class Vanilla(Distiller):
    """Student trained alone: ``loss_ce = ce_weight · CE(z^S, y)``.

    Args:
        student: the model to train.
        teacher: ignored (vanilla training has none); accepted so that every method can be
            built with the same call.
        ce_weight: weight of the cross-entropy.
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None = None, *, ce_weight: float = 1.0
    ) -> None:
        super().__init__(student, None)
        self.ce_weight = ce_weight

    def forward(
        self, images: Tensor, targets: Tensor, *, epoch: int = 1, total_epochs: int = 1
    ) -> DistillOutput:
        logits = self.student(images)
        loss_ce = self.ce_weight * F.cross_entropy(logits.float(), targets)
        return DistillOutput(logits, {"loss_ce": loss_ce})
