"""ONNX export of a trained detector (torchvision's Faster R-CNN, inference graph).

torchvision's detection models export with the TorchScript-based exporter (opset ≥ 11, the
post-processing included: the graph takes one (3, H, W) float image in [0, 1] and returns
boxes, labels and scores). Export depends on the installed torch / onnx versions; when it
fails the job still succeeds without ``student.onnx`` and the reason is logged.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_onnx"]

log = logging.getLogger(__name__)


def export_onnx(
    detector: nn.Module, path: Path, *, image_size: int | None = None, opset: int = 17
) -> Path | None:
    """Write ``detector`` (eval mode, CPU copy) to ``path``; ``None`` if it cannot export."""
    size = image_size or int(detector.transform.min_size[0])
    model = _cpu_copy(detector)
    dummy = torch.rand(3, size, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                ([dummy],),
                str(path),
                opset_version=opset,
                dynamo=False,
                input_names=["image"],
                output_names=["boxes", "labels", "scores"],
                dynamic_axes={
                    "image": {1: "height", 2: "width"},
                    "boxes": {0: "n"},
                    "labels": {0: "n"},
                    "scores": {0: "n"},
                },
            )
    except Exception as error:  # an exporter limitation must not fail a finished job
        log.warning("ONNX export of the detector failed: %s: %s", type(error).__name__, error)
        path.unlink(missing_ok=True)
        return None
    return path


def _cpu_copy(detector: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(detector).cpu().eval()
