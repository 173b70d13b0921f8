"""WKD-L's category distance matrices as files: the authors' ``torch.save`` form and
one-tensor ``.safetensors`` (what the service's upload also takes), and the checks every
matrix passes, loaded or computed (square, C×C, finite, symmetric, zero diagonal, ≥ 0).

Reference: Lv, Yang, Li, NeurIPS 2024, §3.1 (D = 1 − IR).
"""

from __future__ import annotations

import pickle
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor

# A D = 1 − IR matrix has a zero diagonal and no negative entries; these tolerances leave room
# for float32 round-off (the authors' files hold 1 − CKA(X_i, X_i) computed in float32).
_DIAGONAL_TOL = 1e-4
_NEGATIVE_TOL = 1e-6


def save_distance_matrix(distance: Tensor, path: str | PathLike[str]) -> None:
    """Save in the authors' format: one (C, C) tensor of D = 1 − IR with ``torch.save``."""
    _validate(distance, None)
    torch.save(distance.detach().to("cpu", torch.float32).contiguous(), path)


def load_distance_matrix(path: str | PathLike[str], *, num_classes: int | None = None) -> Tensor:
    """Load a (C, C) D = 1 − IR tensor saved with ``torch.save`` (the authors' shipped format)
    or as the one tensor of a ``.safetensors`` file (what the service's upload also takes).

    The authors saved theirs on ``cuda:0``; ``map_location="cpu"`` makes them load on a
    CPU-only machine. ``weights_only=True``: a file can hold tensors, never code.

    Returns:
        (C, C) float32 CPU tensor.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no tensor, or one that is not square, not of size
            ``num_classes``, not finite, not symmetric, with a diagonal away from 0 (more than
            1e-4: the similarity IR rather than D = 1 − IR?) or negative entries (below −1e-6).
    """
    if Path(path).suffix == ".safetensors":  # the service also takes one-tensor safetensors
        obj = _single_safetensor(path)
        _validate(obj, num_classes)
        return obj.to(torch.float32).contiguous()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError) as err:
        # KeyError: a file that is neither a zip archive nor a legacy pickle (e.g. text)
        raise ValueError(
            f"cannot read a distance matrix from {path}: not a torch.save file ({err!r})"
        ) from err
    if not isinstance(obj, Tensor):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a (C, C) tensor")
    _validate(obj, num_classes)
    return obj.to(torch.float32).contiguous()


def _single_safetensor(path: str | PathLike[str]) -> Tensor:
    """The one tensor of a ``.safetensors`` file (what a cost-matrix upload may be)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise ValueError(f"cannot read a distance matrix from {path}: {err}") from None
    if len(tensors) != 1:
        raise ValueError(f"{path} holds {len(tensors)} tensors, not one (C, C) tensor")
    return next(iter(tensors.values()))


def check_distance_matrix(distance: Tensor, num_classes: int | None = None) -> None:
    """The checks :func:`load_distance_matrix` applies, for a matrix computed in memory
    (a ValueError: not square, not C×C, not finite, not symmetric, diagonal not 0, negative)."""
    _validate(distance, num_classes)


def _validate(distance: Tensor, num_classes: int | None) -> None:
    if not isinstance(distance, Tensor):
        raise TypeError(f"distance must be a torch.Tensor, got {type(distance).__name__}")
    if distance.dim() != 2 or distance.shape[0] != distance.shape[1]:
        raise ValueError(f"distance matrix must be square (C, C), got {tuple(distance.shape)}")
    if num_classes is not None and distance.shape[0] != num_classes:
        raise ValueError(
            f"distance matrix is {distance.shape[0]}x{distance.shape[0]}, "
            f"expected {num_classes}x{num_classes}"
        )
    if not distance.is_floating_point() or not bool(torch.isfinite(distance).all()):
        raise ValueError("distance matrix must hold finite floating-point values")
    if not torch.allclose(distance, distance.T, atol=1e-5, rtol=1e-4):
        raise ValueError("distance matrix is not symmetric")
    diagonal = distance.diagonal().abs().max().item() if distance.numel() else 0.0
    if diagonal > _DIAGONAL_TOL:
        raise ValueError(
            f"distance matrix has diagonal entries up to {diagonal:.4g}, expected 0 "
            "(D(i, i) = 1 − IR(i, i) = 0): is this the similarity IR? Pass D = 1 − IR"
        )
    lowest = distance.min().item() if distance.numel() else 0.0
    if lowest < -_NEGATIVE_TOL:
        raise ValueError(
            f"distance matrix has negative entries (min {lowest:.4g}): D = 1 − IR must be >= 0"
        )
