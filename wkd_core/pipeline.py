"""One distillation job from a resolved spec: what the ``wkd`` CLI and the service worker run.

The spec is the plain-dict form of ``service.spec.JobSpec`` after preset resolution (see
``docs/internals.md``); this module reads it with dictionary access only, so ``wkd_core``
stays independent of the service's pydantic models.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wkd_core.artifacts import file_sha256, tensor_fingerprint, write_curves_png
from wkd_core.distillers import create_distiller
from wkd_core.export import (
    TENSORBOARD_EVENTS,
    BestStudentSaver,
    TensorBoardLogger,
    ensure_best_weights,
    parameter_count,
    save_last_student,
    write_deployables,
)
from wkd_core.ir import prepare_distance
from wkd_core.job_parts import (
    build_datasets,
    build_teacher,
    info_of,
    interrelation_options,
    job_loaders,
    num_classes_of,
    resolve_device,
    student_options,
    train_config,
)
from wkd_core.model_card import write_model_card
from wkd_core.models import create_model
from wkd_core.models.student_init import load_student_init, student_init_source
from wkd_core.train import (
    Callback,
    EpochMetrics,
    FitResult,
    MetricsLogger,
    distributed,
    fit,
)

LOGIT_METHODS = frozenset({"wkd_l", "wkd_lf"})
INPUT_SIZES = {"cifar": (32, 32), "imagenet": (224, 224)}

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished (or stopped) job produced."""

    best_top1: float
    best_epoch: int
    last_top1: float
    history: list[EpochMetrics]
    artifacts: dict[str, Path] = field(default_factory=dict)
    stopped: bool = False
    is_main: bool = True  # False on the ranks > 0 of a torchrun job: they write no outputs


def run_job(
    spec: Mapping[str, Any],
    *,
    out_dir: Path,
    teacher_path: Path | None = None,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    callbacks: Iterable[Callback] = (),
    device: str | None = None,
    on_stage: Callable[[str], None] | None = None,
    download: bool = False,
    cost_matrix_path: Path | None = None,
    student_init_path: Path | None = None,
) -> RunResult:
    """Build everything the spec names, distill, and write the artifacts to ``out_dir``.

    Stages: ``preparing`` (data, models, the interrelation matrix for WKD-L / WKD-LF) and
    ``running`` (``fit``). A run whose ``out_dir`` holds a checkpoint resumes from it.
    A spec with ``generations: N`` runs Born-Again generations (``wkd_core.generations``).
    ``task: detection`` runs :func:`wkd_core.detection.pipeline.run_detection_job` (best and
    last "top-1" are then COCO AP in %).
    ``download`` lets torchvision fetch a missing CIFAR into the data root;
    ``cost_matrix_path`` is the file of an uploaded WKD-L matrix (the spec names its id);
    ``student_init_path`` the file of the student's initial weights the spec's
    ``student.init`` names by id (a CLI spec gives its ``path``).
    """
    if spec.get("generations"):
        from wkd_core.generations import run_generations

        return run_generations(
            spec, run_single=run_job, out_dir=out_dir, teacher_path=teacher_path,
            callbacks=callbacks, device=device, data_root=data_root, cache_dir=cache_dir,
            on_stage=on_stage, cost_matrix_path=cost_matrix_path,
        )  # fmt: skip
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = on_stage or (lambda _name: None)
    torch_device = resolve_device(device)
    if spec.get("task", "classification") == "detection":  # Faster R-CNN: its own builders
        from wkd_core.detection.pipeline import run_detection_job

        return run_detection_job(
            spec, out_dir=out_dir, teacher_path=teacher_path, data_root=data_root,
            cache_dir=cache_dir, callbacks=callbacks, device=torch_device, on_stage=stage,
            train_config=train_config, student_init_path=student_init_path,
        )  # fmt: skip
    num_classes = num_classes_of(spec)
    input_kind = "imagenet" if info_of(spec).image_size >= 128 else "cifar"

    stage("preparing")
    train_set, train_plain, test_set = build_datasets(spec, data_root, download)
    teacher = build_teacher(spec, teacher_path, num_classes)
    # The spec's seed decides the student's (and projectors') initial weights too: fit seeds
    # the RNGs only once the models exist, so two runs of one spec started from different
    # initialisations, and a run resumed in a fresh process could not match an
    # uninterrupted one (docs/reliability.md).
    torch.manual_seed(int(spec["training"].get("seed", 0)))
    student = create_model(
        spec["student"]["arch"], num_classes=num_classes, **student_options(spec)
    )
    init = student_init_source(spec, student_init_path)
    init_report = load_student_init(student, init[0], backbone_only=init[1]) if init else None
    if init_report is not None:
        log.info("%s", init_report.summary())
    params = dict(spec.get("params") or {})
    artifacts: dict[str, Path] = {}
    if spec["method"] in LOGIT_METHODS:
        distance = prepare_distance(
            teacher,
            train_plain,
            options=interrelation_options(spec, cost_matrix_path),
            teacher_sha256=file_sha256(teacher_path),
            dataset_key=json.dumps(spec["dataset"], sort_keys=True),
            cache_dir=cache_dir,
            device=torch_device,
            out_path=out_dir / "interrelations.pt",
        )
        params["distance"] = distance
        artifacts["interrelations.pt"] = out_dir / "interrelations.pt"
    if spec["method"] in {"wkd_f", "wkd_lf", "fitnet"}:
        params.setdefault("input_size", INPUT_SIZES[input_kind])
    distiller = create_distiller(spec["method"], student=student, teacher=teacher, **params)
    distiller.to(torch_device)

    train_loader, test_loader = job_loaders(spec, train_set, test_set, torch_device)
    stage("running")
    result = fit(
        distiller,
        train_loader,
        test_loader,
        config=train_config(spec, out_dir),
        callbacks=[
            MetricsLogger(out_dir),
            BestStudentSaver(out_dir),
            TensorBoardLogger(out_dir),
            *callbacks,
        ],
        device=torch_device,
    )
    if torch.distributed.is_initialized():  # under torchrun: rank 0 alone writes the outputs
        rank = torch.distributed.get_rank()
        distributed.teardown()
        if rank != 0:
            return run_result(result, {}, is_main=False)
    outputs = write_outputs(
        spec, distiller.student, result, out_dir, teacher_path, train_set, torch_device,
        test_set=test_set, student_init=init_report.to_dict() if init_report else None,
    )  # fmt: skip
    artifacts.update(outputs)
    artifacts.update({name: out_dir / name for name in ("metrics.csv", "metrics.jsonl")})
    if (out_dir / TENSORBOARD_EVENTS).is_file():
        artifacts[TENSORBOARD_EVENTS] = out_dir / TENSORBOARD_EVENTS
    return run_result(result, artifacts)


