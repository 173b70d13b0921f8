"""Reading teacher checkpoints in every supported format and the strict-load errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from wkd_core.models import (
    CheckpointMismatch,
    create_model,
    infer_num_classes,
    list_models,
    load_checkpoint_into,
    load_teacher_state,
)


class Opaque:
    """A class that only a full (unsafe) unpickler would rebuild."""


def _randomized(name: str, num_classes: int = 100, seed: int = 0) -> nn.Module:
    """A model whose parameters and BN buffers are all seed-dependent."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for buffer_name, buffer in model.named_buffers():
            if buffer.is_floating_point():
                buffer.copy_(torch.rand_like(buffer) + 0.5)
            elif buffer_name.endswith("num_batches_tracked"):
                buffer.fill_(seed + 7)
    return model


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _save(state: dict, path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return path
    wrapped = {
        "plain": state,
        "model": {"epoch": 240, "model": state, "accuracy": 79.42, "optimizer": {"lr": 0.05}},
        "state_dict": {"state_dict": state, "arch": "resnet8x4"},
        "net": {"net": state, "acc": 70.0},
        "module": {f"module.{k}": v for k, v in state.items()},
        "model_module": {"model": {f"module.{k}": v for k, v in state.items()}},
    }[fmt]
    torch.save(wrapped, path)
    return path


@pytest.mark.parametrize(
    "fmt", ["plain", "model", "state_dict", "net", "module", "model_module", "safetensors"]
)
@pytest.mark.parametrize("name", ["resnet8x4", "wrn_40_2"])
def test_every_format_loads_strictly(tmp_path, name, fmt):
    source = _randomized(name, seed=1)
    path = _save(source.state_dict(), tmp_path / f"{name}.pth", fmt)
    state = load_teacher_state(path)
    assert sorted(state) == sorted(source.state_dict())  # safetensors sorts its keys
    target = _randomized(name, seed=2)
    assert load_checkpoint_into(target, path) is target
    _assert_same_state(source, target)


LARGE_IMAGENET = {"tv_resnet34", "tv_resnet50", "tv_resnet101"}  # slow to build twice


@pytest.mark.parametrize("name", sorted(set(list_models()) - LARGE_IMAGENET))
def test_every_model_reloads_its_own_repdistiller_style_file(tmp_path, name):
    """{"model": state_dict}, the format of the published CIFAR-100 teachers."""
    source = _randomized(name, seed=3)
    path = _save(source.state_dict(), tmp_path / "ckpt_epoch_240.pth", "model")
    target = copy.deepcopy(source)  # cheaper than building a second one
    with torch.no_grad():
        for tensor in target.state_dict().values():
            tensor.zero_()
    load_checkpoint_into(target, path)
    _assert_same_state(source, target)
    assert infer_num_classes(load_teacher_state(path)) == 100


def test_wrong_class_count_is_a_clear_error(tmp_path):
    path = _save(
        create_model("resnet8x4", num_classes=10).state_dict(), tmp_path / "a.pth", "model"
    )
    with pytest.raises(CheckpointMismatch) as info:
        load_checkpoint_into(
            create_model("resnet8x4", num_classes=100), path, model_name="resnet8x4"
        )
    message = str(info.value)
    assert "fc.weight: checkpoint (10, 256) vs model (100, 256)" in message
    assert "fc.bias: checkpoint (10,) vs model (100,)" in message
    assert "resnet8x4" in message and "number of classes" in message
    assert isinstance(info.value, ValueError)
    assert info.value.missing == [] and info.value.unexpected == []


def test_wrong_width_is_a_shape_error():
    state = create_model("resnet8", num_classes=100).state_dict()
    with pytest.raises(
        CheckpointMismatch,
        match=r"conv1\.weight: checkpoint \(16, 3, 3, 3\) "
        r"vs model \(32, 3, 3, 3\)",
    ):
        load_checkpoint_into(create_model("resnet8x4", num_classes=100), state)


def test_wrong_architecture_names_missing_and_unexpected_keys():
    state = create_model("wrn_40_2", num_classes=100).state_dict()
    model = create_model("resnet32x4", num_classes=100)
    with pytest.raises(CheckpointMismatch) as info:
        load_checkpoint_into(model, state, model_name="resnet32x4")
    error = info.value
    assert error.missing[0] == "layer1.0.conv1.weight"
    assert error.unexpected[0] == "block1.layer.0.bn1.weight"
    message = str(error)
    assert "missing keys: layer1.0.conv1.weight" in message
    assert "unexpected keys: block1.layer.0.bn1.weight" in message
    assert "more)" in message  # long lists are cut
    assert "another architecture" in message


def test_missing_num_batches_tracked_is_tolerated():
    source = _randomized("resnet8", seed=5)
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    target = load_checkpoint_into(_randomized("resnet8", seed=6), state)
    sa, sb = source.state_dict(), target.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in state)


def test_unreadable_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_teacher_state(tmp_path / "absent.pth")

    pickled = tmp_path / "object.pth"  # arbitrary objects are refused by weights_only
    torch.save({"model": Opaque()}, pickled)
    with pytest.raises(ValueError, match="weights-only"):
        load_teacher_state(pickled)

    no_weights = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "accuracy": 1.0}, no_weights)
    with pytest.raises(ValueError, match="no state dict found"):
        load_teacher_state(no_weights)


@pytest.mark.parametrize(
    ("name", "num_classes"), [("resnet8", 10), ("ResNet18", 7), ("vgg8", 5), ("MobileNetV2", 3)]
)
def test_infer_num_classes(name, num_classes):
    state = create_model(name, num_classes=num_classes).state_dict()
    assert infer_num_classes(state) == num_classes
    assert infer_num_classes({f"module.{k}": v for k, v in state.items()}) == num_classes
    assert infer_num_classes({"conv.weight": torch.zeros(3, 3)}) is None
