"""FastAPI dependencies and their ``Annotated`` aliases (the template's pattern).

Ownership is a dependency: :data:`OwnedJobDep` loads a job only if the calling key owns it
and answers 404 otherwise, so that ids cannot be probed and no handler repeats the check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service import accounts, storage
from service.settings import Settings
from service.tables import ApiKey, Job


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_read_db(request: Request) -> Iterator[Session]:
    """A session whose statements run in autocommit: for requests that only read."""
    with request.app.state.reader() as session:
        yield session


def get_enqueue(request: Request) -> Callable[[str], None]:
    return request.app.state.enqueue


def get_message_roots(request: Request) -> tuple[str, ...]:
    """The service's folders as job messages may name them (made once at start-up)."""
    return request.app.state.message_roots


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
ReadSessionDep = Annotated[Session, Depends(get_read_db)]
EnqueueDep = Annotated[Callable[[str], None], Depends(get_enqueue)]
MessageRootsDep = Annotated[tuple[str, ...], Depends(get_message_roots)]


def get_page_size(
    settings: SettingsDep,
    page_size: Annotated[
        int | None, Query(ge=1, le=10_000, description="capped at the server's max")
    ] = None,
) -> int:
    """A list endpoint's ``page_size``: the server's default when absent, capped at its max."""
    return min(page_size or settings.default_page_size, settings.max_page_size)


PageSizeDep = Annotated[int, Depends(get_page_size)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `wkd keys create`.")


def _bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise _unauthorized()
    return credentials.credentials


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid API key",
        headers={"WWW-Authenticate": "Bearer"},
    )


CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_current_key(session: SessionDep, credentials: CredentialsDep) -> ApiKey:
    """The calling API key; 401 without a valid ``Authorization: Bearer wkd_…``."""
    key = accounts.verify_api_key(session, _bearer_token(credentials))
    if key is None:
        raise _unauthorized()
    return key


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


def owned_job(
    session: Session, credentials: HTTPAuthorizationCredentials | None, job_id: str
) -> Job:
    """The job if the calling key owns it (key and job in one query); 401 or 404 otherwise."""
    token = _bearer_token(credentials)
    if not storage.JOB_ID.match(job_id):  # anything else cannot exist: only check the key
        if accounts.verify_api_key(session, token) is None:
            raise _unauthorized()
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="job not found")
    found = accounts.key_and_job(session, token, job_id)
    if found is None:
        raise _unauthorized()
    if found[1] is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="job not found")
    return found[1]


def get_owned_job(job_id: str, session: ReadSessionDep, credentials: CredentialsDep) -> Job:
    return owned_job(session, credentials, job_id)


OwnedJobDep = Annotated[Job, Depends(get_owned_job)]  # a Row with Job's column attributes
