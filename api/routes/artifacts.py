"""``/jobs/{id}/artifacts``: list a job's files and download them by name."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, Response, StreamingResponse

from api.deps import OwnedJobDep, SessionDep, SettingsDep
from api.schemas import ArtifactPublic, ArtifactsPublic, error_responses
from service import crud, objectstore, storage
from service.tables import Artifact

router = APIRouter(prefix="/jobs", tags=["artifacts"])


def artifact_public(row: Artifact) -> ArtifactPublic:
    return ArtifactPublic(
        name=row.name, kind=row.kind, size=row.size, sha256=row.sha256,
        created_at=row.created_at, url=f"/jobs/{row.job_id}/artifacts/{row.name}",
    )  # fmt: skip


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactsPublic,
    responses=error_responses(401, 404, 422, 503),
)
def read_artifacts(job: OwnedJobDep, session: SessionDep) -> ArtifactsPublic:
    """The job's files: student weights, interrelations, metrics, manifest."""
    return ArtifactsPublic(
        data=[artifact_public(a) for a in crud.list_artifacts(session, job_id=job.id)]
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        },
        **error_responses(401, 404, 410, 422, 503),
    },
)
def download_artifact(
    name: str, job: OwnedJobDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Stream one file as an attachment, from the local folder or the object store. The name
    is looked up in the database, never joined onto a folder as given."""
    row = None
    if storage.ARTIFACT_NAME.match(name):  # the worker's names; anything else cannot exist
        row = crud.get_artifact(session, job_id=job.id, name=name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="artifact not found")
    store = objectstore.open_store(settings)
    try:
        path = store.local_path("artifacts", row.path)
        if path is not None:
            if not path.is_file():
                raise objectstore.MissingObjectError(row.path)
            return FileResponse(path, filename=row.name, media_type="application/octet-stream")
        size = store.size("artifacts", row.path)
        chunks = store.iter_bytes("artifacts", row.path)
    except ValueError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="artifact not found") from None
    except objectstore.MissingObjectError:
        raise HTTPException(status.HTTP_410_GONE, detail="artifact file is missing") from None
    headers = {"Content-Disposition": f'attachment; filename="{row.name}"',
               "Content-Length": str(size)}  # fmt: skip
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)
