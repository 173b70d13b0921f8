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


def test_create_key_against_postgres_names_it_and_never_migrates(tmp_path, monkeypatch):
    """``--database-url`` wins over ``WKD_DATABASE_URL`` and ``--data-dir``; an unmigrated
    PostgreSQL database is refused with the command that fixes it, and left untouched."""
    import pytest

    from cli.keys import SchemaNotReadyError
    from service.db import upgrade
    from service.testing import temporary_postgres_database

    monkeypatch.setenv("WKD_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    lines: list[str] = []
    with temporary_postgres_database() as url:
        with pytest.raises(SchemaNotReadyError, match="alembic upgrade head"):
            create_key("carol", database_url=url, data_dir=tmp_path, report=lines.append)
        raw = create_engine(url)
        with raw.connect() as connection:
            tables = connection.execute(text("SELECT count(*) FROM pg_tables "
                                             "WHERE schemaname = 'public'")).scalar()  # fmt: skip
        raw.dispose()
        assert tables == 0
        upgrade(url)
        key = create_key("carol", database_url=url, report=lines.append)
        engine = make_engine(url)
        with make_sessionmaker(engine)() as session:
            assert accounts.verify_api_key(session, key).name == "carol"
        engine.dispose()
    assert "postgresql+psycopg://postgres@127.0.0.1:5432/wkd_t_" in lines[-1]
    assert not (tmp_path / "other.db").exists() and not (tmp_path / "wkd.db").exists()
