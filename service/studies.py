"""Studies: one request fanned out into jobs over methods × seeds, and their summary.

A study names one teacher, student and dataset, the methods to compare (by default vanilla,
KD, DKD, WKD-L, WKD-F and WKD-LF) and the seeds (by default 0, 1, 2). Each (method, seed) is an
ordinary job: the released preset ``<dataset>/<method>/<teacher>_<student>`` when one exists
(else the method's defaults), under the study's own ``training`` fields, its per-method
``params`` and the seed. All jobs are validated before any is created, so a study is accepted
whole or not at all.

The WKD-L and WKD-LF jobs share one interrelation matrix: it depends only on the teacher,
the dataset and the interrelation options, which the jobs share, and the worker caches it by
exactly those (``WKD_CACHE_DIR``); an uploaded cost matrix (``interrelations.checkpoint_id``)
is shared as it is. The summary reports the sha256 of every job's ``interrelations.pt`` so
this can be checked.

The summary gives, per method over its succeeded jobs, the mean ± sample standard deviation
(n − 1; none for a single run) of the best and the last test top-1, and the difference of those
means to KD's.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import accounts, catalog, crud
from service.paging import Page, newest_first_page
from service.queue import first_line, unavailable_dependency
from service.settings import Settings
from service.spec import (
    DatasetSpec,
    InterrelationsSpec,
    JobSpec,
    StudentSpec,
    TeacherSpec,
    _Strict,
    raise_if,
    spec_error,
)
from service.submit import prepare_job_spec
from service.tables import Artifact, Job, JobStatus, Study, job_progress, new_id

log = logging.getLogger(__name__)
DEFAULT_METHODS = ["vanilla", "kd", "dkd", "wkd_l", "wkd_f", "wkd_lf"]
MAX_JOBS = 64


class StudySpec(_Strict):
    """The ``POST /studies`` body."""

    teacher: TeacherSpec
    student: StudentSpec
    dataset: DatasetSpec
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    training: dict[str, Any] = Field(default_factory=dict)  # TrainingSpec fields, seed excluded
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per method
    interrelations: InterrelationsSpec | None = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in catalog.METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown} (known: {', '.join(catalog.METHODS)})")
        if len(set(value)) != len(value):
            raise ValueError("each method once")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(s < 0 for s in value):
            raise ValueError("seeds must be distinct and non-negative")
        return value

    @field_validator("training")
    @classmethod
    def _no_seed(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "seed" in value:
            raise ValueError("the seeds come from `seeds`")
        return value


class PreparedStudy(NamedTuple):
    """A study whose jobs are all checked: ``(method, spec)`` per job, in creation order."""

    study: StudySpec
    specs: list[tuple[str, JobSpec]]


def job_bodies(
    study: StudySpec, preset_names: Callable[[], list[str]] = catalog.preset_names
) -> list[tuple[str, int, dict[str, Any]]]:
    """(method, seed, JobSpec body) for every job of the study, methods first, then seeds."""
    if len(study.methods) * len(study.seeds) > MAX_JOBS:
        raise spec_error([(("seeds",), f"a study has at most {MAX_JOBS} jobs", study.seeds)])
    presets = set(preset_names())
    out = []
    for method in study.methods:
        preset = f"{study.dataset.name}/{method}/{study.teacher.arch}_{study.student.arch}"
        for seed in study.seeds:
            body: dict[str, Any] = {
                "method": method,
                "student": study.student.model_dump(exclude_none=True),
                "dataset": study.dataset.model_dump(exclude_none=True),
                "training": {**study.training, "seed": seed},
                "params": dict(study.params.get(method, {})),
            }
            if preset in presets:
                body["preset"] = preset
            if catalog.METHODS[method].needs_teacher:
                body["teacher"] = study.teacher.model_dump(exclude_none=True)
            if method in ("wkd_l", "wkd_lf") and study.interrelations is not None:
                body["interrelations"] = study.interrelations.model_dump(exclude_none=True)
            out.append((method, seed, body))
    return out


def prepare_study(
    session: Session, *, owner_id: str, study: StudySpec, settings: Settings
) -> PreparedStudy:
    """Every job's checked spec (as ``POST /jobs`` checks one, this deployment's limits
    included), before anything is created. A ``ValidationError`` names the job by its
    ``loc``: ``("jobs", "<method>/seed<k>", <field>…)``."""
    raise_if(study_path_errors(study))
    study = with_teacher_arch(session, study, owner_id)
    specs = []
    for method, seed, body in job_bodies(study):
        try:
            spec = prepare_job_spec(session, owner_id=owner_id, body=body, settings=settings)
        except ValidationError as error:
            errors = [(("jobs", f"{method}/seed{seed}", *e["loc"]), e["msg"], e.get("input"))
                      for e in error.errors(include_url=False)]  # fmt: skip
            raise spec_error(errors) from None
        specs.append((method, spec))
    return PreparedStudy(study, specs)


def study_path_errors(study: StudySpec) -> list:
    """Server paths in a study body (its jobs check their own, but a vanilla-only study's
    teacher would be kept in the study as given): refused as in ``POST /jobs``."""
    message = "paths are not accepted by the service; upload the file and give its id"
    init = study.student.init
    found = [(("teacher", "path"), study.teacher.path), (("dataset", "root"), study.dataset.root),
             (("student", "init", "path"), init.path if init is not None else None),
             (("interrelations", "path"),
              study.interrelations.path if study.interrelations is not None else None)]  # fmt: skip
    return [(loc, message, value) for loc, value in found if value is not None]


def create_study(
    session: Session, *, owner_id: str, prepared: PreparedStudy, max_attempts: int
) -> tuple[Study, list[str]]:
    """Insert the prepared study and its jobs in one transaction.

    Returns the study and its job ids (to enqueue).
    """
    study, specs = prepared.study, prepared.specs
    jobs = [
        Job(
            id=new_id("job"),
            owner_id=owner_id,
            status=JobStatus.queued,
            spec=spec.to_stored(),
            progress_total=spec.training.epochs,
            max_attempts=max_attempts,
        )
        for _, spec in specs
    ]
    job_ids: dict[str, list[str]] = {}
    for (method, _), job in zip(specs, jobs, strict=True):
        job_ids.setdefault(method, []).append(job.id)
    row = Study(
        id=new_id("study"), owner_id=owner_id, spec=study.model_dump(mode="json"), job_ids=job_ids
    )
    session.add_all([*jobs, row])
    session.commit()
    return row, [job.id for job in jobs]


def with_teacher_arch(session: Session, study: StudySpec, owner_id: str) -> StudySpec:
    """The study with ``teacher.arch`` filled from the uploaded checkpoint's record.

    The arch names the preset of each method; a wrong or missing checkpoint is reported by the
    jobs' own validation.
    """
    teacher = study.teacher
    if teacher.arch is not None or teacher.checkpoint_id is None:
        return study
    record = accounts.get_checkpoint_for_owner(
        session, checkpoint_id=teacher.checkpoint_id, owner_id=owner_id
    )
    if record is None or record.kind != "teacher":
        return study
    return study.model_copy(update={"teacher": teacher.model_copy(update={"arch": record.arch})})


def get_study_for_owner(session: Session, *, study_id: str, owner_id: str) -> Study | None:
    return session.scalar(select(Study).where(Study.id == study_id, Study.owner_id == owner_id))


def list_studies(
    session: Session, *, owner_id: str, page_size: int, page_token: str | None = None
) -> Page:
    """The owner's studies as list items (:func:`study_item`), newest first, keyset-paged on
    (created_at, id) like ``GET /jobs``. Raises ``ValueError`` for a malformed token."""
    query = select(Study).where(Study.owner_id == owner_id)
    page = newest_first_page(session, query, Study, page_size=page_size, page_token=page_token)
    rows = page.items
    ids = [job_id for study in rows for job_id in _job_ids(study)]
    statuses = dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(ids))).all())
    return Page(
        [study_item(s, [statuses[i] for i in _job_ids(s)]) for s in rows], page.next_page_token
    )


def _job_ids(study: Study) -> list[str]:
    return [job_id for method_ids in study.job_ids.values() for job_id in method_ids]


def study_item(study: Study, statuses: list[JobStatus]) -> dict[str, Any]:
    """What a list of studies shows: the pair, dataset, methods × seeds, and how far it is."""
    spec = study.spec
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.value] = counts.get(s.value, 0) + 1
    return {
        "id": study.id, "created_at": study.created_at, "status": study_status(statuses),
        "teacher_arch": spec["teacher"].get("arch"), "student_arch": spec["student"]["arch"],
        "dataset": spec["dataset"]["name"], "methods": spec["methods"], "seeds": spec["seeds"],
        "epochs": spec["training"].get("epochs"), "jobs": len(statuses), "job_states": counts,
    }  # fmt: skip


def mean_std(values: list[float]) -> dict[str, Any]:
    """``{"mean", "std", "n"}``: the sample standard deviation, ``None`` below two values."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def study_status(statuses: list[JobStatus]) -> str:
    """``queued`` / ``running`` while any job is unfinished, then ``succeeded`` or ``finished
    with failures`` (some job failed or was cancelled)."""
    if all(s == JobStatus.queued for s in statuses):
        return "queued"
    if any(s not in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled) for s in statuses):
        return "running"
    if all(s == JobStatus.succeeded for s in statuses):
        return "succeeded"
    return "finished_with_failures"


