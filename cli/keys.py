"""``wkd keys create|list|revoke [--database-url URL | --data-dir DIR]``: API-key admin.

Which database: ``--database-url``, else ``WKD_DATABASE_URL``, else the SQLite file of
``--data-dir`` (or ``WKD_DATA_DIR``, default ``.wkd``): the same rule as every other process.
``create`` says on stderr which database it wrote to (password hidden), so a key never lands
in a database nobody serves. In a compose deployment run it in the API container, which has
the deployment's settings: ``docker compose exec api wkd keys create --name NAME``.

A SQLite database is created and migrated on the spot (the embedded default works on a fresh
machine). Any other database must already be at the latest migration (``alembic upgrade
head``, the compose ``migrate`` service): this command never migrates a production database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class SchemaNotReadyError(ValueError):
    """The target database is not at the latest migration."""


def key_settings(*, data_dir: Path | str | None = None, database_url: str | None = None):
    """The settings ``wkd keys`` uses: the environment's, with the command's options applied."""
    from service.settings import Settings

    overrides: dict = {}
    if data_dir is not None:
        overrides["data_dir"] = Path(data_dir)
    if database_url:
        overrides["database_url"] = database_url
    return Settings(**overrides)


def describe_database(url: str) -> str:
    """The URL with its password hidden (for messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """A database that cannot be opened or used (a bad URL, a driver that is not installed,
    a server that does not answer, a file that is not SQLite) as one ``ValueError`` naming
    it, password hidden."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.queue import first_line

    try:
        yield
    except (SQLAlchemyError, ModuleNotFoundError) as error:
        where = describe_database(url)
        raise ValueError(f"cannot use the database {where}: {first_line(error)}") from None


def prepare_schema(database_url: str) -> None:
    """Migrate a SQLite file (its folder made first: a fresh machine has none); require any
    other database to be at head already."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from service.db import alembic_config, make_engine, upgrade

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        upgrade(database_url)
        return
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        raise SchemaNotReadyError(
            f"{describe_database(database_url)} is at migration {current or 'none'}, not "
            f"{head}: run `alembic upgrade head` first (compose: the migrate service)"
        )


def create_key(
    name: str,
    *,
    data_dir: Path | str | None = None,
    database_url: str | None = None,
    report: Callable[[str], None] | None = None,
) -> str:
    """Create an API key named ``name`` and return its plaintext ``wkd_…`` form.

    Only the key's sha256 is stored: the returned string cannot be shown again. ``report``
    receives one line naming the database.
    """
    from service import accounts
    from service.db import make_engine, make_sessionmaker

    name = accounts.check_key_name(name)
    settings = key_settings(data_dir=data_dir, database_url=database_url)
    if report is not None:
        where = describe_database(settings.database_url)
        report(f"wkd keys: creating key {name!r} in {where}")
    with database_errors(settings.database_url):
        prepare_schema(settings.database_url)
        engine = make_engine(settings.database_url)
        try:
            with make_sessionmaker(engine)() as session:
                _row, plaintext = accounts.create_api_key(session, name=name)
        finally:
            engine.dispose()
    return plaintext


@contextlib.contextmanager
def _session(data_dir: Path | str | None, database_url: str | None = None) -> Iterator:
    from service.db import make_engine, make_sessionmaker

    settings = key_settings(data_dir=data_dir, database_url=database_url)
    with database_errors(settings.database_url):
        prepare_schema(settings.database_url)
        engine = make_engine(settings.database_url)
        try:
            with make_sessionmaker(engine)() as session:
                yield session
        finally:
            engine.dispose()


def list_keys(*, data_dir: Path | str | None = None, database_url: str | None = None) -> list[dict]:
    """Every key as ``{id, name, prefix, created_at, revoked_at}`` (never the key itself)."""
    from service import accounts

    with _session(data_dir, database_url) as session:
        return [
            {"id": k.id, "name": k.name, "prefix": k.prefix, "created_at": k.created_at,
             "revoked_at": k.revoked_at}
            for k in accounts.list_api_keys(session)
        ]  # fmt: skip


def revoke_key(
    ident: str, *, data_dir: Path | str | None = None, database_url: str | None = None
) -> tuple[str, bool]:
    """Revoke the key with id ``ident`` (or the unambiguous shown prefix); returns (id,
    whether it was active). The API refuses the key from its next request on: keys are
    checked against the database on every request, never cached."""
    from service import accounts

    with _session(data_dir, database_url) as session:
        row = accounts.find_api_key(session, ident.strip())
        return row.id, accounts.revoke_api_key(session, key_id=row.id)


def format_keys(rows: list[dict]) -> str:
    """``wkd keys list`` as a table."""
    lines = [f"{'id':<28} {'prefix':<13} {'created (UTC)':<17} {'status':<24} name"]
    for row in rows:
        state = "active" if row["revoked_at"] is None else (
            "revoked " + row["revoked_at"].strftime("%Y-%m-%d %H:%M"))  # fmt: skip
        lines.append(f"{row['id']:<28} {row['prefix'] + '…':<13} "
                     f"{row['created_at'].strftime('%Y-%m-%d %H:%M'):<17} {state:<24} "
                     f"{row['name']}")  # fmt: skip
    return "\n".join(lines)
