"""Deployable students: best- and last-epoch safetensors, verified ONNX, TensorBoard events.

A finished run leaves, beside ``metrics.csv`` and ``manifest.json``:

* ``student_last.safetensors``: the student after the last epoch (``student.safetensors`` is
  the same file under its historical name); ``student_best.safetensors``: the student of the
  epoch with the best test top-1. Both carry the epoch and its accuracy in the safetensors
  metadata and load with ``create_model(arch, num_classes)`` + ``load_state_dict(strict=True)``.
* ``student_last.onnx`` and ``student_best.onnx``: the same two students as ONNX (opset 18 from
  ``torch.onnx.export(dynamo=True)``; the TorchScript exporter at opset 17 if that fails), input
  ``input`` (N, 3, H, W) normalised as the dataset's test transform, output ``logits`` (N, C),
  dynamic batch size. Each is *verified*: onnxruntime on CPU runs the whole test split and must
  give the same top-1 prediction as PyTorch for every image and logits within
  ``|onnx − torch| ≤ 1e-4 + 1e-4·|torch|``; the figures go to ``onnx_verification.json``.
* ``events.out.tfevents.wkd``: the per-epoch metrics as a TensorBoard event file
  (``tensorboard --logdir runs`` shows every run folder as one run).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wkd_core.artifacts import save_student
from wkd_core.train.callbacks import Callback, TrainState
from wkd_core.train.metrics import EpochMetrics

BEST_WEIGHTS = "student_best.safetensors"
LAST_WEIGHTS = "student_last.safetensors"
LEGACY_WEIGHTS = "student.safetensors"  # = LAST_WEIGHTS, the name earlier versions wrote
BEST_ONNX = "student_best.onnx"
LAST_ONNX = "student_last.onnx"
ONNX_REPORT = "onnx_verification.json"
TENSORBOARD_EVENTS = "events.out.tfevents.wkd"
# The dynamo exporter's own opset in torch 2.14. Asking it for 17 runs ONNX's version converter,
# which fails on these graphs (ReduceMean's axes input) and silently keeps 18 (docs/service.md).
ONNX_OPSET = 18
LOGIT_ATOL = 1e-4
LOGIT_RTOL = 1e-4


def weights_metadata(which: str, metrics: EpochMetrics) -> dict[str, str]:
    """The safetensors metadata of a saved student (strings only, as the format requires)."""
    return {"which": which, "epoch": str(metrics.epoch), "test_top1": f"{metrics.test_top1:.4f}"}


class BestStudentSaver(Callback):
    """Writes ``student_best.safetensors`` whenever an epoch sets a new best test top-1.

    The file lives in the run folder, so a resumed run keeps the best weights of the epochs
    before the interruption. Under DDP callbacks run on rank 0 only.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / BEST_WEIGHTS

    def on_epoch_end(self, state: TrainState, metrics: EpochMetrics) -> None:
        if state.best_epoch != metrics.epoch:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        save_student(state.distiller.student, tmp, metadata=weights_metadata("best", metrics))
        os.replace(tmp, self.path)


class TensorBoardLogger(Callback):
    """Rewrites ``events.out.tfevents.wkd`` from the whole history after every epoch.

    Rewriting (like ``metrics.csv``) keeps a resumed run free of duplicate points.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def on_epoch_end(self, state: TrainState, metrics: EpochMetrics) -> None:
        write_tensorboard(state.history, self.out_dir)


def write_tensorboard(history: Sequence[EpochMetrics], out_dir: str | Path) -> Path:
    """One TensorBoard event file with every metric of ``history``, step = epoch."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tb-") as tmp:
        writer = SummaryWriter(log_dir=tmp)
        for row in history:
            for tag, value in scalar_tags(row).items():
                writer.add_scalar(tag, value, global_step=row.epoch)
        writer.close()
        (written,) = Path(tmp).glob("events.out.tfevents.*")
        destination = out_dir / TENSORBOARD_EVENTS
        os.replace(written, destination)
    return destination


def scalar_tags(row: EpochMetrics) -> dict[str, float]:
    """TensorBoard tag → value of one epoch (``train/…``, ``test/…``, ``loss/…``, ``lr``)."""
    tags = {
        "train/loss": row.train_loss,
        "train/top1": row.train_top1,
        "test/top1": row.test_top1,
        "test/top5": row.test_top5,
        "test/loss": row.test_loss,
        "lr": row.lr,
        "seconds": row.seconds,
    }
    tags.update({f"loss/{name}": value for name, value in row.loss_terms.items()})
    return {tag: float(value) for tag, value in tags.items()}


