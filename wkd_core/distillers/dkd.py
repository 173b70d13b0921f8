"""DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.distillers.base import Distiller, DistillOutput
from wkd_core.losses import dkd_loss
from wkd_core.registry import DISTILLERS
from wkd_core.train.mixing import hard_labels
from wkd_core.train.schedules import linear_warmup


@DISTILLERS.register("dkd")
class DKD(Distiller):
    """Cross-entropy plus the decoupled target / non-target KD, linearly warmed up.

    ``loss_ce = ce_weight · CE(z^S, y)``,
    ``loss_dkd = min(epoch / warmup_epochs, 1) · (α · TCKD + β · NCKD)`` at temperature T
    (mdistiller ``distillers/DKD.py``). Defaults are mdistiller's ``CFG.DKD``: CE weight 1,
    α = 1, β = 8, T = 4, warm-up 20 epochs.

    Args:
        student: the model to train.
        teacher: the frozen teacher.
        ce_weight: weight of the cross-entropy.
        alpha: weight of the target-class term (TCKD).
        beta: weight of the non-target-class term (NCKD).
        temperature: softmax temperature T.
        warmup_epochs: epochs over which the DKD weight rises linearly to 1.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        ce_weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
    ) -> None:
        super().__init__(student, teacher)
        self.ce_weight = ce_weight
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs

    def forward(
        self, images: Tensor, targets: Tensor, *, epoch: int = 1, total_epochs: int = 1
    ) -> DistillOutput:
        logits_s = self.student(images)
        with torch.no_grad():
            logits_t = self.teacher(images)
        logits_s32, logits_t32 = logits_s.float(), logits_t.float()
        loss_dkd = dkd_loss(
            logits_s32,
            logits_t32,
            hard_labels(targets),  # soft (mixup / smoothing) targets: their top class
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
        )
        return DistillOutput(
            logits_s,
            {
                "loss_ce": self.ce_weight * F.cross_entropy(logits_s32, targets),
                "loss_dkd": linear_warmup(epoch, warmup=self.warmup_epochs) * loss_dkd,
            },
        )
