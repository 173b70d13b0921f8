"""WKD-L, WKD-F and WKD-LF: Lv, Yang, Li, "Wasserstein Distance Rivals Kullback-Leibler
Divergence for Knowledge Distillation", NeurIPS 2024.

One class, :class:`WKD`, holds both parts; three registered names switch them on:

* ``wkd_l`` (:class:`WKDL`): ``loss_target + loss_wd`` with
  ``loss_target = L_t`` (teacher's target probability × student's log target probability,
  T = 1, weight 1, no decay) and ``loss_wd = w(e) · λ · WD`` (entropic Wasserstein distance
  between the non-target distributions at temperature T, on the sharpened interrelation cost
  c = 1 − exp(−κ·D)); their sum is the paper's L_WKD-L (Sec. 3.1; wkd-method.md §1.2).
* ``wkd_f`` (:class:`WKDF`): ``loss_wkd_f = w(e) · w_F · (γ·D_mean + D_cov)`` between diagonal
  Gaussians of the projected student and the teacher last-stage maps (§2).
* ``wkd_lf`` (:class:`WKDLF`): both (§3).

``loss_ce`` (weight 1 in every released config) is always there. ``w(e)`` is the cosine decay
of ``wkd_core.train.schedules.cosine_decay_factor``: 1 up to ``cosine_decay_epoch``, then down
to 0 at the last epoch. Defaults are the released ImageNet ResNet34→ResNet18 configuration of
each method (``wkd_core.presets`` has every released one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.distillers.base import Distiller, DistillOutput
from wkd_core.distillers.projectors import build_projector, probe_feature_shapes
from wkd_core.losses import sharpen_cost, wkd_logit_terms
from wkd_core.losses.feature_divergences import (
    DEFAULT_BINS,
    DIVERGENCES,
    NEEDS_VARIANCE,
    check_divergence_options,
    feature_divergence_loss,
)
from wkd_core.losses.interrelations import classifier_cosine_distance
from wkd_core.losses.wkd_feature import check_grid_fits
from wkd_core.ot.sinkhorn_fused import REGISTER_MAX_CLASSES, fused_available
from wkd_core.registry import DISTILLERS
from wkd_core.train.mixing import hard_labels
from wkd_core.train.schedules import cosine_decay_factor

COST_SOURCES = ("cka", "fc")


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def build_cost(
    teacher: nn.Module,
    *,
    distance: Tensor | None,
    cost: Tensor | None,
    cost_source: str,
    kappa: float,
) -> Tensor:
    """The (C, C) sharpened ground cost of WKD-L, fp32.

    Exactly one origin: ``cost`` (already sharpened, used as given), ``distance`` (D = 1 − IR,
    sharpened here as 1 − exp(−κ·D)), or ``cost_source="fc"`` (D = 1 − cosine between the
    rows of the teacher's classifier weight, the paper's ablation). The CKA matrix itself is
    computed from data by the pipeline (``wkd_core.ir``), never here.
    """
    if cost_source not in COST_SOURCES:
        raise ValueError(f"cost_source must be one of {COST_SOURCES}, got {cost_source!r}")
    if (distance is not None) + (cost is not None) + (cost_source == "fc") != 1:
        raise ValueError(
            "WKD-L needs exactly one of distance= (D = 1 - IR), cost= (sharpened) or "
            "cost_source='fc'"
        )
    if cost_source == "fc":
        weight = teacher.get_classifier().weight.detach().float()
        distance = classifier_cosine_distance(weight)
    if distance is not None:
        cost = sharpen_cost(distance.float(), kappa=kappa)
    assert cost is not None
    if cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"the cost matrix must be (C, C), got shape {tuple(cost.shape)}")
    return cost.detach().float()


def fast_logit_solver(num_classes: int, device: torch.device | str) -> str:
    """The WKD-L solver of the fast training step: the same numbers as ``"plain"``.

    C ≤ ``REGISTER_MAX_CLASSES`` where Triton runs: ``"fused"``, the register kernel, one
    launch per direction. Otherwise ``"adjoint"`` (:mod:`wkd_core.ot.sinkhorn_adjoint`): the
    plain solver's cuBLAS products with a hand-written backward. Above C = 128 the products
    stay on cuBLAS because the blocked Triton kernel lost to them: on an H200 at (256, 1000),
    1.16 ms for the plain solver's captured fwd+bwd against 2.8 ms (1.28 ms with tf32x3;
    docs/benchmarks.md); ``solver="fused"`` still reaches the blocked kernel on request.
    """
    if num_classes <= REGISTER_MAX_CLASSES and fused_available(num_classes, device):
        return "fused"
    return "adjoint"


class WKD(Distiller):
    """WKD-L and / or WKD-F on top of the cross-entropy (the shared implementation).

    Args:
        student: the model to train; needs ``forward_features`` when ``feature`` is on.
        teacher: the frozen teacher (``forward_features``; ``get_classifier`` for "fc").
        logit: enable WKD-L.
        feature: enable WKD-F.
        ce_weight: weight of the cross-entropy.
        temperature: T of the non-target distributions (WKD-L).
        wkd_logit_weight: λ, weight of the WD term (``WKD_LOGIT_WEIGHT``).
        distance: (C, C) D = 1 − IR, sharpened with ``kappa``.
        cost: (C, C) an already sharpened cost, used as given.
        cost_source: ``"cka"`` (the matrix comes as ``distance`` / ``cost``) or ``"fc"``.
        kappa: κ of the sharpening c = 1 − exp(−κ·D).
        eps: entropic regularisation ε of the Sinkhorn kernel exp(−C/ε).
        n_iter: Sinkhorn iterations (fixed, no tolerance, as released).
        wkd_feat_weight: w_F, weight of the feature term (``WKD_FEAT_WEIGHT``).
        mean_cov_ratio: γ, weight of D_mean against D_cov (``MEAN_COV_RATIO``).
        spatial_grid: g; Gaussian statistics per cell of a g×g adaptive-pooling grid
            (``SPATIAL_GRID``).
        feat_eps: added to the variance before the square root.
        projector: ``"conv1x1"`` or ``"bottleneck"`` (student side only).
        input_size: (H, W) of the dummy input that probes the feature shapes.
        cosine_decay_epoch: the epoch after which the distillation weights decay to 0.
        divergence: the dissimilarity of the per-channel distributions; ``"gaussian_wd"`` is
            WKD-F, the others are the paper's ablation (``wkd_core.losses.feature_divergences``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        logit: bool,
        feature: bool,
        ce_weight: float = 1.0,
        temperature: float = 2.0,
        wkd_logit_weight: float = 30.0,
        distance: Tensor | None = None,
        cost: Tensor | None = None,
        cost_source: str = "cka",
        kappa: float = 1.0,
        eps: float = 0.05,
        n_iter: int = 10,
        wkd_feat_weight: float = 0.02,
        mean_cov_ratio: float = 2.0,
        spatial_grid: int = 4,
        feat_eps: float = 1e-5,
        projector: str = "bottleneck",
        input_size: Sequence[int] = (224, 224),
        cosine_decay_epoch: int = 0,
        divergence: str = "gaussian_wd",
    ) -> None:
        super().__init__(student, teacher)
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        self.divergence = divergence
        self.ce_weight = ce_weight
        self.cosine_decay_epoch = cosine_decay_epoch
        self.use_logit = logit
        self.use_feature = feature
        self.temperature = temperature
        self.wkd_logit_weight = wkd_logit_weight
        self.eps = eps
        self.n_iter = n_iter
        self.wkd_feat_weight = wkd_feat_weight
        self.mean_cov_ratio = mean_cov_ratio
        self.spatial_grid = spatial_grid
        self.feat_eps = feat_eps
        self.solver = "plain"  # the fast step may switch it (same numbers): fast_kernels
        self.cost: Tensor | None
        if logit:
            built = build_cost(
                teacher, distance=distance, cost=cost, cost_source=cost_source, kappa=kappa
            )
            # A buffer: follows .to(device), lives in checkpoints, never in the optimizer.
            self.register_buffer("cost", built.to(_device_of(student)))
        else:
            self.cost = None
        self.projector: nn.Module | None = None
        if feature:
            size = (int(input_size[0]), int(input_size[1]))
            shape_s, shape_t = probe_feature_shapes(student, teacher, input_size=size)
            # The loss's own rules, now rather than at the first batch: the grid on the teacher
            # map's size (the projector matches it), γ for the divergence.
            two = divergence in NEEDS_VARIANCE
            check_grid_fits(spatial_grid, *shape_t[-2:], cells_of_two=two)
            check_divergence_options(
                divergence=divergence,
                gamma=mean_cov_ratio,
                grid=spatial_grid,
                eps=feat_eps,
                bins=DEFAULT_BINS,
            )
            self.projector = build_projector(projector, shape_s, shape_t)
            self.projector.to(_device_of(student))

    def fast_kernels(self, enabled: bool) -> None:
        """The fast step's WKD-L solver, :func:`fast_logit_solver` (same numbers, fewer
        launches); ``"plain"`` again when disabled."""
        if not enabled or self.cost is None:
            self.solver = "plain"
        else:
            self.solver = fast_logit_solver(self.cost.shape[0], self.cost.device)

    def forward(
        self, images: Tensor, targets: Tensor, *, epoch: int | Tensor = 1, total_epochs: int = 1
    ) -> DistillOutput:
        """Named terms: ``loss_ce`` and ``loss_target`` + ``loss_wd`` and / or ``loss_wkd_f``."""
        decay = cosine_decay_factor(
            epoch, total_epochs=total_epochs, start_epoch=self.cosine_decay_epoch
        )
        if self.use_feature:
            logits_s, feats_s = self.student.forward_features(images)
            logits_t, feats_t = self.teacher_forward(images)
        else:
            logits_s = self.student(images)
            with torch.no_grad():
                logits_t = self.teacher(images)
        losses = {"loss_ce": self.ce_weight * F.cross_entropy(logits_s.float(), targets)}
        if self.use_logit:
            losses.update(self._logit_terms(logits_s, logits_t, targets, decay))
        if self.use_feature:
            loss_f = self._feature_loss(feats_s["feats"][-1], feats_t["feats"][-1])
            losses["loss_wkd_f"] = decay * self.wkd_feat_weight * loss_f
        return DistillOutput(logits_s, losses)

    def _logit_terms(
        self, logits_s: Tensor, logits_t: Tensor, targets: Tensor, decay: float | Tensor
    ) -> dict[str, Tensor]:
        """``loss_target`` = L_t and ``loss_wd`` = w(e)·λ·WD, both from fp32 logits."""
        terms = wkd_logit_terms(
            logits_s.float(),
            logits_t.float(),
            hard_labels(targets),  # soft (mixup / smoothing) targets: their top class
            self.cost,
            temperature=self.temperature,
            eps=self.eps,
            n_iter=self.n_iter,
            solver=self.solver,
        )
        return {
            "loss_target": terms.target,
            "loss_wd": decay * self.wkd_logit_weight * terms.transport,
        }

    def _feature_loss(self, feat_s: Tensor, feat_t: Tensor) -> Tensor:
        """γ·D_mean + D_cov of the projected student map against the teacher map, in fp32."""
        assert self.projector is not None
        # The projector and the Gaussian statistics run outside autocast, as released.
        with torch.autocast(device_type=feat_s.device.type, enabled=False):
            projected = self.projector(feat_s.float())
            return feature_divergence_loss(
                projected,
                feat_t.float(),
                divergence=self.divergence,
                gamma=self.mean_cov_ratio,
                grid=self.spatial_grid,
                eps=self.feat_eps,
            )


