"""``wkd keys create --name NAME [--data-dir DIR]``: make an API key and print it once."""

from __future__ import annotations

from pathlib import Path


def create_key(name: str, *, data_dir: Path | str | None = None) -> str:
    """Create an API key named ``name`` and return its plaintext ``wkd_…`` form.

    The database is the one ``wkd serve --data-dir DIR`` uses when ``data_dir`` is given,
    otherwise the settings' (``WKD_DATABASE_URL`` / ``WKD_DATA_DIR``). Its schema is brought
    to the latest migration first, so this works on a fresh machine. Only the key's sha256
    is stored: the returned string cannot be shown again.
    """
    from service import accounts
    from service.db import make_engine, make_sessionmaker, upgrade
    from service.settings import Settings

    if not name.strip():
        raise ValueError("a key needs a non-empty name")
    settings = Settings(data_dir=Path(data_dir)) if data_dir is not None else Settings()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            _row, plaintext = accounts.create_api_key(session, name=name.strip())
    finally:
        engine.dispose()
    return plaintext
