"""A migrated database per test session on SQLite and on the PostgreSQL on 127.0.0.1;
every test that takes ``session`` runs once on each, with empty tables."""

from __future__ import annotations

import pytest

from service.db import make_engine, make_sessionmaker, upgrade
from service.testing import clear_tables, temporary_postgres_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'wkd.db'}"
        return
    with temporary_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def engine(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine):
    clear_tables(engine)
    with make_sessionmaker(engine)() as session:
        yield session


@pytest.fixture
def owner(session):
    from service import crud

    row, _ = crud.create_api_key(session, name="owner")
    return row
