"""Uploaded WKD-L cost matrices: the checks the torch-free API can make at upload time.

A cost matrix is the authors' format (``wkd_cost_matrix/*/linear_cka.pth``): one C×C float
tensor of D = 1 − CKA, saved with ``torch.save``, or the same tensor as the only entry of a
``.safetensors`` file. The API reads no tensor data: for safetensors it checks the header
(one tensor, 2-D, square, C = the declared ``num_classes``, a float dtype); for ``.pth``/``.pt``
that the file is a ``torch.save`` zip archive. The content (square, finite, symmetric, C
matching the job's dataset) is checked by the worker when the job starts
(``wkd_core.losses.interrelations.load_distance_matrix``); a bad file fails the job with
``invalid_input`` and says what is wrong.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from service import storage

KINDS = ("teacher", "cost_matrix")
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def upload_errors(path: Path, suffix: str, num_classes: int) -> list[str]:
    """What is wrong with an uploaded cost-matrix file, as far as the header tells."""
    if suffix == ".safetensors":
        return _safetensors_errors(path, num_classes)
    if not zipfile.is_zipfile(path):
        return ["not a torch.save file (expected the zip format of torch >= 1.6)"]
    with zipfile.ZipFile(path) as archive:
        if not any(name.endswith("/data.pkl") for name in archive.namelist()):
            return ["not a torch.save file: the archive has no data.pkl"]
    return []


def _safetensors_errors(path: Path, num_classes: int) -> list[str]:
    try:
        header = storage.safetensors_header(path)
    except ValueError as error:
        return [str(error)]
    if len(header) != 1:
        return [f"a cost matrix file holds exactly one tensor, this one holds {len(header)}"]
    (info,) = header.values()
    shape, dtype = info.get("shape"), info.get("dtype")
    if not isinstance(shape, list) or len(shape) != 2 or shape[0] != shape[1]:
        return [f"the cost matrix must be square (C, C), got shape {shape}"]
    errors = []
    if shape[0] != num_classes:
        errors.append(f"the matrix is {shape[0]}x{shape[1]} but num_classes is {num_classes}")
    if dtype not in FLOAT_DTYPES:
        errors.append(f"the matrix must hold floating-point values, got dtype {dtype}")
    return errors