@DISTILLERS.register("wkd_l")
class WKDL(WKD):
    """WKD-L: CE + L_t + w(e)·λ·WD (logit distillation). See :class:`WKD` for the arguments."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        ce_weight: float = 1.0,
        temperature: float = 2.0,
        wkd_logit_weight: float = 30.0,
        distance: Tensor | None = None,
        cost: Tensor | None = None,
        cost_source: str = "cka",
        kappa: float = 1.0,
        eps: float = 0.05,
        n_iter: int = 10,
        cosine_decay_epoch: int = 0,
    ) -> None:
        super().__init__(
            student,
            teacher,
            logit=True,
            feature=False,
            ce_weight=ce_weight,
            temperature=temperature,
            wkd_logit_weight=wkd_logit_weight,
            distance=distance,
            cost=cost,
            cost_source=cost_source,
            kappa=kappa,
            eps=eps,
            n_iter=n_iter,
            cosine_decay_epoch=cosine_decay_epoch,
        )


@DISTILLERS.register("wkd_f")
class WKDF(WKD):
    """WKD-F: CE + w(e)·w_F·(γ·D_mean + D_cov) (feature distillation). See :class:`WKD`.

    ``divergence`` other than ``"gaussian_wd"`` swaps the dissimilarity for the paper's
    ablation (Table 2): Gaussian KL, symmetric KL, Laplace KL, exponential KL, histogram W1.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        ce_weight: float = 1.0,
        wkd_feat_weight: float = 0.02,
        mean_cov_ratio: float = 2.0,
        spatial_grid: int = 4,
        feat_eps: float = 1e-5,
        projector: str = "bottleneck",
        input_size: Sequence[int] = (224, 224),
        cosine_decay_epoch: int = 0,
        divergence: str = "gaussian_wd",
    ) -> None:
        super().__init__(
            student,
            teacher,
            logit=False,
            feature=True,
            divergence=divergence,
            ce_weight=ce_weight,
            wkd_feat_weight=wkd_feat_weight,
            mean_cov_ratio=mean_cov_ratio,
            spatial_grid=spatial_grid,
            feat_eps=feat_eps,
            projector=projector,
            input_size=input_size,
            cosine_decay_epoch=cosine_decay_epoch,
        )


