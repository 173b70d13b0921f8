"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.distillers.base import Distiller, DistillOutput
from wkd_core.losses import kd_loss
from wkd_core.registry import DISTILLERS


@DISTILLERS.register("kd")
class KD(Distiller):
    """Cross-entropy plus the temperature-scaled KL divergence to the teacher.

    ``loss_ce = ce_weight · CE(z^S, y)``, ``loss_kd = kd_weight · kd_loss(z^S, z^T, T)``
    (``kd_loss`` carries the T² factor). Defaults are mdistiller's ``CFG.KD``
    (T = 4, CE weight 0.1, KD weight 0.9, its CIFAR-100 setting).

    Args:
        student: the model to train.
        teacher: the frozen teacher.
        temperature: softmax temperature T.
        ce_weight: weight of the cross-entropy.
        kd_weight: weight of the KD term.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
    ) -> None:
        super().__init__(student, teacher)
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight

    def forward(
        self, images: Tensor, targets: Tensor, *, epoch: int = 1, total_epochs: int = 1
    ) -> DistillOutput:
        logits_s = self.student(images)
        with torch.no_grad():
            logits_t = self.teacher(images)
        # Losses in fp32 whatever autocast did to the forward.
        logits_s32, logits_t32 = logits_s.float(), logits_t.float()
        loss_kd = kd_loss(logits_s32, logits_t32, temperature=self.temperature)
        return DistillOutput(
            logits_s,
            {
                "loss_ce": self.ce_weight * F.cross_entropy(logits_s32, targets),
                "loss_kd": self.kd_weight * loss_kd,
            },
        )
