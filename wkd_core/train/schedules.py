"""Learning-rate and loss-weight schedules: pure functions of the 1-based epoch.

Like nanoGPT's ``get_lr(it)``, nothing here holds state; the trainer sets the learning rate
from :func:`step_lr` at the start of every epoch, and distillers multiply their loss weights
by :func:`cosine_decay_factor` (WKD) or :func:`linear_warmup` (DKD).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def step_lr(epoch: int, *, base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """Step decay, set per epoch: ``lr = base_lr · gamma^{#{m ∈ milestones : epoch > m}}``.

    Epochs count from 1, so with milestones (150, 180, 210) epochs 1–150 use ``base_lr``,
    151–180 use ``0.1·base_lr`` and so on (mdistiller's ``adjust_learning_rate``,
    wkd-method.md §4).
    """
    return base_lr * gamma ** sum(epoch > m for m in milestones)


def cosine_decay_factor(epoch: int, *, total_epochs: int, start_epoch: int) -> float:
    """Factor of the WKD distillation weights (wkd-method.md §1.4).

    ``1`` while ``epoch ≤ start_epoch``, then ``½(1 + cos(π (epoch − s)/(E − s)))`` with
    s = ``start_epoch`` and E = ``total_epochs``: it reaches 0 at the last epoch.
    """
    if epoch <= start_epoch or total_epochs <= start_epoch:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - start_epoch) / (total_epochs - start_epoch)))


def linear_warmup(epoch: int, *, warmup: int) -> float:
    """DKD's warm-up factor ``min(epoch / warmup, 1)`` (1 when ``warmup ≤ 0``)."""
    if warmup <= 0:
        return 1.0
    return min(epoch / warmup, 1.0)
