"""``/studies``: one request fanned out into jobs over methods × seeds (``service/studies.py``)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api.deps import CurrentKey, EnqueueDep, PageSizeDep, SessionDep, SettingsDep
from api.routes.jobs import body_errors, check_job_limits
from api.schemas import error_responses
from service import storage, studies
from service.studies import StudySpec

router = APIRouter(prefix="/studies", tags=["studies"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(400, 401, 413, 422, 429, 503),
)
def create_study(
    body: StudySpec,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    enqueue: EnqueueDep,
) -> Response:
    """Create every job of the study (all validated first, as ``POST /jobs`` validates one,
    and within the key's job limits) and queue them."""
    try:
        prepared = studies.prepare_study(session, owner_id=key.id, study=body, settings=settings)
    except ValidationError as error:
        raise RequestValidationError(body_errors(error)) from None
    check_job_limits(session, key.id, settings, new_jobs=len(prepared.specs))
    study, job_ids = studies.create_study(
        session, owner_id=key.id, prepared=prepared, max_attempts=settings.max_attempts
    )
    studies.enqueue_all(session, job_ids, enqueue)
    document = jsonable_encoder(studies.study_document(session, study))
    headers = {"Location": f"/studies/{study.id}"}
    return JSONResponse(document, status_code=status.HTTP_202_ACCEPTED, headers=headers)


@router.get("", responses=error_responses(400, 401, 422, 503))
def read_studies(
    session: SessionDep,
    key: CurrentKey,
    size: PageSizeDep,
    page_token: str | None = None,
) -> dict:
    """The key's studies, newest first: pair, dataset, methods × seeds, jobs per state."""
    try:
        page = studies.list_studies(session, owner_id=key.id, page_size=size, page_token=page_token)
    except ValueError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
    return {"data": jsonable_encoder(page.items), "next_page_token": page.next_page_token}


@router.get("/{study_id}", responses=error_responses(401, 404, 422, 503))
def read_study(study_id: str, session: SessionDep, key: CurrentKey) -> dict:
    """The study's jobs, mean ± std of best and last top-1 per method, differences to KD."""
    study = None
    if storage.STUDY_ID.match(study_id):  # anything else cannot exist (nor reach the database)
        study = studies.get_study_for_owner(session, study_id=study_id, owner_id=key.id)
    if study is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="study not found")
    return jsonable_encoder(studies.study_document(session, study))
