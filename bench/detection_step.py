"""Benchmark: the detection training step of every method, as a ratio to the detector alone.

For a teacher→student pair of Faster R-CNN + FPN detectors it times one training step (the
student's forward with its RPN and RoI-head losses, the frozen teacher's backbone and RoI head
on the student's sampled boxes, the method's RoI terms, their sum, backward, SGD step: what
``wkd_core.detection.train`` does per batch) of vanilla, KD, DKD, WKD-L, WKD-F and WKD-LF, and
reports each median as a ratio to vanilla's (the student trained alone). Every method starts
from a copy of the same initial student, uses the catalog's detection defaults, and sees the
same batch; WKD-L gets a random symmetric (C+1)×(C+1) distance (its values do not change the
work). The methods run round-robin, order rotated each round, after a warm-up round.

Pairs: ``fasterrcnn_small_fpn → fasterrcnn_tiny_fpn`` on 96-px shapes images (batch 8, the
scale the tests train at), and with ``--coco`` ``fasterrcnn_resnet101_fpn →
fasterrcnn_resnet18_fpn`` on 800×1216 images, 80 classes (batch 2; for a GPU host).

Usage: ``python bench/detection_step.py [--device cpu|cuda] [--quick] [--coco] [--json PATH]``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    base_parser,
    environment,
    format_table,
    interleaved_times,
    summarize,
    write_json,
)
from service.catalog import DETECTION_METHODS
from wkd_core.detection import DetectionDistiller, create_detection_dataset, create_detector
from wkd_core.detection.data import detection_collate
from wkd_core.detection.pipeline import TRAINING_PARAMS, TRANSFORM_PARAMS
from wkd_core.train.metrics import summed

METHODS = ("vanilla", "kd", "dkd", "wkd_l", "wkd_f", "wkd_lf")


def shapes_batch(batch: int) -> tuple[list, list]:
    data = create_detection_dataset("shapes_mini", split="train", train=False)
    return detection_collate([data[i] for i in range(batch)])


def coco_like_batch(batch: int, num_classes: int) -> tuple[list, list]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 800, 1216, generator=g) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(7, 2, generator=g) * 900
        wh = 20 + torch.rand(7, 2, generator=g) * 250
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(1, num_classes + 1, (7,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def make_steps(teacher_arch, student_arch, num_classes, images, targets, device):
    torch.manual_seed(0)
    student0 = create_detector(student_arch, num_classes=num_classes)
    teacher = create_detector(teacher_arch, num_classes=num_classes).to(device)
    d = torch.rand(num_classes + 1, num_classes + 1)
    distance = ((d + d.T) / 2).fill_diagonal_(0)
    images = [img.to(device) for img in images]
    targets = [{k: t[k].to(device) for k in ("boxes", "labels")} for t in targets]
    steps = {}
    for method in METHODS:
        params = {n: p.default for n, p in DETECTION_METHODS[method].params.items()}
        for name in (*TRAINING_PARAMS, *TRANSFORM_PARAMS):
            params.pop(name)
        if method in ("wkd_l", "wkd_lf"):
            params["distance"] = distance
        distiller = DetectionDistiller(method, student=copy.deepcopy(student0),
                                       teacher=None if method == "vanilla" else teacher,
                                       **params).to(device).train()  # fmt: skip
        opt = torch.optim.SGD(list(distiller.trainable_parameters()), lr=1e-3, momentum=0.9)

        def step(distiller=distiller, opt=opt):
            loss = summed(distiller(images, targets))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[method] = step
    return steps


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], quick_help="3 timed rounds instead of 8")
    parser.add_argument("--coco", action="store_true", help="the COCO-scale ResNet pair")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.coco:
        pair = ("fasterrcnn_resnet101_fpn", "fasterrcnn_resnet18_fpn", 80)
        images, targets = coco_like_batch(2, 80)
    else:
        pair = ("fasterrcnn_small_fpn", "fasterrcnn_tiny_fpn", 4)
        images, targets = shapes_batch(8)
    steps = make_steps(*pair, images, targets, device)
    times = interleaved_times(steps, device=device, rounds=3 if args.quick else 8)
    stats = {name: summarize(t) for name, t in times.items()}
    base = stats["vanilla"]["median_s"]
    rows = [
        (name, f"{1000 * s['median_s']:.1f}", f"{s['iqr_rel']:.2f}", f"{s['median_s'] / base:.2f}")
        for name, s in stats.items()
    ]
    print(f"detection training step, {pair[0]} -> {pair[1]}, {len(images)} images, {device}")
    print(format_table(["method", "median ms", "IQR/med", "× alone"], rows))
    write_json(args.json, {"pair": pair[:2], "environment": environment(device), "steps": stats})


if __name__ == "__main__":
    main()
