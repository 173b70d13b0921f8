"""Decoupled knowledge distillation (DKD): target-class and non-target-class KL terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.losses._checks import (
    autocast_off,
    check_logits,
    check_positive,
    check_values,
    hard_target,
    loss_dtype,
)

__all__ = ["DKDLoss", "dkd_loss"]

# mdistiller masks the target logit by subtracting 1000 rather than using -inf: the KL with a
# zero teacher probability and a -inf student log-probability would be 0·(-inf) = NaN.
_MASK_OFFSET = 1000.0


def dkd_loss(
    logits_student: Tensor,
    logits_teacher: Tensor,
    target: Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float,
    validate: bool = False,
) -> Tensor:
    """``α·TCKD + β·NCKD``, both KL divergences scaled by T² and averaged over the batch.

    TCKD is the KL between the binary distributions ``[p_t, 1 − p_t]`` (target vs all
    non-targets) of teacher and student at temperature T. NCKD is the KL between the
    distributions over the non-target classes only (target logit masked out). The warm-up
    factor ``min(epoch / warmup, 1)`` of the paper is applied by the distiller, not here.
    Computed in float32 (float64 kept) with autocast off, as the WKD losses.

    The student's binary log-probabilities are mdistiller's ``log([p_t, 1 − p_t])`` wherever
    both masses are positive (the same numbers); where one underflows to 0 (confident logits:
    a gap above ~100/T in float32) its log-sum-exp form is used instead of ``log 0 = −inf``,
    which made the loss infinite.

    Args:
        logits_student: (B, C) student logits.
        logits_teacher: (B, C) teacher logits.
        target: (B,) class indices, or (B, C) soft labels (argmax taken).
        alpha: weight of TCKD.
        beta: weight of NCKD.
        temperature: softening temperature T > 0.
        validate: also check labels in range and finite logits (forces a device sync).

    Returns:
        Scalar loss.

    Reference: B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, "Decoupled Knowledge
    Distillation", CVPR 2022, Eq. (7); mdistiller ``distillers/DKD.py``.
    """
    check_logits(logits_student, logits_teacher)
    check_positive(temperature=temperature)
    target = hard_target(target, logits_student)
    batch, num_classes = logits_student.shape
    if validate:
        check_values(logits_student, logits_teacher, target=target, num_classes=num_classes)
    dtype = loss_dtype(logits_student)
    with autocast_off(logits_student.device.type):
        scaled_s = logits_student.to(dtype) / temperature
        scaled_t = logits_teacher.to(dtype) / temperature
        gt_mask = torch.zeros_like(scaled_s, dtype=torch.bool)
        gt_mask.scatter_(1, target.unsqueeze(1), True)  # (B, C)

        p_s = F.softmax(scaled_s, dim=1)
        p_t = F.softmax(scaled_t, dim=1)
        bin_s = _binary(p_s, gt_mask)  # (B, 2): [p_target, p_non_target]
        bin_t = _binary(p_t, gt_mask)
        log_bin_s = _log_binary(bin_s, scaled_s, gt_mask)
        tckd = F.kl_div(log_bin_s, bin_t, reduction="sum") * temperature**2 / batch

        offset = _MASK_OFFSET * gt_mask
        p_t_nt = F.softmax(scaled_t - offset, dim=1)
        log_p_s_nt = F.log_softmax(scaled_s - offset, dim=1)
        nckd = F.kl_div(log_p_s_nt, p_t_nt, reduction="sum") * temperature**2 / batch
        return alpha * tckd + beta * nckd


def _binary(probs: Tensor, gt_mask: Tensor) -> Tensor:
    """(B, C) probabilities → (B, 2) [mass on the target, mass on the rest]."""
    target_mass = (probs * gt_mask).sum(1, keepdim=True)
    other_mass = (probs * ~gt_mask).sum(1, keepdim=True)
    return torch.cat([target_mass, other_mass], dim=1)


def _log_binary_lse(scaled_logits: Tensor, gt_mask: Tensor) -> Tensor:
    """(B, C) logits / T → (B, 2) [log p_target, log p_non_target] by log-sum-exp (never −inf
    for finite logits)."""
    log_p = F.log_softmax(scaled_logits, dim=1)
    log_target = log_p.masked_fill(~gt_mask, float("-inf")).logsumexp(1, keepdim=True)
    log_other = log_p.masked_fill(gt_mask, float("-inf")).logsumexp(1, keepdim=True)
    return torch.cat([log_target, log_other], dim=1)


def _log_binary(bin_probs: Tensor, scaled_logits: Tensor, gt_mask: Tensor) -> Tensor:
    """``log(bin_probs)`` (mdistiller's numbers, bit for bit) where a mass is positive, the
    log-sum-exp form where it underflowed to 0. No device sync; the masked ``log`` sees 1 so
    that no inf / NaN reaches the gradient."""
    positive = bin_probs > 0
    direct = torch.log(torch.where(positive, bin_probs, torch.ones_like(bin_probs)))
    return torch.where(positive, direct, _log_binary_lse(scaled_logits, gt_mask))


class DKDLoss(nn.Module):
    """Module form of :func:`dkd_loss` (defaults: mdistiller's CIFAR-100 setting)."""

    def __init__(self, *, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0):
        super().__init__()
        check_positive(temperature=temperature)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def forward(self, logits_student: Tensor, logits_teacher: Tensor, target: Tensor) -> Tensor:
        return dkd_loss(
            logits_student,
            logits_teacher,
            target,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}"
