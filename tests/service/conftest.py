"""A migrated database per test session on SQLite and on the PostgreSQL on 127.0.0.1;
every test that takes ``session`` runs once on each, with empty tables."""

from __future__ import annotations

import pytest

from service.db import make_engine, make_sessionmaker, upgrade
from service.testing import clear_tables, scratch_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    # Not migrated: the migration tests start from an empty database.
    with scratch_database(request.param, tmp_path_factory.mktemp("db"), migrate=False) as url:
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
    from service import accounts

    row, _ = accounts.create_api_key(session, name="owner")
    return row
