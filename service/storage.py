"""Local file storage for uploaded teachers and job artifacts.

Users never name a path. Uploaded checkpoints are stored as ``<checkpoint_dir>/<ck_id><ext>``;
a job's artifacts live in ``<artifact_dir>/<job_id>/`` under the names the worker gives
them. Paths in the database are relative to those roots, and :func:`safe_join` is the one
choke point that turns a stored relative path back into a file, refusing anything that would
leave the root (``..``, absolute paths, symlinks pointing out).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
# \Z, not $: "$" also matches before a trailing newline ("job_…\n" is not an id).
JOB_ID = re.compile(r"^job_[0-9a-f]{24}\Z")
STUDY_ID = re.compile(r"^study_[0-9a-f]{24}\Z")
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class UploadTooLargeError(Exception):
    pass


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, or ``ValueError`` if it would not stay under ``root``."""
    if not relative or os.path.isabs(relative) or "\\" in relative or "\x00" in relative:
        raise ValueError(f"unsafe path {relative!r}")
    if any(part in ("", ".", "..") for part in relative.split("/")):
        raise ValueError(f"unsafe path {relative!r}")
    base = Path(os.path.realpath(root))
    full = Path(os.path.realpath(base / relative))
    if os.path.commonpath([full, base]) != str(base):
        raise ValueError(f"unsafe path {relative!r}")
    return full


def job_dir(artifact_dir: Path, job_id: str) -> Path:
    """The folder of one job's artifacts (created on demand)."""
    if not JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    folder = Path(artifact_dir) / job_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def artifact_relpath(job_id: str, name: str) -> str:
    """The stored (relative) path of a job's artifact; names are the worker's own."""
    if not JOB_ID.match(job_id) or not ARTIFACT_NAME.match(name):
        raise ValueError(f"invalid artifact {job_id!r}/{name!r}")
    return f"{job_id}/{name}"


def checkpoint_suffix(filename: str) -> str:
    """The accepted extension of an uploaded file name, else ``ValueError``."""
    suffix = "".join(Path(filename).suffixes[-1:]).lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"checkpoint files must end in one of {', '.join(CHECKPOINT_SUFFIXES)}")
    return suffix


def save_stream(source: BinaryIO, destination: Path, *, max_bytes: int) -> tuple[int, str]:
    """Copy ``source`` to ``destination`` in chunks; returns (size, sha256 hex).

    Writes to a temporary name first and renames at the end, so a reader never sees half a
    file; raises :class:`UploadTooLargeError` (and removes the partial file) past ``max_bytes``.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    digest, size = hashlib.sha256(), 0
    try:
        with open(partial, "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLargeError(f"upload exceeds {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def iter_file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def safetensors_header(path: Path) -> dict:
    """The JSON header of a ``.safetensors`` file (tensor names → dtype, shape, offsets),
    checked first as the upload's child process checks it
    (:func:`service.checkpoint_check.check_safetensors`: known dtypes, shapes, data offsets
    that tile the data section exactly, so a truncated file fails here). No tensor data is
    read. Raises ``ValueError`` for anything that is not such a file.
    """
    from service.checkpoint_check import CheckError, check_safetensors

    try:
        check_safetensors(str(path))
    except CheckError as error:
        raise ValueError(str(error)) from None
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        parsed = json.loads(handle.read(length))
    parsed.pop("__metadata__", None)
    return parsed


def classifier_outputs(header: dict) -> int | None:
    """The output count of the classifier in a safetensors header, if one can be found.

    Every model in the catalog ends in an ``nn.Linear`` named ``fc``, ``linear``,
    ``classifier`` or ``classifier.<i>``; its 2-D ``.weight`` has shape (num_classes, D).
    The last such weight in the file wins (VGG's classifier is a single Linear). A detector
    (Faster R-CNN) counts object classes: its ``cls_score`` rows less the background.
    """
    found = None
    for name, info in header.items():
        leaf = name.removeprefix("module.")
        if leaf == "roi_heads.box_predictor.cls_score.weight" and isinstance(info, dict):
            shape = info.get("shape")
            return int(shape[0]) - 1 if isinstance(shape, list) and len(shape) == 2 else None
        if not leaf.endswith(".weight") or not isinstance(info, dict):
            continue
        head = leaf[: -len(".weight")].split(".")[0]
        shape = info.get("shape")
        if head in ("fc", "linear", "classifier") and isinstance(shape, list) and len(shape) == 2:
            found = int(shape[0])
    return found
