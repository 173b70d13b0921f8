"""Benchmark: jobs per hour with K jobs at once on one device (K = 1, 2, 4).

A worker runs each job in a fresh subprocess (``worker/supervisor.py``), so K jobs at once
are K processes sharing the GPU. Each job here is a small CIFAR job as the service runs it:
a fresh Python process that builds a resnet32x4 → resnet8x4 WKD-L distiller (random teacher
and distance), keeps 10,000 CIFAR-shaped uint8 images and 2,000 test images on the device
and trains ``--epochs`` epochs with ``fit`` on the fast path (captured step, evaluation
after each epoch). For each K the K processes start together; the figure is
``K · 3600 / wall seconds`` until the last one ends (process start, CUDA initialisation and
graph capture included, as in the service). The best K is the worker's default
``WKD_JOBS_PER_GPU`` for CIFAR-sized jobs.

Usage: ``python bench/jobs_per_gpu.py [--device cuda] [--ks 1,2,4] [--epochs 3] [--json P]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(device: str, epochs: int, train_images: int) -> None:
    import torch

    from bench.epoch import distiller_for, fake_cifar100
    from wkd_core.data.device import build_device_loaders
    from wkd_core.models import create_model
    from wkd_core.train import TrainConfig, fit

    dev = torch.device(device)
    train = fake_cifar100(train_images, train=True, seed=0)
    test = fake_cifar100(2000, train=False, seed=1)
    loaders = build_device_loaders(train, test, batch_size=64, device=dev)
    assert loaders is not None
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=100)
    distiller, recipe = distiller_for("wkd_l", teacher, dev)
    config = TrainConfig(epochs=epochs, lr=recipe.lr, lr_milestones=(), fast="auto")
    fit(distiller, *loaders, config=config, device=dev)


def run_k(k: int, device: str, epochs: int, train_images: int) -> float:
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    args = [sys.executable, __file__, "--child", device, str(epochs), str(train_images)]
    start = time.perf_counter()
    procs = [subprocess.Popen(args, env=env) for _ in range(k)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"a job failed with K={k}: exit codes {codes}")
    return wall


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv[1], int(argv[2]), int(argv[3]))
        return
    from bench._common import base_parser, format_table, write_json

    parser = base_parser(__doc__.splitlines()[0], quick_help="2,000 training images")
    parser.add_argument("--ks", default="1,2,4", help="comma-separated K values")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    images = 2000 if args.quick else 10_000
    rows: dict[str, Any] = {}
    for k in (int(x) for x in args.ks.split(",")):
        wall = run_k(k, args.device, args.epochs, images)
        rows[str(k)] = {"wall_s": wall, "jobs_per_hour": k * 3600 / wall}
        print(f"K={k}: {wall:.1f} s for {k} job(s)", file=sys.stderr, flush=True)
    best = max(rows, key=lambda k: rows[k]["jobs_per_hour"])
    report = {"device": args.device, "epochs": args.epochs, "train_images": images,
              "per_k": rows, "best_k": int(best)}  # fmt: skip
    print(f"jobs per hour, {args.epochs}-epoch WKD-L jobs of {images} CIFAR-sized images "
          f"(+2k test), resnet32x4->resnet8x4, device {args.device}")  # fmt: skip
    print(format_table(["K", "wall s", "jobs/hour"],
                       [[k, f"{r['wall_s']:.1f}", f"{r['jobs_per_hour']:.0f}"]
                        for k, r in rows.items()]))  # fmt: skip
    print(f"best K: {best}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
