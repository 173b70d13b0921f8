"""What a job's spec builds before training: the device, the datasets and their loaders, the
frozen teacher, the student's options, the training configuration and the interrelation
options (:func:`wkd_core.pipeline.run_job` puts them together; Born-Again generations, the
CLI and the worker use some of them alone).

The spec is the plain-dict form of ``service.spec.JobSpec`` after preset resolution, read
with dictionary access only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wkd_core.data import (
    DatasetInfo,
    build_loaders,
    create_dataset,
    spec_dataset_info,
    takes_option,
)
from wkd_core.data.device import build_device_loaders
from wkd_core.data.loaders import process_rank
from wkd_core.models import create_model, load_checkpoint_into
from wkd_core.train import TrainConfig
from wkd_core.train.fast import fast_enabled


def resolve_device(device: str | None) -> torch.device:
    """``None`` / ``"auto"`` → CUDA when present, else CPU; a ``ValueError`` for a name
    torch does not know or a CUDA device this machine does not have."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r} (cpu, cuda, cuda:1, …, or auto)") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: this machine has no usable CUDA GPU")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s)")
    return resolved


def loader_workers(requested: int) -> int:
    """Data-loader processes: as asked, but never more than this host's CPUs."""
    return max(0, min(requested, os.cpu_count() or 1))


def info_of(spec: Mapping[str, Any]) -> DatasetInfo:
    """The facts of the spec's dataset with its options (``synthetic``'s ``shape`` and
    ``num_classes`` change them)."""
    dataset = dict(spec["dataset"])
    return spec_dataset_info(dataset.pop("name"), dataset)


def num_classes_of(spec: Mapping[str, Any]) -> int:
    """Class count of the spec's dataset (the catalog's, or the spec's for image folders)."""
    dataset = spec["dataset"]
    count = info_of(spec).num_classes or dataset.get("num_classes")
    if not count:
        raise ValueError(f"dataset {dataset['name']!r} needs an explicit dataset.num_classes")
    return int(count)


AUGMENT_OPTIONS = ("randaugment", "random_erasing")  # training options of the data transform


def augment_options(training: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's RandAugment / random-erasing settings that are on (cifar100_224 takes them)."""
    return {k: training[k] for k in AUGMENT_OPTIONS if training.get(k)}


def build_datasets(spec: Mapping[str, Any], data_root: Path | None, download: bool = False):
    """(train set with augmentation, train set without, test set) of the spec's dataset.

    ``download`` lets torchvision fetch CIFAR into the data root when it is missing. The
    augmenting set also gets the spec's ``training.randaugment`` / ``random_erasing``.
    """
    dataset = dict(spec["dataset"])
    name = dataset.pop("name")
    if not takes_option(name, "num_classes"):  # image folders: the folders give the count
        dataset.pop("num_classes", None)
    root = dataset.pop("root", None) or data_root
    options = {k: v for k, v in dataset.items() if v is not None}
    options["download"] = download
    augment = augment_options(spec["training"])
    train = create_dataset(name, split="train", root=root, train=True, **options, **augment)
    train_plain = create_dataset(name, split="train", root=root, train=False, **options)
    test = create_dataset(name, split="test", root=root, train=False, **options)
    return train, train_plain, test


def build_teacher(
    spec: Mapping[str, Any], teacher_path: Path | None, num_classes: int
) -> nn.Module | None:
    """The frozen teacher, strictly loaded; ``None`` for vanilla training."""
    if spec["method"] == "vanilla":
        return None
    if teacher_path is None:
        raise ValueError(f"method {spec['method']!r} needs a teacher checkpoint")
    teacher = create_model(spec["teacher"]["arch"], num_classes=num_classes)
    load_checkpoint_into(teacher, teacher_path)
    require_finite_weights(teacher, "the teacher")
    return teacher.eval().requires_grad_(False)


def require_finite_weights(model: nn.Module, what: str) -> None:
    """A ValueError naming the first parameter or buffer with a NaN or an infinity: such
    weights would show up only as a "diverged" loss at the first step."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{what}'s weights hold NaN or infinite values ({name})")


# TrainConfig fields read from the spec's training block when present (else the defaults).
_TRAINING_FLOATS = (
    "lr_gamma", "momentum", "weight_decay", "min_lr", "warmup_lr", "eps", "label_smoothing",
    "mixup_alpha", "cutmix_alpha", "mixup_prob", "mixup_switch_prob",
)  # fmt: skip
_TRAINING_PLAIN = ("nesterov", "amp", "fast", "optimizer", "lr_schedule", "decay_bias_and_norm")


def train_config(spec: Mapping[str, Any], out_dir: Path) -> TrainConfig:
    """The spec's training block as a TrainConfig that checkpoints into and resumes from out_dir."""
    training = spec["training"]
    given = {k: float(training[k]) for k in _TRAINING_FLOATS if k in training}
    given |= {k: training[k] for k in _TRAINING_PLAIN if k in training}
    if "betas" in training:
        given["betas"] = tuple(float(b) for b in training["betas"])
    if training.get("grad_clip_norm") is not None:
        given["grad_clip_norm"] = float(training["grad_clip_norm"])
    # The soft targets' width (label smoothing, mixup); detection has no such targets and
    # its datasets are not in the classification catalog.
    classification = spec.get("task", "classification") == "classification"
    num_classes = num_classes_of(spec) if spec.get("dataset") and classification else None
    return TrainConfig(
        epochs=int(training["epochs"]),
        lr=float(training["lr"]),
        lr_milestones=tuple(int(m) for m in training.get("lr_milestones", ())),
        warmup_epochs=int(training.get("warmup_epochs", 0)),
        seed=int(training.get("seed", 0)),
        num_classes=num_classes,
        checkpoint_dir=out_dir,
        resume=True,
        **given,
    )


def student_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture keyword arguments of the student: timm's ``drop_path_rate`` when set."""
    rate = spec["training"].get("drop_path_rate")
    return {} if rate is None else {"drop_path_rate": float(rate)}


def job_loaders(spec: Mapping[str, Any], train_set, test_set, device: torch.device):
    """Device-resident loaders on the fast path when the dataset fits (CIFAR, mnist5k,
    synthetic; ``device_images`` refuses transforms it cannot reproduce), else the host
    ``DataLoader`` pair of :func:`build_loaders`."""
    training = spec["training"]
    batch_size, seed = int(training["batch_size"]), int(training.get("seed", 0))
    fast = fast_enabled(training.get("fast", "auto"), device, distributed=process_rank()[1] > 1)
    if fast:
        loaders = build_device_loaders(
            train_set, test_set, batch_size=batch_size, seed=seed, device=device
        )
        if loaders is not None:
            return loaders
    return build_loaders(
        train_set,
        test_set,
        batch_size=batch_size,
        num_workers=loader_workers(int(training.get("num_workers", 0))),
        seed=seed,
    )


def interrelation_options(spec: Mapping[str, Any], cost_matrix_path: Path | None) -> dict:
    """The spec's interrelation options, with the resolved file of an uploaded matrix."""
    options = dict(spec.get("interrelations") or {})
    options.pop("checkpoint_id", None)
    if cost_matrix_path is not None:
        options.update(source="file", path=str(cost_matrix_path))
    return options
