"""``GET /jobs/{id}/events``: a job's live progress as server-sent events.

The stream polls the database every ``events_poll_s`` with a fresh short session (none is
held between polls or across the stream) and sends what changed (see :mod:`service.events`:
``state``, ``epoch`` and ``progress`` events with monotonic ids). It honours
``Last-Event-ID``, sends a keep-alive comment when nothing happened for
``events_keepalive_s``, and ends after the job's terminal state, or after
``events_max_stream_s`` (the client resumes with ``Last-Event-ID``; so a restarting API never
waits on the stream of a long job). Open streams are bounded per API key and per API process
(429 beyond).

Authentication is the usual ``Authorization: Bearer`` header: browsers read the stream with
``fetch()`` (which can send headers) rather than ``EventSource`` (which cannot), so keys never
appear in URLs or access logs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.background import BackgroundTask

from api.schemas import error_responses
from service import accounts, crud, storage
from service.events import Cursor, EventBuilder, read_snapshot
from service.settings import Settings

router = APIRouter(prefix="/jobs", tags=["jobs"])
_bearer = HTTPBearer(auto_error=False, description="An API key from `wkd keys create`.")
RETRY_MS = 2000  # how long an EventSource waits before it reconnects


class StreamLimiter:
    """Counts open streams per key and in all; ``acquire`` refuses beyond the limits."""

    def __init__(self, total: int, per_key: int) -> None:
        self.total, self.per_key = total, per_key
        self.open: Counter[str] = Counter()

    def acquire(self, key_id: str) -> bool:
        if self.open.total() >= self.total or self.open[key_id] >= self.per_key:
            return False
        self.open[key_id] += 1
        return True

    def release(self, key_id: str) -> None:
        self.open[key_id] -= 1
        if self.open[key_id] <= 0:
            del self.open[key_id]


def _limiter(request: Request) -> StreamLimiter:
    state, settings = request.app.state, request.app.state.settings
    if getattr(state, "event_streams", None) is None:
        state.event_streams = StreamLimiter(
            settings.events_max_streams, settings.events_max_streams_per_key
        )
    return state.event_streams


def _authorize(sessionmaker, token: str | None, job_id: str) -> str:
    """The key id that owns ``job_id``; 401 / 404 otherwise. One short session."""
    with sessionmaker() as session:
        key = None if token is None else accounts.verify_api_key(session, token)
        if key is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid API key",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        if (
            not storage.JOB_ID.match(job_id)
            or crud.get_job_for_owner(session, job_id=job_id, owner_id=key.id) is None
        ):  # an id that cannot exist never reaches the database
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="job not found")
        return key.id


def _poll(sessionmaker, job_id: str, builder: EventBuilder, roots: tuple[str, ...]) -> list[str]:
    with sessionmaker() as session:
        snapshot = read_snapshot(
            session, job_id=job_id, after_epoch=builder.last.epoch, roots=roots
        )
    return [event.encode() for event in builder.advance(snapshot)]


async def _stream(
    request: Request, settings: Settings, job_id: str, builder: EventBuilder, release
) -> AsyncIterator[str]:
    sessionmaker = request.app.state.sessionmaker
    try:
        yield f"retry: {RETRY_MS}\n\n"
        quiet_since = started = time.monotonic()
        while time.monotonic() - started < settings.events_max_stream_s:
            chunks = await run_in_threadpool(
                _poll, sessionmaker, job_id, builder, request.app.state.message_roots
            )
            for chunk in chunks:
                yield chunk
            if builder.finished:
                return
            now = time.monotonic()
            if chunks:
                quiet_since = now
            elif now - quiet_since >= settings.events_keepalive_s:
                yield ": keep-alive\n\n"
                quiet_since = now
            await asyncio.sleep(settings.events_poll_s)
    finally:
        release()


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "state, epoch and progress events; ends with the job"},
               **error_responses(401, 404, 422, 429, 503)},
)  # fmt: skip
async def job_events(
    job_id: str,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    # no length limit here: any malformed id (too long included) starts from the beginning
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Follow a job: ``state`` changes, one ``epoch`` event per finished epoch and
    ``progress`` (batches done of the total) inside an epoch, until the job ends.
    Reconnect with ``Last-Event-ID`` to continue where the stream broke off."""
    settings: Settings = request.app.state.settings
    token = None if credentials is None else credentials.credentials
    key_id = await run_in_threadpool(_authorize, request.app.state.sessionmaker, token, job_id)
    limiter = _limiter(request)
    if not limiter.acquire(key_id):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many open event streams",
                            headers={"Retry-After": "5"})  # fmt: skip
    released = []

    def release() -> None:  # once, from the stream's end or the response's background task
        if not released:
            released.append(True)
            limiter.release(key_id)

    builder = EventBuilder(Cursor.parse(last_event_id))
    body = _stream(request, settings, job_id, builder, release)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers,
                             background=BackgroundTask(release))  # fmt: skip
