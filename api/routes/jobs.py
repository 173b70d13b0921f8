"""``/jobs``: submit, list, read, follow and cancel distillation jobs."""

from __future__ import annotations

import logging
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError
from pydantic_core import to_json
from sqlalchemy.orm import Session

from api.cache import Rendered, etag_matches
from api.deps import (
    CredentialsDep,
    CurrentKey,
    EnqueueDep,
    MessageRootsDep,
    OwnedJobDep,
    PageSizeDep,
    SessionDep,
    SettingsDep,
    owned_job,
)
from api.routes.artifacts import artifact_public
from api.schemas import (
    JobPublic,
    JobsPublic,
    JobSummary,
    MetricsPublic,
    Progress,
    error_responses,
)
from service import accounts, crud, storage
from service.messages import public_message
from service.queue import first_line, unavailable_dependency
from service.settings import Settings
from service.spec import JobSpec
from service.submit import prepare_job_spec
from service.tables import TERMINAL, Job, JobStatus, job_progress

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])


def body_errors(error: ValidationError) -> list[dict]:
    """pydantic errors as FastAPI reports body errors: ``loc`` starts with ``"body"``."""
    return [
        {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"], "input": e.get("input")}
        for e in error.errors(include_url=False)
    ]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=error_responses(400, 401, 409, 413, 422, 429, 503),
)
def create_job(
    body: JobSpec,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    roots: MessageRootsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Response:
    """Submit a job: validated now, queued, and run by the next free worker."""
    raw = body.model_dump(mode="json", exclude_unset=True)
    try:
        spec = prepare_job_spec(session, owner_id=key.id, body=raw, settings=settings)
    except ValidationError as error:
        raise RequestValidationError(body_errors(error)) from None
    check_job_limits(session, key.id, settings, idempotency_key=idempotency_key)
    stored = spec.to_stored()
    try:
        job, created = crud.create_job(
            session, owner_id=key.id, spec=stored, max_attempts=settings.max_attempts,
            idempotency_key=idempotency_key,
            # the resolved spec, so that spelling out a default ("seed": 0) replays the job
            fingerprint=crud.request_fingerprint(stored) if idempotency_key else None,
        )  # fmt: skip
    except crud.IdempotencyConflictError as conflict:
        if conflict.reason == "in_flight":
            raise HTTPException(409, "a request with this Idempotency-Key is in flight") from None
        raise HTTPException(422, "Idempotency-Key was used with a different body") from None
    if created:
        try:
            enqueue(job.id)
            crud.mark_enqueued(session, job_id=job.id)
        except Exception as error:  # the row is committed: the reaper sends it later
            _log_enqueue_failure(job.id, error)
    headers = {"Location": f"/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    document = job_document(None if created else session, job, roots)
    return _json(document, status.HTTP_202_ACCEPTED, headers)


@router.get("", response_model=JobsPublic, responses=error_responses(400, 401, 422, 503))
def read_jobs(
    session: SessionDep,
    key: CurrentKey,
    roots: MessageRootsDep,
    size: PageSizeDep,
    page_token: str | None = None,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
) -> JobsPublic:
    """The key's jobs, newest first, ``page_size`` at a time."""
    try:
        page = crud.list_jobs(
            session, owner_id=key.id, page_size=size, page_token=page_token, status=status_filter
        )
    except ValueError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
    return JobsPublic(data=[job_summary(job, roots) for job in page.items],
                      next_page_token=page.next_page_token)  # fmt: skip


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses={
        304: {"description": "Unchanged since the ETag given in If-None-Match."},
        **error_responses(401, 404, 422, 503),
    },
)
async def read_job(
    job_id: str,
    request: Request,
    credentials: CredentialsDep,
    if_none_match: Annotated[
        str | None, Header(description="an ETag of an earlier answer: 304 while unchanged")
    ] = None,
) -> Response:
    """State, progress, timestamps, the per-epoch curve and the artifacts of one job.

    Answers carry an ``ETag``; a poller that sends it back in ``If-None-Match`` gets an empty
    304 until the job changes.
    """
    # The most polled endpoint (docs/benchmarks.md, "API"): on PostgreSQL a poll of a cached
    # document is answered before the framework (api/poll.py); what reaches this route takes
    # one hop onto the endpoint's own few threads (no sync dependencies: each would be a hop
    # of its own, a session two).
    state = request.app.state
    rendered = await anyio.to_thread.run_sync(
        job_rendered, state, job_id, credentials, limiter=state.job_readers
    )
    headers = {"ETag": rendered.etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, rendered.etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(rendered.body, headers=headers, media_type="application/json")


def job_rendered(state, job_id: str, credentials: HTTPAuthorizationCredentials | None) -> Rendered:
    """The caller's job document as bytes, from the cache while ``updated_at`` is unchanged;
    otherwise the job row, its artifacts and its curve, serialised straight from plain rows
    (the JobPublic shape, which a test checks) instead of validating 240 curve rows into
    models and back. 401 / 404 as :func:`owned_job` says."""
    cached = _cached_document(state, job_id, credentials)
    if cached is not None:
        return cached
    with state.reader() as session:
        job = owned_job(session, credentials, job_id)
        rendered = Rendered.of(to_json(job_document(session, job, state.message_roots)))
    state.documents.put(job.id, job.updated_at, rendered)
    return rendered


def _cached_document(state, job_id: str, credentials) -> Rendered | None:
    """The cached document when the key owns the job and its ``updated_at`` is the cached
    one: a single light query (key, job id, ``updated_at``) on a plain connection. ``None``
    sends the request down the full path, which also gives every 401 and 404."""
    if credentials is None or not storage.JOB_ID.match(job_id):
        return None
    with state.read_engine.connect() as connection:
        found = accounts.key_and_job_stamp(connection, credentials.credentials, job_id)
    if found is None or found[1] is None:
        return None
    return state.documents.get(job_id, found[1])


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsPublic,
    responses=error_responses(401, 404, 422, 503),
)
def read_job_metrics(job: OwnedJobDep, session: SessionDep) -> Response:
    """The per-epoch curve alone."""
    return _json({"data": crud.list_metrics(session, job_id=job.id)})


@router.post(
    "/{job_id}/cancel", response_model=JobPublic, responses=error_responses(401, 404, 422, 503)
)
def cancel_job(job: OwnedJobDep, session: SessionDep, roots: MessageRootsDep) -> Response:
    """Cancel: a queued job at once, a running one at its next batch; terminal: no change."""
    crud.request_cancel(session, job_id=job.id)
    document = job_document(session, crud.get_job(session, job.id), roots)
    return _json(document)


def _log_enqueue_failure(job_id: str, error: Exception) -> None:
    """A broker outage is one line per job (it is expected, and the reaper sends the job
    once the broker is back); anything else keeps its traceback."""
    if unavailable_dependency(error) == "broker":
        log.warning("could not enqueue %s: the broker is unavailable (%s); the reaper will "
                    "send it", job_id, first_line(error))  # fmt: skip
    else:
        log.exception("could not enqueue %s; the reaper will retry", job_id)


def check_job_limits(
    session: Session,
    owner_id: str,
    settings: Settings,
    *,
    idempotency_key: str | None = None,
    new_jobs: int = 1,
) -> None:
    """429 when the key is at its running limit, or when ``new_jobs`` more queued jobs (a
    study's are all created or none) would pass its queued limit; a replay always goes
    through."""
    usage = accounts.job_usage(session, owner_id=owner_id)
    queued_limit = settings.max_queued_jobs_per_key
    running_limit = settings.max_running_jobs_per_key
    message = None
    if queued_limit and usage.queued + new_jobs > queued_limit:
        message = f"this API key has {usage.queued} queued jobs (limit {queued_limit})"
        if new_jobs > 1:
            message += f"; the {new_jobs} jobs of this request would pass it"
    elif running_limit and usage.running >= running_limit:
        message = f"this API key has {usage.running} running jobs (limit {running_limit})"
    if message is None or (
        idempotency_key
        and accounts.idempotency_key_used(session, owner_id=owner_id, key=idempotency_key)
    ):
        return
    raise HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS, f"{message}; wait for one to finish or cancel one"
    )


