"""Submit-time checks that need the database: the teacher's record and its class count,
the student's initial weights.

A teacher (and a student's ``init``) is an uploaded checkpoint of the same key (its row gives
architecture and class count) or the student of an earlier *succeeded* job of the same key
(its stored spec gives them). The teacher's architecture may be omitted and is then filled
from that record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from service import accounts, catalog, crud, routing
from service.settings import Settings
from service.spec import JobSpec, cross_errors, raise_if, validate_job_spec
from service.spec_checks import teacher_class_errors
from service.tables import JobStatus


def prepare_job_spec(
    session: Session,
    *,
    owner_id: str,
    body: dict[str, Any],
    settings: Settings,
    get_preset: Callable[[str], dict[str, Any]] = catalog.get_preset,
) -> JobSpec:
    """The resolved, fully checked spec of a ``POST /jobs`` body (or of one job of a study),
    or a ``ValidationError``; ``settings`` give this deployment's limits."""
    spec = validate_job_spec(body, for_api=True, get_preset=get_preset)
    raise_if(deployment_errors(spec, settings))
    raise_if(student_init_errors(session, spec, owner_id))
    if spec.teacher is None or not spec.teacher.sources():  # none: generations train gen 0
        raise_if(cost_matrix_errors(session, spec, owner_id))
        return spec
    teacher = spec.teacher
    arch, num_classes = weights_record(
        session, ("teacher",), owner_id, checkpoint_id=teacher.checkpoint_id,
        job_id=teacher.job_id, use="teach",
    )  # fmt: skip
    if teacher.arch is not None and teacher.arch != arch:
        message = f"the teacher's record says architecture {arch!r}"
        raise_if([(("teacher", "arch"), message, teacher.arch)])
    filled = teacher.model_copy(update={"arch": arch})
    spec = spec.model_copy(update={"teacher": filled})
    raise_if(cross_errors(spec) + teacher_class_errors(spec, num_classes))
    raise_if(cost_matrix_errors(session, spec, owner_id))
    return spec


def deployment_errors(spec: JobSpec, settings: Settings) -> list:
    """Limits of this deployment rather than of the spec: data-loader processes per job,
    GPUs per job and a global batch those GPUs share evenly."""
    errors = routing.gpu_errors(spec, settings)
    if spec.training.num_workers > settings.max_num_workers:
        message = f"at most {settings.max_num_workers} data-loader workers on this service"
        errors.append((("training", "num_workers"), message, spec.training.num_workers))
    return errors


def weights_record(
    session: Session,
    loc: tuple[str, ...],
    owner_id: str,
    *,
    checkpoint_id: str | None,
    job_id: str | None,
    use: str,
) -> tuple[str, int | None]:
    """``(architecture, class count)`` of the key's weights upload or succeeded job named at
    ``loc``; a ``ValidationError`` if there is none."""
    if checkpoint_id is not None:
        value = checkpoint_id
        record = accounts.get_checkpoint_for_owner(
            session, checkpoint_id=checkpoint_id, owner_id=owner_id
        )
        if record is None:
            raise_if([((*loc, "checkpoint_id"), "no checkpoint with this id", value)])
        if record.kind != "teacher":
            weights = "teacher weights" if use == "teach" else "model weights"
            message = f"checkpoint {value} is a {record.kind}, not {weights}"
            raise_if([((*loc, "checkpoint_id"), message, value)])
        return record.arch, record.num_classes
    job = crud.get_job_for_owner(session, job_id=job_id, owner_id=owner_id)
    if job is None:
        raise_if([((*loc, "job_id"), "no job with this id", job_id)])
    if job.status != JobStatus.succeeded:
        message = f"job is {job.status.value}; only a succeeded job's student can {use}"
        raise_if([((*loc, "job_id"), message, job_id)])
    dataset = job.spec["dataset"]
    num_classes = catalog.dataset_num_classes(dataset["name"], dataset.get("num_classes"))
    return job.spec["student"]["arch"], num_classes


def student_init_errors(session: Session, spec: JobSpec, owner_id: str) -> list:
    """``student.init`` must name the key's weights (an upload or a succeeded job's student)
    that fit the student (``catalog.student_init_error``)."""
    init = spec.student.init if spec.student is not None else None
    if init is None or init.path is not None:  # a path: the CLI's, checked when loaded
        return []
    assert spec.student is not None and spec.dataset is not None
    loc = ("student", "init")
    arch, source_classes = weights_record(
        session, loc, owner_id, checkpoint_id=init.checkpoint_id, job_id=init.job_id,
        use="start a student",
    )  # fmt: skip
    classes = catalog.dataset_num_classes(spec.dataset.name, spec.dataset.num_classes)
    message = catalog.student_init_error(
        spec.student.arch, arch, source_classes, classes, backbone_only=init.backbone_only
    )
    source = init.sources()[0]
    return [] if message is None else [((*loc, source), message, getattr(init, source))]


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
