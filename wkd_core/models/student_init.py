"""A student's initial weights from a file (the spec's ``student.init``), whole or backbone only.

- **whole** (``backbone_only=False``): the file must fit the student exactly, as a teacher
  does (:func:`~wkd_core.models.checkpoints.check_state_dict`), e.g. a student trained
  before on the same classes.
- **backbone only**: every key of the file except the classifier (``fc``, ``linear``,
  ``classifier``, ``head`` …) that the student has is loaded (``strict=False``), e.g.
  ImageNet weights for a student of another class count. Keys the student has and the file
  lacks (``missing``) keep their random initialisation; keys the file has and the student
  lacks (``unexpected``) are ignored; both are reported (:class:`InitReport`), never silently
  dropped. A key of both with another shape, or no matching key at all, is an error.

Detectors: :func:`wkd_core.detection.checkpoints.load_detector_init`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn

from wkd_core.models.checkpoints import (
    _CLASSIFIER_PARAMS,
    CheckpointMismatch,
    check_state_dict,
    load_teacher_state,
)

__all__ = [
    "InitReport",
    "StudentInitError",
    "load_partial",
    "load_student_init",
    "student_init_source",
]

_SHOWN = 20  # keys listed per kind in a report


class StudentInitError(ValueError):
    """The initial weights do not fit the student; the message says which keys."""


@dataclass
class InitReport:
    """What :func:`load_student_init` loaded: how many tensors, and which keys it could not
    match (``missing``: the student's, left at their initialisation; ``unexpected``: the
    file's, ignored). ``layout`` names how the file was read."""

    layout: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """For ``manifest.json``: at most ``_SHOWN`` keys of each kind, and their counts."""
        out = asdict(self)
        for kind in ("missing", "unexpected"):
            out[f"num_{kind}"] = len(out[kind])
            out[kind] = out[kind][:_SHOWN]
        return out

    def summary(self) -> str:
        """One line for logs and the CLI."""
        text = f"student init ({self.layout}): {self.loaded} tensors loaded"
        for kind in ("missing", "unexpected"):
            keys = getattr(self, kind)
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                text += f"; {len(keys)} {kind}: {shown}"
        return text


def load_partial(
    module: nn.Module, state: Mapping[str, Tensor], *, layout: str, what: str
) -> InitReport:
    """Load the keys of ``state`` that ``module`` has (``strict=False``); report the rest.

    Raises:
        StudentInitError: a shared key has another shape, or no key is shared.
    """
    own = module.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs {what} {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        more = f" (+{len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        raise StudentInitError(f"shape mismatch: {', '.join(mismatched[:5])}{more}")
    shared = {k: v for k, v in state.items() if k in own}
    if not shared:
        sample = ", ".join(list(state)[:5])
        raise StudentInitError(f"no key of the file fits the {what} (the file has {sample} …)")
    module.load_state_dict(shared, strict=False)
    missing = [k for k in own if k not in shared and not k.endswith("num_batches_tracked")]
    # BN step counters are bookkeeping, not weights (frozen BN has none)
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    return InitReport(layout, len(shared), missing, unexpected)


def load_student_init(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    backbone_only: bool = False,
) -> InitReport:
    """Initialise a classification student from a file or state dict (module docstring).

    Raises:
        StudentInitError: the weights do not fit (the message lists the first keys).
        FileNotFoundError, ValueError: the file is missing or unreadable.
    """
    state = dict(source) if isinstance(source, Mapping) else load_teacher_state(source)
    if not backbone_only:
        try:
            check_state_dict(model, state, model_name="the student")
        except CheckpointMismatch as error:
            raise StudentInitError(
                f"{error} (backbone_only loads all but the classifier)"
            ) from None
        model.load_state_dict(state, strict=True)
        return InitReport("whole", len(state))
    body = {k: v for k, v in state.items() if k not in _CLASSIFIER_PARAMS}
    report = load_partial(model, body, layout="backbone", what="student")
    report.missing = [k for k in report.missing if k not in _CLASSIFIER_PARAMS]
    return report


def student_init_source(
    spec: Mapping[str, Any], explicit: str | os.PathLike[str] | None
) -> tuple[str | os.PathLike[str], bool] | None:
    """``(file, backbone_only)`` of the spec's ``student.init``, ``None`` without one.

    ``explicit`` is the file the service resolved from the init's checkpoint or job id; the
    CLI's spec names a ``path`` instead.
    """
    init = (spec.get("student") or {}).get("init")
    if not init:
        return None
    source = explicit if explicit is not None else init.get("path")
    if source is None:
        raise ValueError("student.init names a checkpoint or job, but no file was resolved")
    return source, bool(init.get("backbone_only", False))
