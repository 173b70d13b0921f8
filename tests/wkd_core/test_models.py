"""The model zoo: names, parameter layout and counts, forward and the feature interface.

Independent references used here:
- the state-dict layout (ordered keys and shapes) and the exact parameter counts of the
  original RepDistiller / mdistiller constructors (``mdistiller/models/cifar/*.py`` and
  ``imagenet/mobilenetv1.py`` @ e8c5bb3, run once with ``num_classes=100`` to produce the
  fingerprints below; the originals are not vendored here);
- the parameter counts published in the CRD paper (Tian et al., ICLR 2020, Table 1-2);
- torchvision's own ResNets, built live.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from wkd_core.models import create_model, feature_shapes, list_models, model_info

CIFAR = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "ResNet18", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1",
    "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1",
    "ShuffleV2",
]  # fmt: skip
IMAGENET = ["tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_resnet101", "tv_mobilenet_v2",
            "MobileNetV1"]  # fmt: skip

# (number of state-dict entries, sha256[:16] of "key:shape" lines in order) of the original
# constructors at num_classes=100.
REFERENCE_LAYOUT = {
    "resnet8": (56, "ac039310c98e68d8"),
    "resnet14": (92, "92530df46a51a173"),
    "resnet20": (128, "48702a589dcc22ab"),
    "resnet32": (200, "e488f60b23a4db1c"),
    "resnet44": (272, "fcf7a5a278e22506"),
    "resnet56": (344, "1d3465ca54c565c3"),
    "resnet110": (668, "932a055377884f91"),
    "resnet8x4": (62, "4b191cfaf50907ea"),
    "resnet32x4": (206, "670cd82105052059"),
    "ResNet18": (122, "15776a9a917d8d66"),
    "ResNet50": (320, "01c941c55d8830fa"),
    "wrn_16_1": (82, "cc273e84a60cb768"),
    "wrn_16_2": (83, "28fc720be1913fd2"),
    "wrn_40_1": (226, "f8967803e64be646"),
    "wrn_40_2": (227, "029bbe2cbcd6d721"),
    "vgg8": (37, "792c36c85a183c23"),
    "vgg11": (58, "7edcbfd7d4b24633"),
    "vgg13": (72, "adbafd0e22ce9038"),
    "vgg16": (93, "4b0f395fe5fbd954"),
    "vgg19": (114, "0820bef0b1c3cee0"),
    "MobileNetV2": (320, "67dd5adb2196190e"),
    "ShuffleV1": (296, "542ef1e4af09fe27"),
    "ShuffleV2": (338, "db138f467cd82af3"),
    "MobileNetV1": (164, "a329efa662b3e9c3"),
}

# Exact parameter counts of the original constructors at num_classes=100.
REFERENCE_PARAMS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756,
    "resnet44": 667_188, "resnet56": 861_620, "resnet110": 1_736_564,
    "resnet8x4": 1_233_540, "resnet32x4": 7_433_860, "ResNet18": 11_220_132,
    "ResNet50": 23_705_252, "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156, "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180,
    "vgg16": 14_774_436, "vgg19": 20_086_692, "MobileNetV2": 812_836,
    "ShuffleV1": 949_258, "ShuffleV2": 1_355_528,
}  # fmt: skip

# Millions of parameters as published for the CIFAR-100 models (CRD paper tables).
PUBLISHED_MILLIONS = {
    "resnet8": 0.08, "resnet20": 0.28, "resnet32": 0.47, "resnet44": 0.67,
    "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_1": 0.18, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26, "vgg8": 3.96,
    "vgg13": 9.46, "ResNet50": 23.71, "MobileNetV2": 0.81, "ShuffleV1": 0.95,
    "ShuffleV2": 1.36,
}  # fmt: skip

# (C, H, W) of feats[-1] at the model's native input size (wkd-method.md §2 for WKD-F).
LAST_FEATURE = {
    "resnet8": (64, 8, 8), "resnet110": (64, 8, 8), "resnet8x4": (256, 8, 8),
    "resnet32x4": (256, 8, 8), "ResNet18": (512, 4, 4), "ResNet50": (2048, 4, 4),
    "wrn_16_1": (64, 8, 8), "wrn_40_2": (128, 8, 8), "vgg8": (512, 4, 4),
    "vgg13": (512, 4, 4), "MobileNetV2": (160, 2, 2), "ShuffleV1": (960, 4, 4),
    "ShuffleV2": (464, 4, 4), "tv_resnet18": (512, 7, 7), "tv_resnet34": (512, 7, 7),
    "tv_resnet50": (2048, 7, 7), "tv_resnet101": (2048, 7, 7),
    "tv_mobilenet_v2": (320, 7, 7), "MobileNetV1": (1024, 7, 7),
}  # fmt: skip

TORCHVISION = {
    "tv_resnet18": torchvision.models.resnet18,
    "tv_resnet34": torchvision.models.resnet34,
    "tv_resnet50": torchvision.models.resnet50,
    "tv_resnet101": torchvision.models.resnet101,
}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layout(model: nn.Module) -> tuple[int, str]:
    state = model.state_dict()
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    return len(state), hashlib.sha256(text.encode()).hexdigest()[:16]


def _input(name: str, batch: int = 2, size: int | None = None) -> torch.Tensor:
    size = size or model_info(name).input_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    """Every registered model of our own zoo at 100 classes, built once, in eval mode (the timm
    family is tested in test_timm_models.py)."""
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=100).eval() for name in CIFAR + IMAGENET}


def test_registry_names():
    ours = [n for n in list_models() if model_info(n).family != "timm"]
    assert sorted(ours) == sorted(CIFAR + IMAGENET)
    assert {model_info(n).input_kind for n in CIFAR} == {"cifar"}
    assert {model_info(n).input_kind for n in IMAGENET} == {"imagenet"}
    with pytest.raises(ValueError, match="resnet8x4"):
        create_model("resnet9000", num_classes=10)


@pytest.mark.parametrize("name", [*CIFAR, "MobileNetV1"])
def test_state_dict_layout_equals_original(zoo, name):
    assert _layout(zoo[name]) == REFERENCE_LAYOUT[name]


def test_spot_check_original_key_names(zoo):
    keys = {name: set(zoo[name].state_dict()) for name in zoo}
    assert {"layer1.0.downsample.0.weight", "fc.weight"} <= keys["resnet8x4"]
    assert {"block1.layer.0.convShortcut.weight", "bn1.running_var"} <= keys["wrn_40_2"]
    assert "block1.layer.0.convShortcut.weight" not in keys["wrn_16_1"]
    assert {"block0.0.bias", "block0.4.running_mean", "classifier.weight"} <= keys["vgg13"]
    assert {"conv1.0.weight", "blocks.6.0.conv.7.weight", "classifier.0.weight"} <= keys[
        "MobileNetV2"
    ]
    assert {"layer1.0.shortcut.0.weight", "linear.weight"} <= keys["ResNet50"]
    assert {"layer3.0.conv5.weight", "conv2.weight", "linear.bias"} <= keys["ShuffleV2"]
    assert {"model.13.3.weight", "fc.weight"} <= keys["MobileNetV1"]


@pytest.mark.parametrize("name", CIFAR)
def test_parameter_count_equals_original(zoo, name):
    assert _count(zoo[name]) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_parameter_count_matches_published(zoo, name):
    assert abs(_count(zoo[name]) / 1e6 - PUBLISHED_MILLIONS[name]) <= 0.01 + 1e-9


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_resnet_parity(name):
    torch.manual_seed(1)
    reference = TORCHVISION[name](num_classes=10).eval()
    ours = create_model(name, num_classes=10).eval()
    ref_state = reference.state_dict()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in ref_state.items()
    ]
    assert _count(ours) == _count(reference)
    ours.load_state_dict(ref_state, strict=True)
    x = _input(name, size=64)
    with torch.no_grad():
        expected = reference(x)
        logits, feats = ours.forward_features(x)
        assert torch.allclose(ours(x), expected, atol=1e-5)
        assert torch.allclose(logits, expected, atol=1e-5)
        # feats[1:] are torchvision's layer outputs, feats[0] the activated stem.
        stages = [reference.layer1, reference.layer2, reference.layer3, reference.layer4]
        h = reference.relu(reference.bn1(reference.conv1(x)))
        assert torch.allclose(feats["feats"][0], h, atol=1e-6)
        h = reference.maxpool(h)
        for stage, feat, preact in zip(
            stages, feats["feats"][1:], feats["preact_feats"][1:], strict=True
        ):
            h = stage(h)
            assert torch.allclose(feat, h, atol=1e-5)
            assert torch.allclose(F.relu(preact), h, atol=1e-5)
            assert preact.min() < 0  # really before the ReLU
    assert ours.get_classifier() is ours.fc


def test_torchvision_mobilenet_v2_parity():
    """Same ordered keys and shapes as torchvision's ``mobilenet_v2``, its weights load
    strictly, the same logits; feats are the stem and the outputs of the stride-4 … 32
    groups, read off torchvision's own ``features``."""
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval()
    ours = create_model("tv_mobilenet_v2", num_classes=10).eval()
    ref_state = reference.state_dict()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in ref_state.items()
    ]
    ours.load_state_dict(ref_state, strict=True)
    x = _input("tv_mobilenet_v2", size=64)
    with torch.no_grad():
        expected = reference(x)
        logits, feats = ours.forward_features(x)
        assert torch.allclose(logits, expected, atol=1e-5)
        assert torch.allclose(ours(x), expected, atol=1e-5)
        h, maps = x, []
        for index, block in enumerate(reference.features):
            h = block(h)
            if index in (0, 3, 6, 13, 17):
                maps.append(h)
        assert [tuple(m.shape[1:]) for m in maps] == [
            (32, 32, 32),
            (24, 16, 16),
            (32, 8, 8),
            (96, 4, 4),
            (320, 2, 2),
        ]
        for ref_map, feat in zip(maps, feats["feats"], strict=True):
            assert torch.allclose(feat, ref_map, atol=1e-5)
        assert torch.allclose(feats["pooled_feat"], h.mean((2, 3)), atol=1e-5)
    assert ours.get_classifier() is ours.classifier[1]


