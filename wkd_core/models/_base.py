"""The interface every model of the zoo shares, and the registration helper.

A zoo model is an ``nn.Module`` whose ``forward(x)`` returns logits and whose
``forward_features(x)`` returns ``(logits, feats)`` with mdistiller's feature dictionary:

- ``feats["feats"]``: list of (B, C, H, W) maps, the stem output first (where the family has
  one), then one per stage; ``feats["feats"][-1]`` is the last-stage map of WKD-F;
- ``feats["preact_feats"]``: the same positions before the final ReLU of each stage;
- ``feats["pooled_feat"]``: (B, D), the vector that enters the classifier.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_core.registry import MODELS

FeatureDict = dict[str, list[Tensor] | Tensor]
InputKind = Literal["cifar", "imagenet"]


@dataclass(frozen=True)
class ModelInfo:
    """What the catalog needs to know about a registered model, without building it."""

    name: str
    family: str
    input_kind: InputKind
    input_size: int


_INFO: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, input_kind: InputKind) -> Callable:
    """Registers a factory in ``MODELS`` under ``name`` and records its :class:`ModelInfo`."""
    size = 32 if input_kind == "cifar" else 224

    def decorator(factory: Callable) -> Callable:
        MODELS.register(name)(factory)
        _INFO[name] = ModelInfo(name, family, input_kind, size)
        return factory

    return decorator


def model_info(name: str) -> ModelInfo:
    """Family and input kind of a registered model (raises ``ValueError`` for unknown names)."""
    MODELS.get(name)  # the registry's error names the known models
    return _INFO[name]


class ZooModel(nn.Module, abc.ABC):
    """Base of the CIFAR zoo: ``forward`` is the logits of :meth:`forward_features`.

    Subclasses set ``classifier_name`` to the dotted path of their final ``nn.Linear``.
    """

    classifier_name: str = "fc"

    @abc.abstractmethod
    def forward_features(self, x: Tensor) -> tuple[Tensor, FeatureDict]:
        """Returns ``(logits (B, num_classes), feats)``; see the module docstring."""

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]

    def get_classifier(self) -> nn.Linear:
        return self.get_submodule(self.classifier_name)


class PreactBlock(nn.Module, abc.ABC):
    """A block that can also return its output before the final ReLU (mdistiller's ``preact``)."""

    @abc.abstractmethod
    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(output, output before the final activation)``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Runs a stage of blocks; returns its output and the last block's pre-activation."""
    *init, last = stage
    for block in init:
        x = block(x)
    return last.forward_with_preact(x)


def run_stages(stem: Tensor, stages: Sequence[nn.Sequential]) -> tuple[list[Tensor], list[Tensor]]:
    """Runs the stages after the stem output; returns ``(feats, preact_feats)``, stem first."""
    feats, preacts = [stem], [stem]
    for stage in stages:
        out, pre = run_stage(stage, feats[-1])
        feats.append(out)
        preacts.append(pre)
    return feats, preacts


def global_avg_pool(x: Tensor) -> Tensor:
    """(B, C, H, W) → (B, C) spatial mean.

    The CIFAR originals pool with a fixed kernel (``AvgPool2d(8)``, ``avg_pool2d(out, 4)``) equal
    to the last map's size at 32×32 input; a global mean is the same there and stays correct
    for other input sizes.
    """
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def init_conv_fan_out(module: nn.Module, *, linear_std: float | None = None) -> None:
    """He-normal (fan-out) convolutions, BN at (1, 0), as in the RepDistiller models.

    ``linear_std`` given: classifier weights ~ N(0, linear_std²) with zero bias (VGG and
    MobileNetV2); otherwise the linear layers keep PyTorch's default initialisation.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
