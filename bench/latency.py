"""The paper's training-latency table: ms per batch of each method on ImageNet ResNet34→ResNet18.

    python bench/latency.py [--device cpu|cuda] [--batch 256] [--image-size 224]
                            [--rounds N] [--quick] [--json PATH] [--threads N]

One training step per method (student forward, frozen-teacher forward, the method's loss
terms, backward, SGD step; autocast fp16 on CUDA as the trainer's AMP) on one fixed random
batch, with each method's ``imagenet/<method>/tv_resnet34_tv_resnet18`` preset:
KD, DKD, FitNet, WKD-L, WKD-F, WKD-LF. The methods run round-robin (``bench/_common``), so
that load on a shared machine hits all of them alike; the table gives the median ms per
batch, its spread, the ratio to KD measured in the same run, and the trainable parameters
beyond the student (projectors), as the paper's table does.

The paper's batch is 256 images of 224×224 (the default). A 2-core CPU takes minutes per
such step: pass a smaller ``--batch`` there and say so next to the figures.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    base_parser,
    environment,
    format_table,
    interleaved_times,
    summarize,
    write_json,
)
from wkd_core.distillers import create_distiller
from wkd_core.models import create_model
from wkd_core.presets import get_preset

METHODS = ("kd", "dkd", "fitnet", "wkd_l", "wkd_f", "wkd_lf")
PAIR = "imagenet/{}/tv_resnet34_tv_resnet18"
NUM_CLASSES = 1000


def build_steps(batch: int, image_size: int, device: torch.device):
    """name → a zero-argument training step, and name → extra trainable parameters."""
    torch.manual_seed(0)
    teacher = create_model("tv_resnet34", num_classes=NUM_CLASSES).to(device)
    student0 = create_model("tv_resnet18", num_classes=NUM_CLASSES)
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    distance = torch.rand(NUM_CLASSES, NUM_CLASSES)
    distance = (distance + distance.T) / 2 * (1 - torch.eye(NUM_CLASSES))
    steps, extra = {}, {}
    for method in METHODS:
        preset = get_preset(PAIR.format(method))
        params = dict(preset.params)
        if preset.method in ("wkd_l", "wkd_lf"):
            params["distance"] = distance  # its values do not change the work
        if "projector" in params:
            params["input_size"] = (image_size, image_size)
        student = copy.deepcopy(student0).to(device)
        distiller = create_distiller(method, student=student, teacher=teacher, **params)
        distiller.to(device).train()
        optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=1e-3, momentum=0.9)
        steps[method] = _step(distiller, optimizer, images, labels, device, preset)
        n_student = sum(p.numel() for p in student.parameters())
        n_all = sum(p.numel() for p in distiller.trainable_parameters())
        extra[method] = n_all - n_student
    return steps, extra


def _step(distiller, optimizer, images, labels, device, preset):
    epochs = preset.training.epochs

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            out = distiller(images, labels, epoch=1, total_epochs=epochs)
        out.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], quick_help="2 timed rounds instead of 5")
    parser.add_argument("--batch", type=int, default=256, help="images per batch (paper: 256)")
    parser.add_argument("--image-size", type=int, default=224, help="input side (paper: 224)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per method")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = args.rounds or (2 if args.quick else 5)
    steps, extra = build_steps(args.batch, args.image_size, device)
    times = interleaved_times(steps, device=device, rounds=rounds, warmup=1)
    stats = {name: summarize(t) for name, t in times.items()}
    kd = stats["kd"]["median_s"]
    rows = [
        [
            name,
            f"{s['median_s'] * 1e3:.1f}",
            f"{s['iqr_rel']:.0%}",
            f"{s['median_s'] / kd:.2f}",
            f"{extra[name] / 1e6:.2f}",
        ]
        for name, s in stats.items()
    ]
    print(
        f"ImageNet tv_resnet34 -> tv_resnet18, batch {args.batch} x 3x{args.image_size}^2, "
        f"{args.device}, {rounds} rounds (median)"
    )
    print(format_table(["method", "ms/batch", "IQR", "x KD", "extra params (M)"], rows))
    write_json(
        args.json,
        {
            "batch": args.batch,
            "image_size": args.image_size,
            "environment": environment(device),
            "methods": {n: {**stats[n], "extra_params": extra[n]} for n in stats},
            "times_s": times,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
