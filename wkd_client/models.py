"""What the service returns, as typed models (pydantic; no torch, no service imports).

Unknown fields are kept (``extra="allow"``), so a client stays usable against a newer server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Progress(_Model):
    """``epoch`` of ``total`` epochs done; ``batch`` of ``batches`` done in the next one."""

    epoch: int
    total: int
    batch: int = 0
    batches: int = 0

    @property
    def fraction(self) -> float:
        """The share of the whole job done, counting the batches of the current epoch."""
        within = self.batch / self.batches if self.batches else 0.0
        return min(1.0, (self.epoch + within) / self.total) if self.total else 0.0


class Metric(_Model):
    """One finished epoch of the curve (accuracies in percent)."""

    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    test_top1: float
    test_top5: float
    test_loss: float
    loss_terms: dict[str, float]
    seconds: float


class Artifact(_Model):
    name: str
    kind: str
    size: int
    sha256: str
    created_at: datetime
    url: str


class JobSummary(_Model):
    """A job without its curve (the items of ``GET /jobs``)."""

    id: str
    status: str
    is_terminal: bool
    failure_reason: str | None = None
    message: str | None = None
    progress: Progress
    best_top1: float | None = None
    best_epoch: int | None = None
    last_top1: float | None = None
    attempt: int = 1
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    method: str | None = None
    teacher_arch: str | None = None
    student_arch: str | None = None
    dataset: str | None = None


class Job(JobSummary):
    """A job with its resolved spec, curve and artifacts (``GET /jobs/{id}``)."""

    spec: dict[str, Any]
    curve: list[Metric]
    artifacts: list[Artifact]


class JobPage(_Model):
    data: list[JobSummary]
    next_page_token: str = ""


class Checkpoint(_Model):
    """An uploaded teacher; use its ``id`` as ``teacher.checkpoint_id``."""

    id: str
    arch: str
    num_classes: int
    filename: str
    size: int
    sha256: str
    created_at: datetime


class Event(_Model):
    """One server-sent event of ``GET /jobs/{id}/events``: ``state``, ``epoch`` or
    ``progress`` (see docs/service.md), with its resumable ``id``."""

    id: str | None = None
    event: str = "message"
    data: dict[str, Any]

    @property
    def is_end(self) -> bool:
        """A ``state`` event of a terminal status: the stream ends after it."""
        return self.event == "state" and self.data.get("status") in TERMINAL


class StudyJob(_Model):
    """One job of a study: its method and seed, state, progress and accuracies."""

    id: str
    method: str
    seed: int
    status: str
    progress: Progress
    failure_reason: str | None = None
    best_top1: float | None = None
    best_epoch: int | None = None
    last_top1: float | None = None
    interrelations_sha256: str | None = None


class MethodSummary(_Model):
    """Mean ± std over the method's succeeded seeds (``{"mean", "std", "n"}`` each), and
    ``delta_vs_kd`` (its means minus KD's) when the study has KD."""

    method: str
    best_top1: dict[str, Any]
    last_top1: dict[str, Any]
    delta_vs_kd: dict[str, float | None] | None = None


class Study(_Model):
    """``GET /studies/{id}``: the jobs, the per-method summary, the shared interrelations."""

    id: str
    created_at: datetime
    status: str
    spec: dict[str, Any]
    jobs: list[StudyJob]
    summary: list[MethodSummary]
    interrelations: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        """Every job has ended (``succeeded`` or ``finished_with_failures``)."""
        return self.status not in ("queued", "running")


class StudyItem(_Model):
    """An item of ``GET /studies``: pair, dataset, methods × seeds and jobs per state."""

    id: str
    created_at: datetime
    status: str
    teacher_arch: str | None = None
    student_arch: str
    dataset: str
    methods: list[str]
    seeds: list[int]
    epochs: int | None = None
    jobs: int
    job_states: dict[str, int]


class CheckpointPage(_Model):
    data: list[Checkpoint]
    next_page_token: str = ""


class StudyPage(_Model):
    data: list[StudyItem]
    next_page_token: str = ""
