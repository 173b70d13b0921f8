"""The CIFAR "ResNet18" and "ResNet50" of RepDistiller / mdistiller (``resnetv2.py``).

ImageNet's ResNet-18/50 stage layout (widths 64-128-256-512, blocks 2-2-2-2 and 3-4-6-3) on
a 3×3 stride-1 stem without max-pooling, so a 32×32 input ends in a 4×4 last-stage map
(He et al., "Deep Residual Learning for Image Recognition", CVPR 2016). Parameter names are
the originals' (``shortcut.0``/``shortcut.1``, classifier ``linear``), so their CIFAR-100
teachers (ResNet50) load with ``strict=True``.

Features: ``feats = [stem, stage1, …, stage4]`` after ReLU; ``preact_feats`` before the last
ReLU of each stage. ResNet50's ``feats[-1]`` is (2048, 4, 4) at 32×32 input.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.models._base import (
    FeatureDict,
    PreactBlock,
    ZooModel,
    global_avg_pool,
    init_conv_fan_out,
    register_model,
    run_stages,
)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty Sequential, no keys) or a strided 1×1 conv + BN projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(PreactBlock):
    """Two 3×3 convs with BN; output ReLU(branch + shortcut)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact


class Bottleneck(PreactBlock):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, each with BN; output ReLU(branch + shortcut)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


class CifarResNetV2(ZooModel):
    """Four stages (strides 1, 2, 2, 2) of ``block`` on a 3×3 stride-1 stem of width 64.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        num_blocks: blocks per stage.
        num_classes: size of the classifier.
    """

    classifier_name = "linear"

    def __init__(
        self, block: type[BasicBlock | Bottleneck], num_blocks: list[int], *, num_classes: int
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        self.stage_channels = [64 * block.expansion * 2**i for i in range(4)]
        init_conv_fan_out(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        stem = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = run_stages(stem, [self.layer1, self.layer2, self.layer3, self.layer4])
        pooled = global_avg_pool(feats[-1])
        out: FeatureDict = {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}
        return self.linear(pooled), out


@register_model("ResNet18", family="resnet", input_kind="cifar")
def cifar_resnet18(*, num_classes: int) -> CifarResNetV2:
    """CIFAR ResNet-18: basic blocks 2-2-2-2 (11.2 M parameters at 100 classes)."""
    return CifarResNetV2(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@register_model("ResNet50", family="resnet", input_kind="cifar")
def cifar_resnet50(*, num_classes: int) -> CifarResNetV2:
    """CIFAR ResNet-50: bottlenecks 3-4-6-3 (23.7 M parameters at 100 classes)."""
    return CifarResNetV2(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
