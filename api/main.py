"""The FastAPI application: ``create_app(settings)``; ``uvicorn api.main:app`` serves it.

Startup (the lifespan) opens the database engine, the broker client and the local folders,
and, unless ``reaper_interval_s`` is 0, a background reaper that re-queues jobs whose worker
stopped beating. Nothing here imports torch or ``wkd_core`` (a test checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.limits import FORM_OVERHEAD, BodyLimitMiddleware
from api.routes import artifacts, catalog, checkpoints, events, health, jobs, web
from service import crud
from service.db import make_engine, make_sessionmaker
from service.queue import Enqueuer
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, *, enqueue: Callable[[str], None] | None = None
) -> FastAPI:
    """The API for ``settings`` (default: from the environment).

    ``enqueue`` replaces the Celery client (tests record job ids with it).
    """
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        engine = make_engine(settings.database_url)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.enqueue = enqueue if enqueue is not None else Enqueuer(settings)
        reaper = None
        if settings.reaper_interval_s > 0:
            reaper = asyncio.create_task(_reap_forever(app, settings.reaper_interval_s))
        try:
            yield
        finally:
            if reaper is not None:
                reaper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reaper
            engine.dispose()

    app = FastAPI(
        title="WKD distillation service",
        version="0.1.0",
        description="Submit Wasserstein knowledge-distillation jobs and follow their curves.",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_json_bytes,
        by_path={"/checkpoints": settings.max_upload_bytes + FORM_OVERHEAD},
    )
    app.add_exception_handler(Exception, _internal_error)
    for module in (jobs, events, artifacts, checkpoints, catalog, health, web):
        app.include_router(module.router)
    return app


async def _internal_error(_request: Request, error: Exception) -> JSONResponse:
    """No stack traces in responses: log it, answer a generic 500."""
    log.error("unhandled error", exc_info=error)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def reap_once(app: FastAPI) -> list[str]:
    """One reaper pass: re-queue or fail jobs whose worker is gone; returns re-sent ids."""
    settings = app.state.settings
    with app.state.sessionmaker() as session:
        ids = crud.reap_stale_jobs(session, stale_after_s=settings.stale_after_s)
        for job_id in ids:
            app.state.enqueue(job_id)
            crud.mark_enqueued(session, job_id=job_id)
    return ids


async def _reap_forever(app: FastAPI, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            ids = await run_in_threadpool(reap_once, app)
            if ids:
                log.warning("reaper re-queued %s", ", ".join(ids))
        except Exception:  # the next pass retries; the API must keep serving
            log.exception("reaper pass failed")


app = create_app()
