"""``/healthz``: the API answers and its database does."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def read_health(request: Request) -> JSONResponse:
    """200 when the database answers ``SELECT 1``, else 503."""
    try:
        ping(request.app.state.engine)
    except Exception as error:
        body = {"status": "unavailable", "database": type(error).__name__}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
