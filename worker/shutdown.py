"""A warm shutdown that does not wait for the running job (docs/reliability.md, SIGTERM).

Celery's warm shutdown (SIGTERM to the main process) waits for the running task, which for
training is hours, so deployments end in SIGKILL with no clean stop. Instead:

1. the main process, on ``worker_shutting_down``, forwards SIGTERM to its pool processes
   (:func:`forward_to_pool`);
2. a pool process's SIGTERM handler (:func:`install_pool_handler`, which the task installs:
   billiard's own handler would exit the process at once) sets :data:`draining`;
3. the supervisor sees it at its next poll (``poll_s``), asks the runner to stop at its next
   batch (SIGTERM), waits at most ``runner_stop_grace_s`` before killing it, hands the job
   back to the queue without counting an attempt and sends it a new message; the task
   returns and Celery exits.

The job resumes, on this or another worker, from its last epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)

draining = threading.Event()


def install_pool_handler() -> None:
    """In a pool process: SIGTERM sets :data:`draining` instead of killing the process."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(_signum, _frame) -> None:
    draining.set()


def forward_to_pool() -> list[int]:
    """In the main process: SIGTERM to each child process (the pool); returns their pids."""
    sent = []
    for pid in child_pids(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            sent.append(pid)
    return sent


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (from /proc; Linux, as in the worker images)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may contain spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            children.append(int(entry.name))
    return children
