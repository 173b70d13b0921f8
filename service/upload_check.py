"""Check an uploaded checkpoint in a child process: :func:`check_upload`.

The check (``service/checkpoint_check.py``, standard library only) runs under
``python -I -S`` with an address-space limit, a CPU-time limit and a wall-clock timeout from
the settings, so a hostile file can cost the server a bounded amount of memory and time and
never runs in the API process (which stays torch-free and keeps serving).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from service import checkpoint_check
from service.settings import Settings

log = logging.getLogger(__name__)
CHECKER = Path(checkpoint_check.__file__)


class UploadRejectedError(ValueError):
    """The file is not an acceptable checkpoint; ``str()`` is the message for the user."""


def check_upload(path: Path, settings: Settings, *, content: str = "state_dict") -> dict:
    """The checker's report (``format``, ``tensors``, ``shapes``), else
    :class:`UploadRejectedError`. ``content="tensor"``: one tensor (a cost matrix)."""
    limits = [str(settings.upload_check_memory_bytes), str(settings.upload_check_cpu_s)]
    command = [sys.executable, "-I", "-S", str(CHECKER), str(path), *limits, content]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=settings.upload_check_timeout_s
        )
    except subprocess.TimeoutExpired:
        raise UploadRejectedError("checking the file took too long") from None
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        log.warning("checkpoint check of %s ended with %s: %s", path.name, done.returncode,
                    done.stderr[-2000:])  # fmt: skip
        raise UploadRejectedError("the file could not be checked within the server's "
                                  "memory and time limits") from None  # fmt: skip
    if not report.get("ok"):
        raise UploadRejectedError(report.get("message") or "not an acceptable checkpoint")
    return report


def classifier_outputs(shapes: dict[str, list[int]]) -> int | None:
    """The classifier's output count from tensor shapes (see ``storage.classifier_outputs``)."""
    from service import storage

    return storage.classifier_outputs({k: {"shape": v} for k, v in shapes.items()})
