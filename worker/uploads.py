"""Inputs a job names by id, other than its teacher: the WKD-L cost matrix and the student's
initial weights.

The API checked what it could without torch (``service/cost_matrix.py``); here, in the job's
own process and before any training, the matrix's values are checked with
``wkd_core.losses.interrelations.load_distance_matrix`` (a (C, C) float tensor, C the dataset's
classes, finite, symmetric). The initial weights (``student.init``: an upload or an earlier
job's student) are fetched as a teacher's are; whether they fit the student is checked when
the pipeline loads them. Anything wrong fails the job with ``invalid_input`` and a message
that names the checkpoint or job id, never a server path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service import accounts, crud, objectstore, storage
from service.settings import Settings
from service.tables import JobStatus
from worker.common import SessionFactory
from worker.store import worker_store

WEIGHTS = "student.safetensors"  # the artifact of a job's student


class InvalidUploadError(ValueError):
    """An uploaded input of the job is missing or unusable; the message is for the user."""


def cost_matrix_file(
    spec: dict[str, Any], *, owner_id: str, sessions: SessionFactory, settings: Settings
) -> Path | None:
    """The checked file of the uploaded cost matrix the spec names, if any."""
    ck_id = (spec.get("interrelations") or {}).get("checkpoint_id")
    if not ck_id:
        return None
    from wkd_core.job_parts import num_classes_of
    from wkd_core.losses.interrelations import load_distance_matrix

    with sessions() as session:
        record = accounts.get_checkpoint_for_owner(session, checkpoint_id=ck_id, owner_id=owner_id)
    if record is None or record.kind != "cost_matrix":
        raise InvalidUploadError(f"cost matrix {ck_id} no longer exists")
    path = storage.safe_join(settings.checkpoint_dir, record.path)
    if not path.is_file():
        raise InvalidUploadError(f"the file of cost matrix {ck_id} is missing on the server")
    try:
        load_distance_matrix(path, num_classes=num_classes_of(spec))
    except ValueError as error:
        message = str(error).replace(str(path), record.filename)
        raise InvalidUploadError(f"cost matrix {ck_id} ({record.filename}): {message}") from None
    return path


def student_init_file(
    spec: dict[str, Any], *, owner_id: str, sessions: SessionFactory, settings: Settings
) -> Path | None:
    """The local file of the weights ``student.init`` names by id, if any (fetched from the
    object store into the cache when the store is remote, as a teacher is)."""
    init = (spec.get("student") or {}).get("init") or {}
    if init.get("checkpoint_id"):
        with sessions() as session:
            row = accounts.get_checkpoint_for_owner(
                session, checkpoint_id=init["checkpoint_id"], owner_id=owner_id
            )
        if row is None or row.kind != "teacher":
            raise InvalidUploadError(f"checkpoint {init['checkpoint_id']} no longer exists")
        area, key, what = "checkpoints", row.path, f"checkpoint {init['checkpoint_id']}"
    elif init.get("job_id"):
        with sessions() as session:
            job = crud.get_job_for_owner(session, job_id=init["job_id"], owner_id=owner_id)
            ok = job is not None and job.status == JobStatus.succeeded
            artifact = crud.get_artifact(session, job_id=job.id, name=WEIGHTS) if ok else None
        if artifact is None:
            raise InvalidUploadError(f"job {init['job_id']} has no succeeded student")
        area, key, what = "artifacts", artifact.path, f"job {init['job_id']}"
    else:
        return None
    store = worker_store(settings)
    copy = Path(settings.cache_dir) / "student-init" / area / key  # stored files never change
    if not store.is_local and copy.is_file():
        return copy
    try:
        return store.fetch(area, key, copy)
    except objectstore.MissingObjectError:
        raise InvalidUploadError(f"the weights of {what} are missing on the server") from None
