"""Small pieces the supervisor, the runner and the reaper share (torch-free)."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from service.db import make_engine, make_sessionmaker
from service.settings import Settings

SessionFactory = Callable[[], Session]

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
            _factories[key] = make_sessionmaker(make_engine(settings.database_url))
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
