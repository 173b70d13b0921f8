"""Hinton's knowledge distillation: KL between temperature-softened distributions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.losses._checks import (
    autocast_off,
    check_logits,
    check_positive,
    check_values,
    loss_dtype,
)

__all__ = ["KDLoss", "kd_loss"]


def kd_loss(
    logits_student: Tensor, logits_teacher: Tensor, *, temperature: float, validate: bool = False
) -> Tensor:
    """``T² · mean_b KL(softmax(z_T/T) ‖ softmax(z_S/T))``.

    The T² keeps gradient magnitudes comparable across temperatures. The teacher is not
    detached here: the distiller runs it under ``no_grad``. Computed in float32 (float64 kept)
    with autocast off, as the WKD losses.

    Args:
        logits_student: (B, C) student logits.
        logits_teacher: (B, C) teacher logits.
        temperature: softening temperature T > 0.
        validate: also check for NaN/inf (forces a device sync).

    Returns:
        Scalar, averaged over the batch (``reduction="batchmean"``).

    Reference: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural
    Network", 2015, §2; mdistiller ``distillers/KD.py``.
    """
    check_logits(logits_student, logits_teacher)
    check_positive(temperature=temperature)
    if validate:
        check_values(logits_student, logits_teacher)
    dtype = loss_dtype(logits_student)
    with autocast_off(logits_student.device.type):
        log_p_s = F.log_softmax(logits_student.to(dtype) / temperature, dim=1)
        log_p_t = F.log_softmax(logits_teacher.to(dtype) / temperature, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * temperature**2


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss`."""

    def __init__(self, *, temperature: float = 4.0) -> None:
        super().__init__()
        check_positive(temperature=temperature)
        self.temperature = temperature

    def forward(self, logits_student: Tensor, logits_teacher: Tensor) -> Tensor:
        return kd_loss(logits_student, logits_teacher, temperature=self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