def save_last_student(student: nn.Module, out_dir: Path, metrics: EpochMetrics | None) -> Path:
    """``student_last.safetensors`` plus ``student.safetensors`` (a hard link, or a copy)."""
    metadata = weights_metadata("last", metrics) if metrics else {"which": "last"}
    last = save_student(student, out_dir / LAST_WEIGHTS, metadata=metadata)
    legacy = out_dir / LEGACY_WEIGHTS
    legacy.unlink(missing_ok=True)
    try:
        os.link(last, legacy)
    except OSError:
        shutil.copyfile(last, legacy)
    return last


def ensure_best_weights(out_dir: Path, history: Sequence[EpochMetrics]) -> Path:
    """``student_best.safetensors``; a copy of the last weights if no epoch wrote one."""
    best = out_dir / BEST_WEIGHTS
    if not best.is_file():
        shutil.copyfile(out_dir / LAST_WEIGHTS, best)
    return best


def load_weights_into(model: nn.Module, path: Path) -> nn.Module:
    """A CPU, eval-mode copy of ``model`` holding the weights in ``path``."""
    from wkd_core.artifacts import load_student_weights

    clone = copy.deepcopy(model).cpu().eval()
    clone.load_state_dict(load_student_weights(path), strict=True)
    return clone


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> dict[str, Any]:
    """Export ``model`` (CPU, eval) to ``path`` with a dynamic batch; returns how it was done."""
    model = model.cpu().eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_shapes=({0: batch},), external_data=False, verbose=False,
            )  # fmt: skip
        return {"exporter": "torch.export (dynamo)", "opset": ONNX_OPSET}
    except Exception as error:  # fall back to the TorchScript exporter
        fallback_reason = f"{type(error).__name__}: {error}"[:300]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return {"exporter": "torchscript", "opset": 17, "fallback_reason": fallback_reason}


def verify_onnx(path: Path, model: nn.Module, test_set: Dataset, *, batch_size: int = 256):
    """Run the test split through onnxruntime (CPU) and PyTorch; compare predictions and logits."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False)
    samples = agree = 0
    max_abs = max_excess = 0.0
    model = model.cpu().eval()
    with torch.inference_mode():
        for images, _ in loader:
            reference = model(images.float())
            onnx = torch.from_numpy(session.run(None, {"input": images.float().numpy()})[0])
            diff = (onnx - reference).abs()
            max_abs = max(max_abs, float(diff.max()))
            excess = diff - (LOGIT_ATOL + LOGIT_RTOL * reference.abs())
            max_excess = max(max_excess, float(excess.max()))
            agree += int((onnx.argmax(1) == reference.argmax(1)).sum())
            samples += len(images)
    return {
        "samples": samples,
        "top1_agreement": agree / samples if samples else math.nan,
        "max_abs_logit_diff": max_abs,
        "tolerance": f"|onnx - torch| <= {LOGIT_ATOL} + {LOGIT_RTOL} * |torch|",
        "passed": samples > 0 and agree == samples and max_excess <= 0.0,
    }


def write_deployables(student: nn.Module, out_dir: Path, test_set: Dataset) -> dict[str, Path]:
    """ONNX of the best and last students, each verified on ``test_set``, and the report.

    Expects ``student_best.safetensors`` and ``student_last.safetensors`` in ``out_dir``.
    """
    example = test_set[0][0].unsqueeze(0).float()
    report: dict[str, Any] = {}
    files = {}
    best = load_weights_into(student, out_dir / BEST_WEIGHTS)
    last = load_weights_into(student, out_dir / LAST_WEIGHTS)
    for model, weights, onnx_name in (
        (best, BEST_WEIGHTS, BEST_ONNX),
        (last, LAST_WEIGHTS, LAST_ONNX),
    ):
        if model is last and same_weights(best, last):  # best epoch = last epoch: one export
            shutil.copyfile(out_dir / BEST_ONNX, out_dir / LAST_ONNX)
            report[LAST_ONNX] = {**report[BEST_ONNX], "weights": weights}
        else:
            how = export_onnx(model, out_dir / onnx_name, example)
            checked = verify_onnx(out_dir / onnx_name, model, test_set)
            report[onnx_name] = {"weights": weights, **how, **checked}
        files[onnx_name] = out_dir / onnx_name
    report_path = out_dir / ONNX_REPORT
    report_path.write_text(json.dumps(report, indent=2))
    files[ONNX_REPORT] = report_path
    return files


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models of one architecture hold identical parameters and buffers."""
    left, right = a.state_dict(), b.state_dict()
    return all(torch.equal(left[k], right[k]) for k in left)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics not included)."""
    return sum(p.numel() for p in model.parameters())
