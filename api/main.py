"""The FastAPI application: ``create_app(settings)``; ``uvicorn api.main:app`` serves it.

Startup (the lifespan) opens the database engine, the broker client and the local folders,
and, unless ``reaper_interval_s`` is 0, a background reaper that re-queues jobs whose worker
stopped beating. Nothing here imports torch or ``wkd_core`` (a test checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from api.cache import DocumentCache
from api.errors import ErrorMiddleware, validation_error
from api.limits import FORM_OVERHEAD, BodyLimitMiddleware
from api.poll import CachedPollMiddleware
from api.routes import artifacts, catalog, checkpoints, docs, events, health, jobs, studies, web
from api.stamps import StampReader
from service.db import answer_timeout, make_sessionmaker, service_engine
from service.messages import message_roots
from service.queue import Enqueuer, ReaperPasses, reap_and_resend
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
        engine = service_engine(settings)
        app.state.settings = settings
        app.state.message_roots = message_roots(settings)  # hidden in job messages
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        # reads outside a transaction: one round trip per statement (no BEGIN/ROLLBACK, no
        # pre-ping); a dead pooled connection fails one request with 503 and the pool is
        # invalidated (docs/reliability.md)
        reader = service_engine(settings, isolation_level="AUTOCOMMIT", pool_pre_ping=False)
        app.state.reader = make_sessionmaker(reader)
        app.state.read_engine = reader
        app.state.documents = DocumentCache(settings.job_cache_entries)
        # GET /jobs/{id}'s own few threads and async connections: under many pollers, dozens
        # of threads fighting for the GIL cost more CPU than the poll itself (benchmarks.md)
        app.state.job_readers = anyio.CapacityLimiter(settings.job_readers)
        app.state.stamps = StampReader.for_engine(
            reader, answer_timeout_s=answer_timeout(settings.db_statement_timeout_s)
        )
        app.state.enqueue = enqueue if enqueue is not None else Enqueuer(settings)
        reaper = None
        if settings.reaper_interval_s > 0:
            reaper = asyncio.create_task(_reap_forever(app, settings.reaper_interval_s))
        # Python's oldest-generation collections traverse every object the imports and the
        # startup made (FastAPI's and pydantic's models, SQLAlchemy, Celery): 70-85 ms each,
        # several a minute under load, which every request in flight waited out (p99 of
        # GET /jobs/{id} at 64 clients 65-80 ms against a p50 of 5 ms; docs/benchmarks.md,
        # "API"). Frozen, they are never traversed again; what requests allocate still is.
        # Thawed at shutdown, so that an app started and stopped inside another program (the
        # tests) leaves nothing uncollectable behind. No gc.collect() first: startup leaves
        # little garbage, and in a process that has imported torch (the tests) a full
        # collection costs ~200 ms per app started.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if reaper is not None:
                reaper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reaper
            if app.state.stamps is not None:
                await app.state.stamps.close()
            engine.dispose()
            reader.dispose()

    app = FastAPI(
        title="WKD distillation service",
        version="0.1.0",
        description="Submit Wasserstein knowledge-distillation jobs and follow their curves.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from api/routes/docs.py, with vendored assets
        redoc_url=None,
    )
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_json_bytes,
        by_path={"/checkpoints": settings.max_upload_bytes + FORM_OVERHEAD},
    )
    # polls of cached documents answered before the framework (api/poll.py)
    app.add_middleware(CachedPollMiddleware, state=app.state)
    # outermost: answers 503 (database down) and 500 itself, logged once, keep-alive kept
    app.add_middleware(ErrorMiddleware, retry_after_s=settings.retry_after_s)
    app.add_exception_handler(RequestValidationError, validation_error)
    for module in (jobs, events, artifacts, checkpoints, catalog, health, studies, web, docs):
        app.include_router(module.router)
    return app


def reap_once(app: FastAPI) -> list[str]:
    """One reaper pass: re-queue or fail jobs whose worker is gone; returns re-sent ids."""
    settings = app.state.settings
    return reap_and_resend(
        app.state.sessionmaker, stale_after_s=settings.stale_after_s,
        requeue_after_s=settings.requeue_after_s, enqueue=app.state.enqueue,
        waiting=getattr(app.state.enqueue, "waiting", None),  # a test's recorder cannot count
        max_running_per_key=settings.max_running_jobs_per_key,
    )  # fmt: skip


async def _reap_forever(app: FastAPI, interval_s: float) -> None:
    # A failed pass is logged and the next one retries: the API must keep serving. An
    # outage of the database or the broker is logged once, not per pass (ReaperPasses).
    passes = ReaperPasses(log)
    while True:
        await asyncio.sleep(interval_s)
        ids = await run_in_threadpool(passes.run, lambda: reap_once(app))
        if ids:
            log.warning("reaper re-queued %s", ", ".join(ids))


app = create_app()
