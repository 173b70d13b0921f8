"""CIFAR-10 and CIFAR-100 from a local folder in torchvision's format.

Nothing is downloaded unless ``download=True`` is passed explicitly; a missing folder is a
``FileNotFoundError`` naming the path torchvision expects.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets

from wkd_core.data.common import DatasetInfo, check_split, register_dataset
from wkd_core.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar_transform,
)

CIFAR10_INFO = DatasetInfo(num_classes=10, image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)
CIFAR100_INFO = DatasetInfo(num_classes=100, image_size=32, mean=CIFAR100_MEAN, std=CIFAR100_STD)


def _cifar(
    cls: type[datasets.CIFAR10],
    info: DatasetInfo,
    *,
    split: str,
    root: str | Path | None,
    train: bool,
    download: bool,
) -> Dataset:
    check_split(split)
    label = "CIFAR-100" if cls is datasets.CIFAR100 else "CIFAR-10"
    if root is None:
        raise FileNotFoundError(f"{label} needs a data root (root=None was given)")
    expected = Path(root).expanduser() / cls.base_folder
    if not download and not expected.is_dir():
        raise FileNotFoundError(
            f"{label} not found: expected the torchvision folder {expected} "
            "(to fetch it: `wkd ... --download`, WKD_DOWNLOAD_DATASETS=true for the service, "
            "or download=True from Python)"
        )
    transform = cifar_transform(train=train, mean=info.mean, std=info.std)
    return cls(
        str(Path(root).expanduser()),
        train=split == "train",
        transform=transform,
        download=download,
    )


@register_dataset("cifar10", CIFAR10_INFO)
def cifar10(
    *, split: str, root: str | Path | None = None, train: bool = False, download: bool = False
) -> Dataset:
    """CIFAR-10 (50,000 train / 10,000 test, 10 classes), paper transforms."""
    return _cifar(
        datasets.CIFAR10, CIFAR10_INFO, split=split, root=root, train=train, download=download
    )


@register_dataset("cifar100", CIFAR100_INFO)
def cifar100(
    *, split: str, root: str | Path | None = None, train: bool = False, download: bool = False
) -> Dataset:
    """CIFAR-100 (50,000 train / 10,000 test, 100 classes), paper transforms."""
    return _cifar(
        datasets.CIFAR100, CIFAR100_INFO, split=split, root=root, train=train, download=download
    )
