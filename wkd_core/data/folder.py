"""Image-folder datasets: any ``root/<split>/<class>/<image>`` tree, and ImageNet.

ImageNet uses the same layout (``root/train/n01440764/…``, ``root/val/n01440764/…``, the
usual re-arranged validation set). ``split="test"`` reads ``root/test`` when it exists and
``root/val`` otherwise.
"""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets

from wkd_core.data.common import DatasetInfo, check_split, register_dataset
from wkd_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Stats, imagenet_transform

IMAGENET_INFO = DatasetInfo(num_classes=1000, image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _imagefolder_info(
    *, image_size: int = 224, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD
) -> DatasetInfo:
    # The class count is the number of sub-folders: only the data can tell.
    return DatasetInfo(num_classes=None, image_size=image_size, mean=mean, std=std)


def _split_dir(root: str | Path | None, split: str, label: str) -> Path:
    check_split(split)
    if root is None:
        raise FileNotFoundError(f"{label} needs a data root (root=None was given)")
    root = Path(root).expanduser()
    candidates = [root / split] + ([root / "val"] if split == "test" else [])
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"{label} split {split!r} not found: expected the folder {candidates[0]} "
        "with one sub-folder per class"
    )


@register_dataset("imagefolder", _imagefolder_info)
def imagefolder(
    *,
    split: str,
    root: str | Path | None = None,
    train: bool = False,
    download: bool = False,
    image_size: int = 224,
    mean: Stats = IMAGENET_MEAN,
    std: Stats = IMAGENET_STD,
) -> datasets.ImageFolder:
    """An ImageFolder tree with ImageNet-style transforms at ``image_size``.

    ``dataset.classes`` lists the class folders (sorted); their count is the model's
    ``num_classes``.
    """
    if download:
        raise ValueError("imagefolder cannot be downloaded; point root at a local tree")
    transform = imagenet_transform(train=train, image_size=image_size, mean=mean, std=std)
    return datasets.ImageFolder(str(_split_dir(root, split, "imagefolder")), transform=transform)


@register_dataset("imagenet", IMAGENET_INFO)
def imagenet(
    *, split: str, root: str | Path | None = None, train: bool = False, download: bool = False
) -> datasets.ImageFolder:
    """ILSVRC-2012 in ImageFolder layout, paper transforms (224×224)."""
    if download:
        raise ValueError("ImageNet cannot be downloaded; point root at a local copy")
    transform = imagenet_transform(train=train)
    return datasets.ImageFolder(str(_split_dir(root, split, "ImageNet")), transform=transform)