def study_document(session: Session, study: Study) -> dict[str, Any]:
    """What ``GET /studies/{id}`` returns: the jobs, the per-method summary, the shared IR."""
    ids = _job_ids(study)
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
    ir = {
        a.job_id: a.sha256
        for a in session.scalars(
            select(Artifact).where(Artifact.job_id.in_(ids), Artifact.name == "interrelations.pt")
        )
    }
    rows, summary = [], []
    for method, method_ids in study.job_ids.items():
        done = [jobs[i] for i in method_ids if jobs[i].status == JobStatus.succeeded]
        best = mean_std([j.best_top1 for j in done if j.best_top1 is not None])
        last = mean_std([j.last_top1 for j in done if j.last_top1 is not None])
        summary.append({"method": method, "best_top1": best, "last_top1": last})
        for job_id in method_ids:
            job = jobs[job_id]
            rows.append({
                "id": job.id, "method": method, "seed": job.spec["training"]["seed"],
                "status": job.status.value, "progress": job_progress(job),
                "failure_reason": job.failure_reason, "best_top1": job.best_top1,
                "best_epoch": job.best_epoch, "last_top1": job.last_top1,
                "interrelations_sha256": ir.get(job.id),
            })  # fmt: skip
    add_deltas(summary)
    digests = sorted({d for d in ir.values()})
    return {
        "id": study.id,
        "created_at": study.created_at,
        "status": study_status([jobs[i].status for i in ids]),
        "spec": study.spec,
        "jobs": rows,
        "summary": summary,
        "interrelations": {"sha256": digests, "shared": len(digests) <= 1},
    }