def job_summary(job: Job, roots: tuple[str, ...] = ()) -> JobSummary:
    """A jobs-list entry; ``roots``: the service's folders, hidden in the message."""
    return JobSummary(**_summary_fields(job, roots))


def _summary_fields(job: Job, roots: tuple[str, ...]) -> dict:
    return {
        "id": job.id, "status": job.status, "is_terminal": job.status in TERMINAL,
        "failure_reason": job.failure_reason, "message": public_message(job.message, roots),
        "progress": Progress(**progress_fields(job)),
        "best_top1": job.best_top1, "best_epoch": job.best_epoch, "last_top1": job.last_top1,
        "attempt": job.attempt, "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "updated_at": job.updated_at,
        "cancel_requested_at": job.cancel_requested_at, **spec_fields(job.spec),
    }  # fmt: skip


def spec_fields(spec: dict) -> dict:
    """What a jobs list shows of the spec: method, teacher and student, dataset."""
    return {"method": spec.get("method"),
            "teacher_arch": (spec.get("teacher") or {}).get("arch"),
            "student_arch": (spec.get("student") or {}).get("arch"),
            "dataset": (spec.get("dataset") or {}).get("name")}  # fmt: skip


def progress_fields(job: Job) -> dict[str, int]:
    """Epochs done of the total, and batches done of the epoch in progress."""
    return job_progress(job)


def job_document(session: Session | None, job: Job, roots: tuple[str, ...] = ()) -> dict:
    """The ``JobPublic`` body as plain data; ``session=None`` for a job just created, which
    has no curve or artifacts yet (two queries fewer per submission); ``roots``: the
    service's folders, hidden in the message (:func:`service.messages.message_roots`)."""
    summary = _summary_fields(job, roots)
    summary["progress"] = progress_fields(job)
    if session is None:
        return summary | {"spec": job.spec, "curve": [], "artifacts": []}
    artifacts = [
        artifact_public(a).model_dump() for a in crud.list_artifacts(session, job_id=job.id)
    ]
    curve = crud.list_metrics(session, job_id=job.id)
    return summary | {"spec": job.spec, "curve": curve, "artifacts": artifacts}


def job_public(session: Session, job: Job, roots: tuple[str, ...] = ()) -> JobPublic:
    return JobPublic.model_validate(job_document(session, job, roots))


def _json(document: dict, status_code: int = 200, headers: dict | None = None) -> Response:
    return Response(to_json(document), status_code, headers, media_type="application/json")
