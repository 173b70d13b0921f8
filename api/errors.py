"""How the API answers when something goes wrong, without leaking the server's insides.

- 422: :func:`validation_error` renders pydantic errors with every echoed ``input`` made
  JSON-safe (NaN, Infinity, lone surrogates and bytes become strings), so bad input can never
  turn into a 500 while the error is being rendered.
- 503: the database or the object store is unreachable: a short message and
  ``Retry-After``; logged once, one line, no traceback. The API recovers by itself when the
  database is back (the pool's pre-ping replaces dead connections).
- 500: anything else: a generic message; the traceback goes to the server's log, once.

:class:`ErrorMiddleware` answers the last two itself instead of letting the exception reach
Starlette's outermost handler, which logs it a second time, re-raises it into uvicorn and
drops the keep-alive connection.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import is_unanswered, is_unreachable
from service.objectstore import StoreUnavailableError
from service.queue import first_line

log = logging.getLogger("api.errors")

UNAVAILABLE = "the database is unavailable; retry shortly"
STORE_UNAVAILABLE = "the object store is unavailable; retry shortly"
INTERNAL = "internal server error"
MAX_ECHO = 200  # characters of an echoed input


def json_safe(value: Any) -> Any:
    """``value`` with everything strict JSON (and UTF-8) cannot carry turned into text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "…"
    if isinstance(value, bytes):
        return json_safe(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, dict):
        return {str(json_safe(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return json_safe(str(value))


def _error_item(error: dict) -> dict:
    item = {
        "type": error.get("type", "value_error"),
        "loc": json_safe(list(error.get("loc", ()))),
        "msg": json_safe(str(error.get("msg", ""))),
        "input": json_safe(error.get("input")),
    }
    if error.get("ctx"):
        item["ctx"] = json_safe(error["ctx"])
    return item


async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with FastAPI's ``{"detail": [{type, loc, msg, input}]}`` shape, always renderable."""
    return JSONResponse({"detail": [_error_item(e) for e in error.errors()]}, status_code=422)


def is_unavailable(error: BaseException) -> bool:
    """The database could not be reached or did not answer within its limit (as opposed to
    a bug or a bad statement); the latter also raw from the poll fast path (api/poll.py)."""
    return is_unreachable(error) or is_unanswered(error)


class ErrorMiddleware:
    """503 + ``Retry-After`` for an unreachable database or object store, a generic 500 for
    anything else."""

    def __init__(self, app: ASGIApp, *, retry_after_s: int) -> None:
        self.app = app
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            where = f"{scope.get('method')} {scope.get('path')}"
            store = isinstance(error, StoreUnavailableError)
            if store or is_unavailable(error):
                cause = error.__cause__ if store and error.__cause__ else error  # the endpoint
                log.warning("%s: %s unavailable: %s", where, "object store" if store else
                            "database", first_line(cause))  # fmt: skip
                status, body = 503, STORE_UNAVAILABLE if store else UNAVAILABLE
                headers = [(b"retry-after", str(self.retry_after_s).encode())]
            else:
                log.error("%s: unhandled error", where, exc_info=error)
                status, body, headers = 500, INTERNAL, []
            if started:  # too late for an answer: uvicorn closes this connection
                return
            await _send_json(send, status, {"detail": body}, headers)


async def _send_json(send: Send, status: int, body: dict, extra: list) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode()), *extra]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
