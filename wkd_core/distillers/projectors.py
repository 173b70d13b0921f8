"""Student-side projectors for WKD-F: map the student's last-stage map onto the teacher's.

Two kinds, as in the authors' code (``mdistiller/distillers/_common.py`` of the WKD fork):

* ``conv1x1`` (:class:`ConvReg`, every CIFAR config): one convolution chosen by the spatial
  sizes, then BN(t_C) and ReLU;
* ``bottleneck`` (:class:`ConvRegBottleNeck`, every ImageNet config and the authors' default):
  1×1 conv s_C→256, 3×3 conv 256→256, 1×1 conv 256→t_C (all with bias, no activation in
  between), then BN(t_C) and ReLU.

Submodule names (``conv``, ``conv1``…``conv3``, ``bn``) follow the authors' so their state dicts
line up. Shapes come from :func:`probe_feature_shapes`, a dummy forward of both models.

Reference: Lv, Yang, Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge
Distillation", NeurIPS 2024, Sec. 3.2 (WKD-F).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

PROJECTORS = ("conv1x1", "bottleneck")
Shape = Sequence[int]


def _channels_and_size(shape: Shape, who: str) -> tuple[int, int, int]:
    if len(shape) != 4:
        raise ValueError(f"{who} feature shape must be (N, C, H, W), got {tuple(shape)}")
    return int(shape[1]), int(shape[2]), int(shape[3])


class ConvReg(nn.Module):
    """Convolutional regression: one conv picked by the spatial sizes, then BN + ReLU.

    * student H = 2 × teacher H: 3×3 conv, stride 2, padding 1;
    * student H × 2 = teacher H: ConvTranspose2d(kernel 4, stride 2, padding 1);
    * student H ≥ teacher H: a valid conv of kernel (1 + s_H − t_H, 1 + s_W − t_W), which is a
      1×1 conv when the sizes agree.

    Args:
        student_shape: (N, s_C, s_H, s_W) of the student feature.
        teacher_shape: (N, t_C, t_H, t_W) of the teacher feature.

    Raises:
        ValueError: the student map is smaller than the teacher's and not exactly half of it.
    """

    def __init__(self, student_shape: Shape, teacher_shape: Shape) -> None:
        super().__init__()
        s_C, s_H, s_W = _channels_and_size(student_shape, "student")
        t_C, t_H, t_W = _channels_and_size(teacher_shape, "teacher")
        self.conv: nn.Module
        if s_H == 2 * t_H:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=3, stride=2, padding=1)
        elif s_H * 2 == t_H:
            self.conv = nn.ConvTranspose2d(s_C, t_C, kernel_size=4, stride=2, padding=1)
        elif s_H >= t_H and s_W >= t_W:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=(1 + s_H - t_H, 1 + s_W - t_W))
        else:
            raise ValueError(
                f"conv1x1 projector: no conv maps a student map of {s_H}x{s_W} "
                f"to a teacher map of {t_H}x{t_W}"
            )
        self.bn = nn.BatchNorm2d(t_C)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, s_C, s_H, s_W) → (B, t_C, t_H, t_W)."""
        return self.relu(self.bn(self.conv(x)))


class ConvRegBottleNeck(nn.Module):
    """Bottleneck regression: 1×1 (s_C→hidden), 3×3 (hidden→hidden), 1×1 (hidden→t_C), BN, ReLU.

    The three convs have biases and no non-linearity between them, exactly as released.
    Only equal spatial sizes are supported (the authors' 2×-upsampling branch cannot run and
    no released config uses it).

    Args:
        student_shape: (N, s_C, H, W) of the student feature.
        teacher_shape: (N, t_C, H, W) of the teacher feature.
        hidden_channels: width of the bottleneck (256 in every released config).

    Raises:
        ValueError: the spatial sizes differ.
    """

    def __init__(
        self, student_shape: Shape, teacher_shape: Shape, *, hidden_channels: int = 256
    ) -> None:
        super().__init__()
        s_C, s_H, s_W = _channels_and_size(student_shape, "student")
        t_C, t_H, t_W = _channels_and_size(teacher_shape, "teacher")
        if (s_H, s_W) != (t_H, t_W):
            raise ValueError(
                f"bottleneck projector needs equal spatial sizes, got student {s_H}x{s_W} "
                f"and teacher {t_H}x{t_W}; use projector='conv1x1'"
            )
        self.conv1 = nn.Conv2d(s_C, hidden_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(hidden_channels, t_C, kernel_size=1)
        self.bn = nn.BatchNorm2d(t_C)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, s_C, H, W) → (B, t_C, H, W)."""
        return self.relu(self.bn(self.conv3(self.conv2(self.conv1(x)))))


def build_projector(kind: str, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
    """The projector named ``kind`` ("conv1x1" or "bottleneck") for the given feature shapes."""
    if kind == "conv1x1":
        return ConvReg(student_shape, teacher_shape)
    if kind == "bottleneck":
        return ConvRegBottleNeck(student_shape, teacher_shape)
    raise ValueError(f"unknown projector {kind!r}; known: {', '.join(PROJECTORS)}")


@torch.no_grad()
def probe_feature_shapes(
    student: nn.Module, teacher: nn.Module, *, input_size: tuple[int, int], layer: int = -1
) -> tuple[torch.Size, torch.Size]:
    """Shapes of ``feats[layer]`` of both models, from one dummy (1, 3, H, W) forward.

    Both models run in eval mode (so the probe leaves BN running statistics untouched) on the
    device of their own parameters; their train/eval modes are restored afterwards.
    """
    shapes = []
    for model in (student, teacher):
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        try:
            _, feats = model.forward_features(torch.randn(1, 3, *input_size, device=device))
        finally:
            model.train(was_training)
        maps = feats["feats"]
        if not -len(maps) <= layer < len(maps):  # a FitNet hint_layer this model lacks
            name = type(model).__name__
            raise ValueError(f"layer {layer}: {name} has {len(maps)} feature maps "
                             f"(indices {-len(maps)} … {len(maps) - 1})")  # fmt: skip
        shapes.append(maps[layer].shape)
    return shapes[0], shapes[1]
