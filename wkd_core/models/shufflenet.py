"""ShuffleNet V1 and V2 for CIFAR, as in RepDistiller / mdistiller.

- ShuffleV1: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network
  for Mobile Devices", CVPR 2018; groups g = 3, stage widths 240-480-960, blocks 4-8-4.
- ShuffleV2: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
  Design", ECCV 2018; the 1.0× size, stage widths 116-232-464, head 1024, blocks 3-7-3.

Both replace the ImageNet stem with a 1×1 conv to 24 channels and no pooling, so a 32×32
input ends in a 4×4 last-stage map. Parameter names are the originals' (``layerN.i.convK``,
``bnK``, classifier ``linear``).

Features: ``feats = [stem, stage1, stage2, stage3]`` after ReLU (ShuffleV1's ``feats[-1]`` is
(960, 4, 4)); ``preact_feats`` are the stage outputs before the last ReLU. For ShuffleV2 the
stage output is channel-shuffled after the ReLU while the pre-activation is not, exactly as in
the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.models._base import (
    FeatureDict,
    PreactBlock,
    ZooModel,
    global_avg_pool,
    register_model,
    run_stages,
)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g·c, H, W) → (N, c·g, H, W): interleaves the channels of the g groups."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(PreactBlock):
    """Grouped 1×1 → shuffle → depthwise 3×3 (stride s) → grouped 1×1.

    Stride 2: the output is concatenated with a 3×3 average-pooled shortcut (so the branch
    produces ``out_planes`` = stage width − input width). The first unit after the 24-channel
    stem uses an ungrouped first conv, as in the paper.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, 3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            preact = out + x
        return F.relu(preact), preact


class ShuffleNetV1(ZooModel):
    """Three stages of ShuffleNet units on a 1×1 stem; each stage starts with a stride-2 unit.

    Args:
        out_planes: stage widths.
        num_blocks: units per stage.
        groups: g of the grouped 1×1 convs.
        num_classes: size of the classifier.
    """

    classifier_name = "linear"

    def __init__(
        self, out_planes: list[int], num_blocks: list[int], groups: int, *, num_classes: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)
        self.stage_channels = [24, *out_planes]

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        # The stride-2 unit's branch only produces the channels the concatenation lacks.
        layers = [ShuffleV1Unit(self.in_planes, out_planes - self.in_planes, 2, groups)]
        layers += [ShuffleV1Unit(out_planes, out_planes, 1, groups) for _ in range(num_blocks - 1)]
        self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        stem = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = run_stages(stem, [self.layer1, self.layer2, self.layer3])
        pooled = global_avg_pool(feats[-1])
        out: FeatureDict = {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}
        return self.linear(pooled), out


class ShuffleV2Unit(PreactBlock):
    """Split the channels in half; the second half goes 1×1-BN-ReLU, depthwise 3×3-BN,
    1×1-BN-ReLU; concatenate with the first half and shuffle (2 groups)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        c = in_channels // 2
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        branch = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        out = channel_shuffle(torch.cat([x1, F.relu(branch)], 1), 2)
        return out, torch.cat([x1, branch], 1)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches see the whole input and each produces half the output."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left: depthwise 3×3 (stride 2)-BN, 1×1-BN-ReLU
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right: 1×1-BN-ReLU, depthwise 3×3 (stride 2)-BN, 1×1-BN-ReLU
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ZooModel):
    """Three stages (a stride-2 unit then ``num_blocks`` units), a 1×1 conv head, a Linear.

    Args:
        out_channels: three stage widths and the head width.
        num_blocks: stride-1 units per stage.
        num_classes: size of the classifier.
    """

    classifier_name = "linear"

    def __init__(self, out_channels: list[int], num_blocks: list[int], *, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.stage_channels = [24, *out_channels[:3]]

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2Down(self.in_channels, out_channels)]
        layers += [ShuffleV2Unit(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        stem = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = run_stages(stem, [self.layer1, self.layer2, self.layer3])
        pooled = global_avg_pool(F.relu(self.bn2(self.conv2(feats[-1]))))
        out: FeatureDict = {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}
        return self.linear(pooled), out


@register_model("ShuffleV1", family="shufflenet", input_kind="cifar")
def shufflenet_v1(*, num_classes: int) -> ShuffleNetV1:
    """ShuffleNet V1, g = 3 (0.95 M parameters at 100 classes)."""
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes)


@register_model("ShuffleV2", family="shufflenet", input_kind="cifar")
def shufflenet_v2(*, num_classes: int) -> ShuffleNetV2:
    """ShuffleNet V2 1.0× (1.36 M parameters at 100 classes)."""
    return ShuffleNetV2([116, 232, 464, 1024], [3, 7, 3], num_classes=num_classes)
