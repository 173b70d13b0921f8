"""VGG with batch normalisation for CIFAR (Simonyan & Zisserman, ICLR 2015).

RepDistiller / mdistiller's CIFAR VGG (``vgg.py``, the ``vggN_bn`` constructors that their
model tables register as ``vggN``): five conv blocks ``block0`` … ``block4`` separated by
2×2 max-pooling, global average pooling and a single ``classifier`` Linear(512, C). The
parameter names and their order inside each block (conv with bias, BN, ReLU, …, the last
ReLU dropped) are the originals', so their CIFAR-100 teacher (vgg13) loads with
``strict=True``.

As in the original, ``pool3`` (before block4) is applied only for 64×64 inputs
(Tiny-ImageNet), so on CIFAR block3 and block4 both run at 4×4.

Features: ``feats = [block0, …, block4]`` after ReLU, ``preact_feats`` before it (the
stem position holds the activated map in both lists, as in mdistiller).
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

# Output widths of the convs of each of the five blocks, per depth.
_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [
        [64, 64],
        [128, 128],
        [256, 256, 256, 256],
        [512, 512, 512, 512],
        [512, 512, 512, 512],
    ],
}


def _make_block(widths: list[int], in_channels: int) -> nn.Sequential:
    """conv3x3(bias)-BN-ReLU per width, without the final ReLU (the caller applies it)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """Five BN conv blocks; ``cfg[i]`` lists the conv widths of block i.

    Args:
        cfg: five lists of conv widths (the last block must end at 512).
        num_classes: size of the classifier.
    """

    classifier_name = "classifier"

    def __init__(self, cfg: list[list[int]], *, num_classes: int) -> None:
        super().__init__()
        in_channels = [3] + [widths[-1] for widths in cfg[:-1]]
        self.block0 = _make_block(cfg[0], in_channels[0])
        self.block1 = _make_block(cfg[1], in_channels[1])
        self.block2 = _make_block(cfg[2], in_channels[2])
        self.block3 = _make_block(cfg[3], in_channels[3])
        self.block4 = _make_block(cfg[4], in_channels[4])
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        self.stage_channels = [widths[-1] for widths in cfg]
        init_conv_fan_out(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        height = x.shape[2]
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(F.max_pool2d(f0, 2))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(F.max_pool2d(f1, 2))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(F.max_pool2d(f2, 2))
        f3 = F.relu(f3_pre)
        # The original pools before block4 only for 64×64 inputs (Tiny-ImageNet).
        f4_pre = self.block4(F.max_pool2d(f3, 2) if height == 64 else f3)
        f4 = F.relu(f4_pre)
        pooled = global_avg_pool(f4)
        feats: FeatureDict = {
            "feats": [f0, f1, f2, f3, f4],
            "preact_feats": [f0, f1_pre, f2_pre, f3_pre, f4_pre],
            "pooled_feat": pooled,
        }
        return self.classifier(pooled), feats


def _register(name: str) -> None:
    def factory(*, num_classes: int) -> VGG:
        return VGG(_CONFIGS[name], num_classes=num_classes)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"CIFAR {name} with batch norm (RepDistiller's ``{name}_bn``)."
    register_model(name, family="vgg", input_kind="cifar")(factory)


for _name in _CONFIGS:
    _register(_name)
