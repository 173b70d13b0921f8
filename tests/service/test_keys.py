"""``cli.keys.create_key``: migrates a fresh data folder and stores only the key's hash."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from cli.keys import create_key
from service import accounts
from service.db import make_engine, make_sessionmaker


def test_create_key_on_a_fresh_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WKD_DATABASE_URL", raising=False)
    first = create_key("alice", data_dir=tmp_path)
    second = create_key("bob", data_dir=tmp_path)  # the schema is already there: no error
    assert first.startswith("wkd_") and first != second
    url = f"sqlite:///{tmp_path / 'wkd.db'}"
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        assert accounts.verify_api_key(session, first).name == "alice"
    engine.dispose()
    raw = create_engine(url)
    with raw.connect() as connection:
        stored = connection.execute(text("SELECT key_hash, prefix FROM api_keys")).all()
    raw.dispose()
    assert len(stored) == 2 and all(first not in row and second not in row for row in stored)
