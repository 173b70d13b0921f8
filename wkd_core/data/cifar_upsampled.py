"""CIFAR-100 at 224×224: the data of OFA-KD's CNN↔Transformer setting.

OFA-KD (github.com/Hao840/OFAKD, ``train.py``) reads torchvision's CIFAR-100 and passes it
through timm's ImageNet loader at the model's input size with the CIFAR-100 statistics:
training RandomResizedCrop(224, scale (0.08, 1)) + horizontal flip, evaluation Resize(256) +
CenterCrop(224) of the 32×32 image. Its Transformer/MLP-student config
(``configs/cifar/vit_mlp.yaml``) adds timm's RandAugment ``rand-m9-mstd0.5-inc1`` after the
flip and random erasing (probability 0.25, per-pixel normal noise) after normalisation:
``randaugment`` and ``random_erasing`` here, built with timm's own transforms (timm is the
setting's model library) with the hyper-parameters timm's loader gives them (translate
45 % of the side, fill with the mean pixel). Mixup and cutmix act on batches
(``wkd_core.train.mixing``). Differences left: bilinear resizing throughout, where OFA-KD's
loader picks bilinear or bicubic at random in training and the model's default interpolation
in evaluation (since its commit 1243016); the colour jitter of ``vit_mlp.yaml`` is unused by
timm when RandAugment is on, so it is not reproduced either.
Same local folder as ``cifar100`` (torchvision's format; nothing downloaded).
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


def upsampling_transform(
    *,
    train: bool,
    image_size: int = IMAGE_SIZE,
    randaugment: str | None = None,
    random_erasing: float = 0.0,
) -> T.Compose:
    """PIL 32×32 image → normalised (3, S, S) tensor, bilinear upsampling (OFA-KD's loader).

    Args:
        train: RandomResizedCrop + flip (+ the options below), else Resize + CenterCrop.
        image_size: S.
        randaugment: a timm RandAugment policy (``"rand-m9-mstd0.5-inc1"``), training only.
        random_erasing: probability of timm's RandomErasing (``mode="pixel"``), training only.
    """
    bilinear = T.InterpolationMode.BILINEAR
    info = CIFAR100_224_INFO
    if not train:
        resize = round(image_size * 256 / 224)
        steps = [T.Resize(resize, interpolation=bilinear), T.CenterCrop(image_size)]
        return T.Compose([*steps, T.ToTensor(), T.Normalize(info.mean, info.std)])
    steps = [T.RandomResizedCrop(image_size, interpolation=bilinear), T.RandomHorizontalFlip()]
    if randaugment:
        steps.append(timm_randaugment(randaugment, image_size=image_size, mean=info.mean))
    steps += [T.ToTensor(), T.Normalize(info.mean, info.std)]
    if random_erasing > 0:
        from timm.data.random_erasing import RandomErasing

        steps.append(RandomErasing(random_erasing, mode="pixel", max_count=1, device="cpu"))
    return T.Compose(steps)


def timm_randaugment(policy: str, *, image_size: int, mean: tuple[float, ...]):
    """timm's RandAugment for ``policy`` with its ImageNet loader's hyper-parameters."""
    from timm.data.auto_augment import rand_augment_transform  # lazily, like the models

    hparams = {
        "translate_const": int(image_size * 0.45),
        "img_mean": tuple(min(255, round(255 * m)) for m in mean),
    }
    return rand_augment_transform(policy, hparams)


@register_dataset("cifar100_224", CIFAR100_224_INFO)
def cifar100_224(
    *,
    split: str,
    root: str | Path | None = None,
    train: bool = False,
    download: bool = False,
    randaugment: str | None = None,
    random_erasing: float = 0.0,
) -> Dataset:
    """CIFAR-100 upsampled to 224×224 (50,000 train / 10,000 test, 100 classes).

    ``randaugment`` and ``random_erasing`` apply to the training transform only.
    """
    dataset = _cifar(
        datasets.CIFAR100, CIFAR100_INFO, split=split, root=root, train=train, download=download
    )
    dataset.transform = upsampling_transform(
        train=train, randaugment=randaugment, random_erasing=random_erasing
    )
    return dataset
