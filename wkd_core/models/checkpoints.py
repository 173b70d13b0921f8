"""Reading teacher checkpoints and loading them strictly, with errors a user can act on.

Formats read by :func:`load_teacher_state`:

- ``.safetensors``: a flat tensor file;
- ``.pth`` / ``.pt`` (anything else): ``torch.load(..., weights_only=True)`` of a plain state
  dict, or a dict holding one under ``"model"`` (RepDistiller and mdistiller teachers),
  ``"state_dict"``, ``"model_state_dict"`` or ``"net"``.

Keys prefixed ``module.`` (saved from ``DataParallel`` / ``DistributedDataParallel``) are
stripped.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

# Where the known training scripts nest the weights, in the order they are tried.
_NESTING_KEYS = ("model", "state_dict", "model_state_dict", "net")
# The final classifier weight of the zoo's families (``infer_num_classes``).
_CLASSIFIER_KEYS = ("fc.weight", "linear.weight", "classifier.weight", "classifier.0.weight")
_CLASSIFIER_KEYS += ("classifier.1.weight",)  # torchvision's MobileNetV2 (after its dropout)
_CLASSIFIER_KEYS += ("head.weight", "head.fc.weight")  # timm: ViT / Mixer, Swin / ConvNeXt
_CLASSIFIER_PARAMS = frozenset(
    _CLASSIFIER_KEYS + tuple(k.replace(".weight", ".bias") for k in _CLASSIFIER_KEYS)
)
_SHOWN = 5  # how many differing keys an error message lists per kind


class CheckpointMismatch(ValueError):  # noqa: N818  (the name is the documented contract)
    """A state dict does not fit a model: the message names the first differing keys.

    Attributes:
        missing: keys the model has and the checkpoint lacks.
        unexpected: keys the checkpoint has and the model lacks.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys in both.
    """

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        *,
        model_name: str = "the model",
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        super().__init__(_mismatch_message(missing, unexpected, mismatched, model_name))


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _mismatch_message(
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    model_name: str,
) -> str:
    parts = []
    if mismatched:
        shapes = [f"{k}: checkpoint {tuple(c)} vs model {tuple(m)}" for k, c, m in mismatched]
        parts.append("shape mismatch: " + _listing(shapes))
    if missing:
        parts.append(f"{len(missing)} missing keys: " + _listing(missing))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: " + _listing(unexpected))
    hint = ""
    if mismatched and all(k in _CLASSIFIER_PARAMS for k, _, _ in mismatched):
        hint = " (different number of classes?)"
    elif missing or unexpected:
        hint = " (a checkpoint of another architecture?)"
    return f"checkpoint does not fit {model_name}{hint}: " + "; ".join(parts)


def _unwrap(obj: object, source: str) -> dict[str, Tensor]:
    """Finds the state dict inside what ``torch.load`` returned."""
    for _ in range(3):  # e.g. {"model": {"state_dict": …}}: a couple of levels at most
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
        f"{source}: no state dict found (expected a dict of tensors, possibly under one of "
        f"{', '.join(_NESTING_KEYS)}); got {keys}"
    )


def strip_prefix(state: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Removes ``prefix`` from the keys when every key carries it (DataParallel files)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def load_teacher_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Reads a checkpoint file into a flat CPU state dict (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable with ``weights_only=True``, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return strip_prefix(load_file(str(path), device="cpu"))
        except SafetensorError as error:  # truncated, empty or not safetensors at all
            raise ValueError(f"{path}: not a readable safetensors file: {error}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError) as error:
        # KeyError: neither a zip archive nor a legacy pickle (e.g. a text file)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if isinstance(error, KeyError):
            first_line = f"not a torch.save file ({error!r})"
        raise ValueError(f"{path}: not a readable weights-only checkpoint: {first_line}") from error
    return strip_prefix(_unwrap(obj, str(path)))


def check_state_dict(
    model: nn.Module, state: Mapping[str, Tensor], *, model_name: str | None = None
) -> None:
    """Raises :class:`CheckpointMismatch` unless ``state`` has exactly the model's keys and shapes.

    Missing ``num_batches_tracked`` buffers are tolerated, as ``load_state_dict`` fills
    them (checkpoints from PyTorch < 0.4.1 lack them).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        name = model_name or type(model).__name__
        raise CheckpointMismatch(missing, unexpected, mismatched, model_name=name)


def load_checkpoint_into(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    model_name: str | None = None,
) -> nn.Module:
    """Loads a checkpoint file or a state dict into ``model`` with ``strict=True`` semantics.

    Args:
        model: the freshly built architecture.
        source: a path (any format of :func:`load_teacher_state`) or a state dict.
        model_name: how the error message names the model (defaults to its class name).

    Returns:
        ``model``, for chaining.

    Raises:
        CheckpointMismatch: keys or shapes differ (the message lists the first ones).
    """
    state = strip_prefix(source) if isinstance(source, Mapping) else load_teacher_state(source)
    check_state_dict(model, state, model_name=model_name)
    model.load_state_dict(state, strict=True)
    return model


def infer_num_classes(state: Mapping[str, Tensor]) -> int | None:
    """The class count of a zoo checkpoint (rows of its classifier weight), if recognisable."""
    state = strip_prefix(state)
    for key in _CLASSIFIER_KEYS:
        weight = state.get(key)
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[0])
    return None
