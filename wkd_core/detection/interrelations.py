"""Category interrelations of a teacher detector: the (C+1)×(C+1) distance behind WKD-L.

The classification recipe (:mod:`wkd_core.ir`) carried over to RoIs: the training images
(no flip) go through the frozen teacher; its RoI head samples training RoIs from its own
proposals and the ground truth exactly as in training (so the background class 0 gets RoIs
too); each RoI adds rows to its class: every position of its RoI-Align map (``features``,
the CIFAR recipe with positions as samples, the default) or its C+1 logits (``logits``).
Linear CKA between classes (rows paired in arrival order, each class cut to the smallest)
gives IR and D = 1 − IR. ``source: fc`` uses the cosine of the teacher's ``cls_score`` rows.

Reference: J. Lv, H. Yang, P. Li, NeurIPS 2024, §3.1 (IR by CKA); wkd-method.md §1.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN

from wkd_core.ir import cache_key, file_cached_or_computed
from wkd_core.losses import interrelations as irl

__all__ = ["collect_roi_features", "detection_distance", "prepare_detection_distance"]

DEFAULT_OPTIONS: dict[str, Any] = {
    "source": "cka",
    "kernel": "linear",
    "feature": "features",
    "max_per_class": 20_000,
    "batch_size": 8,
}


@torch.no_grad()
def collect_roi_features(
    teacher: FasterRCNN,
    dataset: Dataset,
    *,
    feature: str = "features",
    max_per_class: int | None = 20_000,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> irl.ClassFeatureBank:
    """Teacher rows per class (0 = background … C) from its sampled training RoIs."""
    from wkd_core.detection.data import detection_collate

    teacher.eval().to(device)
    heads = teacher.roi_heads
    num_classes = heads.box_predictor.cls_score.out_features
    bank = irl.ClassFeatureBank(num_classes, max_per_class=max_per_class)
    generator = torch.Generator().manual_seed(0)  # the fg/bg sampler draws with torch's RNG
    state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=generator)))
    try:
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=detection_collate)
        for images, targets in loader:
            images = [img.to(device) for img in images]
            targets = [
                {k: v.to(device) for k, v in t.items() if k in ("boxes", "labels")} for t in targets
            ]
            image_list, targets = teacher.transform(images, targets)
            features = teacher.backbone(image_list.tensors)
            proposals, _ = teacher.rpn(image_list, features)
            boxes, _, labels, _ = heads.select_training_samples(proposals, targets)
            rois = heads.box_roi_pool(features, boxes, image_list.image_sizes)
            rows = rois if feature == "features" else heads.box_predictor(heads.box_head(rois))[0]
            bank.update(rows.float().cpu(), torch.cat(labels).cpu())
    finally:
        torch.random.set_rng_state(state)
    return bank


def detection_distance(
    teacher: FasterRCNN,
    dataset: Dataset,
    *,
    options: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(C+1, C+1) D = 1 − IR of ``teacher`` on ``dataset`` (symmetric, zero diagonal)."""
    opts = {**DEFAULT_OPTIONS, **{k: v for k, v in (options or {}).items() if v is not None}}
    if opts["feature"] == "auto":
        opts["feature"] = "features"
    if opts["source"] == "fc":
        weight = teacher.roi_heads.box_predictor.cls_score.weight
        return irl.classifier_cosine_distance(weight.detach().float().cpu())
    if opts["source"] != "cka":
        raise ValueError(
            f"interrelations.source {opts['source']!r} is not available for "
            "detection (cka, fc, or a file)"
        )
    bank = collect_roi_features(
        teacher,
        dataset,
        feature=opts["feature"],
        max_per_class=opts["max_per_class"],
        batch_size=int(opts["batch_size"]),
        device=device,
    )
    return bank.distance_matrix(f"{opts['kernel']}_cka")


def prepare_detection_distance(
    teacher: FasterRCNN,
    dataset: Dataset,
    *,
    options: Mapping[str, Any] | None,
    teacher_sha256: str | None,
    dataset_key: str,
    cache_dir: Path | None,
    device: torch.device,
    out_path: Path | None = None,
) -> Tensor:
    """A user file (``options["path"]``), the cached matrix, or a fresh one (then cached)."""
    options = {k: v for k, v in dict(options or {}).items() if v is not None}
    key = cache_key(teacher_sha256, "detection:" + dataset_key, {**DEFAULT_OPTIONS, **options})
    return file_cached_or_computed(
        options,
        num_classes=teacher.roi_heads.box_predictor.cls_score.out_features,
        cache_name=f"ir-{key}.pt",
        cache_dir=cache_dir,
        compute=lambda: detection_distance(teacher, dataset, options=options, device=device),
        out_path=out_path,
    )
