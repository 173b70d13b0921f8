"""ImageNet models: torchvision's ResNets and MobileNetV2 with the zoo interface, and
mdistiller's MobileNetV1.

Names (distinct from the CIFAR zoo's ``ResNet18`` / ``ResNet50``, which are other networks):

- ``tv_resnet18``, ``tv_resnet34``, ``tv_resnet50``, ``tv_resnet101``: subclasses of
  ``torchvision.models.ResNet`` with identical modules, state-dict keys, initialisation and
  ``forward``; torchvision's ImageNet weights (and mdistiller's, which use the same keys)
  load with ``strict=True``. He et al., "Deep Residual Learning for Image Recognition",
  CVPR 2016.
- ``tv_mobilenet_v2``: a subclass of ``torchvision.models.MobileNetV2`` (width 1.0, same
  keys: ``features.0`` … ``features.18``, ``classifier.1``), so torchvision's
  ``mobilenet_v2-*.pth`` loads with ``strict=True``. Sandler et al., "MobileNetV2: Inverted
  Residuals and Linear Bottlenecks", CVPR 2018. Not the CIFAR zoo's ``MobileNetV2``
  (RepDistiller's width-0.5 network, other keys). ``tv_resnet101`` and ``tv_mobilenet_v2``
  are there mainly so that ImageNet weights can start the ResNet-101 / MobileNetV2 Faster
  R-CNN backbones (``wkd_core.detection.checkpoints.load_detector_init``).
- ``MobileNetV1``: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for
  Mobile Vision Applications", 2017, in mdistiller's layout (``model.0`` … ``model.13``
  Sequentials, ``fc``), the student of the ResNet50 → MobileNetV1 recipe.

Features follow mdistiller's ImageNet models. ResNets: ``feats = [stem, layer1, …, layer4]``
after ReLU (the stem before max-pooling), ``preact_feats`` the stage outputs before the ReLU
of their last block. The stem entry of ``preact_feats`` is the activated stem, as in the
CIFAR zoo and as mdistiller effectively returns (its pre-ReLU stem tensor is overwritten by
an in-place ReLU). ``feats[-1]`` is (512, 7, 7) for ResNet-18/34 and (2048, 7, 7) for
ResNet-50 at 224×224.
tv_mobilenet_v2 follows the CIFAR zoo's MobileNetV2: ``feats`` are the stem and the outputs
of the stride-4, 8, 16 and 32 groups (``features.3``, ``.6``, ``.13``, ``.17``: 24, 32, 96
and 320 channels, (320, 7, 7) at 224×224); inverted residuals end in a linear projection,
so ``preact_feats`` equal ``feats``; the 1×1 conv to 1280 channels (``features.18``) feeds
the pooling only.
MobileNetV1 has no stem entry: ``feats`` are the outputs of blocks 3, 5, 11 and 13 after
ReLU, (128, 56, 56) … (1024, 7, 7), and ``preact_feats`` the same before the ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenetv2 as tv_mobilenetv2
from torchvision.models import resnet as tv_resnet

from wkd_core.models._base import FeatureDict, ZooModel, global_avg_pool, register_model


def _block_preact(block: tv_resnet.BasicBlock | tv_resnet.Bottleneck, x: Tensor) -> Tensor:
    """A torchvision residual block's output before its final ReLU."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, tv_resnet.Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        return block.bn3(block.conv3(out)) + identity
    return block.bn2(block.conv2(out)) + identity


