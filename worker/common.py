"""Small pieces the supervisor, the runner and the reaper share (torch-free): the session
factory, worker ids, the runner's environment and retries through an outage."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from service.db import make_sessionmaker, service_engine
from service.settings import Settings

SessionFactory = Callable[[], Session]
T = TypeVar("T")
log = logging.getLogger(__name__)

_factories: dict[tuple[int, str], SessionFactory] = {}
_lock = threading.Lock()


def session_factory(settings: Settings) -> SessionFactory:
    """A sessionmaker for ``settings.database_url``, one engine per process.

    Keyed by the process id because a connection pool must never cross a ``fork`` (Celery's
    prefork children inherit the parent's memory; service-notes §3.3).
    """
    key = (os.getpid(), settings.database_url)
    with _lock:
        if key not in _factories:
            _factories[key] = make_sessionmaker(service_engine(settings))
        return _factories[key]


def new_worker_id() -> str:
    """Identifies one claim of a job: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which ``Settings()`` reads back exactly ``settings``.

    The runner subprocess builds its settings from the environment; passing every field
    explicitly keeps it on the same database and folders as its supervisor, also when the
    supervisor was handed a ``Settings`` object instead of reading the environment (tests).
    """
    env = dict(os.environ if base is None else base)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"WKD_{name.upper()}"] = _env_value(value)
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_transient(error: BaseException) -> bool:
    """A database error worth retrying: the server is away, restarting or the connection
    dropped (SQLAlchemy's ``OperationalError``/``InterfaceError``, or an invalidated
    connection); never a constraint or programming error."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def retry_db(
    sessions: SessionFactory,
    action: Callable[[Session], T],
    *,
    what: str,
    budget_s: float,
    first_delay_s: float = 0.5,
    max_delay_s: float = 5.0,
) -> T:
    """``action(session)`` in a fresh session, retried through a database outage.

    Each try gets a new session (the pool's pre-ping replaces dead connections); the delay
    doubles up to ``max_delay_s``. After ``budget_s`` seconds the last error is raised. The
    actions retried here are idempotent (upserts, compare-and-sets), so a try whose commit
    went through but whose answer was lost does no harm when repeated.
    """

    def attempt() -> T:
        with sessions() as session:
            return action(session)

    return retry_outage(attempt, outage=_database_outage, what=what, budget_s=budget_s,
                        first_delay_s=first_delay_s, max_delay_s=max_delay_s)  # fmt: skip


def retry_outage(
    attempt: Callable[[], T],
    *,
    outage: Callable[[BaseException], str | None],
    what: str,
    budget_s: float,
    first_delay_s: float = 0.5,
    max_delay_s: float = 5.0,
) -> T:
    """``attempt()``, repeated while it fails with an error that ``outage`` names (a short
    reason such as ``database unavailable (OperationalError)``; ``None``: not an outage,
    raised at once). The delay doubles from ``first_delay_s`` up to ``max_delay_s``; the
    error is raised when the next try would start after ``budget_s`` seconds."""
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    while True:
        try:
            return attempt()
        except Exception as error:
            reason = outage(error)
            if reason is None or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: %s; retrying in %.1f s", what, reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


def _database_outage(error: BaseException) -> str | None:
    if isinstance(error, DBAPIError) and is_transient(error):
        return f"database unavailable ({type(error.orig).__name__})"
    return None


class OutageLog:
    """One warning when the database stops answering and one line when it answers again,
    instead of a traceback per poll (the supervisor polls once a second, the runner every
    few seconds of batches, and an outage may last minutes)."""

    def __init__(self, job_id: str, what: str) -> None:
        self.job_id, self.what = job_id, what
        self.down = False

    def failed(self, error: Exception) -> None:
        """A poll failed with ``error``: logged at the first failure of an outage only."""
        if not self.down:
            log.warning("job %s: database unreachable (%s); %s",
                        self.job_id, type(error).__name__, self.what)  # fmt: skip
        self.down = True

    def answered(self) -> None:
        """A poll succeeded: logged once when it ends an outage."""
        if self.down:
            log.info("job %s: database reachable again", self.job_id)
        self.down = False
