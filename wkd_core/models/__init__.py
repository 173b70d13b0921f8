"""The model zoo: RepDistiller / mdistiller's CIFAR networks and the ImageNet students/teachers.

Names (``list_models()``):

- CIFAR (32×32 input, parameter names of RepDistiller / mdistiller so that their published
  CIFAR-100 teachers load with ``strict=True``): ``resnet8``, ``resnet14``, ``resnet20``,
  ``resnet32``, ``resnet44``, ``resnet56``, ``resnet110``, ``resnet8x4``, ``resnet32x4``,
  ``ResNet18``, ``ResNet50``, ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``,
  ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``, ``MobileNetV2`` (width 0.5,
  RepDistiller's ``mobile_half``), ``ShuffleV1``, ``ShuffleV2``.
- ImageNet (224×224): ``tv_resnet18``, ``tv_resnet34``, ``tv_resnet50``, ``tv_resnet101``
  and ``tv_mobilenet_v2`` (torchvision's ResNets and MobileNetV2, same keys; the ``tv_``
  prefix keeps them apart from the CIFAR ``ResNet18`` / ``ResNet50`` / ``MobileNetV2``, which
  are different networks) and ``MobileNetV1`` (mdistiller's layout).
- timm (``timm_models.py``, the CNN↔Transformer setting of OFA-KD, 224×224):
  ``timm_resnet18``, ``timm_mobilenetv2_100``, ``timm_convnext_tiny``,
  ``timm_swin_tiny_patch4_window7_224``, ``timm_swin_pico_patch4_window7_224`` (OFA-KD's
  Swin-P), ``timm_vit_small_patch16_224``,
  ``timm_deit_tiny_patch16_224``, ``timm_mixer_b16_224``, ``timm_resmlp_12_224``; and
  ``vit_tiny_p4_32`` (a 2-block ViT for 32×32 inputs, for tests).

Every model: ``forward(x) -> logits``, ``forward_features(x) -> (logits, feats)`` with
``feats["feats"]``, ``feats["preact_feats"]`` (lists of maps) and ``feats["pooled_feat"]``,
and ``get_classifier() -> nn.Linear``. See ``docs/internals.md``.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from wkd_core.models import (  # noqa: F401  (importing registers the families)
    cifar_resnet,
    cifar_resnetv2,
    imagenet,
    mobilenetv2,
    shufflenet,
    timm_models,
    vgg,
    wrn,
)
from wkd_core.models._base import ModelInfo, model_info
from wkd_core.models.checkpoints import (
    CheckpointMismatch,
    check_state_dict,
    infer_num_classes,
    load_checkpoint_into,
    load_teacher_state,
)
from wkd_core.registry import MODELS

__all__ = [
    "CheckpointMismatch",
    "ModelInfo",
    "check_state_dict",
    "create_model",
    "feature_shapes",
    "infer_num_classes",
    "list_models",
    "load_checkpoint_into",
    "load_teacher_state",
    "model_info",
]


def create_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
    """Builds a registered model with a ``num_classes``-way classifier.

    Raises:
        ValueError: unknown name (the message lists the known ones), or ``num_classes`` < 2.
        TypeError: ``num_classes`` is not an int.
    """
    MODELS.get(name)  # an unknown name first: the registry's message lists the known ones
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(
            f"num_classes must be an int, got {type(num_classes).__name__} {num_classes!r}"
        )
    if num_classes < 2:
        # timm reads num_classes=0 as "no classifier": the model would silently become a
        # feature extractor
        raise ValueError(f"num_classes must be >= 2 (a classifier), got {num_classes}")
    return MODELS.create(name, num_classes=int(num_classes), **kwargs)


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()


@torch.no_grad()
def feature_shapes(
    model: nn.Module, input_size: tuple[int, int] = (32, 32), *, key: str = "feats"
) -> list[tuple[int, int, int]]:
    """The (C, H, W) of each map in ``feats[key]`` for one image of ``input_size``.

    Probes with a dummy forward in eval mode on the model's device and dtype, then restores
    the model's training mode (so BN statistics are untouched). WKD-F's projector is sized
    from ``feature_shapes(student)[-1]`` and ``feature_shapes(teacher)[-1]``.
    """
    param = next(model.parameters())
    dummy = torch.zeros(1, 3, *input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        _, feats = model.forward_features(dummy)
    finally:
        model.train(was_training)
    return [tuple(f.shape[1:]) for f in feats[key]]