class TorchvisionResNet(tv_resnet.ResNet):
    """``torchvision.models.ResNet`` plus ``forward_features`` and ``get_classifier``.

    ``forward`` is torchvision's own.
    """

    def _stage(self, stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
        *init, last = stage
        for block in init:
            x = block(x)
        preact = _block_preact(last, x)
        return F.relu(preact), preact

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self._stage(self.layer1, self.maxpool(f0))
        f2, f2_pre = self._stage(self.layer2, f1)
        f3, f3_pre = self._stage(self.layer3, f2)
        f4, f4_pre = self._stage(self.layer4, f3)
        pooled = torch.flatten(self.avgpool(f4), 1)
        feats: FeatureDict = {
            "feats": [f0, f1, f2, f3, f4],
            "preact_feats": [f0, f1_pre, f2_pre, f3_pre, f4_pre],
            "pooled_feat": pooled,
        }
        return self.fc(pooled), feats

    def get_classifier(self) -> nn.Linear:
        return self.fc


@register_model("tv_resnet18", family="resnet", input_kind="imagenet")
def tv_resnet18(*, num_classes: int) -> TorchvisionResNet:
    """torchvision ResNet-18 (11.7 M parameters at 1000 classes)."""
    return TorchvisionResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@register_model("tv_resnet34", family="resnet", input_kind="imagenet")
def tv_resnet34(*, num_classes: int) -> TorchvisionResNet:
    """torchvision ResNet-34 (21.8 M parameters at 1000 classes)."""
    return TorchvisionResNet(tv_resnet.BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


@register_model("tv_resnet50", family="resnet", input_kind="imagenet")
def tv_resnet50(*, num_classes: int) -> TorchvisionResNet:
    """torchvision ResNet-50 (25.6 M parameters at 1000 classes)."""
    return TorchvisionResNet(tv_resnet.Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


@register_model("tv_resnet101", family="resnet", input_kind="imagenet")
def tv_resnet101(*, num_classes: int) -> TorchvisionResNet:
    """torchvision ResNet-101 (44.5 M parameters at 1000 classes)."""
    return TorchvisionResNet(tv_resnet.Bottleneck, [3, 4, 23, 3], num_classes=num_classes)


class TorchvisionMobileNetV2(tv_mobilenetv2.MobileNetV2):
    """``torchvision.models.MobileNetV2`` plus ``forward_features`` and ``get_classifier``.

    ``forward`` is torchvision's own (pooling, dropout 0.2, ``classifier.1``).
    """

    # Last ``features`` index of the stem and of the stride-4, 8, 16, 32 groups.
    _STAGE_ENDS = (0, 3, 6, 13, 17)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        stages, start = [], 0
        for end in self._STAGE_ENDS:
            for block in self.features[start : end + 1]:
                x = block(x)
            stages.append(x)
            start = end + 1
        pooled = global_avg_pool(self.features[start:](x))
        feats: FeatureDict = {"feats": stages, "preact_feats": list(stages), "pooled_feat": pooled}
        return self.classifier(pooled), feats

    def get_classifier(self) -> nn.Linear:
        return self.classifier[1]


@register_model("tv_mobilenet_v2", family="mobilenetv2", input_kind="imagenet")
def tv_mobilenet_v2(*, num_classes: int) -> TorchvisionMobileNetV2:
    """torchvision MobileNetV2 1.0× (3.5 M parameters at 1000 classes)."""
    return TorchvisionMobileNetV2(num_classes=num_classes)


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU()
    )


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    """Depthwise 3×3-BN-ReLU then pointwise 1×1-BN-ReLU (indices 0-5 of the Sequential)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


# (input, output, stride) of the 13 depthwise-separable blocks model.1 … model.13.
_MOBILENET_V1_BLOCKS = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1),
    (512, 1024, 2), (1024, 1024, 1),
)  # fmt: skip


class MobileNetV1(ZooModel):
    """MobileNetV1 1.0× for 224×224 ImageNet input (4.2 M parameters at 1000 classes).

    ``model`` is the stem, the 13 depthwise-separable blocks and (index 14) the global
    average pooling, as in mdistiller, so its weights load with ``strict=True``.
    """

    classifier_name = "fc"
    # The blocks whose outputs are the features (mdistiller's feat1 … feat4).
    _FEATURE_BLOCKS = (3, 5, 11, 13)

    def __init__(self, *, num_classes: int) -> None:
        super().__init__()
        blocks = [_conv_bn(3, 32, 2)] + [_conv_dw(*cfg) for cfg in _MOBILENET_V1_BLOCKS]
        self.model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(1024, num_classes)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        feats, preacts = [], []
        start = 0
        for end in self._FEATURE_BLOCKS:
            for block in self.model[start:end]:
                x = block(x)
            preact = self.model[end][:-1](x)  # the block without its final ReLU
            x = F.relu(preact)
            feats.append(x)
            preacts.append(preact)
            start = end + 1
        pooled = global_avg_pool(x)
        out: FeatureDict = {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}
        return self.fc(pooled), out


@register_model("MobileNetV1", family="mobilenetv1", input_kind="imagenet")
def mobilenet_v1(*, num_classes: int) -> MobileNetV1:
    """mdistiller's ImageNet MobileNetV1 with a ``num_classes``-way classifier."""
    return MobileNetV1(num_classes=num_classes)
