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
import math
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


# Bytes per element of the safetensors dtypes.
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                      "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
                      "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}  # fmt: skip


def safetensors_header(path: Path, *, max_header: int = 100 * 1024 * 1024) -> dict:
    """The JSON header of a ``.safetensors`` file (tensor names → dtype, shape, offsets).

    The format is an 8-byte little-endian header length, that many bytes of JSON, then the
    data. No tensor data is read, but every entry is checked against the format: a
    ``dtype`` it knows, a ``shape`` of non-negative integers and ``data_offsets`` that lie
    in the file and span exactly the shape's bytes (a truncated file fails here). Raises
    ``ValueError`` for anything that is not such a file.
    """
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError("not a safetensors file: too short")
        (length,) = struct.unpack("<Q", raw)
        if length > max_header:
            raise ValueError("not a safetensors file: header too large")
        header = handle.read(length)
        if len(header) != length:
            raise ValueError("not a safetensors file: the header is cut short")
        data_bytes = os.fstat(handle.fileno()).st_size - 8 - length
    try:
        parsed = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError("not a safetensors file: header is not JSON") from error
    if not isinstance(parsed, dict):
        raise ValueError("not a safetensors file: header is not an object")
    parsed.pop("__metadata__", None)
    for name, info in parsed.items():
        problem = _entry_problem(info, data_bytes)
        if problem:
            raise ValueError(f"not a safetensors file: tensor {name[:80]!r}: {problem}")
    return parsed


def _entry_problem(info: object, data_bytes: int) -> str | None:
    """What is wrong with one header entry, or ``None``."""
    if not isinstance(info, dict):
        return "its entry is not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        return f"unknown dtype {str(dtype)[:20]!r}"
    if not (isinstance(shape, list) and all(_count(d) for d in shape)):
        return "shape is not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)):
        return "data_offsets is not [begin, end]"
    begin, end = offsets
    if not begin <= end <= data_bytes:
        return "its data lie outside the file (a truncated file?)"
    if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
        return "its data size does not match its shape and dtype"
    return None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
