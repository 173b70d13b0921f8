"""The cache check of ``GET /jobs/{id}`` without a thread: the light key-and-``updated_at``
lookup on a few asyncio psycopg connections of the API process's own event loop, with the
lookups of concurrent polls sent together as one statement.

A poll whose document is cached needs one indexed lookup. Run through SQLAlchemy it needs a
thread-pool hop, and on a 2-core machine the hop and the threads' fight for the GIL were
about a third of the whole request's CPU (docs/benchmarks.md, "API"). Here the lookups wait
in a queue; at most ``in_flight`` statements run at once, each taking every lookup that
queued while the one before it ran (up to ``batch_max``, duplicates sent once), so under 64
pollers one round trip and one PostgreSQL execution serve dozens of requests, while a lone
poll still costs one round trip. The statement (:data:`service.accounts.KEY_AND_JOB_STAMPS_SQL`)
answers exactly what :func:`service.accounts.key_and_job_stamp` answers, per lookup.

Only PostgreSQL (``None`` for SQLite). Nothing here decides an answer alone: a miss, an
unknown key and any error (the database away, a dropped connection) send the request down
the thread path, which renders the document and answers 401, 404 or 503 as every other
endpoint does; a connection that failed is closed, never reused, and every lookup of its
statement gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import psycopg
from sqlalchemy import Engine

from service.accounts import KEY_AND_JOB_STAMPS_SQL, hash_key
from service.db import answering_async_connection

# Statements at once: while one runs the next batch gathers; a second overlaps PostgreSQL's
# execution with this process's own work on the results (docs/benchmarks.md, "API").
IN_FLIGHT = 2

Stamp = tuple[str, datetime | None] | None
_Lookup = tuple[str, str]  # (key hash, job id)


class StampReader:
    """Batched stamp lookups over at most ``in_flight`` psycopg ``AsyncConnection`` s,
    opened when first needed."""

    def __init__(
        self,
        engine: Engine,
        *,
        in_flight: int,
        batch_max: int = 128,
        answer_timeout_s: float | None = None,
    ) -> None:
        # the engine's own connection parameters, its connect and statement timeouts included
        # (service.db.make_engine puts them in the URL)
        _, params = engine.dialect.create_connect_args(engine.url)
        self._params = {k: v for k, v in params.items() if k != "context"}
        # a server silent this long is not answering (service.db.answer_timeout): give up
        self._connection_class = (
            psycopg.AsyncConnection
            if answer_timeout_s is None
            else answering_async_connection(answer_timeout_s)
        )
        self._in_flight_max = in_flight
        self._batch_max = batch_max
        self._in_flight = 0
        self._waiting: dict[_Lookup, list[asyncio.Future]] = {}
        self._idle: list[psycopg.AsyncConnection] = []
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def for_engine(
        cls, engine: Engine, *, in_flight: int = IN_FLIGHT, answer_timeout_s: float | None = None
    ) -> StampReader | None:
        if engine.dialect.name != "postgresql":
            return None
        return cls(engine, in_flight=in_flight, answer_timeout_s=answer_timeout_s)

    async def stamp(self, plaintext: str, job_id: str) -> Stamp:
        """``(key id, the job's updated_at or None)`` for an unrevoked key, else ``None``;
        raises whatever psycopg raised (the caller falls back to the thread path)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((hash_key(plaintext), job_id), []).append(future)
        if self._in_flight < self._in_flight_max:
            self._in_flight += 1
            task = asyncio.create_task(self._send_while_waiting())
            self._tasks.add(task)  # a strong reference until it ends
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _send_while_waiting(self) -> None:
        """One sender: statements, each with every lookup waiting, until none is left."""
        try:
            while self._waiting:
                batch = self._take(self._batch_max)
                try:
                    found = await self._query(list(batch))
                except BaseException as error:  # the database away, or the loop shutting down
                    for futures in batch.values():
                        _settle(futures, error=error)
                    if not isinstance(error, Exception):
                        raise
                    continue
                for lookup, futures in batch.items():
                    _settle(futures, result=found.get(lookup))
        finally:
            self._in_flight -= 1

    def _take(self, limit: int) -> dict[_Lookup, list[asyncio.Future]]:
        taken = {}
        for lookup in list(self._waiting)[:limit]:
            taken[lookup] = self._waiting.pop(lookup)
        return taken

    async def _query(self, lookups: list[_Lookup]) -> dict[_Lookup, Stamp]:
        connection = self._idle.pop() if self._idle else await self._connect()
        try:
            cursor = await connection.execute(
                KEY_AND_JOB_STAMPS_SQL,
                {"key_hashes": [h for h, _ in lookups], "job_ids": [j for _, j in lookups]},
            )
            rows = await cursor.fetchall()
        except BaseException:  # an error, no answer in time, or cancelled: never reuse it
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._idle.append(connection)
        found: dict[_Lookup, Stamp] = {}
        for ordinal, key_id, job_found, updated_at in rows:
            stamp = updated_at.astimezone(UTC) if job_found is not None else None
            found[lookups[ordinal - 1]] = (key_id, stamp)
        return found  # a lookup with no row: unknown or revoked key

    async def _connect(self) -> psycopg.AsyncConnection:
        return await self._connection_class.connect(autocommit=True, **self._params)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.close()


def _settle(
    futures: list[asyncio.Future], *, result: Stamp = None, error: BaseException | None = None
) -> None:
    for future in futures:
        if future.done():  # its request was cancelled (the client went away)
            continue
        if isinstance(error, Exception):
            future.set_exception(error)
        elif error is not None:  # cancelled with the sender (the app shutting down)
            future.cancel()
        else:
            future.set_result(result)
