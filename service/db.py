"""Engine and session factories: SQLite (embedded) or PostgreSQL through psycopg 3.

SQLite gets WAL (readers never block the one writer), a busy timeout (a writer waits for the
lock instead of failing at once: the API and the worker both write) and foreign keys, which
SQLite leaves off unless asked, on every new connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from service.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
DEFAULT_CONNECT_TIMEOUT_S = 10
# A server silent for its statement limit plus this is not answering at all (frozen, or a
# network that drops packets): its own cancellation would have arrived by then.
ANSWER_GRACE_S = 5.0


def make_engine(
    url: str,
    *,
    connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S,
    statement_timeout_s: float = 0,
    **kwargs,
) -> Engine:
    """An engine for ``url``; creates the folder of a SQLite file when it is missing.

    PostgreSQL: a connection attempt gives up after ``connect_timeout_s`` (libpq's own
    default is to wait for the operating system, minutes for a host that drops packets), and
    with ``statement_timeout_s`` > 0 the server cancels any statement that runs longer,
    waiting on a lock included, so that a stuck transaction elsewhere turns into an error
    instead of a request that never answers. Both travel in the URL's query, so every
    connection made from the engine's URL (:mod:`api.stamps` too) gets them. A server that
    cannot cancel anything because it does not run (frozen) or cannot be reached (packets
    dropped) is given up on by the client after :func:`answer_timeout`: the connection is
    closed and the statement fails with ``OperationalError``.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        engine = create_engine(_with_timeouts(parsed, connect_timeout_s, statement_timeout_s),
                               **kwargs)  # fmt: skip
        answer_s = answer_timeout(statement_timeout_s)
        if answer_s is not None and engine.dialect.driver == "psycopg":
            _give_up_after(engine, answer_s)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # FastAPI runs sync handlers in a thread pool: a connection may change threads.
    kwargs.setdefault("connect_args", {"check_same_thread": False})
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def service_engine(settings: Settings, **kwargs) -> Engine:
    """The engine of the API and the worker: ``settings.database_url`` with the settings'
    connect and statement timeouts (docs/reliability.md, "A stuck database")."""
    return make_engine(
        settings.database_url, connect_timeout_s=settings.db_connect_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s, **kwargs,
    )  # fmt: skip


def answer_timeout(statement_timeout_s: float) -> float | None:
    """How long a client waits for any answer from PostgreSQL: the statement limit plus
    :data:`ANSWER_GRACE_S`; ``None`` (wait for ever) when statements have no limit."""
    return statement_timeout_s + ANSWER_GRACE_S if statement_timeout_s > 0 else None


def _give_up_after(engine: Engine, timeout_s: float) -> None:
    """Make ``engine`` connect with :func:`_answering_connection` ``(timeout_s)``."""
    connection_class = _answering_connection(timeout_s)

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect, _record, cargs, cparams):
        return connection_class.connect(*cargs, **cparams)


def _answering_connection(timeout_s: float) -> type:
    """A psycopg ``Connection`` that closes itself when the server sends nothing for
    ``timeout_s`` while a statement, commit or ping waits for it (psycopg's own ``wait``
    with a timeout; a caller's explicit timeout, as ``notifies`` passes, is left alone)."""
    import psycopg

    class AnsweringConnection(psycopg.Connection):
        def wait(self, gen, interval: float = 0.1, timeout: float | None = None):
            if timeout is not None:
                return super().wait(gen, interval=interval, timeout=timeout)
            try:
                return super().wait(gen, interval=interval, timeout=timeout_s)
            except psycopg.errors._WaitTimeout:
                raise _no_answer(self, timeout_s) from None

    return AnsweringConnection


def answering_async_connection(timeout_s: float) -> type:
    """:func:`_answering_connection` for asyncio (``psycopg.AsyncConnection``). Cancelling
    the awaiting task instead would make psycopg ask the frozen server to cancel the query
    and wait for that too (10 s more)."""
    import psycopg

    class AnsweringAsyncConnection(psycopg.AsyncConnection):
        async def wait(self, gen, interval: float = 0.1, timeout: float | None = None):
            if timeout is not None:
                return await super().wait(gen, interval=interval, timeout=timeout)
            try:
                return await super().wait(gen, interval=interval, timeout=timeout_s)
            except psycopg.errors._WaitTimeout:
                raise _no_answer(self, timeout_s) from None

    return AnsweringAsyncConnection


def _no_answer(connection, timeout_s: float) -> Exception:
    import psycopg

    connection.pgconn.finish()  # mid-protocol with no answer: never reuse it
    error = psycopg.OperationalError(f"the database sent no answer within {timeout_s:g} s")
    error.no_answer = True  # see is_unanswered
    return error


def is_unanswered(error: BaseException) -> bool:
    """A psycopg error after a statement's whole limit was waited out: the server cancelled
    it (``QueryCanceled``: ``statement_timeout``, e.g. a lock held elsewhere), or the client
    gave up on a silent server (:func:`_no_answer`). Another try would wait as long again."""
    import psycopg

    return isinstance(error, psycopg.errors.QueryCanceled) or getattr(error, "no_answer", False)


def _with_timeouts(url: URL, connect_timeout_s: int, statement_timeout_s: float) -> URL:
    """``url`` with libpq's ``connect_timeout`` and a ``statement_timeout`` start-up option,
    unless the URL sets them itself (its own ``options`` come last, so they win)."""
    query = {k: v for k, v in url.query.items() if isinstance(v, str)}
    query.setdefault("connect_timeout", str(int(connect_timeout_s)))
    if statement_timeout_s > 0:
        ours = f"-c statement_timeout={max(1, round(statement_timeout_s * 1000))}"
        query["options"] = f"{ours} {query.get('options', '')}".strip()
    return url.update_query_dict(query)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit and never flush implicitly.

    No autoflush keeps SQLite write transactions short: nothing is written until a crud
    function commits.
    """
    return sessionmaker(engine, expire_on_commit=False, autoflush=False)


def ping(engine: Engine) -> None:
    """``SELECT 1``; raises when the database is unreachable."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def is_unreachable(error: BaseException) -> bool:
    """The database could not be reached (as opposed to a bug or a bad statement):
    SQLAlchemy's ``OperationalError``, ``InterfaceError``, a pool ``TimeoutError``, or any
    ``DBAPIError`` that invalidated its connection (a disconnect)."""
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError)


def alembic_config(database_url: str):
    """An Alembic ``Config`` for ``database_url`` that works without ``alembic.ini``."""
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` on ``database_url`` (creates an empty database's schema)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)
