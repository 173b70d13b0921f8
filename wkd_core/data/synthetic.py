"""Random tensors of CIFAR or ImageNet shape, for benchmarks and smoke tests.

Sample ``i`` is drawn from its own generator seeded from (seed, split, i), so a dataset is
the same whatever the order of access, the number of workers or the global RNG state.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from wkd_core.data.common import DatasetInfo, check_split, register_dataset
from wkd_core.data.transforms import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD

SHAPES = {
    "cifar": DatasetInfo(num_classes=100, image_size=32, mean=CIFAR100_MEAN, std=CIFAR100_STD),
    "imagenet": DatasetInfo(num_classes=1000, image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


def _synthetic_info(*, shape: str = "cifar", num_classes: int | None = None) -> DatasetInfo:
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    info = SHAPES[shape]
    if num_classes is None:
        return info
    _check_int("num_classes", num_classes)
    return DatasetInfo(num_classes, info.image_size, info.mean, info.std)


def _check_int(name: str, value: object) -> None:
    """An int >= 1 (checked when the dataset is built, not at its first item)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


class SyntheticImages(Dataset):
    """``length`` standard-normal (3, S, S) images with uniform labels in [0, num_classes)."""

    def __init__(self, *, length: int, num_classes: int, image_size: int, seed: int) -> None:
        self.length = length
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        # SeedSequence mixes (seed, index) so that neighbouring seeds give unrelated samples.
        state = np.random.SeedSequence([self.seed, index]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(state) >> 1)
        label = int(torch.randint(self.num_classes, (), generator=g))
        s = self.image_size
        return torch.randn(3, s, s, generator=g), label


@register_dataset("synthetic", _synthetic_info)
def synthetic(
    *,
    split: str,
    root: object = None,
    train: bool = False,
    download: bool = False,
    shape: str = "cifar",
    length: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> SyntheticImages:
    """Random data of CIFAR-100 (3×32×32, 100 classes) or ImageNet (3×224×224, 1000) shape.

    Args:
        split: ``train`` or ``test``/``val``; the two splits hold different samples.
        root, train, download: ignored (no files, no augmentation).
        shape: ``cifar`` or ``imagenet``.
        length: number of samples, >= 1 (default 10,000 for train, 2,000 for test).
        num_classes: overrides the shape's class count (an int >= 1).
        seed: base seed; the same (seed, split) always gives the same tensors.
    """
    info = _synthetic_info(shape=shape, num_classes=num_classes)
    is_train = check_split(split) == "train"
    if length is None:
        length = 10_000 if is_train else 2_000
    _check_int("length", length)
    assert info.num_classes is not None
    return SyntheticImages(
        length=length,
        num_classes=info.num_classes,
        image_size=info.image_size,
        seed=2 * seed + (0 if is_train else 1),
    )
