"""User-provided detector weights in three layouts, loaded strictly (nothing is downloaded).

- **torchvision detector** (``backbone.body.*``, ``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``):
  the state dict of a model built here or of torchvision's own ``fasterrcnn_resnet50_fpn``
  (same keys for ``fasterrcnn_resnet50_fpn``); loaded as is.
- **torchvision classifier** (``conv1.weight`` …, ``fc.*`` for ResNets; ``features.*``,
  ``classifier.*`` for MobileNetV2): ImageNet weights of the backbone only, the usual start of
  a COCO run; the classifier is dropped, every backbone key must be present, the FPN and the
  heads keep their initialisation.
- **detectron2** (``backbone.bottom_up.*``, ``backbone.fpn_lateral2`` …,
  ``proposal_generator.rpn_head.*``, ``roi_heads.box_head.fc1`` …), e.g. a ReviewKD COCO
  checkpoint saved as ``.pth`` / ``.safetensors`` (a ``.pkl`` must first be re-saved as a
  tensor dict: pickles are never unpickled here). ResNet + FPN detectors only. Keys are
  renamed, ``cls_score`` rows are rotated (detectron2 puts the background last, torchvision
  first) and ``bbox_pred`` gains the background's four zero rows. Caveats, not converted:
  detectron2's MSRA ResNets put the stride in the first 1×1 conv (torchvision: in the 3×3)
  and expect BGR 0–255 input; such weights load but need fine-tuning (or matching
  ``image_mean`` / ``image_std``) to reproduce their AP.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from wkd_core.models.checkpoints import (
    CheckpointMismatch,
    check_state_dict,
    load_teacher_state,
    strip_prefix,
)
from wkd_core.models.student_init import InitReport, StudentInitError, load_partial

__all__ = [
    "convert_detectron2",
    "detector_num_classes",
    "load_detector_init",
    "load_detector_weights",
]

_D2_RULES = [  # (pattern, replacement), applied in order to detectron2 keys
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "backbone.body.bn1."),
    (r"^backbone\.bottom_up\.stem\.conv1\.", "backbone.body.conv1."),
    (
        r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.",
        r"backbone.body.layer\1.\2.downsample.1.",
    ),
    (
        r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.",
        r"backbone.body.layer\1.\2.downsample.0.",
    ),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.", r"backbone.body.layer\1.\2.bn\3."),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.", r"backbone.body.layer\1.\2.conv\3."),
    (r"^backbone\.fpn_lateral(\d)\.", r"backbone.fpn.inner_blocks.\1.0."),
    (r"^backbone\.fpn_output(\d)\.", r"backbone.fpn.layer_blocks.\1.0."),
    (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv.0.0."),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.cls_logits."),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.bbox_pred."),
    (r"^roi_heads\.box_head\.fc1\.", "roi_heads.box_head.fc6."),
    (r"^roi_heads\.box_head\.fc2\.", "roi_heads.box_head.fc7."),
]


def convert_detectron2(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A detectron2 Faster R-CNN (ResNet + FPN) state dict in torchvision's layout."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("pixel_"):
            continue
        new = key
        for pattern, repl in _D2_RULES:
            new = re.sub(pattern, repl, new)
        new = re.sub(r"layer(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}.", new, count=1)
        new = re.sub(
            r"(inner_blocks|layer_blocks)\.(\d)\.",
            lambda m: f"{m.group(1)}.{int(m.group(2)) - 2}.",
            new,
        )
        if new.startswith("roi_heads.box_predictor.cls_score."):
            value = torch.cat([value[-1:], value[:-1]])  # background: last → first
        elif new.startswith("roi_heads.box_predictor.bbox_pred."):
            value = torch.cat([value.new_zeros((4, *value.shape[1:])), value])
        out[new] = value
    return out


def detector_num_classes(state: Mapping[str, Tensor]) -> int | None:
    """Object classes C of a detector state dict (its predictor has C + 1 rows), if any."""
    for key in (
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
    ):
        if key in state:
            return int(state[key].shape[0]) - 1
    return None


def load_detector_weights(
    detector: nn.Module, source: str | os.PathLike[str] | Mapping[str, Tensor], *, name=None
) -> str:
    """Load a file or state dict in any of the three layouts; returns the layout's name.

    Raises:
        CheckpointMismatch: the keys or shapes do not fit (the message lists the first ones).
    """
    state = strip_prefix(source) if isinstance(source, Mapping) else load_teacher_state(source)
    if any(k.startswith("backbone.bottom_up.") for k in state):
        state, layout = convert_detectron2(state), "detectron2"
    elif any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in state):
        layout = "torchvision"
    else:
        body = detector.backbone.body
        state = _without_bn_counters(_classifier_to_body(state), body)
        check_state_dict(body, state, model_name=f"{name or 'detector'} backbone")
        body.load_state_dict(state, strict=True)
        return "torchvision-backbone"
    state = _without_bn_counters(state, detector)
    check_state_dict(detector, state, model_name=name)
    detector.load_state_dict(state, strict=True)
    return layout


def _without_bn_counters(state: dict[str, Tensor], target: nn.Module) -> dict[str, Tensor]:
    """Drop ``num_batches_tracked`` counters the target has no buffer for (frozen BN)."""
    keys = target.state_dict().keys()
    return {k: v for k, v in state.items() if k in keys or not k.endswith("num_batches_tracked")}


def _classifier_to_body(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ImageNet classifier's keys as the detector body's (head dropped)."""
    out = {}
    for key, value in state.items():
        if key.startswith(("fc.", "classifier.")):
            continue
        out[re.sub(r"^features\.", "", key)] = value  # MobileNetV2's body is its features
    return out


