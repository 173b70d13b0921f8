"""How a supervised runner ended: the terminal state (or retry) of a job its runner left open.

The runner finishes its own job row whenever it can (succeeded, cancelled, failed with a
reason). When it could not (it was killed, it crashed hard, it was stopped for a shutdown),
the supervisor decides here, from the runner's verdict file, its exit status, the reason the
supervisor stopped it and the evidence of memory exhaustion:

- ``out_of_memory`` only with evidence: the runner's own verdict (a CUDA or host allocation
  error it caught), an allocation error in its stderr, or an ``oom_kill`` count that rose in
  the cgroup's ``memory.events`` while it ran;
- any other death by a signal the supervisor did not send is retried from the last epoch
  checkpoint while attempts remain (``RETRY``), and fails with ``worker_lost`` after;
- a crash without a signal is ``internal``.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from service.settings import Settings
from service.tables import FailureReason, Job, JobStatus

# Markers of an allocation failure in a runner's stderr (a crash before it could report).
OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "MemoryError", "std::bad_alloc",
               "Cannot allocate memory")  # fmt: skip
RETRY = "retry"  # verdict_of's status for "run this attempt again"


def cgroup_memory_events() -> Path | None:
    """``memory.events`` of this process's cgroup (v2), or ``None`` outside one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            path = Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "memory.events"
            return path if path.is_file() else None
    return None


def oom_kill_count(path: Path | None = None) -> int | None:
    """The cgroup's ``oom_kill`` counter (kills by the kernel's OOM killer), if readable."""
    path = path if path is not None else cgroup_memory_events()
    if path is None:
        return None
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def verdict_of(
    job: Job,
    returncode: int,
    stop_reason: str | None,
    verdict: dict | None,
    settings: Settings,
    *,
    oom_evidence: bool = False,
) -> tuple[JobStatus | str, FailureReason | None, str | None]:
    """The terminal state of a job the runner left unfinished, or ``(RETRY, reason, msg)``."""
    if stop_reason == "time_limit":
        message = f"the job ran past its time limit of {settings.job_time_limit_s} s"
        return JobStatus.failed, FailureReason.time_limit, message
    if job.cancel_requested_at is not None:
        return JobStatus.cancelled, None, "cancelled by request"
    if verdict and verdict.get("status") == "failed":
        reason = FailureReason(verdict.get("failure_reason") or "internal")
        return JobStatus.failed, reason, verdict.get("message")
    if returncode < 0 or returncode == 128 + signal.SIGKILL:
        name = _signal_name(-returncode if returncode < 0 else signal.SIGKILL)
        if oom_evidence:
            message = f"the job ran out of memory (its process was killed by {name})"
            return JobStatus.failed, FailureReason.out_of_memory, message
        return RETRY, FailureReason.worker_lost, f"the job process was killed by {name}"
    detail = (verdict or {}).get("message") or f"exit status {returncode}"
    return JobStatus.failed, FailureReason.internal, f"the job process ended early: {detail}"


def stderr_shows_oom(text: str) -> bool:
    return any(marker in text for marker in OOM_MARKERS)


def read_verdict(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tail(path: Path, chars: int = 4000) -> str:
    """The end of a text file ('' when missing), for the operator's log."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(handle.tell() - chars, 0))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_ABSOLUTE_PATH = re.compile(r"(?<![\w.>])(/[^\s'\":,;()\[\]]+)")


def redact_paths(text: str | None, settings: Settings) -> str | None:
    """A message fit for users: the server's folders by name, other absolute paths cut
    to their last component (``/srv/wkd/datasets/cifar10`` → ``<datasets>/cifar10``)."""
    if not text:
        return text
    roots = {"artifacts": settings.artifact_dir, "checkpoints": settings.checkpoint_dir,
             "datasets": settings.dataset_root, "cache": settings.cache_dir,
             "data": settings.data_dir}  # fmt: skip
    for name, root in roots.items():  # the most specific folders first: data is their parent
        absolute = str(Path(root).absolute())
        text = text.replace(absolute, f"<{name}>")
    return _ABSOLUTE_PATH.sub(lambda m: Path(m.group(1)).name or "/", text)
