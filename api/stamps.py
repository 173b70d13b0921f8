"""The cache check of ``GET /jobs/{id}`` without a thread: the light key-and-``updated_at``
query on a few asyncio psycopg connections of the API process's own event loop.

A poll whose document is cached needs one indexed lookup. Run through SQLAlchemy it needs a
thread-pool hop, and on a 2-core machine the hop and the threads' fight for the GIL were
about a third of the whole request's CPU (docs/benchmarks.md, "API"). Here the statement
is the same one :func:`service.accounts.key_and_job_stamp` runs (compiled once for
PostgreSQL), sent with psycopg's own async connection, autocommit, prepared by psycopg after
a few uses.

Only PostgreSQL (``None`` for SQLite). Nothing here decides an answer alone: a miss, an
unknown key and any error (the database away, a dropped connection) send the request down
the thread path, which renders the document and answers 401, 404 or 503 as every other
endpoint does; a connection that failed is closed, never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import psycopg
from sqlalchemy import Engine

from service.accounts import KEY_AND_JOB_STAMP, hash_key


class StampReader:
    """At most ``size`` psycopg ``AsyncConnection`` s, opened when first needed."""

    def __init__(self, engine: Engine, *, size: int, connect_timeout_s: int = 5) -> None:
        url = engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._connect_timeout_s = connect_timeout_s
        self._sql = str(KEY_AND_JOB_STAMP.compile(dialect=engine.dialect))
        self._slots = asyncio.Semaphore(size)
        self._idle: list[psycopg.AsyncConnection] = []

    @classmethod
    def for_engine(cls, engine: Engine, *, size: int) -> StampReader | None:
        return cls(engine, size=size) if engine.dialect.name == "postgresql" else None

    async def stamp(self, plaintext: str, job_id: str) -> tuple[str, datetime | None] | None:
        """``(key id, the job's updated_at or None)`` for an unrevoked key, else ``None``;
        raises whatever psycopg raised (the caller falls back to the thread path)."""
        params = {"job_id": job_id, "key_hash": hash_key(plaintext)}
        async with self._slots:
            connection = self._idle.pop() if self._idle else await self._connect()
            try:
                cursor = await connection.execute(self._sql, params)
                row = await cursor.fetchone()
            except BaseException:  # an error, or the client gone mid-query: never reuse it
                with contextlib.suppress(Exception):
                    await connection.close()
                raise
            self._idle.append(connection)
        if row is None:
            return None
        key_id, found, updated_at = row
        return key_id, (updated_at.astimezone(UTC) if found is not None else None)

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=self._connect_timeout_s
        )

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.close()
