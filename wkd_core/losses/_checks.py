"""Input checks and precision helpers shared by the losses.

Shape checks are cheap Python comparisons and always run. Checks that read tensor values
(labels in range, finite logits) force a device sync, so they run only with ``validate=True``.
"""

from __future__ import annotations

import contextlib
import numbers

import torch
from torch import Tensor


def check_tensor(**values: object) -> None:
    """Each named argument is a ``torch.Tensor`` (TypeError naming it otherwise)."""
    for name, value in values.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def check_logits(logits_student: Tensor, logits_teacher: Tensor) -> None:
    """Both floating-point (B, C) tensors with the same shape, B >= 1 and C >= 2."""
    check_tensor(logits_student=logits_student, logits_teacher=logits_teacher)
    if logits_student.dim() != 2:
        raise ValueError(f"logits_student must be (B, C), got shape {tuple(logits_student.shape)}")
    if logits_teacher.shape != logits_student.shape:
        raise ValueError(
            f"logits_teacher shape {tuple(logits_teacher.shape)} differs from logits_student "
            f"shape {tuple(logits_student.shape)}"
        )
    if logits_student.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got C={logits_student.shape[1]}")
    if logits_student.shape[0] == 0:
        raise ValueError("logits_student is an empty batch (B=0): the batch-mean loss is undefined")
    for name, logits in (("logits_student", logits_student), ("logits_teacher", logits_teacher)):
        if not logits.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {logits.dtype}")


def check_positive(**values: float) -> None:
    """Each named hyper-parameter is a finite real number > 0."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not (value > 0 and value < float("inf")):  # also False for NaN
            raise ValueError(f"{name} must be finite and > 0, got {value}")


def check_count(**values: int) -> None:
    """Each named argument is an int >= 1 (iteration counts, grid sizes)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def hard_target(target: Tensor, logits: Tensor) -> Tensor:
    """(B,) class indices; (B, C) soft labels are reduced to their argmax (as the WKD code)."""
    check_tensor(target=target)
    batch, num_classes = logits.shape
    if target.dim() == 2 and target.shape == logits.shape:
        target = target.argmax(dim=1)
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(
            f"target must be (B,) class indices or (B, C) soft labels with B={batch}, "
            f"C={num_classes}; got shape {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target indices must be an integer tensor, got {target.dtype}")
    return target.long()  # gather/scatter index dtype


def check_values(*tensors: Tensor, target: Tensor | None = None, num_classes: int = 0) -> None:
    """The sync-needing checks: finite values and labels in [0, num_classes)."""
    for tensor in tensors:
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError("input contains NaN or inf")
    if target is not None and target.numel():
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got [{low}, {high}]")


# Device types with an autocast backend. A constant set rather than
# ``torch.amp.is_autocast_available``: that call is a graph break under torch.compile (dynamo
# cannot trace it), which split the compiled WKD-L loss in two (gpu-notes.md).
_AUTOCAST_DEVICES = frozenset({"cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia"})


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Disable autocast: the WKD losses run in float32 like the authors' code.

    Traceable by torch.compile (no graph break): ``torch.autocast(device_type,
    enabled=False)`` is, and the membership test is on a Python string.
    """
    if device_type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def loss_dtype(tensor: Tensor) -> torch.dtype:
    """float32 for half precision inputs, else the input's own (float64 stays float64)."""
    return torch.promote_types(tensor.dtype, torch.float32)
