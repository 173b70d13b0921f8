"""A torch-free check of an uploaded checkpoint, run in a child process with resource limits.

    python -I -S service/checkpoint_check.py FILE MEMORY_BYTES CPU_SECONDS

prints one JSON line: ``{"ok": true, "format": ..., "tensors": N, "shapes": {...}}`` or
``{"ok": false, "message": ...}``. The file imports only the standard library, so the API
can run it with ``-I -S`` (no site-packages, no project on the path): it starts in
milliseconds and a crafted file cannot reach more code than this.

What it accepts is what ``wkd_core`` later loads:

- ``.safetensors``: the 8-byte header length, a JSON header whose tensors have a known dtype,
  a shape and ``data_offsets`` that tile the data section exactly.
- ``.pth`` / ``.pt``: the zip container of ``torch.save`` (PyTorch ≥ 1.6). ``data.pkl`` is
  unpickled with an allow-list of the globals ``torch.load(weights_only=True)`` accepts for a
  state dict (``OrderedDict``, ``_rebuild_tensor_v2``, ``_rebuild_parameter``, the storage
  classes), each replaced by an inert stand-in; every storage a tensor points to must be a
  member of the archive of exactly the size its element count says, and every tensor must
  fit inside its storage. Anything else (``os.system``, ``builtins.eval``, …) is refused.
  The legacy (pre-1.6) format is refused with a message saying how to re-save it.

:func:`check_file` is the in-process entry point (tests); :func:`run_limited` in
``service/upload_check.py`` is how the API runs it.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict

MAX_PICKLE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024
NESTING_KEYS = ("model", "state_dict", "model_state_dict", "net")

STORAGE_ITEMSIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}  # fmt: skip
SAFETENSORS_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
    "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8,
}  # fmt: skip


class CheckError(Exception):
    """The file is not an acceptable checkpoint; the message says why (shown to the user)."""


# ---------------------------------------------------------------------------- safetensors
def check_safetensors(path: str) -> dict:
    """Header and offsets of a ``.safetensors`` file; returns the tensor shapes by name."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(0)
        raw = handle.read(8)
        if len(raw) != 8:
            raise CheckError("not a safetensors file: too short")
        (length,) = struct.unpack("<Q", raw)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise CheckError("not a safetensors file: header length exceeds the file")
        header_bytes = handle.read(length)
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, ValueError):
        raise CheckError("not a safetensors file: header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckError("not a safetensors file: header is not an object")
    header.pop("__metadata__", None)
    spans, shapes = [], {}
    for name, info in header.items():
        begin, end, shape = _safetensors_entry(name, info)
        spans.append((begin, end, name))
        shapes[name] = shape
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise CheckError(f"tensor {name!r}: data offsets overlap or leave a gap")
        position = end
    if position != size - 8 - length:
        raise CheckError("the data section does not match the tensors' offsets (truncated?)")
    if not shapes:
        raise CheckError("the file holds no tensors")
    return {"format": "safetensors", "tensors": len(shapes), "shapes": shapes}


def _safetensors_entry(name: str, info: object) -> tuple[int, int, list[int]]:
    if not isinstance(info, dict):
        raise CheckError(f"tensor {name!r}: malformed header entry")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_ITEMSIZE:
        raise CheckError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not _dims(shape):
        raise CheckError(f"tensor {name!r}: malformed shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and _dims(offsets)):
        raise CheckError(f"tensor {name!r}: malformed data_offsets")
    begin, end = offsets
    if end - begin != math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]:
        raise CheckError(f"tensor {name!r}: data size does not match dtype and shape")
    return begin, end, list(shape)


def _dims(values: object) -> bool:
    return isinstance(values, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    )


# ------------------------------------------------------------------------- torch zip files
class _Storage:
    def __init__(self, key: str, numel: int, itemsize: int) -> None:
        self.key, self.numel, self.itemsize = key, numel, itemsize


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.itemsize = STORAGE_ITEMSIZE[name]


class _Tensor:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def _rebuild_tensor(storage, offset, size, stride, *_rest) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise CheckError("a tensor does not point at a storage")
    if not (_dims(size) and _dims(stride) and len(size) == len(stride) and _dims([offset])):
        raise CheckError("a tensor has a malformed size, stride or offset")
    if all(size):
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
        if extent > storage.numel:
            raise CheckError(f"a tensor reaches past the end of storage {storage.key!r}")
    return _Tensor(tuple(size))


def _rebuild_parameter(data, *_rest):
    if not isinstance(data, _Tensor):
        raise CheckError("a parameter holds no tensor")
    return data


def _size(*args):
    return tuple(*args)


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _Unpickler(pickle.Unpickler):
    """Builds stand-ins for the allowed globals; refuses every other global."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.members = {i.filename: i.file_size for i in archive.infolist()}

    def find_class(self, module: str, name: str):
        if module == "torch" and name in STORAGE_ITEMSIZE:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise CheckError(f"the checkpoint refers to {module}.{name}, which a weights-only "
                         "load does not allow (save a plain state dict)")  # fmt: skip

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckError("malformed storage reference")
        _tag, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or not _dims([numel]):
            raise CheckError("malformed storage reference")
        member = f"{self.prefix}/data/{key}"
        if member not in self.members:
            raise CheckError(f"storage {key!r} is missing from the archive (truncated?)")
        if self.members[member] != numel * kind.itemsize:
            raise CheckError(f"storage {key!r} has {self.members[member]} bytes, "
                             f"expected {numel * kind.itemsize}")  # fmt: skip
        return _Storage(key, numel, kind.itemsize)


def check_torch_zip(path: str, content: str = "state_dict") -> dict:
    """A ``torch.save`` zip archive whose ``data.pkl`` holds a state dict of tensors, or,
    with ``content="tensor"``, one tensor (an uploaded cost matrix)."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic:
        raise CheckError("the file is empty")
    if magic[:1] == b"\x80" or (not magic.startswith(b"PK") and _is_tar(path)):
        raise CheckError("the legacy torch.save format (PyTorch < 1.6) is not supported; "
                         "re-save with a current torch.save or as .safetensors")  # fmt: skip
    if not magic.startswith(b"PK"):
        raise CheckError("not a PyTorch checkpoint (expected the zip archive of torch.save)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise CheckError("not a readable zip archive (truncated or corrupt file)") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckError("not a torch.save archive: expected one <name>/data.pkl")
        prefix = pickles[0].split("/")[0]
        info = archive.getinfo(pickles[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckError("data.pkl is implausibly large")
        try:
            if archive.testzip() is not None:
                raise CheckError("the archive is corrupt (a member fails its CRC)")
            data = archive.read(pickles[0])
        # zipfile raises NotImplementedError for a compression method it cannot read (torch
        # writes stored members only): a file from elsewhere, refused like a corrupt one.
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
            raise CheckError("the archive is corrupt or truncated") from None
        try:
            obj = _Unpickler(data, archive, prefix).load()
        except CheckError:
            raise
        except RecursionError:
            raise CheckError("data.pkl is nested too deeply") from None
        except Exception as error:  # malformed pickle streams raise many kinds
            raise CheckError(f"data.pkl is not a valid pickle ({type(error).__name__})") from None
    if content == "tensor":
        if not isinstance(obj, _Tensor):
            raise CheckError("expected one tensor saved with torch.save")
        return {"format": "torch_zip", "tensors": 1, "shapes": {"tensor": list(obj.shape)}}
    state = _unwrap(obj)
    shapes = {name: list(tensor.shape) for name, tensor in state.items()}
    return {"format": "torch_zip", "tensors": len(shapes), "shapes": shapes}


def _is_tar(path: str) -> bool:
    import tarfile

    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _unwrap(obj: object) -> dict:
    """The state dict inside what was pickled, as ``wkd_core.models.checkpoints`` finds it."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, _Tensor) for v in obj.values()):
            if not all(isinstance(k, str) for k in obj):
                break
            return obj
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    raise CheckError("no state dict found (expected a dict of tensors, possibly under one of "
                     f"{', '.join(NESTING_KEYS)})")  # fmt: skip


# ----------------------------------------------------------------------------- entry points
def check_file(path: str, content: str = "state_dict") -> dict:
    """``{"ok": True, ...}`` or ``{"ok": False, "message": ...}`` for the file at ``path``."""
    try:
        if path.endswith(".safetensors"):
            result = check_safetensors(path)
        else:
            result = check_torch_zip(path, content)
    except CheckError as error:
        return {"ok": False, "message": str(error)}
    except MemoryError:
        return {"ok": False, "message": "checking the file needed too much memory"}
    return {"ok": True, **result}


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # writes nothing
    sys.setrecursionlimit(2000)


def main(argv: list[str]) -> int:
    path, memory_bytes, cpu_seconds = argv[0], int(argv[1]), int(argv[2])
    content = argv[3] if len(argv) > 3 else "state_dict"
    _limit(memory_bytes, cpu_seconds)
    sys.stdout.write(json.dumps(check_file(path, content)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
