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
    arch: str
    num_classes: int
    filename: str
    size: int
    sha256: str
    created_at: datetime


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]


class Health(BaseModel):
    status: str
    database: str
