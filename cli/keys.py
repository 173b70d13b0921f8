"""``wkd keys create|list|revoke [--data-dir DIR]``: the admin commands for API keys.

The database is the one ``wkd serve --data-dir DIR`` uses when ``data_dir`` is given,
otherwise the settings' (``WKD_DATABASE_URL`` / ``WKD_DATA_DIR``). Its schema is brought to
the latest migration first, so each command works on a fresh machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _session(data_dir: Path | str | None) -> Iterator:
    from service.db import make_engine, make_sessionmaker, upgrade
    from service.settings import Settings

    settings = Settings(data_dir=Path(data_dir)) if data_dir is not None else Settings()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


def create_key(name: str, *, data_dir: Path | str | None = None) -> str:
    """Create an API key named ``name`` and return its plaintext ``wkd_…`` form.

    Only the key's sha256 is stored: the returned string cannot be shown again.
    """
    from service import accounts

    if not name.strip():
        raise ValueError("a key needs a non-empty name")
    with _session(data_dir) as session:
        _row, plaintext = accounts.create_api_key(session, name=name.strip())
    return plaintext


def list_keys(*, data_dir: Path | str | None = None) -> list[dict]:
    """Every key as ``{id, name, prefix, created_at, revoked_at}`` (never the key itself)."""
    from service import accounts

    with _session(data_dir) as session:
        return [
            {"id": k.id, "name": k.name, "prefix": k.prefix, "created_at": k.created_at,
             "revoked_at": k.revoked_at}
            for k in accounts.list_api_keys(session)
        ]  # fmt: skip


def revoke_key(ident: str, *, data_dir: Path | str | None = None) -> tuple[str, bool]:
    """Revoke the key with id ``ident`` (or the unambiguous shown prefix); returns (id,
    whether it was active). The API refuses the key from its next request on: keys are
    checked against the database on every request, never cached."""
    from service import accounts

    with _session(data_dir) as session:
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
