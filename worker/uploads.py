"""Uploaded inputs a job names by id, other than its teacher: the WKD-L cost matrix.

The API checked what it could without torch (``service/cost_matrix.py``); here, in the job's
own process and before any training, the matrix's values are checked with
``wkd_core.losses.interrelations.load_distance_matrix`` (a (C, C) float tensor, C the dataset's
classes, finite, symmetric). Anything wrong fails the job with ``invalid_input`` and a message
that names the checkpoint id, never a server path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service import accounts, storage
from service.settings import Settings
from worker.common import SessionFactory


class InvalidUploadError(ValueError):
    """An uploaded input of the job is missing or unusable; the message is for the user."""


def cost_matrix_file(
    spec: dict[str, Any], *, owner_id: str, sessions: SessionFactory, settings: Settings
) -> Path | None:
    """The checked file of the uploaded cost matrix the spec names, if any."""
    ck_id = (spec.get("interrelations") or {}).get("checkpoint_id")
    if not ck_id:
        return None
    from wkd_core.losses.interrelations import load_distance_matrix
    from wkd_core.pipeline import num_classes_of

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
