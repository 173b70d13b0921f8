"""Benchmark: a CIFAR-100-sized epoch on the fast path, against the time of its steps.

Data: 50,000 training and 10,000 test images of 3×32×32 with 100 classes, random uint8
pixels in torchvision CIFAR100 objects (the real files are not on a GPU host; the pixel
values change no timing), the paper's transforms (crop with 4-pixel padding, flip,
normalisation). Model: resnet32x4 → resnet8x4 (random teacher), batch 64, the
``cifar100/{kd,wkd_l}`` presets (WKD-L with a random CKA-like distance).

For KD and WKD-L it runs ``fit`` with the fast path (device-resident data, GPU
augmentation, captured step, evaluation of the 10k test images after each epoch) for
``--epochs`` epochs and reports the last epoch's wall time (the first includes the capture
and cuDNN autotuning); then times the same captured step alone on one fixed batch. Printed:
epoch seconds, steps seconds (782 × the step median), their ratio (target ≤ 1.2: data and
evaluation never hold the GPU back) and 240 × the epoch (target ≤ 20 min for WKD-L on an
H100). With ``--eager-images N`` it also times one eager epoch (host ``DataLoader``,
``num_workers`` 4) on the first N training images, scaled to 50k, for comparison.

Usage: ``python bench/epoch.py [--device cuda] [--quick] [--json PATH] [--epochs 2]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import base_parser, environment, format_table, write_json
from bench.fast_step import make_fast_step
from bench.train_step import PAIRS, method_setup
from wkd_core.data import build_loaders
from wkd_core.data.device import build_device_loaders
from wkd_core.data.transforms import CIFAR100_MEAN, CIFAR100_STD, cifar_transform
from wkd_core.distillers import create_distiller
from wkd_core.models import create_model
from wkd_core.train import TrainConfig, fit

TRAIN, TEST, BATCH, PAPER_EPOCHS = 50_000, 10_000, 64, 240
RATIO_TARGET, PAPER_RUN_TARGET_MIN = 1.2, 20.0


def fake_cifar100(n: int, *, train: bool, seed: int):
    """A torchvision CIFAR100 over random pixels, with the paper's transforms."""
    from torchvision import datasets

    rng = np.random.default_rng(seed)
    ds = datasets.CIFAR100.__new__(datasets.CIFAR100)
    ds.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    ds.targets = rng.integers(0, 100, size=n).tolist()
    ds.transform = cifar_transform(train=train, mean=CIFAR100_MEAN, std=CIFAR100_STD)
    ds.target_transform = None
    return ds


def distiller_for(method: str, teacher, device):
    params, recipe = method_setup(PAIRS[0], method, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    student = create_model("resnet8x4", num_classes=100)
    return create_distiller(method, student=student, teacher=teacher, **params), recipe


def epoch_seconds(method, teacher, loaders, device, *, epochs: int, fast: bool) -> list[float]:
    distiller, recipe = distiller_for(method, teacher, device)
    config = TrainConfig(epochs=epochs, lr=recipe.lr, lr_milestones=(), fast=fast)
    result = fit(distiller, *loaders, config=config, device=device)
    return [m.seconds for m in result.history]


def step_seconds(method, teacher, device, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, 32, 32, generator=gen).to(device)
    targets = torch.randint(100, (BATCH,), generator=gen).to(device)
    student_init = create_model("resnet8x4", num_classes=100)
    step = make_fast_step(PAIRS[0], method, teacher, student_init, device, gen, (images, targets))
    for _ in range(5):  # warm-up and capture
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0], quick_help="10k training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--eager-images", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    n_train = 10_000 if args.quick else TRAIN
    train_set = fake_cifar100(n_train, train=True, seed=0)
    test_set = fake_cifar100(TEST, train=False, seed=1)
    loaders = build_device_loaders(train_set, test_set, batch_size=BATCH, device=device)
    assert loaders is not None
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=100).to(device)
    steps = -(-n_train // BATCH)
    rows: dict[str, Any] = {}
    for method in ("kd", "wkd_l"):
        seconds = epoch_seconds(method, teacher, loaders, device, epochs=args.epochs, fast=True)
        step = step_seconds(method, teacher, device, repeats=50)
        epoch = seconds[-1] * TRAIN / n_train  # scaled to 50k when --quick
        rows[method] = {"epochs_s": seconds, "epoch_s": epoch, "step_ms": 1e3 * step,
                        "steps_s": step * -(-TRAIN // BATCH),
                        "ratio": seconds[-1] / (step * steps),
                        "paper_run_min": PAPER_EPOCHS * epoch / 60}  # fmt: skip
        if args.eager_images:
            sub = Subset(train_set, range(args.eager_images))
            host = build_loaders(sub, Subset(test_set, range(2000)), batch_size=BATCH,
                                 num_workers=4 if device.type == "cuda" else 0)  # fmt: skip
            eager = epoch_seconds(method, teacher, host, device, epochs=1, fast=False)[0]
            rows[method]["eager_epoch_s_scaled"] = eager * TRAIN / args.eager_images
    targets = {"ratio": RATIO_TARGET, "paper_run_min": PAPER_RUN_TARGET_MIN}
    report = {"environment": environment(device), "train_images": n_train, "methods": rows,
              "targets": targets}  # fmt: skip
    print_report(report)
    write_json(args.json, report)


def print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(f"device={env['device']} {env.get('gpu', '')} torch={env['torch']}; "
          f"{report['train_images']} training images (scaled to 50k), 10k test, "
          "batch 64")  # fmt: skip
    rows = [
        [m, f"{r['epoch_s']:.2f}", f"{r['step_ms']:.2f}", f"{r['steps_s']:.2f}",
         f"{r['ratio']:.2f}", f"{r['paper_run_min']:.1f}",
         f"{r['eager_epoch_s_scaled']:.1f}" if "eager_epoch_s_scaled" in r else "-"]
        for m, r in report["methods"].items()
    ]  # fmt: skip
    print(format_table(
        ["method", "epoch s", "step ms", "steps s", "epoch/steps", "240 ep. min", "eager epoch s"],
        rows,
    ))  # fmt: skip
    print(f"targets: epoch/steps <= {RATIO_TARGET}; 240 epochs <= {PAPER_RUN_TARGET_MIN} min")


if __name__ == "__main__":
    main()
