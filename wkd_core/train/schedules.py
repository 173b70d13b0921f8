"""Learning-rate and loss-weight schedules: pure functions of the 1-based epoch.

Like nanoGPT's ``get_lr(it)``, nothing here holds state; the trainer sets the learning rate
from :func:`epoch_lr` (step decay, or timm's cosine, after an optional linear warm-up) at the
start of every epoch, and distillers multiply their loss weights by
:func:`cosine_decay_factor` (WKD) or :func:`linear_warmup` (DKD).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def step_lr(epoch: int, *, base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """Step decay, set per epoch: ``lr = base_lr · gamma^{#{m ∈ milestones : epoch > m}}``.

    Epochs count from 1, so with milestones (150, 180, 210) epochs 1–150 use ``base_lr``,
    151–180 use ``0.1·base_lr`` and so on (mdistiller's ``adjust_learning_rate``,
    wkd-method.md §4).
    """
    return base_lr * gamma ** sum(epoch > m for m in milestones)


def cosine_lr(epoch: int, *, base_lr: float, epochs: int, min_lr: float = 0.0) -> float:
    """Cosine annealing set per epoch: ``min_lr + ½(base_lr − min_lr)(1 + cos(π (epoch − 1)/E))``.

    timm's ``CosineLRScheduler`` with ``t_initial = E`` epochs, one cycle, stepped per epoch
    (``t_in_epochs``, what OFA-KD's ``train.py`` gets from ``create_scheduler``): its
    0-based epoch t is our ``epoch − 1``, so epoch 1 runs ``base_lr`` and epoch E
    runs just above ``min_lr``.
    """
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


def epoch_lr(
    epoch: int,
    *,
    schedule: str,
    base_lr: float,
    epochs: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
    warmup_epochs: int = 0,
    warmup_lr: float = 0.0,
) -> float:
    """The learning rate of 1-based ``epoch``: a linear warm-up, then ``schedule``.

    Warm-up (timm's, as in OFA-KD): for ``epoch ≤ W`` (W = ``warmup_epochs``),
    ``warmup_lr + (epoch − 1)·(base_lr − warmup_lr)/W``, so epoch 1 runs ``warmup_lr`` and the
    ramp would reach ``base_lr`` at epoch W + 1. After it the schedule continues from where it
    would stand without warm-up (it is not shifted by W): ``"step"`` is :func:`step_lr`,
    ``"cosine"`` is :func:`cosine_lr`. With W = 0 and ``"step"`` this is exactly
    :func:`step_lr`, the released recipes' schedule.
    """
    if epoch <= warmup_epochs:
        return warmup_lr + (epoch - 1) * (base_lr - warmup_lr) / warmup_epochs
    if schedule == "step":
        return step_lr(epoch, base_lr=base_lr, milestones=milestones, gamma=gamma)
    if schedule == "cosine":
        return cosine_lr(epoch, base_lr=base_lr, epochs=epochs, min_lr=min_lr)
    raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {schedule!r}")


def cosine_decay_factor(
    epoch: int | Tensor, *, total_epochs: int, start_epoch: int
) -> float | Tensor:
    """Factor of the WKD distillation weights (wkd-method.md §1.4).

    ``1`` while ``epoch ≤ start_epoch``, then ``½(1 + cos(π (epoch − s)/(E − s)))`` with
    s = ``start_epoch`` and E = ``total_epochs``: it reaches 0 at the last epoch.

    ``epoch`` may be a 0-dim float tensor on the device (the captured training step keeps the
    epoch there, updated in place, so the factor is computed inside the CUDA graph without a
    host sync); the result is then a tensor of the same value.
    """
    if total_epochs <= start_epoch:
        return 1.0
    if isinstance(epoch, Tensor):
        phase = (epoch - start_epoch).clamp(min=0) / (total_epochs - start_epoch)
        return 0.5 * (1.0 + torch.cos(math.pi * phase))
    if epoch <= start_epoch:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - start_epoch) / (total_epochs - start_epoch)))


def linear_warmup(epoch: int | Tensor, *, warmup: int) -> float | Tensor:
    """DKD's warm-up factor ``min(epoch / warmup, 1)`` (1 when ``warmup ≤ 0``).

    ``epoch`` may be a 0-dim device tensor, as in :func:`cosine_decay_factor`.
    """
    if warmup <= 0:
        return 1.0
    if isinstance(epoch, Tensor):
        return (epoch / warmup).clamp(max=1.0)
    return min(epoch / warmup, 1.0)
