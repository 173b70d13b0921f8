"""Student projectors of WKD-F: the conv chosen per spatial size, the bottleneck, the probe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wkd_core.distillers.projectors import (
    ConvReg,
    ConvRegBottleNeck,
    build_projector,
    probe_feature_shapes,
)


class MapNet(nn.Module):
    """Tiny model whose last feature map has ``channels`` channels at stride ``stride``."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, 5)

    def forward_features(self, x):
        feat = F.relu(self.bn(self.conv(x)))
        pooled = feat.mean((2, 3))
        return self.fc(pooled), {"feats": [x, feat], "preact_feats": [x], "pooled_feat": pooled}


@pytest.mark.parametrize(
    ("student_hw", "teacher_hw", "conv_type", "kernel", "stride"),
    [
        (8, 8, nn.Conv2d, (1, 1), (1, 1)),  # same size: 1x1 conv
        (4, 8, nn.ConvTranspose2d, (4, 4), (2, 2)),  # ShuffleV1 4x4 -> WRN 8x8
        (8, 4, nn.Conv2d, (3, 3), (2, 2)),  # student twice the teacher
        (9, 8, nn.Conv2d, (2, 2), (1, 1)),  # larger by one: a valid 2x2 conv
    ],
)
def test_convreg_picks_the_conv_and_maps_onto_the_teacher_shape(
    student_hw, teacher_hw, conv_type, kernel, stride
):
    student_shape, teacher_shape = (2, 6, student_hw, student_hw), (2, 10, teacher_hw, teacher_hw)
    projector = ConvReg(student_shape, teacher_shape)
    assert type(projector.conv) is conv_type
    assert projector.conv.kernel_size == kernel and projector.conv.stride == stride
    assert isinstance(projector.bn, nn.BatchNorm2d) and projector.bn.num_features == 10
    out = projector(torch.randn(student_shape))
    assert out.shape == teacher_shape
    assert (out >= 0).all()  # ends in ReLU


def test_convreg_rejects_a_student_map_it_cannot_reach():
    with pytest.raises(ValueError, match="5x5"):
        ConvReg((1, 4, 5, 5), (1, 4, 8, 8))


def test_bottleneck_layers_and_shapes():
    s_C, t_C = 12, 20
    projector = ConvRegBottleNeck((2, s_C, 7, 7), (2, t_C, 7, 7))
    convs = [projector.conv1, projector.conv2, projector.conv3]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(s_C, 256), (256, 256), (256, t_C)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert projector.conv2.padding == (1, 1)
    assert all(c.bias is not None for c in convs)
    assert projector.bn.num_features == t_C
    expected = (s_C * 256 + 256) + (256 * 256 * 9 + 256) + (256 * t_C + t_C) + 2 * t_C
    assert sum(p.numel() for p in projector.parameters()) == expected
    out = projector(torch.randn(2, s_C, 7, 7))
    assert out.shape == (2, t_C, 7, 7)
    assert (out >= 0).all()


def test_bottleneck_is_linear_before_bn():
    """No activation between the convs: conv3(conv2(conv1(x))) is affine in x."""
    projector = ConvRegBottleNeck((1, 3, 4, 4), (1, 5, 4, 4)).double()
    x, y = torch.randn(2, 1, 3, 4, 4, dtype=torch.float64)
    stack = nn.Sequential(projector.conv1, projector.conv2, projector.conv3)
    zero = stack(torch.zeros_like(x))
    torch.testing.assert_close(stack(x + y) - zero, (stack(x) - zero) + (stack(y) - zero))


def test_bottleneck_needs_equal_sizes():
    with pytest.raises(ValueError, match="equal spatial sizes"):
        ConvRegBottleNeck((1, 4, 4, 4), (1, 4, 8, 8))


def test_build_projector():
    assert isinstance(build_projector("conv1x1", (1, 4, 8, 8), (1, 6, 8, 8)), ConvReg)
    assert isinstance(build_projector("bottleneck", (1, 4, 8, 8), (1, 6, 8, 8)), ConvRegBottleNeck)
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("mlp", (1, 4, 8, 8), (1, 6, 8, 8))


def test_probe_reads_last_feature_shapes_and_leaves_models_untouched():
    student, teacher = MapNet(4, stride=2), MapNet(7, stride=1)
    teacher.eval()
    running = student.bn.running_mean.clone()
    shape_s, shape_t = probe_feature_shapes(student, teacher, input_size=(16, 12))
    assert tuple(shape_s) == (1, 4, 8, 6)
    assert tuple(shape_t) == (1, 7, 16, 12)
    assert student.training and not teacher.training  # modes restored
    assert torch.equal(student.bn.running_mean, running)  # probe ran in eval mode


# Last-stage maps of the released pairs (wkd-method.md §2) and the projector each one gets.
REAL_PAIRS = [
    # student, teacher, input, student feats[-1], teacher feats[-1], kind, conv of ConvReg
    ("resnet8x4", "resnet32x4", 32, (256, 8, 8), (256, 8, 8), "conv1x1", nn.Conv2d),
    ("ShuffleV1", "wrn_40_2", 32, (960, 4, 4), (128, 8, 8), "conv1x1", nn.ConvTranspose2d),
    ("tv_resnet18", "tv_resnet34", 224, (512, 7, 7), (512, 7, 7), "bottleneck", None),
    ("MobileNetV1", "tv_resnet50", 224, (1024, 7, 7), (2048, 7, 7), "bottleneck", None),
]


@pytest.mark.parametrize(
    ("student", "teacher", "size", "s_shape", "t_shape", "kind", "conv"), REAL_PAIRS
)
def test_released_pairs_get_the_released_projector(
    student, teacher, size, s_shape, t_shape, kind, conv
):
    from wkd_core.models import create_model

    torch.manual_seed(0)
    num_classes = 100 if size == 32 else 1000
    model_s = create_model(student, num_classes=num_classes)
    model_t = create_model(teacher, num_classes=num_classes).eval()
    shape_s, shape_t = probe_feature_shapes(model_s, model_t, input_size=(size, size))
    assert tuple(shape_s) == (1, *s_shape) and tuple(shape_t) == (1, *t_shape)
    projector = build_projector(kind, shape_s, shape_t)
    if conv is not None:
        assert type(projector.conv) is conv
        if conv is nn.Conv2d:
            assert projector.conv.kernel_size == (1, 1)
    out = projector(torch.randn(2, *s_shape))
    assert out.shape == (2, *t_shape)
