"""Category interrelations of a teacher on a dataset: the distance matrix WKD-L's cost uses.

The recipe follows the authors' ``tools/generate_class_proto.py`` (wkd-method.md §1.1): the
training split under the *test* transform goes through the frozen teacher; per class, the
rows are either every spatial position of the last-stage feature map (``feature``, the CIFAR
recipe) or the logits (``logit``, the ImageNet recipe); linear CKA between classes, rows
paired in loader order and truncated to the smallest class, gives IR and D = 1 − IR.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from wkd_core.losses import interrelations as irl

SOURCES = ("cka", "fc", "centroid", "file")
DEFAULT_OPTIONS: dict[str, Any] = {
    "source": "cka",
    "kernel": "linear",
    "feature": "auto",
    "max_per_class": None,
    "batch_size": 256,
}


def resolve_options(options: Mapping[str, Any] | None, image_size: int) -> dict[str, Any]:
    """Defaults filled in; ``feature: auto`` is ``features`` below 128 px, ``logits`` above."""
    resolved = {**DEFAULT_OPTIONS, **{k: v for k, v in (options or {}).items() if v is not None}}
    if resolved["feature"] == "auto":
        resolved["feature"] = "logits" if image_size >= 128 else "features"
    if resolved["source"] not in SOURCES:
        raise ValueError(
            f"interrelations.source must be one of {', '.join(SOURCES)}, got {resolved['source']!r}"
        )
    if resolved["feature"] not in {"features", "logits"}:
        raise ValueError(
            f"interrelations.feature must be features, logits or auto, got {resolved['feature']!r}"
        )
    return resolved


@torch.no_grad()
def collect_class_features(
    teacher: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    feature: str,
    max_per_class: int | None,
    batch_size: int,
    device: torch.device,
) -> irl.ClassFeatureBank:
    """Teacher rows per class in dataset order: feats[-1] positions or logits (CPU, fp32)."""
    teacher.eval().to(device)
    bank = irl.ClassFeatureBank(num_classes, max_per_class=max_per_class)
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits, feats = teacher.forward_features(images.to(device))
        rows = logits if feature == "logits" else feats["feats"][-1]  # (B, C) or (B, D, H, W)
        bank.update(rows.float().cpu(), torch.as_tensor(labels))
    return bank


def compute_distance(
    teacher: nn.Module,
    dataset: Dataset,
    *,
    options: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(C, C) D = 1 − IR of ``teacher`` on ``dataset`` (zero diagonal, symmetric, CPU fp32).

    ``options``: ``source`` (cka | fc | centroid), ``kernel`` (linear | poly | rbf),
    ``feature`` (features | logits | auto), ``max_per_class`` (row cap per class: positions
    count as rows in the feature recipe), ``batch_size``.
    """
    classifier = teacher.get_classifier()
    image_size = int(dataset[0][0].shape[-1])
    opts = resolve_options(options, image_size)
    if opts["source"] == "fc":
        return irl.classifier_cosine_distance(classifier.weight.detach().float().cpu())
    if opts["source"] == "file":
        raise ValueError("interrelations.source 'file' reads a matrix: give interrelations.path")
    bank = collect_class_features(
        teacher,
        dataset,
        num_classes=classifier.out_features,
        feature=opts["feature"],
        max_per_class=opts["max_per_class"],
        batch_size=int(opts["batch_size"]),
        device=torch.device(device),
    )
    method = "centroid_cosine" if opts["source"] == "centroid" else f"{opts['kernel']}_cka"
    return bank.distance_matrix(method)


def cache_key(teacher_sha256: str | None, dataset_key: str, options: Mapping[str, Any]) -> str:
    """Cache file stem for (teacher checksum, dataset, options)."""
    blob = json.dumps([teacher_sha256, dataset_key, dict(options)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def prepare_distance(
    teacher: nn.Module,
    dataset: Dataset,
    *,
    options: Mapping[str, Any] | None,
    teacher_sha256: str | None,
    dataset_key: str,
    cache_dir: Path | None,
    device: torch.device,
    out_path: Path | None = None,
) -> Tensor:
    """The distance for a job: a user file, the on-disk cache, or computed (then cached).

    ``options["path"]`` (a path to a C×C D = 1 − CKA tensor, the authors' format) wins;
    otherwise the matrix is cached under ``cache_dir`` by teacher sha256, dataset and options.
    The matrix the job used is also written to ``out_path``.
    """
    options = dict(options or {})
    opts = options
    if not (options.get("source") == "file" or options.get("path")):
        opts = resolve_options(options, int(dataset[0][0].shape[-1]))
    return file_cached_or_computed(
        options,
        num_classes=teacher.get_classifier().out_features,
        cache_name=f"ir-{cache_key(teacher_sha256, dataset_key, opts)}.pt",
        cache_dir=cache_dir,
        compute=lambda: compute_distance(teacher, dataset, options=opts, device=device),
        out_path=out_path,
    )


def file_cached_or_computed(
    options: Mapping[str, Any],
    *,
    num_classes: int,
    cache_name: str,
    cache_dir: Path | None,
    compute: Callable[[], Tensor],
    out_path: Path | None = None,
) -> Tensor:
    """The C×C distance of a job: the user's file (``options["path"]``), else
    ``cache_dir / cache_name``, else ``compute()`` (then cached). Also written to ``out_path``
    (the job's ``interrelations.pt``). Shared by classification and detection."""
    if options.get("source") == "file" or options.get("path"):
        if not options.get("path"):
            raise ValueError("interrelations.source 'file' needs interrelations.path")
        distance = irl.load_distance_matrix(options["path"], num_classes=num_classes)
    else:
        cached = cache_dir / cache_name if cache_dir else None
        if cached is not None and cached.exists():
            distance = irl.load_distance_matrix(cached, num_classes=num_classes)
        else:
            distance = compute()
            # checked before it is cached: a bad matrix (a teacher with NaN weights) must fail
            # this job alone, not every later job that shares the cache entry
            irl.check_distance_matrix(distance, num_classes)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                save_atomically(distance, cached)
    if out_path is not None:
        save_atomically(distance, out_path)
    return distance


def save_atomically(tensor: Tensor, path: Path) -> None:
    # A temporary name per process: the ranks of a torchrun job write the same files. The
    # bytes are made in memory first, because torch.save names its archive folder after the
    # file: saved under the pid's name, equal matrices would get different checksums.
    buffer = io.BytesIO()
    torch.save(tensor.cpu(), buffer)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