def _check_interface(model: nn.Module, x: torch.Tensor, num_classes: int = 100) -> dict:
    with torch.no_grad():
        logits, feats = model.forward_features(x)
        assert logits.shape == (x.shape[0], num_classes)
        assert torch.allclose(model(x), logits, atol=1e-6)
        assert set(feats) == {"feats", "preact_feats", "pooled_feat"}
        assert len(feats["feats"]) == len(feats["preact_feats"]) >= 4
        for f, p in zip(feats["feats"], feats["preact_feats"], strict=True):
            assert f.shape == p.shape and f.dim() == 4 and f.shape[0] == x.shape[0]
        classifier = model.get_classifier()
        assert isinstance(classifier, nn.Linear) and classifier.out_features == num_classes
        assert feats["pooled_feat"].shape == (x.shape[0], classifier.in_features)
        assert torch.allclose(classifier(feats["pooled_feat"]), logits, atol=1e-5)
    return feats


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_forward_and_features(zoo, name):
    model = zoo[name]
    feats = _check_interface(model, _input(name))
    shapes = [tuple(f.shape[1:]) for f in feats["feats"]]
    assert feature_shapes(model) == shapes
    if name in LAST_FEATURE:
        assert shapes[-1] == LAST_FEATURE[name]
    # Where the stage ends in a ReLU, feats[-1] is exactly the activated preact_feats[-1].
    if not name.startswith(("wrn", "MobileNetV2", "ShuffleV2")):
        assert torch.equal(feats["feats"][-1], F.relu(feats["preact_feats"][-1]))
        assert feats["preact_feats"][-1].min() < 0


