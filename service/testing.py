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


# ------------------------------------------------------------- private servers (fault tests)
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    """A PostgreSQL server of its own in ``directory``, on a free port, that a test may stop
    and start (the shared server on 5432 is never touched). Runs as the ``postgres`` user
    when the tests run as root, because PostgreSQL refuses to run as root."""

    def __init__(self) -> None:
        import os
        import shutil
        import tempfile

        # Under /tmp itself: pytest's folders are private to root, which postgres cannot enter.
        self.directory = Path(tempfile.mkdtemp(prefix="wkd-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._prefix:
            shutil.chown(self.directory, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off")  # fmt: skip
        self._run("pg_ctl", "-D", str(self.data), "-o", options,
                  "-l", str(self.directory / "server.log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in a failover or a restart."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _run(self, program: str, *args: str) -> None:
        import subprocess

        command = [*self._prefix, str(POSTGRES_BIN / program), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, migrated to head; stopped and removed at the end."""
    import shutil

    server = PrivatePostgres()
    try:
        server.start()
        upgrade(server.url)
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` of its own on a free port, without persistence (no RDB, no AOF),
    so that a restart loses every message, as a Redis without persistence does."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess
        import time

        import redis

        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.directory)]  # fmt: skip
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # no persistence: whatever was queued is gone
            self.process.wait(timeout=20)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
