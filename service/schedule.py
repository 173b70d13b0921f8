"""Scale a recipe's epoch-based schedule to the epochs a job asks for.

The released recipes run 240 (CIFAR) or 100 (ImageNet) epochs, with learning-rate milestones,
WKD's cosine-decay start and DKD's warm-up set in epochs (OFA-KD's: 300, with a learning-rate
warm-up in epochs). A job that sets ``training.epochs``
and leaves those alone would otherwise keep, say, milestones 150/180/210 in a 5-epoch run, and
its learning rate would never decay. So when ``epochs`` differs from the recipe's, every such
setting the job did not set itself is scaled by ``epochs / recipe epochs`` (rounded), and the
job's ``notes`` say what was changed.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

DEFAULT_EPOCHS = 240  # the TrainingSpec default, which the default milestones belong to
EPOCH_PARAMS = ("cosine_decay_epoch", "warmup_epochs")


def scaled_milestones(milestones: list[int], factor: float, epochs: int) -> list[int]:
    """Each milestone × factor, rounded, at least 1, below ``epochs``, without repeats."""
    out: list[int] = []
    for milestone in milestones:
        value = max(1, round(milestone * factor))
        if value < epochs and (not out or value > out[-1]):
            out.append(value)
    return out


def scale_schedule(
    explicit: Mapping[str, Any],
    *,
    recipe_epochs: int,
    milestones: list[int],
    params: dict[str, Any],
) -> tuple[list[int], dict[str, Any], list[str]]:
    """(milestones, params, notes) with the unset epoch-based settings scaled to the epochs.

    Args:
        explicit: what the job itself set (``model_dump(exclude_unset=True)``, before the
            preset is merged in).
        recipe_epochs: the epochs of the recipe the other values belong to (the preset's, or
            240 without a preset).
        milestones, params: the resolved values (preset and method defaults filled in).
    """
    training = explicit.get("training") or {}
    epochs = training.get("epochs")
    if epochs is None or epochs == recipe_epochs:
        return milestones, params, []
    factor = epochs / recipe_epochs
    notes = []
    if "lr_milestones" not in training:
        new = scaled_milestones(milestones, factor, epochs)
        if new != milestones:
            notes.append(
                f"training.lr_milestones scaled from {milestones} to {new} "
                f"({epochs} epochs instead of the recipe's {recipe_epochs})"
            )
            milestones = new
    set_params = explicit.get("params") or {}
    params = dict(params)
    for name in EPOCH_PARAMS:
        value = params.get(name)
        if name in set_params or not isinstance(value, int) or value == 0:
            continue
        new_value = max(1, round(value * factor))
        if new_value != value:
            params[name] = new_value
            notes.append(
                f"params.{name} scaled from {value} to {new_value} "
                f"({epochs} epochs instead of the recipe's {recipe_epochs})"
            )
    return milestones, params, notes


def scale_warmup(
    explicit: Mapping[str, Any], *, recipe_epochs: int, warmup_epochs: int
) -> tuple[int, list[str]]:
    """(warm-up epochs, notes): the learning-rate warm-up scaled like the milestones when the
    job sets ``epochs`` but not ``warmup_epochs``; at least 1 and below ``epochs``."""
    training = explicit.get("training") or {}
    epochs = training.get("epochs")
    if epochs is None or epochs == recipe_epochs or "warmup_epochs" in training:
        return warmup_epochs, []
    if warmup_epochs == 0:
        return 0, []
    new = min(max(1, round(warmup_epochs * epochs / recipe_epochs)), epochs - 1)
    if new == warmup_epochs:
        return warmup_epochs, []
    note = (
        f"training.warmup_epochs scaled from {warmup_epochs} to {new} "
        f"({epochs} epochs instead of the recipe's {recipe_epochs})"
    )
    return new, [note]


def task_training_defaults(task: str) -> dict[str, Any]:
    """The ``training`` values a job of ``task`` gets where it names no preset: none for
    classification (TrainingSpec's defaults), the COCO schedule for detection."""
    if task != "detection":
        return {}
    try:
        presets = importlib.import_module("wkd_core.presets")
    except ImportError:
        return {}
    return presets.detection_training_defaults()
