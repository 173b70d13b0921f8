"""The API under TestClient on SQLite and on PostgreSQL, with the broker replaced by a
recorder of enqueued job ids (the worker and the real broker are tested end to end)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from service import accounts
from service.db import make_engine, make_sessionmaker
from service.settings import Settings
from service.testing import clear_tables, scratch_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    with scratch_database(request.param, tmp_path_factory.mktemp("apidb")) as url:
        yield url


@pytest.fixture
def settings(database_url, tmp_path):
    engine = make_engine(database_url)
    clear_tables(engine)
    engine.dispose()
    return Settings(data_dir=tmp_path, database_url=database_url, reaper_interval_s=0,
                    max_upload_bytes=64 * 1024, max_page_size=5)  # fmt: skip


class Recorder(list):
    def __call__(self, job_id: str) -> None:
        self.append(job_id)


@pytest.fixture
def enqueued():
    return Recorder()


@pytest.fixture
def client(settings, enqueued):
    with TestClient(create_app(settings, enqueue=enqueued)) as client:
        yield client


@pytest.fixture
def db(client):
    """A session on the app's own database (to play the worker's part in tests)."""
    with make_sessionmaker(client.app.state.engine)() as session:
        yield session


def _key(db, name):
    _row, plaintext = accounts.create_api_key(db, name=name)
    return {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture
def alice(db):
    return _key(db, "alice")


@pytest.fixture
def bob(db):
    return _key(db, "bob")
