"""One detection job from a resolved spec (``task: detection``): what ``run_job`` dispatches to.

Same stages and outputs as the classification pipeline (:mod:`wkd_core.pipeline`):
``preparing`` (datasets, teacher loaded strictly, the (C+1)×(C+1) interrelation distance for
WKD-L / WKD-LF), ``running`` (:func:`~wkd_core.detection.train.fit_detection`), then
``student.safetensors``, ``curves.png`` (AP and AP50 by epoch, training loss),
``manifest.json``, ``metrics.csv`` / ``metrics.jsonl``, ``interrelations.pt`` where used, and
``student.onnx`` when torchvision's detector exports on this install (see :mod:`.export`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from wkd_core.artifacts import file_sha256, save_student
from wkd_core.detection.checkpoints import load_detector_init, load_detector_weights
from wkd_core.detection.data import create_detection_dataset, detection_dataset_info
from wkd_core.detection.distill import LOGIT_METHODS, DetectionDistiller
from wkd_core.detection.interrelations import prepare_detection_distance
from wkd_core.detection.models import create_detector, set_train_sizes
from wkd_core.detection.train import detection_loaders, fit_detection
from wkd_core.models.student_init import student_init_source
from wkd_core.train import Callback, FitResult, MetricsLogger

__all__ = ["TRAINING_PARAMS", "TRANSFORM_PARAMS", "run_detection_job"]

log = logging.getLogger(__name__)

# Parameters of the detection recipe that the loop takes rather than the distiller.
TRAINING_PARAMS = ("warmup_iters", "warmup_factor")
# ... and the one the student's image transform takes (multi-scale training, ``models.py``).
TRANSFORM_PARAMS = ("train_min_sizes",)


def run_detection_job(
    spec: Mapping[str, Any],
    *,
    out_dir: Path,
    teacher_path: Path | None = None,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    callbacks: Iterable[Callback] = (),
    device: torch.device,
    on_stage: Callable[[str], None],
    train_config: Callable[[Mapping[str, Any], Path], Any],
    student_init_path: Path | None = None,
):
    """Build the spec's detectors, data and distiller, train, and write the artifacts."""
    from wkd_core.pipeline import RunResult, package_versions

    training, method = spec["training"], spec["method"]
    num_classes = detection_dataset_info(spec["dataset"]["name"]).num_classes
    on_stage("preparing")
    train_set, train_plain, test_set = _datasets(spec, data_root)
    params = dict(spec.get("params") or {})
    loop = {k: params.pop(k) for k in TRAINING_PARAMS if k in params}
    train_sizes = params.pop("train_min_sizes", None)
    teacher = None
    if method != "vanilla":
        if teacher_path is None:
            raise ValueError(f"method {method!r} needs a teacher checkpoint")
        teacher = create_detector(spec["teacher"]["arch"], num_classes=num_classes)
        load_detector_weights(teacher, teacher_path, name=spec["teacher"]["arch"])
    # The seed decides the student's initial weights too (as for classification).
    torch.manual_seed(int(training.get("seed", 0)))
    student = set_train_sizes(
        create_detector(spec["student"]["arch"], num_classes=num_classes), train_sizes
    )
    init = student_init_source(spec, student_init_path)
    init_report = None
    if init is not None:
        init_report = load_detector_init(
            student, init[0], backbone_only=init[1], name=spec["student"]["arch"]
        )
        log.info("%s", init_report.summary())
    artifacts: dict[str, Path] = {}
    if method in LOGIT_METHODS:
        params["distance"] = prepare_detection_distance(
            teacher,
            train_plain,
            options=dict(spec.get("interrelations") or {}),
            teacher_sha256=file_sha256(teacher_path),
            dataset_key=json.dumps(spec["dataset"], sort_keys=True),
            cache_dir=cache_dir,
            device=device,
            out_path=out_dir / "interrelations.pt",
        )
        artifacts["interrelations.pt"] = out_dir / "interrelations.pt"
    distiller = DetectionDistiller(method, student=student, teacher=teacher, **params)
    train_loader, test_loader = detection_loaders(
        train_set,
        test_set,
        batch_size=int(training["batch_size"]),
        num_workers=int(training.get("num_workers", 0)),
        seed=int(training.get("seed", 0)),
    )
    on_stage("running")
    result = fit_detection(
        distiller,
        train_loader,
        test_loader,
        config=train_config(spec, out_dir),
        callbacks=[MetricsLogger(out_dir), *callbacks],
        device=device,
        **loop,
    )
    set_train_sizes(distiller.student, None)  # export and save the plain test-time model
    versions, init_dict = package_versions(), init_report.to_dict() if init_report else None
    artifacts.update(
        _write_outputs(
            spec, distiller.student, result, out_dir, teacher_path, device, versions, init_dict
        )
    )
    artifacts.update({name: out_dir / name for name in ("metrics.csv", "metrics.jsonl")})
    return RunResult(
        best_top1=result.best_top1,
        best_epoch=result.best_epoch,
        last_top1=result.last_top1,
        history=list(result.history),
        artifacts=artifacts,
        stopped=result.stopped,
    )


def _datasets(spec: Mapping[str, Any], data_root: Path | None):
    dataset = spec["dataset"]
    root = dataset.get("root") or data_root
    name = dataset["name"]
    return (
        create_detection_dataset(name, split="train", root=root, train=True),
        create_detection_dataset(name, split="train", root=root, train=False),
        create_detection_dataset(name, split="test", root=root, train=False),
    )


def _write_outputs(
    spec: Mapping[str, Any],
    student: torch.nn.Module,
    result: FitResult,
    out_dir: Path,
    teacher_path: Path | None,
    device: torch.device,
    versions: dict[str, str],
    student_init: dict[str, Any] | None,
) -> dict[str, Path]:
    from wkd_core.detection.export import export_onnx

    weights = save_student(student, out_dir / "student.safetensors")
    curves = write_detection_curves(result.history, out_dir / "curves.png")
    outputs = {weights.name: weights, curves.name: curves}
    onnx_path = export_onnx(student, out_dir / "student.onnx")
    if onnx_path is not None:
        outputs[onnx_path.name] = onnx_path
    manifest = {
        "spec": spec,
        "task": "detection",
        "seed": spec["training"].get("seed", 0),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "versions": versions,
        "teacher_sha256": file_sha256(teacher_path) if teacher_path else None,
        "student_init": student_init,  # what the initial weights loaded (None: random)
        "student_sha256": file_sha256(weights),
        "best_ap": result.best_top1,
        "best_epoch": result.best_epoch,
        "last_ap": result.last_top1,
        "curve": [
            {
                "epoch": m.epoch,
                "AP": m.test_top1,
                "AP50": m.test_top5,
                **{k[5:]: v for k, v in m.loss_terms.items() if k.startswith("coco_")},
            }
            for m in result.history
        ],
        "stopped": result.stopped,
    }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=str))
    outputs[path.name] = path
    return outputs


def write_detection_curves(history, path: Path) -> Path:
    """AP and AP50 (%) and the training loss against the epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m.epoch for m in history]
    fig, (ap_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    ap_ax.plot(epochs, [m.test_top1 for m in history], label="AP")
    ap_ax.plot(epochs, [m.test_top5 for m in history], label="AP50")
    ap_ax.set(xlabel="epoch", ylabel="COCO AP (%)", title="Detection")
    loss_ax.plot(epochs, [m.train_loss for m in history], label="train loss")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    for ax in (ap_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
