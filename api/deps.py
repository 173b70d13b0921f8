"""FastAPI dependencies and their ``Annotated`` aliases (the template's pattern).

Ownership is a dependency: :data:`OwnedJobDep` loads a job only if the calling key owns it
and answers 404 otherwise, so that ids cannot be probed and no handler repeats the check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service import accounts, crud, storage
from service.settings import Settings
from service.tables import ApiKey, Job


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_enqueue(request: Request) -> Callable[[str], None]:
    return request.app.state.enqueue


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
EnqueueDep = Annotated[Callable[[str], None], Depends(get_enqueue)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `wkd keys create`.")


def get_current_key(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The calling API key; 401 without a valid ``Authorization: Bearer wkd_…``."""
    key = None if credentials is None else accounts.verify_api_key(session, credentials.credentials)
    if key is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


def get_owned_job(job_id: str, session: SessionDep, key: CurrentKey) -> Job:
    job = None
    if storage.JOB_ID.match(job_id):  # anything else cannot exist: no query for it
        job = crud.get_job_for_owner(session, job_id=job_id, owner_id=key.id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="job not found")
    return job


OwnedJobDep = Annotated[Job, Depends(get_owned_job)]
