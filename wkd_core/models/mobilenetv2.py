"""MobileNetV2 for CIFAR (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018), in the width-0.5 variant RepDistiller calls ``mobile_half``.

Registered as ``MobileNetV2`` (mdistiller's name for it). Parameter names are the originals'
(``conv1.0``, ``blocks.i.j.conv.k``, ``conv2.0``, ``classifier.0``): the stem is a stride-2
3×3 conv, the seven inverted-residual groups use expansion 6 (1 for the first), and the head
is a 1×1 conv to 1280 channels (not scaled down at width 0.5).

Features (mdistiller's positions): ``feats = [stem, group1, group2, group4, group6]``, i.e.
(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2) at 32×32 input. The groups
end in a linear (BN, no ReLU) projection, so ``preact_feats`` is the same list (mdistiller
omits the key).
"""

from __future__ import annotations

from torch import Tensor, nn

from wkd_core.models._base import (
    FeatureDict,
    ZooModel,
    global_avg_pool,
    init_conv_fan_out,
    register_model,
)


def _conv_bn_relu(inp: int, oup: int, kernel_size: int, stride: int) -> nn.Sequential:
    padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1×1 expand-BN-ReLU, 3×3 depthwise-BN-ReLU, 1×1 project-BN (``conv.0`` … ``conv.7``);
    identity shortcut when the stride is 1 and the width is unchanged."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(ZooModel):
    """CIFAR MobileNetV2.

    Args:
        num_classes: size of the classifier.
        width_mult: channel multiplier of the stem and the groups (0.5 for ``mobile_half``).
        expansion: expansion ratio T of all groups but the first.
    """

    classifier_name = "classifier.0"
    # (expansion t, output channels c, blocks n, first stride s) per group; t=None means T.
    _SETTING = (
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    )

    def __init__(self, *, num_classes: int, width_mult: float = 0.5, expansion: int = 6):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self._SETTING:
            out_channels = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(channels, out_channels, stride, t or expansion))
                channels = out_channels
            self.blocks.append(nn.Sequential(*layers))
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channel, 1, stride=1)
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))
        self.stage_channels = [int(c * width_mult) for c in (32, 24, 32, 96, 320)]
        init_conv_fan_out(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        f0 = self.conv1(x)
        f1 = self.blocks[1](self.blocks[0](f0))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        pooled = global_avg_pool(self.conv2(f4))
        stages = [f0, f1, f2, f3, f4]
        feats: FeatureDict = {"feats": stages, "preact_feats": list(stages), "pooled_feat": pooled}
        return self.classifier(pooled), feats


@register_model("MobileNetV2", family="mobilenetv2", input_kind="cifar")
def mobilenetv2_half(*, num_classes: int) -> MobileNetV2:
    """RepDistiller's ``mobile_half``: T = 6, width 0.5 (0.81 M parameters at 100 classes)."""
    return MobileNetV2(num_classes=num_classes, width_mult=0.5, expansion=6)
