"""Submit-time checks that need the database: the teacher's record and its class count.

A teacher is an uploaded checkpoint of the same key (its row gives architecture and class
count) or the student of an earlier *succeeded* job of the same key (its stored spec gives
them). The teacher's architecture may be omitted and is then filled from that record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from service import accounts, catalog, crud
from service.spec import (
    JobSpec,
    cross_errors,
    raise_if,
    teacher_class_errors,
    validate_job_spec,
)
from service.tables import JobStatus


def prepare_job_spec(
    session: Session,
    *,
    owner_id: str,
    body: dict[str, Any],
    get_preset: Callable[[str], dict[str, Any]] = catalog.get_preset,
) -> JobSpec:
    """The resolved, fully checked spec of a ``POST /jobs`` body, or a ``ValidationError``."""
    spec = validate_job_spec(body, for_api=True, get_preset=get_preset)
    if spec.teacher is None or not spec.teacher.sources():  # none: generations train gen 0
        return spec
    teacher = spec.teacher
    if teacher.checkpoint_id is not None:
        loc, value = ("teacher", "checkpoint_id"), teacher.checkpoint_id
        record = accounts.get_checkpoint_for_owner(
            session, checkpoint_id=teacher.checkpoint_id, owner_id=owner_id
        )
        if record is None:
            raise_if([(loc, "no checkpoint with this id", value)])
        if record.kind != "teacher":
            raise_if([(loc, f"checkpoint {value} is a {record.kind}, not teacher weights", value)])
        arch, num_classes = record.arch, record.num_classes
    else:
        loc, value = ("teacher", "job_id"), teacher.job_id
        job = crud.get_job_for_owner(session, job_id=teacher.job_id, owner_id=owner_id)
        if job is None:
            raise_if([(loc, "no job with this id", value)])
        if job.status != JobStatus.succeeded:
            message = f"job is {job.status.value}; only a succeeded job's student can teach"
            raise_if([(loc, message, value)])
        arch = job.spec["student"]["arch"]
        dataset = job.spec["dataset"]
        num_classes = catalog.dataset_num_classes(dataset["name"], dataset.get("num_classes"))
    if teacher.arch is not None and teacher.arch != arch:
        message = f"the teacher's record says architecture {arch!r}"
        raise_if([(("teacher", "arch"), message, teacher.arch)])
    filled = teacher.model_copy(update={"arch": arch})
    spec = spec.model_copy(update={"teacher": filled})
    raise_if(cross_errors(spec) + teacher_class_errors(spec, num_classes))
    raise_if(cost_matrix_errors(session, spec, owner_id))
    return spec


def cost_matrix_errors(session: Session, spec: JobSpec, owner_id: str) -> list:
    """An ``interrelations.checkpoint_id`` must be the key's cost-matrix upload of C classes."""
    ck_id = spec.interrelations.checkpoint_id
    if ck_id is None:
        return []
    loc = ("interrelations", "checkpoint_id")
    record = accounts.get_checkpoint_for_owner(session, checkpoint_id=ck_id, owner_id=owner_id)
    if record is None:
        return [(loc, "no checkpoint with this id", ck_id)]
    if record.kind != "cost_matrix":
        return [(loc, f"checkpoint {ck_id} is {record.kind} weights, not a cost matrix", ck_id)]
    assert spec.dataset is not None
    expected = catalog.dataset_num_classes(spec.dataset.name, spec.dataset.num_classes)
    if expected is not None and record.num_classes != expected:
        message = (
            f"the cost matrix is {record.num_classes}x{record.num_classes} but dataset "
            f"{spec.dataset.name!r} has {expected} classes"
        )
        return [(loc, message, ck_id)]
    return []
