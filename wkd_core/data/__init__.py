"""Datasets (cifar10, cifar100, cifar100_224, imagefolder, imagenet, mnist5k, synthetic), loaders.

>>> train_set = create_dataset("mnist5k", split="train", train_subset_per_class=50)
>>> dataset_info("cifar100").num_classes
100
"""

from __future__ import annotations

import inspect
import numbers
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from wkd_core.data import (  # noqa: F401  (registration)
    cifar,
    cifar_upsampled,
    folder,
    mnist5k,
    synthetic,
)
from wkd_core.data.common import DatasetInfo, dataset_info, spec_dataset_info, takes_option
from wkd_core.data.loaders import EpochSampler, build_loaders, mix_seed, set_loader_epoch
from wkd_core.registry import DATASETS

__all__ = [
    "DatasetInfo",
    "EpochSampler",
    "build_loaders",
    "create_dataset",
    "dataset_info",
    "first_per_class",
    "list_datasets",
    "mix_seed",
    "set_loader_epoch",
    "spec_dataset_info",
    "takes_option",
]


def create_dataset(
    name: str,
    *,
    split: str,
    root: str | Path | None = None,
    train: bool | None = None,
    download: bool = False,
    **kwargs: Any,
) -> Dataset:
    """Build a registered dataset yielding ``(image (3, H, W) float tensor, label int)``.

    Args:
        name: ``cifar10``, ``cifar100``, ``imagefolder``, ``imagenet``, ``mnist5k`` or
            ``synthetic``.
        split: ``train``, ``val`` or ``test``.
        root: local data folder (CIFAR: torchvision's format; folders: ``root/<split>/``).
        train: use the augmenting transform; defaults to ``split == "train"``.
        download: allow torchvision to download CIFAR (never done implicitly).
        **kwargs: dataset options (``train_subset_per_class`` for mnist5k, ``shape``,
            ``length`` and ``seed`` for synthetic, ``image_size`` for imagefolder).
    """
    if train is None:
        train = split == "train"
    factory = DATASETS.get(name)
    per_class = None
    if "train_subset_per_class" not in inspect.signature(factory).parameters:
        per_class = kwargs.pop("train_subset_per_class", None)
    dataset = factory(split=split, root=root, train=train, download=download, **kwargs)
    if per_class is not None and split == "train":
        dataset = first_per_class(dataset, per_class)
    return dataset


def first_per_class(dataset: Dataset, per_class: int) -> Subset:
    """The first ``per_class`` samples of every class, in dataset order (nested subsets).

    The reduced-training-set option (``train_subset_per_class``) of the datasets that do not
    implement it themselves; they must expose ``targets`` (torchvision's CIFAR and
    ImageFolder do).
    """
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral):
        raise TypeError(
            f"train_subset_per_class must be an int, got {type(per_class).__name__} {per_class!r}"
        )
    if per_class < 1:
        raise ValueError(f"train_subset_per_class must be >= 1, got {per_class}")
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError(f"{type(dataset).__name__} has no targets: cannot take a subset")
    taken: dict[int, int] = {}
    keep = []
    for index, label in enumerate(int(t) for t in targets):
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            keep.append(index)
    return Subset(dataset, keep)


def list_datasets() -> list[str]:
    """The registered dataset names."""
    return DATASETS.names()