@pytest.mark.parametrize(
    "name", ["tv_resnet34", "tv_resnet50", "tv_resnet101", "tv_mobilenet_v2", "MobileNetV1"]
)
def test_imagenet_forward_small_input(zoo, name):
    feats = _check_interface(zoo[name], _input(name, size=64))
    assert tuple(feats["feats"][-1].shape[1:]) == (LAST_FEATURE[name][0], 2, 2)


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v2", "MobileNetV1"])
def test_imagenet_forward_native_size(zoo, name):
    feats = _check_interface(zoo[name], _input(name, batch=1))
    assert tuple(feats["feats"][-1].shape[1:]) == LAST_FEATURE[name]
    assert feature_shapes(zoo[name], (224, 224))[-1] == LAST_FEATURE[name]


def test_wrn_last_feature_is_before_final_bn_relu(zoo):
    model = zoo["wrn_40_2"]
    with torch.no_grad():
        _, feats = model.forward_features(_input("wrn_40_2"))
        f3, f3_pre = feats["feats"][-1], feats["preact_feats"][-1]
        assert torch.allclose(f3_pre, model.bn1(f3), atol=1e-6)
        assert torch.allclose(feats["pooled_feat"], F.relu(model.bn1(f3)).mean((2, 3)), atol=1e-6)
        assert torch.allclose(
            feats["preact_feats"][1], model.block2.layer[0].bn1(feats["feats"][1])
        )


def test_wrn_train_forward_updates_each_bn_once():
    model = create_model("wrn_16_2", num_classes=10).train()
    model.forward_features(_input("wrn_16_2"))
    counts = {
        m.num_batches_tracked.item() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    }
    assert counts == {1}


def test_feature_shapes_leaves_training_mode_and_statistics_alone():
    model = create_model("resnet8", num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert feature_shapes(model) == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert feature_shapes(model, key="preact_feats")[-1] == (64, 8, 8)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["resnet8x4", "ShuffleV1", "MobileNetV2"])
def test_backward_reaches_every_parameter(name):
    model = create_model(name, num_classes=10).train()
    logits, feats = model.forward_features(_input(name))
    (logits.sum() + feats["feats"][-1].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
