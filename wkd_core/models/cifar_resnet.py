"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

The 6n+2 basic-block networks of RepDistiller / mdistiller (``models/cifar/resnet.py``) with
their exact parameter names, so that their published CIFAR-100 teachers load with
``strict=True``: resnet8 … resnet110 (widths 16-16-32-64) and resnet8x4, resnet32x4 (widths
32-64-128-256).

Features (mdistiller's positions): ``feats = [stem, stage1, stage2, stage3]``, each after its
ReLU; ``preact_feats`` holds the stage outputs before the final ReLU of their last block.
For resnet32x4 / resnet8x4 ``feats[-1]`` is (256, 8, 8) at 32×32 input.
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


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(PreactBlock):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (projected) shortcut, then ReLU."""

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = out + shortcut
        return F.relu(preact), preact


class CifarResNet(ZooModel):
    """Three stages of ``(depth - 2) / 6`` basic blocks on a 3×3 stem; strides 1, 2, 2.

    Args:
        depth: 6n+2 (8, 14, 20, 32, 44, 56, 110).
        num_filters: widths of the stem and of the three stages.
        num_classes: size of the classifier.
    """

    classifier_name = "fc"

    def __init__(self, depth: int, num_filters: list[int], *, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (8, 14, 20, 32, …), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[1], n, stride=1)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.fc = nn.Linear(num_filters[3], num_classes)
        self.stage_channels = list(num_filters)
        init_conv_fan_out(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            # Keys "downsample.0" (conv) and "downsample.1" (BN), as in the originals.
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        stem = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = run_stages(stem, [self.layer1, self.layer2, self.layer3])
        pooled = global_avg_pool(feats[-1])
        out: FeatureDict = {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}
        return self.fc(pooled), out


_THIN = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


def _register(name: str, depth: int, widths: list[int]) -> None:
    def factory(*, num_classes: int) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes=num_classes)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"CIFAR ResNet-{depth}, widths {widths} (RepDistiller's ``{name}``)."
    register_model(name, family="resnet", input_kind="cifar")(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, _THIN)
_register("resnet8x4", 8, _WIDE)
_register("resnet32x4", 32, _WIDE)
