"""The worker against a migrated database on SQLite and on the PostgreSQL on 127.0.0.1.

Jobs are inserted the way the API does (``validate_job_spec`` → ``crud.create_job``) and run
by the real supervisor, which starts the real ``python -m worker.runner`` subprocess. Specs
are tiny (mnist5k with 10 digits per class, resnet8) so that a job takes seconds.
"""

from __future__ import annotations

import pytest
from worker_helpers import make_settings

from service import accounts
from service.db import upgrade
from service.testing import scratch_database
from worker.common import session_factory

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    with scratch_database(request.param, tmp_path_factory.mktemp("workerdb")) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    """SQLite only: for the slower failure-path tests that need not run twice."""
    url = f"sqlite:///{tmp_path_factory.mktemp('workerdb1') / 'wkd.db'}"
    upgrade(url)
    return url


@pytest.fixture
def settings(database_url, tmp_path):
    return make_settings(database_url, tmp_path)


@pytest.fixture
def sessions(settings):
    return session_factory(settings)


@pytest.fixture
def owner(sessions):
    with sessions() as session:
        row, _ = accounts.create_api_key(session, name="owner")
    return row.id
