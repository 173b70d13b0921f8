"""Wide residual networks for CIFAR (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

Pre-activation WRN-d-k of RepDistiller / mdistiller (``wrn.py``) with their parameter names
(``block1.layer.0.bn1``, ``convShortcut``, final ``bn1`` and ``fc``), so their CIFAR-100
teachers (wrn_40_2) load with ``strict=True``.

Features (mdistiller's positions): ``feats = [stem conv, block1, block2, block3]``. The
blocks are pre-activation, so the stage outputs carry no ReLU: ``feats[-1]`` of WRN-40-2 is
the (128, 8, 8) output of block3 *before* the final BN+ReLU. ``preact_feats`` holds the
BN-normalised stage outputs that the next ReLU sees (next stage's first ``bn1``, final
``bn1``).

Unlike mdistiller, which re-applies those BNs to the stage outputs after the forward pass
(updating their running statistics a second time in training mode), the normalised maps are
computed once and reused, as in the plain forward of RepDistiller; the results in eval mode
are identical.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.models._base import (
    FeatureDict,
    ZooModel,
    global_avg_pool,
    init_conv_fan_out,
    register_model,
)


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut.

    When the width changes the shortcut is a strided 1×1 conv (``convShortcut``) applied to
    the activated input; otherwise it is the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None
        if not self.equalInOut:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor, normed: Tensor | None = None) -> Tensor:
        """``normed``: ``self.bn1(x)`` when the caller already computed it (see the module doc)."""
        act = F.relu(self.bn1(x) if normed is None else normed)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One stage: ``layer`` is a Sequential of blocks (the key prefix ``blockN.layer.i``)."""

    def __init__(
        self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(nb_layers)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def forward_with_input_norm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the stage output and ``layer[0].bn1(x)``, computing that BN only once."""
        first, *rest = self.layer
        normed = first.bn1(x)
        out = first(x, normed=normed)
        for block in rest:
            out = block(out)
        return out, normed


class WideResNet(ZooModel):
    """WRN-depth-widen_factor: three stages of (depth - 4) / 6 blocks, widths 16k, 32k, 64k.

    Args:
        depth: 6n+4 (16, 40, …).
        widen_factor: k.
        num_classes: size of the classifier.
        drop_rate: dropout between the two convs of a block (0 in all KD recipes).
    """

    classifier_name = "fc"

    def __init__(
        self, depth: int, widen_factor: int, *, num_classes: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 (16, 22, 28, 40, …), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.stage_channels = widths
        init_conv_fan_out(self)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2, f1_pre = self.block2.forward_with_input_norm(f1)
        f3, f2_pre = self.block3.forward_with_input_norm(f2)
        f3_pre = self.bn1(f3)
        pooled = global_avg_pool(F.relu(f3_pre))
        feats: FeatureDict = {
            "feats": [f0, f1, f2, f3],
            "preact_feats": [f0, f1_pre, f2_pre, f3_pre],
            "pooled_feat": pooled,
        }
        return self.fc(pooled), feats


@register_model("wrn_16_1", family="wrn", input_kind="cifar")
def wrn_16_1(*, num_classes: int) -> WideResNet:
    """WRN-16-1 (widths 16-16-32-64)."""
    return WideResNet(16, 1, num_classes=num_classes)


@register_model("wrn_16_2", family="wrn", input_kind="cifar")
def wrn_16_2(*, num_classes: int) -> WideResNet:
    """WRN-16-2 (widths 16-32-64-128)."""
    return WideResNet(16, 2, num_classes=num_classes)


@register_model("wrn_40_1", family="wrn", input_kind="cifar")
def wrn_40_1(*, num_classes: int) -> WideResNet:
    """WRN-40-1 (widths 16-16-32-64)."""
    return WideResNet(40, 1, num_classes=num_classes)


@register_model("wrn_40_2", family="wrn", input_kind="cifar")
def wrn_40_2(*, num_classes: int) -> WideResNet:
    """WRN-40-2 (widths 16-32-64-128), the WKD-F teacher of ShuffleV1."""
    return WideResNet(40, 2, num_classes=num_classes)
