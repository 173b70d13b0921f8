"""What the API returns (pydantic), kept apart from the ORM tables in service/tables.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from service.tables import JobStatus


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class MetricPublic(_FromRow):
    """One epoch of the curve; accuracies in percent, ``loss_terms`` by name."""

    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    test_top1: float
    test_top5: float
    test_loss: float
    loss_terms: dict[str, float]
    seconds: float


class ArtifactPublic(_FromRow):
    name: str
    kind: str
    size: int
    sha256: str
    created_at: datetime
    url: str


class Progress(BaseModel):
    """``epoch`` of ``total`` epochs done; ``batch`` of ``batches`` done in the next one."""

    epoch: int
    total: int
    batch: int = 0
    batches: int = 0


class JobSummary(_FromRow):
    """A job without its curve (the items of ``GET /jobs``)."""

    id: str
    status: JobStatus
    is_terminal: bool
    failure_reason: str | None
    message: str | None
    progress: Progress
    best_top1: float | None
    best_epoch: int | None
    last_top1: float | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    cancel_requested_at: datetime | None
    method: str | None = None  # from the resolved spec, for job lists
    teacher_arch: str | None = None
    student_arch: str | None = None
    dataset: str | None = None


class JobPublic(JobSummary):
    """A job with its resolved spec, per-epoch curve and artifacts (``GET /jobs/{id}``)."""

    spec: dict[str, Any]
    curve: list[MetricPublic]
    artifacts: list[ArtifactPublic]


class JobsPublic(BaseModel):
    data: list[JobSummary]
    next_page_token: str  # empty on the last page


class MetricsPublic(BaseModel):
    data: list[MetricPublic]


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]


class CheckpointPublic(_FromRow):
    id: str
    kind: str = "teacher"  # or "cost_matrix"
    arch: str
    num_classes: int
    filename: str
    size: int
    sha256: str
    created_at: datetime


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    next_page_token: str  # empty on the last page


class Health(BaseModel):
    """``status`` is ``ok`` or ``unavailable``; each dependency is ``ok`` or the reason."""

    status: str
    database: str
    broker: str


class ErrorItem(BaseModel):
    """One problem of a 422: where (``loc``, starting with ``body``, ``query``, ``header``
    or ``path``), what (``msg``, ``type``) and the offending value as received."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer: a message, or (422) a list of the problems found."""

    detail: str | list[ErrorItem]


_ERRORS = {
    400: "Malformed request: a JSON body Python cannot parse (nested too deeply, an integer of "
    "over 4300 digits), a page_token this server did not issue, or a multipart body that "
    "cannot be parsed (more than 8 fields, more than one file, a field over 64 KiB).",
    401: "Missing, unknown or revoked API key (`Authorization: Bearer wkd_…`).",
    404: "No such resource for this key (another key's job is a 404 too).",
    409: "A request with this Idempotency-Key is still in flight; retry shortly.",
    410: "The artifact's file is gone from the server's storage.",
    413: "Request body over the limit (settings.max_json_bytes or max_upload_bytes), or this "
    "key's stored bytes would pass settings.max_stored_bytes_per_key.",
    422: "Invalid input; `detail` names each field (`loc`) and the reason (`msg`). Also an "
    "Idempotency-Key reused with a different job.",
    429: "A per-key limit is reached (queued or running jobs, open event streams); `detail`"
    " says which.",
    503: "The database or the object store is unavailable; retry after `Retry-After` seconds.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error answers ``codes``."""
    return {code: {"model": ErrorBody, "description": _ERRORS[code]} for code in codes}
