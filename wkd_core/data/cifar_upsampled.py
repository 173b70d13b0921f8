"""CIFAR-100 at 224×224: the data of OFA-KD's CNN↔Transformer setting.

OFA-KD (github.com/Hao840/OFAKD, ``train.py``) reads torchvision's CIFAR-100 and passes it
through timm's ImageNet loader at the model's input size with bilinear interpolation and the
CIFAR-100 statistics: training RandomResizedCrop(224) + horizontal flip (its CNN-student
config sets no colour jitter; the Transformer-student config's RandAugment, mixup, cutmix and
random erasing are not reproduced here), evaluation Resize(256) + CenterCrop(224) of the
32×32 image. Same local folder as ``cifar100`` (torchvision's format; nothing downloaded).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets
from torchvision import transforms as T

from wkd_core.data.cifar import CIFAR100_INFO, _cifar
from wkd_core.data.common import DatasetInfo, register_dataset

IMAGE_SIZE = 224
CIFAR100_224_INFO = DatasetInfo(
    num_classes=100, image_size=IMAGE_SIZE, mean=CIFAR100_INFO.mean, std=CIFAR100_INFO.std
)


def upsampling_transform(*, train: bool, image_size: int = IMAGE_SIZE) -> T.Compose:
    """PIL 32×32 image → normalised (3, S, S) tensor, bilinear upsampling (OFA-KD's loader)."""
    bilinear = T.InterpolationMode.BILINEAR
    if train:
        steps = [T.RandomResizedCrop(image_size, interpolation=bilinear), T.RandomHorizontalFlip()]
    else:
        resize = round(image_size * 256 / 224)
        steps = [T.Resize(resize, interpolation=bilinear), T.CenterCrop(image_size)]
    info = CIFAR100_224_INFO
    return T.Compose([*steps, T.ToTensor(), T.Normalize(info.mean, info.std)])


@register_dataset("cifar100_224", CIFAR100_224_INFO)
def cifar100_224(
    *, split: str, root: str | Path | None = None, train: bool = False, download: bool = False
) -> Dataset:
    """CIFAR-100 upsampled to 224×224 (50,000 train / 10,000 test, 100 classes)."""
    dataset = _cifar(
        datasets.CIFAR100, CIFAR100_INFO, split=split, root=root, train=train, download=download
    )
    dataset.transform = upsampling_transform(train=train)
    return dataset
