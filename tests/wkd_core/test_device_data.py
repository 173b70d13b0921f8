"""Device-resident datasets and their per-batch augmentation, on CPU tensors.

Reference: torchvision's own transforms (pad, crop, flip, ToTensor, Normalize) applied per
image with the offsets and flips the batch augmentation drew from the same seeded generator.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import datasets

from wkd_core.data import create_dataset, mix_seed
from wkd_core.data.device import DeviceLoader, augment, build_device_loaders, device_images
from wkd_core.data.loaders import EpochSampler, set_loader_epoch
from wkd_core.data.transforms import CIFAR100_MEAN, CIFAR100_STD, cifar_transform


def fake_cifar(n: int, *, train: bool, seed: int = 0) -> datasets.CIFAR100:
    """A torchvision CIFAR100 object over random pixels (no files needed)."""
    rng = np.random.default_rng(seed)
    ds = datasets.CIFAR100.__new__(datasets.CIFAR100)
    ds.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    ds.targets = rng.integers(0, 100, size=n).tolist()
    ds.transform = cifar_transform(train=train, mean=CIFAR100_MEAN, std=CIFAR100_STD)
    ds.target_transform = None
    return ds


def reference_cifar(pixels: np.ndarray, top: int, left: int, flip: bool) -> torch.Tensor:
    img = TF.pad(Image.fromarray(pixels), 4)
    img = TF.crop(img, top, left, 32, 32)
    if flip:
        img = TF.hflip(img)
    return TF.normalize(TF.to_tensor(img), CIFAR100_MEAN, CIFAR100_STD)


def test_cifar_evaluation_batches_equal_the_dataset_items():
    ds = fake_cifar(6, train=False)
    data = device_images(ds, device="cpu")
    assert data is not None and data.images.dtype == torch.uint8 and data.pad == 0
    got = augment(data, torch.arange(6), train=False)
    ref = torch.stack([ds[i][0] for i in range(6)])
    assert torch.allclose(got, ref, atol=1e-6)


def test_cifar_training_augmentation_is_torchvision_crop_and_flip():
    ds = fake_cifar(16, train=True)
    data = device_images(ds, device="cpu")
    assert (data.pad, data.crop, data.flip) == (4, 32, True)
    index = torch.tensor([3, 0, 15, 7, 7, 9, 1, 2])
    got = augment(data, index, train=True, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # the same draws, in the same order
    offsets = torch.randint(0, 9, (8, 2), generator=gen)
    flips = torch.rand(8, generator=gen) < 0.5
    assert 0 < int(flips.sum()) < 8  # both kinds occur in this draw
    for k, i in enumerate(index.tolist()):
        top, left = offsets[k].tolist()
        ref = reference_cifar(ds.data[i], top, left, bool(flips[k]))
        assert torch.allclose(got[k], ref, atol=1e-6), k
    assert int(data.labels[3]) == ds.targets[3]


def test_mnist5k_on_device_equals_its_items():
    train = create_dataset("mnist5k", split="train", train=True, train_subset_per_class=5)
    test = create_dataset("mnist5k", split="test", train=False)
    data = device_images(test, device="cpu")
    got = augment(data, torch.arange(10), train=False)
    ref = torch.stack([test[i][0] for i in range(10)])
    assert got.shape == (10, 3, 32, 32) and torch.allclose(got, ref, atol=1e-6)
    data = device_images(train, device="cpu")
    got = augment(data, torch.arange(4), train=True, generator=torch.Generator().manual_seed(1))
    offsets = torch.randint(0, 5, (4, 2), generator=torch.Generator().manual_seed(1))
    for k in range(4):  # a 32×32 window of the 36×36 padded digit, no flip
        top, left = offsets[k].tolist()
        window = train.images[k, :, top : top + 32, left : left + 32].float()
        ref = ((window / 255.0 - data.mean[0]) / data.std[0]).expand(3, -1, -1)
        assert torch.allclose(got[k], ref, atol=1e-6)


def test_synthetic_and_subsets():
    ds = create_dataset("synthetic", split="train", length=20, seed=3)
    sub = torch.utils.data.Subset(ds, [4, 2, 9])
    data = device_images(sub, device="cpu")
    assert len(data) == 3
    got = augment(data, torch.arange(3), train=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, torch.stack([ds[i][0] for i in (4, 2, 9)]))  # no augmentation
    assert data.labels.tolist() == [ds[i][1] for i in (4, 2, 9)]
    assert device_images(torch.utils.data.TensorDataset(torch.zeros(2, 3)), device="cpu") is None


def test_loader_order_is_the_epoch_samplers_and_draws_are_seeded():
    ds = fake_cifar(50, train=True)
    loader = DeviceLoader(device_images(ds, device="cpu"), batch_size=16, train=True, seed=7)
    assert len(loader) == 4
    set_loader_epoch(loader, 3, seed=7)
    first = [(x.clone(), y.clone()) for x, y in loader]
    again = list(loader)
    assert [b[1].shape[0] for b in first] == [16, 16, 16, 2]
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    sampler = EpochSampler(ds, seed=7)
    sampler.set_epoch(3)
    order = list(sampler)
    assert torch.cat([y for _, y in first]).tolist() == [ds.targets[i] for i in order]
    set_loader_epoch(loader, 4, seed=7)
    assert not torch.equal(next(iter(loader))[0], first[0][0])
    assert mix_seed(7, 3) != mix_seed(7, 4)


def test_build_device_loaders():
    train, val = fake_cifar(40, train=True), fake_cifar(10, train=False)
    loaders = build_device_loaders(train, val, batch_size=8, device="cpu", eval_batch_size=64)
    assert loaders is not None
    train_loader, val_loader = loaders
    assert (len(train_loader), len(val_loader)) == (5, 1)
    x, y = next(iter(val_loader))
    assert x.shape == (10, 3, 32, 32) and torch.equal(y, torch.tensor(val.targets))
    folder_like = torch.utils.data.TensorDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2))
    assert build_device_loaders(folder_like, val, batch_size=8, device="cpu") is None
