"""A warm spare runner: the next job's process, started before the job arrives.

Starting Python and importing torch, torchvision and the pipeline takes seconds (5–10 s on
a busy 2-core CPU), which would dominate the time from ``POST /jobs`` to ``running``. So
after each job the supervisor starts ``python -m worker.runner --standby``, which does those
imports and then blocks on its stdin; the next job is handed to it as one JSON line. Every
job still gets a fresh process that has never run anything (importing torch does not
initialise CUDA), so the isolation of the subprocess model is unchanged.

One spare per worker process (the supervisor runs one job at a time). A spare that died, or
was started with other settings, is discarded and the job starts cold. When the worker
exits, the spare reads end-of-file on its stdin and exits too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from service.settings import Settings
from worker.common import settings_env

log = logging.getLogger(__name__)


class Standby:
    """Holds at most one spare runner process."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._key: str | None = None
        self._lock = threading.Lock()

    def start(self, settings: Settings) -> None:
        """Start a spare for ``settings`` unless a live one is waiting already."""
        key = settings.model_dump_json()
        with self._lock:
            if self._process is not None and self._process.poll() is None and self._key == key:
                return
            self._discard()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "worker.runner", "--standby"], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=settings_env(settings), start_new_session=True,
            )  # fmt: skip
            self._key = key

    def hand_over(
        self, settings: Settings, *, job_id: str, result: Path, teacher: Path | None, log: Path
    ) -> subprocess.Popen | None:
        """Give the job to the waiting spare; ``None`` when there is no usable one."""
        with self._lock:
            process, key = self._process, self._key
            self._process = self._key = None
        if process is None:
            return None
        if process.poll() is not None or key != settings.model_dump_json():
            _kill(process)
            return None
        order = {"job_id": job_id, "result": str(result), "log": str(log),
                 "teacher": str(teacher) if teacher else None}  # fmt: skip
        try:
            process.stdin.write((json.dumps(order) + "\n").encode())
            process.stdin.close()
        except OSError:  # it died just now: start cold
            _kill(process)
            return None
        return process

    def stop(self) -> None:
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        if self._process is not None:
            _kill(self._process)
        self._process = self._key = None


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


standby = Standby()
