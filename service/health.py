"""Dependency checks for ``GET /healthz``: the database and the broker, each on its own.

Each check returns ``"ok"`` or a short reason (an exception's class name and first line, no
traceback, no credentials), and takes at most about ``timeout_s``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine

from service.db import ping
from service.settings import Settings


def _reason(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0][:200]}" if lines else type(original).__name__


def database_status(engine: Engine) -> str:
    """``SELECT 1`` on a pooled connection."""
    try:
        ping(engine)
    except Exception as error:
        return _reason(error)
    return "ok"


def broker_status(settings: Settings, timeout_s: float = 2.0) -> str:
    """Redis: ``PING``; the filesystem broker: its queue folder is writable; else a connect."""
    url = settings.broker_url
    try:
        if url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            client = redis.Redis.from_url(
                url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
            )
            try:
                client.ping()
            finally:
                client.close()
        elif url.startswith("filesystem"):
            folder = Path(settings.broker_transport_options()["data_folder_in"])
            if not (folder.is_dir() and os.access(folder, os.W_OK)):
                return f"queue folder {folder.name!r} is missing or read-only"
        else:
            from kombu import Connection

            with Connection(url, connect_timeout=timeout_s) as connection:
                connection.ensure_connection(max_retries=1)
    except Exception as error:
        return _reason(error)
    return "ok"
