"""Faster R-CNN + FPN detectors by name (torchvision's implementation, nothing downloaded).

Names (``list_detectors()``):

- the paper's pairs, as in ReviewKD's COCO setting: ``fasterrcnn_resnet101_fpn``,
  ``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet18_fpn``, ``fasterrcnn_mobilenet_v2_fpn``
  (torchvision's ResNets / MobileNetV2 under an FPN of 256 channels, frozen BN, the first
  stages frozen as in detectron2 / torchvision; COCO input, shorter side 800);
- test scale, trained from scratch on the synthetic ``shapes`` set in minutes on a CPU:
  ``fasterrcnn_tiny_fpn`` (stage widths 16-32-64-128) and ``fasterrcnn_small_fpn``
  (32-64-128-256), both with a 64-channel FPN, a 256-wide box head, 96-px input, square
  anchors of 16…192 px (two sizes per level) and 32 sampled RoIs per image.

``num_classes`` is the number of object classes C; the box predictor has C + 1 outputs
(index 0 is the background, torchvision's convention). Every detector exposes the
torchvision parts the distillers use: ``transform``, ``backbone``, ``rpn``, ``roi_heads``
(``box_roi_pool`` → RoI-Align features (N, 256 or 64, 7, 7), ``box_head``, ``box_predictor``).

Reference: S. Ren et al., "Faster R-CNN", NeurIPS 2015; T.-Y. Lin et al., "Feature Pyramid
Networks for Object Detection", CVPR 2017; torchvision ``models/detection``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.models import mobilenet_v2, resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    _mobilenet_extractor,
    _resnet_fpn_extractor,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from wkd_core.registry import Registry

__all__ = [
    "DETECTORS",
    "DetectorInfo",
    "MultiScaleTransform",
    "create_detector",
    "detector_info",
    "list_detectors",
    "set_train_sizes",
]

DETECTORS: Registry[FasterRCNN] = Registry("detector")


@dataclass(frozen=True)
class DetectorInfo:
    """Static facts about a registered detector (the catalog's view of it)."""

    name: str
    family: str
    min_size: int  # shorter image side after the detector's own resize
    roi_channels: int  # channels of the RoI-Align features


_INFO: dict[str, DetectorInfo] = {}


def _register(name: str, family: str, min_size: int, roi_channels: int) -> Callable:
    def decorator(factory: Callable[..., FasterRCNN]) -> Callable[..., FasterRCNN]:
        DETECTORS.register(name)(factory)
        _INFO[name] = DetectorInfo(name, family, min_size, roi_channels)
        return factory

    return decorator


def create_detector(name: str, *, num_classes: int, **kwargs: Any) -> FasterRCNN:
    """A randomly initialised detector for ``num_classes`` object classes (C + 1 outputs).

    Keyword arguments go to the factory (``trainable_layers``, ``min_size``, ``max_size`` and
    any of torchvision's ``FasterRCNN`` options). Weights come only from files
    (:func:`wkd_core.detection.checkpoints.load_detector_weights`).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return DETECTORS.create(name, num_classes=num_classes, **kwargs)


def list_detectors() -> list[str]:
    return DETECTORS.names()


def detector_info(name: str) -> DetectorInfo:
    DETECTORS.get(name)
    return _INFO[name]


# ------------------------------------------------------------------ multi-scale training
class MultiScaleTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform with the shorter side drawn per training image.

    In training every image's shorter side is drawn uniformly from ``train_sizes`` (the
    longer side still capped at ``max_size``), detectron2's ``ResizeShortestEdge`` with
    ``MIN_SIZE_TRAIN_SAMPLING: choice``; in evaluation it is ``min_size[-1]``, the fixed test
    size, exactly as the plain transform. torchvision draws the training size with
    ``torch_choice(self.min_size)``; this class draws it from ``train_sizes`` instead, with
    the same torch RNG (so a seeded run is reproducible).
    """

    def __init__(self, train_sizes: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train_sizes = tuple(int(s) for s in train_sizes)

    def torch_choice(self, k: list[int]) -> int:
        return super().torch_choice(list(self.train_sizes))


def set_train_sizes(detector: FasterRCNN, sizes: Sequence[int] | None) -> FasterRCNN:
    """Train ``detector`` at shorter sides drawn from ``sizes``; ``None`` or ``()`` restores
    the fixed size. The test size (``transform.min_size``) is unchanged either way."""
    if sizes and any(int(s) < 1 for s in sizes):
        raise ValueError(f"training sizes must be positive, got {list(sizes)}")
    t = detector.transform
    kwargs = {
        "min_size": t.min_size,
        "max_size": t.max_size,
        "image_mean": t.image_mean,
        "image_std": t.image_std,
        "size_divisible": t.size_divisible,
        "fixed_size": t.fixed_size,
        "_skip_resize": t._skip_resize,
    }
    detector.transform = (
        MultiScaleTransform(sizes, **kwargs) if sizes else GeneralizedRCNNTransform(**kwargs)
    )
    return detector


# --------------------------------------------------------------------------- COCO-scale pairs
def _resnet_fpn(depth: str, *, num_classes: int, trainable_layers: int, **kwargs) -> FasterRCNN:
    body = getattr(resnet, depth)(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, trainable_layers)
    return FasterRCNN(backbone, num_classes=num_classes + 1, **kwargs)


@_register("fasterrcnn_resnet18_fpn", "resnet_fpn", 800, 256)
def fasterrcnn_resnet18_fpn(*, num_classes: int, trainable_layers: int = 3, **kwargs):
    """ResNet-18 + FPN (student of ResNet-101 in ReviewKD's COCO table)."""
    return _resnet_fpn(
        "resnet18", num_classes=num_classes, trainable_layers=trainable_layers, **kwargs
    )


@_register("fasterrcnn_resnet50_fpn", "resnet_fpn", 800, 256)
def fasterrcnn_resnet50_fpn(*, num_classes: int, trainable_layers: int = 3, **kwargs):
    """ResNet-50 + FPN: torchvision's ``fasterrcnn_resnet50_fpn`` layout (same keys)."""
    return _resnet_fpn(
        "resnet50", num_classes=num_classes, trainable_layers=trainable_layers, **kwargs
    )


@_register("fasterrcnn_resnet101_fpn", "resnet_fpn", 800, 256)
def fasterrcnn_resnet101_fpn(*, num_classes: int, trainable_layers: int = 3, **kwargs):
    """ResNet-101 + FPN (the teacher of ReviewKD's COCO pairs)."""
    return _resnet_fpn(
        "resnet101", num_classes=num_classes, trainable_layers=trainable_layers, **kwargs
    )


@_register("fasterrcnn_mobilenet_v2_fpn", "mobilenet_fpn", 800, 256)
def fasterrcnn_mobilenet_v2_fpn(*, num_classes: int, trainable_layers: int = 3, **kwargs):
    """MobileNetV2 + FPN on its last two stages (strides 16, 32; torchvision's extractor).

    Anchors: sizes 32…512 on each of the three maps (the two stages and the max-pool level)
    with three aspect ratios, as torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``.
    """
    body = mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _mobilenet_extractor(body, True, trainable_layers)
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    kwargs.setdefault("rpn_anchor_generator", anchors)
    return FasterRCNN(backbone, num_classes=num_classes + 1, **kwargs)


# ------------------------------------------------------------------------------- test scale
class TinyConvNet(nn.Module):
    """Four stride-2 stages of (3×3 conv, BN, ReLU) × 2 after a stride-2 stem.

    Stage outputs ``layer1`` … ``layer4`` have strides 4, 8, 16, 32 and ``widths`` channels.
    """

    def __init__(self, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.stem = _conv_bn(3, widths[0], stride=2)
        chans = (widths[0], *widths)
        for i in range(4):
            stage = nn.Sequential(
                _conv_bn(chans[i], chans[i + 1], stride=2),
                _conv_bn(chans[i + 1], chans[i + 1], stride=1),
            )
            self.add_module(f"layer{i + 1}", stage)


def _conv_bn(cin: int, cout: int, *, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _tiny(widths: tuple[int, int, int, int], *, num_classes: int, **kwargs) -> FasterRCNN:
    fpn_channels = 64
    backbone = BackboneWithFPN(
        TinyConvNet(widths),
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=list(widths[1:]),
        out_channels=fpn_channels,
    )  # maps "0", "1", "2" (strides 8, 16, 32) and "pool" (64)
    defaults: dict[str, Any] = {
        "min_size": 96,
        "max_size": 96,
        # Square anchors of two sizes per level (an octave apart in √2 steps): every shape
        # of the synthetic set is a 14–40 px square box, and three aspect ratios would only
        # add anchors no object matches.
        "rpn_anchor_generator": AnchorGenerator(
            ((16, 24), (32, 48), (64, 96), (128, 192)), ((1.0,),) * 4
        ),
        "box_roi_pool": MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2),
        "box_head": TwoMLPHead(fpn_channels * 7 * 7, 256),
        "box_predictor": FastRCNNPredictor(256, num_classes + 1),
        "rpn_pre_nms_top_n_train": 600,
        "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 150,
        # 1–4 objects per image: of 128 sampled RoIs ~95% were background, and RoI-Align's
        # CPU backward over them took half of a training step; 32 RoIs keep the positives.
        "box_batch_size_per_image": 32,
    }
    return FasterRCNN(backbone, num_classes=None, **{**defaults, **kwargs})


@_register("fasterrcnn_tiny_fpn", "tiny_fpn", 96, 64)
def fasterrcnn_tiny_fpn(*, num_classes: int, **kwargs):
    """Test-scale student: widths 16-32-64-128, 64-channel FPN (1.3 M parameters)."""
    return _tiny((16, 32, 64, 128), num_classes=num_classes, **kwargs)


@_register("fasterrcnn_small_fpn", "tiny_fpn", 96, 64)
def fasterrcnn_small_fpn(*, num_classes: int, **kwargs):
    """Test-scale teacher: widths 32-64-128-256, 64-channel FPN (2.2 M parameters)."""
    return _tiny((32, 64, 128, 256), num_classes=num_classes, **kwargs)