@DISTILLERS.register("wkd_lf")
class WKDLF(WKD):
    """WKD-L + WKD-F: CE + L_t + w(e)·(λ·WD + w_F·(γ·D_mean + D_cov)). See :class:`WKD`."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        ce_weight: float = 1.0,
        temperature: float = 2.0,
        wkd_logit_weight: float = 10.0,
        distance: Tensor | None = None,
        cost: Tensor | None = None,
        cost_source: str = "cka",
        kappa: float = 1.0,
        eps: float = 0.05,
        n_iter: int = 10,
        wkd_feat_weight: float = 1.0,
        mean_cov_ratio: float = 2.0,
        spatial_grid: int = 4,
        feat_eps: float = 1e-5,
        projector: str = "bottleneck",
        input_size: Sequence[int] = (224, 224),
        cosine_decay_epoch: int = 0,
    ) -> None:
        super().__init__(
            student,
            teacher,
            logit=True,
            feature=True,
            ce_weight=ce_weight,
            temperature=temperature,
            wkd_logit_weight=wkd_logit_weight,
            distance=distance,
            cost=cost,
            cost_source=cost_source,
            kappa=kappa,
            eps=eps,
            n_iter=n_iter,
            wkd_feat_weight=wkd_feat_weight,
            mean_cov_ratio=mean_cov_ratio,
            spatial_grid=spatial_grid,
            feat_eps=feat_eps,
            projector=projector,
            input_size=input_size,
            cosine_decay_epoch=cosine_decay_epoch,
        )
