"""``GET /jobs/{id}`` of a cached document, answered before the framework: a plain ASGI layer.

A poll of a job whose rendered document is cached needs one lookup (is the key live, does it
own the job, which ``updated_at`` does the row have: :mod:`api.stamps`) and the cached bytes.
Through FastAPI the same answer also paid for its middleware stack, routing, the bearer and
header dependencies and a ``Response`` object: about 55 % of the API process's CPU per poll
under 64 pollers (py-spy, docs/benchmarks.md "API"). This layer answers such a poll itself,
with the bytes and headers the route sends (``read_job`` in :mod:`api.routes.jobs`), and
hands every other request, and every poll it cannot answer from the cache, to the
application unchanged: a miss, a key that is unknown, revoked or not the owner's, a job that
is gone, a request with a body, SQLite, and any database error all take the full route,
which renders, answers 401 / 404 / 503 and logs as it always does. The exception is a lookup
that waited out the statement limit (a lock elsewhere, a frozen server): the route would wait
as long again, so it is answered 503 at once (raised to :class:`api.errors.ErrorMiddleware`).
"""

from __future__ import annotations

import logging
import re

import psycopg
from starlette.types import ASGIApp, Receive, Scope, Send

from api.cache import Rendered, etag_matches
from service.db import is_unanswered
from service.storage import JOB_ID

log = logging.getLogger(__name__)

# service.storage.JOB_ID, the one definition of a job id, inside the route's path
_POLL_PATH = re.compile(r"^/jobs/(" + JOB_ID.pattern.removeprefix("^").removesuffix("\\Z") + r")\Z")


class CachedPollMiddleware:
    """Answers ``GET /jobs/{id}`` from ``state.documents`` when ``state.stamps`` says the
    cached rendering is current and the caller's key owns the job."""

    def __init__(self, app: ASGIApp, *, state) -> None:
        self.app = app
        self.state = state  # the FastAPI app's state: stamps and documents exist once started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rendered = None
        if scope["type"] == "http" and scope["method"] == "GET":
            rendered = await self._cached(scope)
        if rendered is None:
            return await self.app(scope, receive, send)
        await _send_document(scope, send, rendered)

    async def _cached(self, scope: Scope) -> Rendered | None:
        stamps = getattr(self.state, "stamps", None)
        match = _POLL_PATH.match(scope["path"])
        if stamps is None or match is None:
            return None
        token = _bearer_token_without_body(scope["headers"])
        if token is None:
            return None
        job_id = match.group(1)
        try:
            found = await stamps.stamp(token, job_id)
        except (psycopg.Error, OSError) as error:
            if is_unanswered(error):  # the limit is spent: no second wait in the route
                raise
            log.debug("GET /jobs/%s: the async check failed (%s); full route", job_id, error)
            return None
        if found is None or found[1] is None:
            return None
        return self.state.documents.get(job_id, found[1])


def _bearer_token_without_body(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token as FastAPI's ``HTTPBearer`` reads it (scheme case-insensitive, the
    rest after the first space), or ``None`` when there is none or the request has a body
    (the full route then applies the body limit and answers as it does)."""
    token = seen = None
    for name, value in headers:
        if name == b"authorization" and not seen:  # the first one, as Starlette's .get()
            seen = True
            scheme, _, rest = value.decode("latin-1").partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else None
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return None
    return token or None


async def _send_document(scope: Scope, send: Send, rendered: Rendered) -> None:
    """What ``read_job`` sends: the JSON with its ETag, or an empty 304 when it matches."""
    if_none_match = next(
        (v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"), None
    )
    headers = [(b"etag", rendered.etag.encode()), (b"cache-control", b"no-cache")]
    if etag_matches(if_none_match, rendered.etag):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers += [
        (b"content-length", str(len(rendered.body)).encode()),
        (b"content-type", b"application/json"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": rendered.body})
