"""Datasets kept in device memory, with the paper's augmentation done per batch on the device.

CIFAR-10/100 (50k × 3×32×32 uint8 = 150 MB), mnist5k and the synthetic sets fit in any GPU's
memory, so the fast path keeps them there and never touches the host in an epoch:

* images stay **uint8** (CIFAR, digits) and are normalised per batch, ``(x/255 − mean)/std``
  exactly as ``ToTensor`` + ``Normalize``; the synthetic sets are stored as their floats;
* **augmentation per batch, on the device**: zero padding, a random crop and a horizontal
  flip (CIFAR: ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``; digits: a 32×32
  crop of the 36×36 zero-padded digit, no flip), all samples in one gather;
* **seeded**: the epoch order is the same permutation as :class:`~wkd_core.data.loaders.
  EpochSampler`'s (a CPU generator seeded from (seed, epoch)), the crops and flips come
  from a device generator seeded from (seed, epoch), so an epoch is reproducible and a
  resumed run sees the same batches. The draws differ from the host loader's (whose
  transforms use the global RNG): same distribution, other samples.

Other datasets (ImageNet folders) are not device-resident: :func:`device_images` returns
``None`` and the host ``DataLoader`` is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from wkd_core.data.loaders import mix_seed

__all__ = ["DeviceImages", "DeviceLoader", "augment", "build_device_loaders", "device_images"]


@dataclass
class DeviceImages:
    """A whole dataset as tensors, and how to turn a batch of it into network input.

    Attributes:
        images: (N, c, H, W) uint8 pixels, or float images already normalised.
        labels: (N,) int64.
        mean, std: (c,) normalisation of uint8 pixels scaled to [0, 1] (unused for floats).
        pad: zero padding added on every side before the crop.
        crop: output side; random crops take offsets in [0, H + 2·pad − crop], evaluation
            the centre offset.
        flip: random horizontal flips in training.
        channels: output channels (grey digits are repeated to 3).
    """

    images: Tensor
    labels: Tensor
    mean: Tensor
    std: Tensor
    pad: int = 0
    crop: int = 32
    flip: bool = False
    channels: int = 3

    def __len__(self) -> int:
        return self.labels.shape[0]


def augment(
    data: DeviceImages, index: Tensor, *, train: bool, generator: torch.Generator | None = None
) -> Tensor:
    """The network input for samples ``index``: crop (+ flip) + normalise, (B, channels, S, S).

    Training draws per sample an offset pair in [0, span] and a flip bit from ``generator``
    (on the images' device); evaluation takes the centre crop, unflipped.
    """
    x = data.images[index]
    if data.pad:
        x = F.pad(x, (data.pad,) * 4)  # zeros, like RandomCrop(padding=p) on the PIL image
    batch, channels, height, _ = x.shape
    span, device = height - data.crop, x.device
    if train and span > 0:
        offsets = torch.randint(0, span + 1, (batch, 2), generator=generator, device=device)
    else:
        offsets = torch.full((batch, 2), span // 2, device=device)
    steps = torch.arange(data.crop, device=device)
    rows = offsets[:, :1] + steps  # (B, S)
    cols = offsets[:, 1:] + steps
    if train and data.flip:
        flips = torch.rand(batch, generator=generator, device=device) < 0.5
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    out = x[
        torch.arange(batch, device=device)[:, None, None, None],
        torch.arange(channels, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # (B, c, S, S), one gather
    if out.dtype == torch.uint8:
        out = (out.float() / 255.0 - data.mean[:, None, None]) / data.std[:, None, None]
    if data.channels != channels:
        out = out.expand(-1, data.channels, -1, -1).contiguous()
    return out


class DeviceLoader:
    """Batches of a :class:`DeviceImages`: the ``DataLoader`` interface the trainer uses.

    Args:
        data: the device-resident dataset.
        batch_size: samples per batch (the last batch may be smaller).
        train: shuffle per epoch and augment; else the dataset order, centre crops.
        seed: base seed of the order and the augmentation draws.
    """

    def __init__(self, data: DeviceImages, *, batch_size: int, train: bool, seed: int = 0):
        self.data, self.batch_size, self.train, self.seed = data, batch_size, train, seed
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, device = len(self.data), self.data.labels.device
        generator = None
        if self.train:  # EpochSampler's permutation, then device-side augmentation draws
            order_gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=order_gen).to(device)
            generator = torch.Generator(device=device)
            generator.manual_seed(mix_seed(self.seed, self.epoch, 3))
        else:
            order = torch.arange(n, device=device)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield (
                augment(self.data, index, train=self.train, generator=generator),
                (self.data.labels[index]),
            )


def _cifar_steps() -> tuple[type, ...]:
    from torchvision import transforms as T

    return (T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize)


def _transforms_of(dataset: Dataset) -> Sequence:
    transform = getattr(dataset, "transform", None)
    return getattr(transform, "transforms", ()) if transform is not None else ()


def device_images(dataset: Dataset, *, device: torch.device | str) -> DeviceImages | None:
    """The device-resident form of a CIFAR, mnist5k or synthetic dataset (or a Subset of one).

    The augmentation follows the dataset's own: CIFAR reads padding, flip and normalisation
    from its torchvision transform; ``None`` for any other dataset, and for a CIFAR whose
    transform has other steps (``cifar100_224``).
    """
    from torchvision import datasets
    from torchvision import transforms as T

    from wkd_core.data import mnist5k, synthetic

    device = torch.device(device)
    index = None
    if isinstance(dataset, Subset):
        index, dataset = torch.as_tensor(list(dataset.indices)), dataset.dataset
    if isinstance(dataset, datasets.CIFAR10):  # CIFAR100 is a subclass
        steps = _transforms_of(dataset)
        norm = next((t for t in steps if isinstance(t, T.Normalize)), None)
        crop = next((t for t in steps if isinstance(t, T.RandomCrop)), None)
        # Only the paper's 32×32 pipeline is reproduced on the device: anything else
        # (cifar100_224's upsampling crops, RandAugment, random erasing) stays on the host.
        if norm is None or any(not isinstance(t, _cifar_steps()) for t in steps):
            return None
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
        pad = int(crop.padding) if crop is not None and crop.padding else 0
        flip = any(isinstance(t, T.RandomHorizontalFlip) for t in steps)
        mean, std, size = torch.tensor(norm.mean), torch.tensor(norm.std), images.shape[-1]
        extra = {"pad": pad, "crop": size, "flip": flip, "channels": 3}
    elif isinstance(dataset, mnist5k.TensorDigits):
        images, labels = dataset.images, dataset.labels  # (N, 1, 36, 36): padded by PAD
        mean, std = torch.tensor([mnist5k.MNIST5K_MEAN]), torch.tensor([mnist5k.MNIST5K_STD])
        extra = {"pad": 0, "crop": 32, "flip": False, "channels": 3}
    elif isinstance(dataset, synthetic.SyntheticImages):
        items = [dataset[i] for i in (range(len(dataset)) if index is None else index.tolist())]
        images = torch.stack([x for x, _ in items])
        labels = torch.tensor([y for _, y in items], dtype=torch.int64)
        index = None  # already taken
        mean, std = torch.zeros(3), torch.ones(3)
        extra = {"pad": 0, "crop": images.shape[-1], "flip": False, "channels": 3}
    else:
        return None
    if index is not None:
        images, labels = images[index], labels[index]
    return DeviceImages(
        images.to(device), labels.to(device), mean.to(device), std.to(device), **extra
    )


def build_device_loaders(
    train_set: Dataset,
    val_set: Dataset,
    *,
    batch_size: int,
    seed: int = 0,
    device: torch.device | str,
    eval_batch_size: int = 1024,
) -> tuple[DeviceLoader, DeviceLoader] | None:
    """Device-resident (train, eval) loaders, or ``None`` when a dataset cannot be held.

    ``val_set`` must be the evaluation form (``train=False``); evaluation batches are large
    (``eval_batch_size``, default 1024): in eval mode the result does not depend on the batch.
    """
    train = device_images(train_set, device=device)
    val = device_images(val_set, device=device)
    if train is None or val is None:
        return None
    return (
        DeviceLoader(train, batch_size=batch_size, train=True, seed=seed),
        DeviceLoader(val, batch_size=eval_batch_size, train=False, seed=seed),
    )
