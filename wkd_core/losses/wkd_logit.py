"""WKD-L: logit distillation with an entropic discrete Wasserstein distance.

The authors' code removes the target row and column per sample and solves B Sinkhorn
problems of size (C−1)×(C−1). We solve the same problems on one shared C×C kernel instead
(DESIGN.md §4): give the target class zero mass in both distributions (softmax with the target
logit masked out) and zero initial row scaling. Then, in every iteration,

- ``(Kᵀu)_j`` for a non-target j sums over non-target rows only (``u_y = 0``), exactly the
  per-sample sum; at the target column ``v_y = b_y / (… + 1e-8) = 0 / (… + 1e-8) = 0``;
- ``(K v)_i`` likewise skips the target column, and ``u_y = a_y / (… + 1e-8) = 0``;

so the non-target entries of u, v equal the per-sample ones, the target row and column of
every plan are zero, and ``Σ_ij P_ij C_ij = uᵀ (K∘C) v``. The ``+1e-8`` guards give the same
numbers too (the guarded denominators are the same sums). Each iteration is a (B, C)×(C, C)
GEMM and nothing of size B·C² is ever stored.

Reference: J. Lv, H. Yang, P. Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence
for Knowledge Distillation", NeurIPS 2024, §3.1 (WKD-L); the authors' code
``mdistiller/distillers/WKD.py`` (``wkd_logit_loss_with_speration``, ``sinkhorn``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.losses._checks import (
    autocast_off,
    check_count,
    check_logits,
    check_positive,
    check_tensor,
    check_values,
    hard_target,
    loss_dtype,
)
from wkd_core.ot.sinkhorn import sinkhorn_log, sinkhorn_shared
from wkd_core.ot.sinkhorn_adjoint import sinkhorn_shared_transport
from wkd_core.ot.sinkhorn_fused import fused_wkd_logit

__all__ = ["WKDLogitLoss", "WKDLogitTerms", "sharpen_cost", "wkd_logit_loss", "wkd_logit_terms"]

_SOLVERS = ("plain", "adjoint", "log", "fused")


def sharpen_cost(distance: Tensor, *, kappa: float = 1.0) -> Tensor:
    """Ground cost from category distances: ``relu(1 − exp(−κ·D)) + 1e-8``.

    ``D = 1 − IR`` (e.g. 1 − linear CKA). The authors sharpen once when loading
    (``1 − exp(−κD)``) and apply ``relu(·) + 1e-8`` inside every loss call; both are folded in
    here, so the result is the cost their Sinkhorn sees (diagonal ``1e-8``).

    Args:
        distance: (C, C) category distance matrix D.
        kappa: sharpening κ > 0 (1.0, or 2.0 for ImageNet ResNet50→MobileNetV1).

    Returns:
        (C, C) cost, same dtype and device as ``distance``.
    """
    check_tensor(distance=distance)
    check_positive(kappa=kappa)  # κ ≤ 0 would make every cost 1e-8
    if distance.dim() != 2 or distance.shape[0] != distance.shape[1]:
        raise ValueError(f"distance must be a square (C, C) matrix, got {tuple(distance.shape)}")
    return torch.relu(1.0 - torch.exp(-kappa * distance)) + 1e-8


def _check_options(
    temperature: float, eps: float, n_iter: int, solver: str, tol: float | None
) -> None:
    """The hyper-parameter checks shared by :func:`wkd_logit_terms` and :class:`WKDLogitLoss`."""
    check_positive(temperature=temperature, eps=eps)
    check_count(n_iter=n_iter)
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    if tol is not None:
        if solver != "log":
            raise ValueError("tol needs solver='log' (the default solver runs a fixed n_iter)")
        check_positive(tol=tol)


def _shared_transport(a: Tensor, b: Tensor, cost: Tensor, **solver_args) -> Tensor:
    """(B,) transport cost of :func:`sinkhorn_shared`, the autograd reference."""
    return sinkhorn_shared(a, b, cost, **solver_args).transport_cost


class WKDLogitTerms(NamedTuple):
    """The two WKD-L terms, unweighted (scalars)."""

    target: Tensor  # L_t
    transport: Tensor  # mean_b Σ_ij P_b,ij C_ij


def wkd_logit_loss(
    logits_student: Tensor,
    logits_teacher: Tensor,
    target: Tensor,
    cost: Tensor,
    *,
    temperature: float,
    eps: float = 0.05,
    n_iter: int = 10,
    weight: float = 1.0,
    solver: str = "plain",
    tol: float | None = None,
    validate: bool = False,
) -> Tensor:
    """``L_t + weight · mean_b Σ_ij P_b,ij C_ij`` with P_b the Sinkhorn plan between non-targets.

    ``L_t = −mean_b[ softmax(z_T)_y (detached) · log_softmax(z_S)_y ]`` at T = 1. The plan
    transports the student's non-target distribution ``softmax(z_S/T)`` restricted to the
    classes ≠ y (rows) to the teacher's (columns) with ``K = exp(−C/ε)``; only the transport
    cost (no entropy) enters the loss, no T² factor, and the gradient flows through every
    iteration. The teacher side is detached. Computed in float32 (float64 kept) with autocast
    off, as in the authors' code. :func:`wkd_logit_terms` gives the two terms apart.

    Args:
        logits_student: (B, C) student logits.
        logits_teacher: (B, C) teacher logits.
        target: (B,) class indices, or (B, C) soft labels (argmax taken, as the authors do).
        cost: (C, C) ground cost, already sharpened (see :func:`sharpen_cost`).
        temperature: T for the non-target distributions.
        eps: entropic regularisation ε (the authors' ``SINKHORN.LAMBDA``).
        n_iter: Sinkhorn iterations (fixed; or the maximum with ``tol``).
        weight: λ, the weight of the Wasserstein term (the distiller multiplies in the decay).
        solver: ``"plain"`` (default, the authors' scaling with ``+1e-8`` guards, u₀ = 1/(C−1)),
            ``"adjoint"`` (the same iterations with a hand-written backward pass,
            :mod:`wkd_core.ot.sinkhorn_adjoint`: any device and float dtype, fewer launches;
            equal to ``"plain"`` up to float summation order), ``"fused"`` (the same
            iterations and the target term in one Triton kernel per direction for C ≤ 128,
            one blocked launch per half-iteration above,
            :mod:`wkd_core.ot.sinkhorn_fused`: CUDA, float32, C ≤ 4096; equal to
            ``"plain"`` up to float32 summation order) or ``"log"`` (log-domain, for small ε;
            stores O(B·C²) per iteration).
        tol: with ``solver="log"``, stop once the column marginals are within ``tol`` (L1).
        validate: also check labels in range, finite inputs and a non-negative cost (forces a
            device sync; a negative cost gives NaN or negative losses).

    Returns:
        Scalar loss.
    """
    terms = wkd_logit_terms(
        logits_student,
        logits_teacher,
        target,
        cost,
        temperature=temperature,
        eps=eps,
        n_iter=n_iter,
        solver=solver,
        tol=tol,
        validate=validate,
    )
    return terms.target + weight * terms.transport


def wkd_logit_terms(
    logits_student: Tensor,
    logits_teacher: Tensor,
    target: Tensor,
    cost: Tensor,
    *,
    temperature: float,
    eps: float = 0.05,
    n_iter: int = 10,
    solver: str = "plain",
    tol: float | None = None,
    validate: bool = False,
) -> WKDLogitTerms:
    """The terms of :func:`wkd_logit_loss` apart: ``(L_t, mean_b Σ P∘C)``, one Sinkhorn run.

    Same arguments as :func:`wkd_logit_loss` without ``weight``; for distillers that log the
    target and the Wasserstein terms separately.
    """
    check_logits(logits_student, logits_teacher)
    target = hard_target(target, logits_student)
    check_tensor(cost=cost)
    num_classes = logits_student.shape[1]
    if cost.shape != (num_classes, num_classes):
        raise ValueError(
            f"cost must be ({num_classes}, {num_classes}) to match the logits, "
            f"got {tuple(cost.shape)}"
        )
    _check_options(temperature, eps, n_iter, solver, tol)
    if validate:
        check_values(logits_student, logits_teacher, cost, target=target, num_classes=num_classes)
        if bool((cost < 0).any()):
            raise ValueError(
                f"cost has negative entries (min {float(cost.min()):.3g}): the ground cost must "
                "be >= 0 (build it with sharpen_cost from D = 1 - IR)"
            )

    dtype = loss_dtype(logits_student)
    if solver == "fused":
        with autocast_off(logits_student.device.type):
            per_target, per_transport = fused_wkd_logit(
                logits_student.to(dtype), logits_teacher.to(dtype), target, cost,
                temperature=temperature, eps=eps, n_iter=n_iter,
            )  # fmt: skip
        return WKDLogitTerms(per_target.mean(), per_transport.mean())
    with autocast_off(logits_student.device.type):
        z_s = logits_student.to(dtype)
        z_t = logits_teacher.detach().to(dtype)
        cost = cost.to(device=z_s.device, dtype=dtype)
        idx = target.unsqueeze(1)  # (B, 1)
        p_t_target = F.softmax(z_t, dim=1).gather(1, idx).squeeze(1)
        loss_target = -(p_t_target * F.log_softmax(z_s, dim=1).gather(1, idx).squeeze(1)).mean()
        gt_mask = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, idx, True)  # (B, C)
        # masked_fill before the softmax: exp(-inf) = 0 gives exact zeros, and masked_fill's
        # backward zeroes the gradient at the target, so no inf/NaN reaches the logits.
        masked_s = (z_s / temperature).masked_fill(gt_mask, float("-inf"))
        masked_t = (z_t / temperature).masked_fill(gt_mask, float("-inf"))
        if solver in ("plain", "adjoint"):
            u0 = torch.full_like(z_s, 1.0 / (num_classes - 1)).masked_fill(gt_mask, 0.0)
            solve = sinkhorn_shared_transport if solver == "adjoint" else _shared_transport
            transport = solve(
                F.softmax(masked_s, dim=1),
                F.softmax(masked_t, dim=1),
                cost,
                eps=eps,
                n_iter=n_iter,
                u0=u0,
            )
            return WKDLogitTerms(loss_target, transport.mean())
        result = sinkhorn_log(
            F.log_softmax(masked_s, dim=1),
            F.log_softmax(masked_t, dim=1),
            cost,
            eps=eps,
            n_iter=n_iter,
            tol=tol,
            log_marginals=True,
            log_u0=torch.zeros_like(z_s).masked_fill(gt_mask, float("-inf")),
        )
        return WKDLogitTerms(loss_target, result.transport_cost.mean())


class WKDLogitLoss(nn.Module):
    """Module form of :func:`wkd_logit_loss`; the (C, C) cost is a non-persistent buffer.

    Args:
        cost: (C, C) sharpened ground cost; see :meth:`from_distance`.
        temperature, eps, n_iter, weight, solver, tol: as in :func:`wkd_logit_loss`.
    """

    cost: Tensor

    def __init__(
        self,
        cost: Tensor,
        *,
        temperature: float,
        eps: float = 0.05,
        n_iter: int = 10,
        weight: float = 1.0,
        solver: str = "plain",
        tol: float | None = None,
    ) -> None:
        super().__init__()
        check_tensor(cost=cost)
        if cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
            raise ValueError(f"cost must be a square (C, C) matrix, got {tuple(cost.shape)}")
        _check_options(temperature, eps, n_iter, solver, tol)
        # Not persistent: the cost is an input artifact (cached per teacher + dataset), so it
        # stays out of state_dicts and checkpoints; it still follows .to(device).
        self.register_buffer("cost", cost.detach().clone(), persistent=False)
        self.temperature, self.eps, self.n_iter = temperature, eps, n_iter
        self.weight, self.solver, self.tol = weight, solver, tol

    @classmethod
    def from_distance(cls, distance: Tensor, *, kappa: float = 1.0, **kwargs) -> WKDLogitLoss:
        """Build from a D = 1 − IR matrix, sharpened with :func:`sharpen_cost`."""
        return cls(sharpen_cost(distance, kappa=kappa), **kwargs)

    def forward(
        self,
        logits_student: Tensor,
        logits_teacher: Tensor,
        target: Tensor,
        *,
        weight: float | None = None,
    ) -> Tensor:
        """``weight`` overrides the stored λ for this call (e.g. λ times a decay factor)."""
        return wkd_logit_loss(
            logits_student,
            logits_teacher,
            target,
            self.cost,
            temperature=self.temperature,
            eps=self.eps,
            n_iter=self.n_iter,
            weight=self.weight if weight is None else weight,
            solver=self.solver,
            tol=self.tol,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.cost.shape[0]}, temperature={self.temperature}, eps={self.eps}, "
            f"n_iter={self.n_iter}, weight={self.weight}, solver={self.solver!r}"
        )