def run_result(result: FitResult, artifacts: dict[str, Path], *, is_main: bool = True) -> RunResult:
    return RunResult(
        best_top1=result.best_top1,
        best_epoch=result.best_epoch,
        last_top1=result.last_top1,
        history=list(result.history),
        artifacts=artifacts,
        stopped=result.stopped,
        is_main=is_main,
    )


def write_outputs(
    spec: Mapping[str, Any],
    student: nn.Module,
    result: FitResult,
    out_dir: Path,
    teacher_path: Path | None,
    train_set: Any,
    device: torch.device,
    *,
    test_set: Any = None,
    student_init: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Student weights (best and last epoch), the curve plot, the manifest that makes the run
    reproducible and, for a run that was not stopped, verified ONNX files and the model card.
    """
    title = run_title(spec, out_dir)
    last = result.history[-1] if result.history else None
    weights = save_last_student(student, out_dir, last)
    files = {weights.name: weights, "student.safetensors": out_dir / "student.safetensors"}
    files["student_best.safetensors"] = ensure_best_weights(out_dir, result.history)
    curves = write_curves_png(result.history, out_dir / "curves.png", title=title)
    onnx_report = None
    if test_set is not None and not result.stopped:
        files.update(write_deployables(student, out_dir, test_set))
        onnx_report = json.loads(files["onnx_verification.json"].read_text())
    manifest = {
        "spec": spec,
        "seed": spec["training"].get("seed", 0),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "versions": package_versions(),
        "teacher_sha256": file_sha256(teacher_path) if teacher_path else None,
        "student_init": student_init,  # what the initial weights loaded (None: random)
        "data_fingerprint": tensor_fingerprint(train_set),
        "student_sha256": file_sha256(weights),
        "best_top1": result.best_top1,
        "best_epoch": result.best_epoch,
        "last_top1": result.last_top1,
        "stopped": result.stopped,
        "files": {name: file_sha256(path) for name, path in sorted(files.items())},
    }
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
    outputs = {**files, curves.name: curves, manifest_path.name: manifest_path}
    if onnx_report is not None:
        card = write_model_card(
            manifest, out_dir, parameters=parameter_count(student), onnx=onnx_report, title=title
        )
        outputs[card.name] = card
    return outputs


def run_title(spec: Mapping[str, Any], out_dir: Path) -> str:
    """``<job> · <method> · <teacher> → <student> · <dataset>`` (the run folder names the job)."""
    teacher = (spec.get("teacher") or {}).get("arch")
    pair = f"{teacher} → {spec['student']['arch']}" if teacher else spec["student"]["arch"]
    return f"{Path(out_dir).name} · {spec['method']} · {pair} · {spec['dataset']['name']}"


def package_versions() -> dict[str, str]:
    import numpy
    import torchvision

    from wkd_core import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "wkd": __version__,
    }