def load_detector_init(
    detector: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    backbone_only: bool = False,
    name: str | None = None,
) -> InitReport:
    """A detection student's initial weights (the spec's ``student.init``).

    ``backbone_only=False``: :func:`load_detector_weights` (a whole detector strictly, or an
    ImageNet classifier's backbone strictly; the FPN and heads of the latter are reported as
    ``missing``). ``backbone_only=True``: the file's backbone (``backbone.*`` of a torchvision
    or converted detectron2 detector, or a classifier's body) onto ``detector.backbone`` with
    ``strict=False``, e.g. a COCO detector's backbone for a student of other classes; keys of
    either side without a match are reported.

    Raises:
        StudentInitError: the weights do not fit (the message lists the first keys).
    """
    state = strip_prefix(source) if isinstance(source, Mapping) else load_teacher_state(source)
    if not backbone_only:
        try:
            layout = load_detector_weights(detector, state, name=name)
        except CheckpointMismatch as error:
            hint = " (backbone_only loads the backbone alone)"
            raise StudentInitError(f"{error}{hint}") from None
        if layout != "torchvision-backbone":
            return InitReport(layout, len(detector.state_dict()))
        body = detector.backbone.body.state_dict()
        missing = [k for k in detector.state_dict() if not k.startswith("backbone.body.")]
        return InitReport(layout, len(body), missing)
    layout = "detector-backbone"
    if any(k.startswith("backbone.bottom_up.") for k in state):
        state, layout = convert_detectron2(state), "detectron2-backbone"
    if any(k.startswith("backbone.") for k in state):
        backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        unexpected = [k for k in state if not k.startswith("backbone.")]
    else:
        layout, unexpected = "classifier-backbone", [k for k in state if k.startswith("fc.")]
        unexpected += [k for k in state if k.startswith("classifier.")]
        backbone = {f"body.{k}": v for k, v in _classifier_to_body(state).items()}
    report = load_partial(detector.backbone, backbone, layout=layout, what="student's backbone")
    report.missing = [f"backbone.{k}" for k in report.missing]
    report.unexpected = [f"backbone.{k}" for k in report.unexpected] + unexpected
    return report
