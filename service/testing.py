"""Helpers for tests and benchmarks: throwaway PostgreSQL databases, emptying tables.

Each test session gets its own database (``CREATE DATABASE wkd_t_<random>``), so parallel
runs on one server never see each other's rows; it is dropped at the end.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, delete, text
from sqlalchemy.engine import make_url

from service.db import upgrade
from service.settings import normalize_database_url
from service.tables import Base

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def temporary_postgres_database(server_url: str = DEFAULT_POSTGRES) -> Iterator[str]:
    """Create an empty database on ``server_url``'s server; yield its URL; drop it."""
    server_url = normalize_database_url(server_url)
    name = f"wkd_t_{secrets.token_hex(6)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def scratch_database(backend: str, directory: Path, *, migrate: bool = True) -> Iterator[str]:
    """A fresh database for one test session: ``"sqlite"`` (a file in ``directory``) or
    ``"postgres"`` (a temporary database on the server at 127.0.0.1); migrated to head unless
    ``migrate`` is False. Yields its URL."""
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{directory / 'wkd.db'}"
        else:
            url = stack.enter_context(temporary_postgres_database())
        if migrate:
            upgrade(url)
        yield url


def clear_tables(engine: Engine) -> None:
    """Delete every row of the service's tables (children first)."""
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(delete(table))
