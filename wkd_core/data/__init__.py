"""Datasets (cifar10, cifar100, imagefolder, imagenet, mnist5k, synthetic) and loaders.

>>> train_set = create_dataset("mnist5k", split="train", train_subset_per_class=50)
>>> dataset_info("cifar100").num_classes
100
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from wkd_core.data import cifar, folder, mnist5k, synthetic  # noqa: F401  (registration)
from wkd_core.data.common import DatasetInfo, dataset_info
from wkd_core.data.loaders import EpochSampler, build_loaders, mix_seed, set_loader_epoch
from wkd_core.registry import DATASETS

__all__ = [
    "DatasetInfo",
    "EpochSampler",
    "build_loaders",
    "create_dataset",
    "dataset_info",
    "list_datasets",
    "mix_seed",
    "set_loader_epoch",
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
    return DATASETS.create(name, split=split, root=root, train=train, download=download, **kwargs)


def list_datasets() -> list[str]:
    """The registered dataset names."""
    return DATASETS.names()
