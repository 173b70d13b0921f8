"""``/checkpoints``: upload teacher weights or WKD-L cost matrices (multipart) and list them.

``kind=cost_matrix`` uploads a C×C D = 1 − CKA tensor (the authors' ``linear_cka.pth``) that a
job names as ``interrelations.checkpoint_id``; ``arch`` is then optional (the teacher it came
from, for the record) and ``num_classes`` is C (see ``service/cost_matrix.py``).

The request-body limit is enforced by middleware before this handler runs (by
``Content-Length`` and again while the body streams in), and the handler authenticates
before it parses the form, so an anonymous client cannot make the server spool a file.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile

from api.deps import CurrentKey, SessionDep, SettingsDep
from api.schemas import CheckpointPublic, CheckpointsPublic
from service import accounts, catalog, cost_matrix, storage
from service.tables import new_id

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])

_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "num_classes"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": ".pth, .pt or .safetensors"},
                        "kind": {"type": "string", "enum": list(cost_matrix.KINDS),
                                 "default": "teacher"},
                        "arch": {"type": "string", "description": "a catalog architecture "
                                 "(required for a teacher)"},
                        "num_classes": {"type": "integer", "minimum": 2},
                    },
                }
            }
        },
    }
}  # fmt: skip


def _invalid(field: str, message: str, value=None) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ["body", field], "msg": message, "input": value}]
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointPublic,
    openapi_extra=_UPLOAD_SCHEMA,
)
async def create_checkpoint(
    request: Request,
    response: Response,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
) -> CheckpointPublic:
    """Upload a teacher checkpoint; returns its id (for ``teacher.checkpoint_id``) and sha256."""
    async with request.form(max_files=1, max_fields=8, max_part_size=64 * 1024) as form:
        upload, arch, num_classes = form.get("file"), form.get("arch"), form.get("num_classes")
        kind = form.get("kind") or "teacher"
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise _invalid("file", "a file part named 'file' is required")
        if kind not in cost_matrix.KINDS:
            raise _invalid("kind", f"kind must be one of {', '.join(cost_matrix.KINDS)}", kind)
        if kind == "cost_matrix" and arch is None:
            arch = ""
        elif not isinstance(arch, str) or arch not in catalog.ARCHITECTURES:
            raise _invalid("arch", f"unknown architecture {arch!r}", arch)
        try:
            classes = int(num_classes) if isinstance(num_classes, str) else 0
        except ValueError:
            classes = 0
        if classes < 2:
            raise _invalid("num_classes", "an integer of at least 2 is required", num_classes)
        try:
            suffix = storage.checkpoint_suffix(upload.filename)
        except ValueError as error:
            raise _invalid("file", str(error), upload.filename) from None
        checkpoint_id = new_id("ck")
        relpath = checkpoint_id + suffix
        destination = settings.checkpoint_dir / relpath
        try:
            size, sha256 = await run_in_threadpool(
                storage.save_stream, upload.file, destination, max_bytes=settings.max_upload_bytes
            )
        except storage.UploadTooLargeError as error:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(error)) from None
    try:
        if kind == "cost_matrix":
            _check_cost_matrix(destination, suffix, classes)
        elif suffix == ".safetensors":
            _check_safetensors(destination, classes)
        row = await run_in_threadpool(
            accounts.create_checkpoint, session, checkpoint_id=checkpoint_id, owner_id=key.id,
            arch=arch, num_classes=classes, filename=upload.filename[:255], size=size,
            sha256=sha256, path=relpath, kind=kind,
        )  # fmt: skip
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    response.headers["Location"] = f"/checkpoints/{row.id}"
    return CheckpointPublic.model_validate(row)


def _check_safetensors(path, num_classes: int) -> None:
    """Read the header only (no torch): the file must parse and its classifier must match."""
    try:
        header = storage.safetensors_header(path)
    except ValueError as error:
        raise _invalid("file", str(error)) from None
    outputs = storage.classifier_outputs(header)
    if outputs is not None and outputs != num_classes:
        message = f"the checkpoint's classifier has {outputs} outputs"
        raise _invalid("num_classes", message, num_classes)


def _check_cost_matrix(path, suffix: str, num_classes: int) -> None:
    """The header checks of ``service.cost_matrix`` (the worker checks the values)."""
    errors = cost_matrix.upload_errors(path, suffix, num_classes)
    if errors:
        raise _invalid("file", "; ".join(errors))


@router.get("", response_model=CheckpointsPublic)
def read_checkpoints(session: SessionDep, key: CurrentKey) -> CheckpointsPublic:
    """The key's uploaded checkpoints, newest first."""
    rows = accounts.list_checkpoints(session, owner_id=key.id)
    return CheckpointsPublic(data=[CheckpointPublic.model_validate(r) for r in rows])


@router.get("/{checkpoint_id}", response_model=CheckpointPublic)
def read_checkpoint(checkpoint_id: str, session: SessionDep, key: CurrentKey) -> CheckpointPublic:
    row = accounts.get_checkpoint_for_owner(session, checkpoint_id=checkpoint_id, owner_id=key.id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="checkpoint not found")
    return CheckpointPublic.model_validate(row)
