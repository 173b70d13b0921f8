"""The trainer's optimizers, over the distiller's trainable parameters (never the teacher).

* ``"sgd"``: ``torch.optim.SGD`` with momentum (Nesterov or not), the released WKD and
  mdistiller recipes; timm's ``"sgd"`` (OFA-KD's CNN-student recipe) is the Nesterov one.
* ``"adamw"``: ``torch.optim.AdamW`` with (β₁, β₂) and ε, OFA-KD's Transformer/MLP-student
  recipe (timm's ``"adamw"`` is ``torch.optim.AdamW``).

Weight decay applies to every trainable parameter by default (mdistiller, BN scales
included). ``decay_bias_and_norm=False`` follows timm's optimizer factory, which OFA-KD's
``train.py`` calls (``create_optimizer_v2`` with ``filter_bias_and_bn``): parameters with at
most one dimension (biases, norm scales and shifts) and every ``*.bias`` go in a group with
no weight decay. The distiller defines no ``no_weight_decay()`` list, as OFA-KD's does not,
so a ViT's position embedding and class token are decayed there too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from wkd_core.distillers.base import Distiller

if TYPE_CHECKING:
    from wkd_core.train.config import TrainConfig

OPTIMIZERS = ("sgd", "adamw")


def param_groups(
    distiller: Distiller, *, weight_decay: float, decay_bias_and_norm: bool = True
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one (decay on all) or [no decay, decay] (timm)."""
    if decay_bias_and_norm:
        return [{"params": list(distiller.trainable_parameters()), "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for name, param in distiller.named_parameters():
        if name.startswith("teacher.") or not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def make_optimizer(distiller: Distiller, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` over the student and the extra modules, at ``config.lr``."""
    groups = param_groups(
        distiller,
        weight_decay=config.weight_decay,
        decay_bias_and_norm=config.decay_bias_and_norm,
    )
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
        )
    if config.optimizer == "adamw":
        beta1, beta2 = config.betas
        return torch.optim.AdamW(groups, lr=config.lr, betas=(beta1, beta2), eps=config.eps)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