def add_deltas(summary: list[dict[str, Any]]) -> None:
    """``delta_vs_kd``: each method's mean minus KD's (best and last), when both exist."""
    kd = next((row for row in summary if row["method"] == "kd"), None)
    for row in summary:
        row["delta_vs_kd"] = {
            key: (
                row[key]["mean"] - kd[key]["mean"]
                if kd and row[key]["mean"] is not None and kd[key]["mean"] is not None
                else None
            )
            for key in ("best_top1", "last_top1")
        }


def enqueue_all(session: Session, job_ids: list[str], enqueue: Callable[[str], None]) -> None:
    """Hand every job to the broker; a failure is left to the reaper, as for ``POST /jobs``.

    Once the broker cannot be reached the remaining jobs are left to the reaper as well,
    rather than waiting out each send's retries and timeouts (seconds per job).
    """
    for index, job_id in enumerate(job_ids):
        try:
            enqueue(job_id)
            crud.mark_enqueued(session, job_id=job_id)
        except Exception as error:  # the rows are committed: the reaper re-sends them
            if unavailable_dependency(error) == "broker":
                log.warning("could not enqueue %s and %d more: the broker is unavailable (%s); "
                            "the reaper will send them", job_id, len(job_ids) - index - 1,
                            first_line(error))  # fmt: skip
                return
            log.exception("could not enqueue %s; the reaper will retry", job_id)
