"""Schemathesis against the running API (a real uvicorn on a scratch PostgreSQL database):
generated requests for every operation, checked for ``not_a_server_error``,
``response_schema_conformance`` and ``status_code_conformance``.

The number of examples per operation is bounded (``WKD_SCHEMATHESIS_EXAMPLES``, default 30)
so the test costs well under a minute on a 2-core machine.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from private_services import make_key, uvicorn_api
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from service.db import upgrade
from service.testing import temporary_postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
EXAMPLES = int(os.environ.get("WKD_SCHEMATHESIS_EXAMPLES", "30"))
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]


@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    """(base URL, API key) of a uvicorn on a fresh database; the filesystem broker."""
    folder = tmp_path_factory.mktemp("schemathesis")
    with temporary_postgres_database() as url:
        upgrade(url)
        key = make_key(url, "schemathesis")
        env = {"WKD_DATABASE_URL": url, "WKD_DATA_DIR": str(folder / "data"),
               "WKD_REAPER_INTERVAL_S": "0", "WKD_MAX_UPLOAD_BYTES": str(1024 * 1024)}  # fmt: skip
        with uvicorn_api(env, folder / "api.log") as base:
            yield base, key
        log = (folder / "api.log").read_text()
        assert "Traceback" not in log, log[-4000:]


def test_api_conforms_to_its_openapi_document(live_api):
    """Every operation, ``EXAMPLES`` generated cases each (schemathesis' pytest plugin does
    not run under pytest 9, so the cases are drawn with hypothesis directly)."""
    base, key = live_api
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    auth = {"Authorization": f"Bearer {key}"}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def conforms(case):
            case.call_and_validate(base_url=base, headers=auth, checks=CHECKS)

        conforms()
