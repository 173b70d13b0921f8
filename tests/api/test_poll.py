"""The poll fast path of GET /jobs/{id} (api/poll.py) and its batched key-and-stamp lookups
(api/stamps.py): the same answers as the full route and as one lookup at a time."""

from __future__ import annotations

import asyncio
import gc

import psycopg
import pytest
from sqlalchemy import update

from api.routes import jobs as job_routes
from api.stamps import StampReader
from service import accounts
from service.tables import ApiKey

POSTGRES_ONLY = pytest.param("postgres", marks=pytest.mark.postgres)
VANILLA = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
           "training": {"epochs": 2, "batch_size": 32}}  # fmt: skip


def _token(headers: dict) -> str:
    return headers["Authorization"].split()[1]


def _route_calls(monkeypatch) -> list[str]:
    """The job ids the full route renders from now on (the fast path never calls it)."""
    calls: list[str] = []
    render = job_routes.job_rendered

    def counted(state, job_id, credentials):
        calls.append(job_id)
        return render(state, job_id, credentials)

    monkeypatch.setattr(job_routes, "job_rendered", counted)
    return calls


@pytest.mark.parametrize("database_url", [POSTGRES_ONLY], indirect=True)
def test_a_cached_poll_is_answered_before_the_route_with_the_routes_bytes(
    client, alice, bob, monkeypatch
):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    first = client.get(f"/jobs/{job_id}", headers=alice)  # the route renders and caches it
    calls = _route_calls(monkeypatch)
    again = client.get(f"/jobs/{job_id}", headers=alice)
    lower = client.get(f"/jobs/{job_id}", headers={"authorization": f"bearer {_token(alice)}"})
    assert calls == []
    for answer in (again, lower):
        assert answer.status_code == 200 and answer.content == first.content
        for header in ("etag", "cache-control", "content-type", "content-length"):
            assert answer.headers[header] == first.headers[header]
    unchanged = client.get(
        f"/jobs/{job_id}", headers=alice | {"If-None-Match": first.headers["etag"]}
    )
    assert unchanged.status_code == 304 and unchanged.content == b"" and calls == []
    assert unchanged.headers["etag"] == first.headers["etag"]
    # everything the fast path cannot answer goes to the route, which answers as before
    assert client.get(f"/jobs/{job_id}", headers=bob).status_code == 404
    assert (
        client.get(
            f"/jobs/{job_id}", headers={"Authorization": "Basic " + _token(alice)}
        ).status_code
        == 401
    )
    first_header_wins = [
        ("Authorization", "Bearer wkd_wrong"),
        ("Authorization", alice["Authorization"]),
    ]
    assert client.get(f"/jobs/{job_id}", headers=first_header_wins).status_code == 401
    with_body = client.request("GET", f"/jobs/{job_id}", headers=alice, content=b"{}")
    assert with_body.status_code == 200 and with_body.content == first.content
    assert calls == [job_id, job_id, job_id, job_id]  # fmt: skip


def test_the_oldest_generation_is_frozen_while_the_app_runs(settings):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings, enqueue=lambda _id: None)):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0  # thawed at shutdown: nothing left uncollectable


@pytest.mark.parametrize("database_url", [POSTGRES_ONLY], indirect=True)
def test_batched_lookups_answer_what_one_lookup_at_a_time_answers(client, db, alice, bob):
    alice_job = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]
    bob_job = client.post("/jobs", json=VANILLA, headers=bob).json()["id"]
    _revoked, carol_token = accounts.create_api_key(db, name="carol")
    db.execute(update(ApiKey).where(ApiKey.key_hash == accounts.hash_key(carol_token))
               .values(revoked_at=ApiKey.created_at))  # fmt: skip
    db.commit()
    tokens = [_token(alice), _token(bob), carol_token, "wkd_unknown"]
    jobs = [alice_job, bob_job, "job_000000000000000000000000"]
    lookups = [(t, j) for t in tokens for j in jobs] * 2  # each one twice: sent once
    with client.app.state.read_engine.connect() as connection:
        expected = [accounts.key_and_job_stamp(connection, t, j) for t, j in lookups]
    assert {e is None for e in expected} == {True, False}
    assert any(e is not None and e[1] is not None for e in expected)

    async def all_at_once(batch_max: int) -> tuple[list, list[int]]:
        reader = StampReader(client.app.state.read_engine, in_flight=2, batch_max=batch_max)
        sizes: list[int] = []
        query = reader._query
        reader._query = lambda batch: sizes.append(len(batch)) or query(batch)
        try:
            return await asyncio.gather(*(reader.stamp(t, j) for t, j in lookups)), sizes
        finally:
            await reader.close()

    found, sizes = asyncio.run(all_at_once(batch_max=128))
    assert found == expected
    assert sizes == [len(set(lookups))]  # one statement, each distinct lookup once
    found, sizes = asyncio.run(all_at_once(batch_max=5))
    assert found == expected and max(sizes) == 5 and sum(sizes) == len(set(lookups))


@pytest.mark.parametrize("database_url", [POSTGRES_ONLY], indirect=True)
def test_a_failed_statement_fails_each_of_its_lookups_and_its_connection_is_dropped(client, alice):
    job_id = client.post("/jobs", json=VANILLA, headers=alice).json()["id"]

    async def scenario() -> None:
        reader = StampReader(client.app.state.read_engine, in_flight=1)
        assert (await reader.stamp(_token(alice), job_id))[1] is not None
        (connection,) = reader._idle
        await connection.close()  # as if the database had dropped it
        results = await asyncio.gather(*(reader.stamp(_token(alice), job_id) for _ in range(3)),
                                       return_exceptions=True)  # fmt: skip
        assert all(isinstance(r, psycopg.Error) for r in results), results
        assert reader._idle == [] and reader._in_flight == 0
        assert (await reader.stamp(_token(alice), job_id))[1] is not None  # a new connection
        await reader.close()

    asyncio.run(scenario())
