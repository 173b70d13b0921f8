"""``/checkpoints``: upload teacher weights or WKD-L cost matrices (multipart) and list them.

``kind=cost_matrix`` uploads a C×C D = 1 − CKA tensor (the authors' ``linear_cka.pth``) that a
job names as ``interrelations.checkpoint_id``; ``arch`` is then optional (the teacher it came
from, for the record) and ``num_classes`` is C (see ``service/cost_matrix.py``).

The request-body limit is enforced by middleware before this handler runs (by
``Content-Length`` and again while the body streams in), and the handler authenticates
before it parses the form, so an anonymous client cannot make the server spool a file.
Each stored file is then checked in a limited child process (``service/upload_check.py``):
what the worker could not load is refused here with a 422, not as a failed job later.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile

from api.deps import CurrentKey, PageSizeDep, SessionDep, SettingsDep
from api.schemas import CheckpointPublic, CheckpointsPublic, error_responses
from service import accounts, catalog, cost_matrix, objectstore, storage, upload_check
from service.spec import ID_PATTERN, MAX_NUM_CLASSES
from service.tables import new_id

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])
_DIGITS = re.compile(r"[0-9]{1,7}")

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
                        "num_classes": {"type": "integer", "minimum": 2,
                                        "maximum": MAX_NUM_CLASSES},
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
    responses=error_responses(400, 401, 413, 422, 503),
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
    await run_in_threadpool(_check_quota, session, key.id, 1, settings)  # full: before parsing
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
        classes = _num_classes(num_classes)
        try:
            suffix = storage.checkpoint_suffix(upload.filename)
        except ValueError as error:
            raise _invalid("file", str(error), upload.filename) from None
        checkpoint_id = new_id("ck")
        relpath = checkpoint_id + suffix
        store = objectstore.open_store(settings)
        # Local store: straight into place. Remote: spooled here, then uploaded.
        folder = settings.checkpoint_dir if store.is_local else objectstore.staging_dir(settings)
        destination = folder / relpath
        try:
            size, sha256 = await run_in_threadpool(
                storage.save_stream, upload.file, destination, max_bytes=settings.max_upload_bytes
            )
        except storage.UploadTooLargeError as error:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(error)) from None
    try:
        await run_in_threadpool(_check_quota, session, key.id, size, settings)
        if kind == "cost_matrix":
            await run_in_threadpool(_check_cost_matrix, destination, suffix, classes, settings)
        else:
            await run_in_threadpool(_check_weights, destination, classes, settings)
        await run_in_threadpool(store.put_file, "checkpoints", relpath, destination)
        row = await run_in_threadpool(
            accounts.create_checkpoint, session, checkpoint_id=checkpoint_id, owner_id=key.id,
            arch=arch, num_classes=classes, filename=_display_name(upload.filename), size=size,
            sha256=sha256, path=relpath, kind=kind,
        )  # fmt: skip
    except BaseException:
        destination.unlink(missing_ok=True)
        if not store.is_local:  # uploaded, but no row points at it
            await run_in_threadpool(store.delete, "checkpoints", relpath)
        raise
    finally:
        if not store.is_local:
            destination.unlink(missing_ok=True)
    response.headers["Location"] = f"/checkpoints/{row.id}"
    return CheckpointPublic.model_validate(row)


def _check_quota(session, owner_id: str, size: int, settings) -> None:
    """413 when this upload would take the key past ``max_stored_bytes_per_key``."""
    limit = settings.max_stored_bytes_per_key
    if not limit:
        return
    stored = accounts.stored_bytes(session, owner_id=owner_id)
    if stored + size > limit:
        message = (f"this API key stores {stored} bytes of checkpoints; {size} more would pass "
                   f"its limit of {limit} bytes")  # fmt: skip
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, message)


def _num_classes(value: object) -> int:
    """The form's ``num_classes``: decimal digits only, within 2..MAX_NUM_CLASSES."""
    text = value if isinstance(value, str) else ""
    if not _DIGITS.fullmatch(text) or not 2 <= int(text) <= MAX_NUM_CLASSES:
        message = f"an integer from 2 to {MAX_NUM_CLASSES} is required"
        raise _invalid("num_classes", message, value if isinstance(value, str) else None)
    return int(text)


def _display_name(filename: str) -> str:
    """The client's file name as stored for display: printable UTF-8, at most 255 chars."""
    text = filename.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else "?" for c in text)[:255]


def _check_weights(path, num_classes: int, settings) -> None:
    """Check the file in a limited child process; its classifier must match ``num_classes``."""
    try:
        report = upload_check.check_upload(path, settings)
    except upload_check.UploadRejectedError as error:
        raise _invalid("file", str(error)) from None
    outputs = upload_check.classifier_outputs(report["shapes"])
    if outputs is not None and outputs != num_classes:
        message = f"the checkpoint's classifier has {outputs} outputs"
        raise _invalid("num_classes", message, num_classes)


def _check_cost_matrix(path, suffix: str, num_classes: int, settings) -> None:
    """A file that loads safely (the limited child of ``service.upload_check``) and passes
    the header checks of ``service.cost_matrix`` (the worker checks the values)."""
    if suffix != ".safetensors":
        try:
            upload_check.check_upload(path, settings, content="tensor")
        except upload_check.UploadRejectedError as error:
            raise _invalid("file", str(error)) from None
    errors = cost_matrix.upload_errors(path, suffix, num_classes)
    if errors:
        raise _invalid("file", "; ".join(errors))


@router.get("", response_model=CheckpointsPublic, responses=error_responses(400, 401, 422, 503))
def read_checkpoints(
    session: SessionDep, key: CurrentKey, size: PageSizeDep, page_token: str | None = None
) -> CheckpointsPublic:
    """The key's uploaded checkpoints, newest first, ``page_size`` at a time."""
    try:
        page = accounts.list_checkpoints(
            session, owner_id=key.id, page_size=size, page_token=page_token
        )
    except ValueError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
    return CheckpointsPublic(
        data=[CheckpointPublic.model_validate(r) for r in page.items],
        next_page_token=page.next_page_token,
    )


@router.get(
    "/{checkpoint_id}",
    response_model=CheckpointPublic,
    responses=error_responses(401, 404, 422, 503),
)
def read_checkpoint(checkpoint_id: str, session: SessionDep, key: CurrentKey) -> CheckpointPublic:
    row = None
    if re.fullmatch(ID_PATTERN, checkpoint_id):
        row = accounts.get_checkpoint_for_owner(
            session, checkpoint_id=checkpoint_id, owner_id=key.id
        )
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="checkpoint not found")
    return CheckpointPublic.model_validate(row)
