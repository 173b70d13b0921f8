"""``/jobs``: submit, list, read, follow and cancel distillation jobs."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic_core import to_json
from sqlalchemy.orm import Session

from api.deps import CurrentKey, EnqueueDep, OwnedJobDep, SessionDep, SettingsDep
from api.routes.artifacts import artifact_public
from api.schemas import (
    JobPublic,
    JobsPublic,
    JobSummary,
    MetricsPublic,
    Progress,
)
from service import crud
from service.spec import JobSpec
from service.submit import prepare_job_spec
from service.tables import Job, JobStatus

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])


def body_errors(error: ValidationError) -> list[dict]:
    """pydantic errors as FastAPI reports body errors: ``loc`` starts with ``"body"``."""
    return [
        {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"], "input": e.get("input")}
        for e in error.errors(include_url=False)
    ]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_job(
    body: JobSpec,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Response:
    """Submit a job: validated now, queued, and run by the next free worker."""
    raw = body.model_dump(mode="json", exclude_unset=True)
    try:
        spec = prepare_job_spec(session, owner_id=key.id, body=raw)
    except ValidationError as error:
        raise RequestValidationError(body_errors(error)) from None
    try:
        job, created = crud.create_job(
            session, owner_id=key.id, spec=spec.to_stored(), max_attempts=settings.max_attempts,
            idempotency_key=idempotency_key,
            fingerprint=crud.request_fingerprint(raw) if idempotency_key else None,
        )  # fmt: skip
    except crud.IdempotencyConflictError as conflict:
        if conflict.reason == "in_flight":
            raise HTTPException(409, "a request with this Idempotency-Key is in flight") from None
        raise HTTPException(422, "Idempotency-Key was used with a different body") from None
    if created:
        try:
            enqueue(job.id)
            crud.mark_enqueued(session, job_id=job.id)
        except Exception:  # the row is committed: the reaper re-sends it once the broker is back
            log.exception("could not enqueue %s; the reaper will retry", job.id)
    headers = {"Location": f"/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _json(job_document(session, job), status.HTTP_202_ACCEPTED, headers)


@router.get("", response_model=JobsPublic)
def read_jobs(
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    page_size: Annotated[int | None, Query(ge=1, description="capped at the server's max")] = None,
    page_token: str | None = None,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
) -> JobsPublic:
    """The key's jobs, newest first, ``page_size`` at a time."""
    size = min(page_size or settings.default_page_size, settings.max_page_size)
    try:
        page = crud.list_jobs(
            session, owner_id=key.id, page_size=size, page_token=page_token, status=status_filter
        )
    except ValueError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
    return JobsPublic(data=[job_summary(job) for job in page.items],
                      next_page_token=page.next_page_token)  # fmt: skip


@router.get("/{job_id}", response_model=JobPublic)
def read_job(job: OwnedJobDep, session: SessionDep) -> Response:
    """State, progress, timestamps, the per-epoch curve and the artifacts of one job."""
    # The most polled endpoint: serialised straight from plain rows (the JobPublic shape,
    # which a test checks) instead of validating 240 curve rows into models and back.
    return _json(job_document(session, job))


@router.get("/{job_id}/metrics", response_model=MetricsPublic)
def read_job_metrics(job: OwnedJobDep, session: SessionDep) -> Response:
    """The per-epoch curve alone."""
    return _json({"data": crud.list_metrics(session, job_id=job.id)})


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job: OwnedJobDep, session: SessionDep) -> Response:
    """Cancel: a queued job at once, a running one at its next epoch; terminal: no change."""
    crud.request_cancel(session, job_id=job.id)
    session.refresh(job)
    return _json(job_document(session, job))


def job_summary(job: Job) -> JobSummary:
    return JobSummary(**_summary_fields(job))


def _summary_fields(job: Job) -> dict:
    return {
        "id": job.id, "status": job.status, "is_terminal": job.is_terminal,
        "failure_reason": job.failure_reason, "message": job.message,
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
    return {"epoch": job.progress_epoch, "total": job.progress_total,
            "batch": job.progress_batch or 0, "batches": job.progress_batches or 0}  # fmt: skip


def job_document(session: Session, job: Job) -> dict:
    """The ``JobPublic`` body as plain data."""
    summary = _summary_fields(job)
    summary["progress"] = progress_fields(job)
    artifacts = [
        artifact_public(a).model_dump() for a in crud.list_artifacts(session, job_id=job.id)
    ]
    curve = crud.list_metrics(session, job_id=job.id)
    return summary | {"spec": job.spec, "curve": curve, "artifacts": artifacts}


def job_public(session: Session, job: Job) -> JobPublic:
    return JobPublic.model_validate(job_document(session, job))


def _json(document: dict, status_code: int = 200, headers: dict | None = None) -> Response:
    return Response(to_json(document), status_code, headers, media_type="application/json")
