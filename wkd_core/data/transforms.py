"""The paper's image transforms and normalisation statistics.

References:
    CIFAR: RepDistiller / mdistiller ``get_cifar100_dataloaders`` (RandomCrop 32 with padding 4,
    horizontal flip, CIFAR-100 mean/std), reused by WKD (wkd-method.md §4).
    ImageNet: torchvision's reference recipe, as in mdistiller's ImageNet loader
    (RandomResizedCrop 224 + flip for training, Resize 256 + CenterCrop 224 for evaluation).
"""

from __future__ import annotations

from torchvision import transforms as T

Stats = tuple[float, float, float]

CIFAR100_MEAN: Stats = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: Stats = (0.2675, 0.2565, 0.2761)
# Per-pixel statistics of the CIFAR-10 training set (not the often-copied (0.2023, 0.1994,
# 0.2010), which are standard deviations of per-image means).
CIFAR10_MEAN: Stats = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Stats = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)


def cifar_transform(*, train: bool, mean: Stats, std: Stats) -> T.Compose:
    """PIL 32×32 image → normalised (3, 32, 32) tensor; ``train`` adds crop + flip."""
    steps: list = []
    if train:
        steps += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def imagenet_transform(
    *, train: bool, image_size: int = 224, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD
) -> T.Compose:
    """PIL image of any size → normalised (3, S, S) tensor, S = ``image_size``.

    Training: RandomResizedCrop(S) + horizontal flip. Evaluation: Resize(S·256/224) +
    CenterCrop(S), i.e. Resize(256) + CenterCrop(224) at the default size.
    """
    if train:
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
