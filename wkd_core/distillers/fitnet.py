"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

The baseline of the paper's WKD-F ablation (Table 2, "FitNet — Frobenius", 70.53 on ImageNet
ResNet34→ResNet18): the projected student map regresses the teacher map element by element.
Here it runs in WKD-F's pipeline (the same hint layer, projector and fp32 loss), so the
ablation compares only the dissimilarity; the loss is mdistiller's
(``mdistiller/distillers/FitNet.py``): ``feat_weight · mean((P(F_S) − F_T)²)``, the squared
Frobenius distance divided by the number of elements.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.distillers.base import Distiller, DistillOutput
from wkd_core.distillers.projectors import build_projector, probe_feature_shapes
from wkd_core.registry import DISTILLERS

__all__ = ["FitNet", "fitnet_loss"]


def fitnet_loss(feat_student: Tensor, feat_teacher: Tensor) -> Tensor:
    """``‖F_S − F_T‖_F² / numel``: the mean squared error of two (B, C, H, W) maps (fp32)."""
    if feat_student.shape != feat_teacher.shape:
        raise ValueError(
            f"FitNet needs maps of one shape, got {tuple(feat_student.shape)} and "
            f"{tuple(feat_teacher.shape)}"
        )
    return F.mse_loss(feat_student.float(), feat_teacher.float())


@DISTILLERS.register("fitnet")
class FitNet(Distiller):
    """Cross-entropy plus the hint regression of the (projected) student map onto the teacher's.

    ``loss_ce = ce_weight · CE``; ``loss_feat = feat_weight · fitnet_loss(P(F_S[h]), F_T[h])``
    with ``h = hint_layer`` an index into ``feats["feats"]`` and ``P`` a WKD-F projector.
    Defaults: mdistiller's ``CFG.FITNET`` weights (CE 1, feature 100) at WKD-F's layer (−1,
    the last stage) and ImageNet projector (``bottleneck``).

    Args:
        student: the model to train (needs ``forward_features``).
        teacher: the frozen teacher.
        ce_weight: weight of the cross-entropy.
        feat_weight: weight of the hint loss.
        hint_layer: which map of ``feats["feats"]`` (mdistiller's CIFAR recipe uses 2).
        projector: ``"conv1x1"`` or ``"bottleneck"``.
        input_size: (H, W) of the dummy input that probes the feature shapes.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        ce_weight: float = 1.0,
        feat_weight: float = 100.0,
        hint_layer: int = -1,
        projector: str = "bottleneck",
        input_size: Sequence[int] = (224, 224),
    ) -> None:
        super().__init__(student, teacher)
        self.ce_weight = ce_weight
        self.feat_weight = feat_weight
        self.hint_layer = hint_layer
        size = (int(input_size[0]), int(input_size[1]))
        shape_s, shape_t = probe_feature_shapes(
            student, teacher, input_size=size, layer=hint_layer
        )
        self.projector = build_projector(projector, shape_s, shape_t)
        param = next(student.parameters(), None)
        if param is not None:
            self.projector.to(param.device)

    def forward(
        self, images: Tensor, targets: Tensor, *, epoch: int = 1, total_epochs: int = 1
    ) -> DistillOutput:
        logits_s, feats_s = self.student.forward_features(images)
        _, feats_t = self.teacher_forward(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            projected = self.projector(feats_s["feats"][self.hint_layer].float())
            loss_feat = fitnet_loss(projected, feats_t["feats"][self.hint_layer])
        return DistillOutput(
            logits_s,
            {
                "loss_ce": self.ce_weight * F.cross_entropy(logits_s.float(), targets),
                "loss_feat": self.feat_weight * loss_feat,
            },
        )
