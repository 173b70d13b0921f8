r"""Distillation of a Faster R-CNN student by a Faster R-CNN teacher on the RoI head.

Per training step (one ``DetectionDistiller.forward``):

1. the student runs as torchvision's ``GeneralizedRCNN`` does in training: resize and
   normalise, backbone + FPN, RPN (its losses), then the RoI head samples N training RoIs per
   image from its proposals and the ground truth (labels :math:`y \in \{0 … C\}`, 0 =
   background), pools them with RoI-Align, (N, c, 7, 7), and predicts (N, C+1) class logits
   and box deltas (its classification and box losses);
2. the frozen teacher sees the *same* resized images and pools the *same* N boxes from its own
   FPN, so that teacher and student RoI-Align features and logits correspond one to one;
3. the distillation terms compare them per RoI, added to the detector's four losses
   (unchanged):

   - ``kd``:    :math:`w_{KD}\,T^2\,\mathrm{KL}(p_T^\tau \Vert p_S^\tau)` on the (C+1)-way logits;
   - ``dkd``:   :math:`\alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}` on the same logits;
   - ``wkd_l``: :math:`L_t + \lambda \sum_{ij} P_{ij} C_{ij}` (discrete WD between the
     non-target distributions over the C+1 classes, the cost from interrelations of the
     teacher's RoI features, :mod:`wkd_core.detection.interrelations`);
   - ``wkd_f``: :math:`w_F \cdot` WKD-F between the student's RoI-Align features (through a
     1×1 conv projector) and the teacher's, Gaussians per cell of a g×g grid (default g = 4 on
     the 7×7 RoI map: the finer grid the authors advise for detection);
   - ``wkd_lf``: both WKD terms; ``vanilla``: none.

All logit terms reuse :mod:`wkd_core.losses` on (N, C+1) inputs. Background RoIs are kept (they
are three quarters of the sampled RoIs, and the teacher's background/foreground split is part
of what it knows).

Reference: J. Lv, H. Yang, P. Li, NeurIPS 2024, §4 (detection: WKD on Faster R-CNN, WKD-F on
the RoI-Align features); the authors' answer in github.com/JiamingLv/WKD/issues/5 (finer grid);
S. Ren et al., Faster R-CNN, NeurIPS 2015.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.roi_heads import fastrcnn_loss

from wkd_core.losses import dkd_loss, kd_loss, sharpen_cost, wkd_feature_loss, wkd_logit_terms

__all__ = ["DETECTION_METHODS", "DetectionDistiller", "RoIOutputs", "roi_distill_terms"]

DETECTION_METHODS = ("vanilla", "kd", "dkd", "wkd_l", "wkd_f", "wkd_lf")
LOGIT_METHODS = frozenset({"wkd_l", "wkd_lf"})
FEATURE_METHODS = frozenset({"wkd_f", "wkd_lf"})


@dataclass
class RoIOutputs:
    """The student's training step up to its RoI head.

    Attributes:
        losses: the detector's own losses (``loss_objectness``, ``loss_rpn_box_reg``,
            ``loss_classifier``, ``loss_box_reg``).
        logits: (N, C+1) class logits of the sampled RoIs (all images concatenated).
        features: (N, c, h, w) RoI-Align features of the same RoIs.
        labels: (N,) their training labels (0 = background).
        proposals: per image, the (n_i, 4) sampled boxes in the resized frame.
        image_sizes: per image, (h, w) after the detector's resize.
        images: (B, 3, H, W) the padded, normalised batch the backbone saw.
    """

    losses: dict[str, Tensor]
    logits: Tensor
    features: Tensor
    labels: Tensor
    proposals: list[Tensor]
    image_sizes: list[tuple[int, int]]
    images: Tensor


def student_roi_forward(
    detector: FasterRCNN, images: list[Tensor], targets: list[dict[str, Tensor]]
) -> RoIOutputs:
    """torchvision's training forward, opened up to return the RoI head's inputs and outputs."""
    image_list, targets = detector.transform(images, targets)
    features = detector.backbone(image_list.tensors)
    proposals, rpn_losses = detector.rpn(image_list, features, targets)
    heads = detector.roi_heads
    proposals, _, labels, box_targets = heads.select_training_samples(proposals, targets)
    roi_features = heads.box_roi_pool(features, proposals, image_list.image_sizes)
    logits, box_deltas = heads.box_predictor(heads.box_head(roi_features))
    loss_cls, loss_box = fastrcnn_loss(logits, box_deltas, labels, box_targets)
    losses = {**rpn_losses, "loss_classifier": loss_cls, "loss_box_reg": loss_box}
    return RoIOutputs(
        losses,
        logits,
        roi_features,
        torch.cat(labels),
        proposals,
        list(image_list.image_sizes),
        image_list.tensors,
    )


@torch.no_grad()
def teacher_roi_forward(
    detector: FasterRCNN,
    images: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
) -> tuple[Tensor, Tensor]:
    """(logits (N, C+1), RoI-Align features (N, c, h, w)) of the teacher on given boxes."""
    features = detector.backbone(images)
    heads = detector.roi_heads
    roi_features = heads.box_roi_pool(features, proposals, image_sizes)
    logits, _ = heads.box_predictor(heads.box_head(roi_features))
    return logits, roi_features


def roi_distill_terms(
    method: str,
    *,
    logits_student: Tensor,
    logits_teacher: Tensor,
    labels: Tensor,
    feat_student: Tensor | None = None,
    feat_teacher: Tensor | None = None,
    cost: Tensor | None = None,
    temperature: float = 1.0,
    kd_weight: float = 1.0,
    alpha: float = 1.0,
    beta: float = 0.25,
    wkd_logit_weight: float = 10.0,
    eps: float = 0.05,
    n_iter: int = 10,
    wkd_feat_weight: float = 0.02,
    mean_cov_ratio: float = 2.0,
    spatial_grid: int = 4,
    feat_eps: float = 1e-5,
) -> dict[str, Tensor]:
    """The weighted distillation terms of ``method`` on per-RoI tensors (a pure function).

    Args:
        method: one of :data:`DETECTION_METHODS`.
        logits_student, logits_teacher: (N, C+1) RoI class logits.
        labels: (N,) RoI labels in 0…C (0 = background).
        feat_student, feat_teacher: (N, c, h, w) RoI-Align features (student after the
            projector), for ``wkd_f`` / ``wkd_lf``.
        cost: (C+1, C+1) sharpened ground cost, for ``wkd_l`` / ``wkd_lf``.
        temperature: τ of KD / DKD / the WKD-L non-target distributions.
        kd_weight: weight of KD. alpha, beta: DKD's TCKD and NCKD weights.
        wkd_logit_weight: λ of WKD-L's transport term (the target term has weight 1).
        eps, n_iter: Sinkhorn ε and iterations.
        wkd_feat_weight, mean_cov_ratio, spatial_grid, feat_eps: WKD-F's w_F, γ, g and ε.

    Returns:
        ``{"loss_kd"}``, ``{"loss_dkd"}``, ``{"loss_wkd_target", "loss_wkd_logit"}`` and / or
        ``{"loss_wkd_feat"}``; empty for ``vanilla``.
    """
    terms: dict[str, Tensor] = {}
    if method == "kd":
        terms["loss_kd"] = kd_weight * kd_loss(
            logits_student, logits_teacher, temperature=temperature
        )
    elif method == "dkd":
        terms["loss_dkd"] = dkd_loss(
            logits_student, logits_teacher, labels, alpha=alpha, beta=beta, temperature=temperature
        )
    if method in LOGIT_METHODS:
        if cost is None:
            raise ValueError(f"method {method!r} needs the (C+1, C+1) cost")
        wkd = wkd_logit_terms(
            logits_student,
            logits_teacher,
            labels,
            cost,
            temperature=temperature,
            eps=eps,
            n_iter=n_iter,
        )
        terms["loss_wkd_target"] = wkd.target
        terms["loss_wkd_logit"] = wkd_logit_weight * wkd.transport
    if method in FEATURE_METHODS:
        if feat_student is None or feat_teacher is None:
            raise ValueError(f"method {method!r} needs the RoI-Align features")
        terms["loss_wkd_feat"] = wkd_feat_weight * wkd_feature_loss(
            feat_student, feat_teacher, gamma=mean_cov_ratio, grid=spatial_grid, eps=feat_eps
        )
    return terms


class DetectionDistiller(nn.Module):
    """Student detector + frozen teacher detector + the method's extra modules.

    ``forward(images, targets)`` returns the dict of loss terms (the detector's own four and
    the method's); ``forward_test(images)`` is the student's inference. Only the student and
    the projector are trained (``trainable_parameters``); the teacher stays in eval mode.

    Args:
        method: one of :data:`DETECTION_METHODS`.
        student, teacher: torchvision Faster R-CNN detectors with the same class count and the
            same image transform (``teacher`` is None for ``vanilla``).
        distance: (C+1, C+1) category distance D = 1 − IR for WKD-L (sharpened with κ here).
        kappa: κ of the cost sharpening ``relu(1 − exp(−κD)) + 1e-8``.
        **hyper: the keyword hyper-parameters of :func:`roi_distill_terms`.
    """

    def __init__(
        self,
        method: str,
        *,
        student: FasterRCNN,
        teacher: FasterRCNN | None = None,
        distance: Tensor | None = None,
        kappa: float = 1.0,
        **hyper: float,
    ) -> None:
        super().__init__()
        if method not in DETECTION_METHODS:
            raise ValueError(
                f"unknown detection method {method!r} ({', '.join(DETECTION_METHODS)})"
            )
        self.method, self.hyper = method, dict(hyper)
        self.student = student
        self.teacher = None if method == "vanilla" else _frozen(teacher, student, method)
        self.projector: nn.Module | None = None
        if method in FEATURE_METHODS:
            self.projector = nn.Conv2d(_roi_channels(student), _roi_channels(self.teacher), 1)
        if method in LOGIT_METHODS:
            if distance is None:
                raise ValueError(f"method {method!r} needs the (C+1, C+1) interrelation distance")
            self.register_buffer("cost", sharpen_cost(distance.float(), kappa=kappa))
        else:
            self.cost = None

    def trainable_parameters(self):
        yield from (p for p in self.student.parameters() if p.requires_grad)
        if self.projector is not None:
            yield from self.projector.parameters()

    def train(self, mode: bool = True) -> DetectionDistiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        out = student_roi_forward(self.student, images, targets)
        self.last_rois = (out.logits.detach(), out.labels)  # for the trainer's RoI accuracy
        if self.teacher is None:
            return out.losses
        logits_t, feat_t = teacher_roi_forward(
            self.teacher, out.images, out.proposals, out.image_sizes
        )
        feat_s = self.projector(out.features) if self.projector is not None else None
        terms = roi_distill_terms(
            self.method,
            logits_student=out.logits,
            logits_teacher=logits_t,
            labels=out.labels,
            feat_student=feat_s,
            feat_teacher=feat_t,
            cost=self.cost,
            **self.hyper,
        )
        return {**out.losses, **terms}

    @torch.no_grad()
    def forward_test(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.student(images)


def _roi_channels(detector: nn.Module) -> int:
    return int(detector.backbone.out_channels)


def _frozen(teacher: FasterRCNN | None, student: FasterRCNN, method: str) -> FasterRCNN:
    """The teacher, checked against the student and frozen in eval mode."""
    if teacher is None:
        raise ValueError(f"method {method!r} needs a teacher detector")
    n_s = student.roi_heads.box_predictor.cls_score.out_features
    n_t = teacher.roi_heads.box_predictor.cls_score.out_features
    if n_s != n_t:
        raise ValueError(f"student has {n_s - 1} classes, teacher {n_t - 1}: they must match")
    ts, tt = student.transform, teacher.transform
    same = (ts.min_size, ts.max_size, ts.image_mean, ts.image_std, ts.size_divisible) == (
        tt.min_size,
        tt.max_size,
        tt.image_mean,
        tt.image_std,
        tt.size_divisible,
    )
    if not same:
        raise ValueError(
            "teacher and student must resize and normalise images alike "
            "(min_size, max_size, mean, std) to share their RoIs"
        )
    return teacher.eval().requires_grad_(False)
