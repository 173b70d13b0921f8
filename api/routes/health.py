"""``/healthz``: the API answers, and each dependency it needs does."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.schemas import Health
from service.health import broker_status, database_status

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable."}},
)
def read_health(request: Request) -> JSONResponse:
    """200 when the database answers ``SELECT 1`` and the broker answers, else 503; the body
    reports each dependency (``"ok"`` or the reason)."""
    state = request.app.state
    checks = {"database": database_status(state.engine), "broker": broker_status(state.settings)}
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "unavailable", **checks}
    return JSONResponse(body, status_code=200 if healthy else 503)
