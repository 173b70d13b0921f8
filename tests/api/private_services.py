"""Private PostgreSQL and Redis servers (own port, own temp folder) that a test may stop,
and a real uvicorn serving the API: for outage tests, never touching the shared servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PrivatePostgres:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-w", "-t", "30",
                   "-l", str(self.folder / "postgres.log"), *args]  # fmt: skip
        subprocess.run(_as_postgres(command), check=True, capture_output=True)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off")  # fmt: skip
        self._ctl("-o", options, "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def freeze(self) -> None:
        """SIGSTOP the server and every backend (what ``docker pause`` does): its sockets
        stay open and the kernel still acknowledges what clients send, but nothing answers."""
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, signum: int) -> None:
        postmaster = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
        for pid in [postmaster, *_children(postmaster)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def _children(parent: int) -> list[int]:
    """Processes whose parent is ``parent``, from ``/proc``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(stat.parent.name))
    return found


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """``initdb`` in a temporary folder, started on a free port; stopped and removed after."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"PostgreSQL binaries not found in {PG_BIN}")
    folder = Path(tempfile.mkdtemp(prefix="wkd-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PrivatePostgres(folder, free_port())
    try:
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(folder / "data"), "-A",
                                     "trust", "-U", "postgres", "--no-sync"]),
                       check=True, capture_output=True)  # fmt: skip
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[str, subprocess.Popen]]:
    """``redis-server`` on a free port, no persistence; yields (url, process)."""
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait(lambda: _connects(port), "redis-server")
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def _connects(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _wait(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def uvicorn_api(env: dict[str, str], log: Path) -> Iterator[str]:
    """``uvicorn api.main:app`` with ``WKD_*`` from ``env`` only; yields its base URL."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WKD_")}
    clean |= env | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port",
             str(port)], cwd=ROOT, env=clean, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: process.poll() is not None or _answers(base), "uvicorn")
        assert process.poll() is None, log.read_text()[-3000:]
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def make_key(database_url: str, name: str) -> str:
    """A new API key on ``database_url``; returns its plaintext."""
    from service import accounts
    from service.db import make_engine, make_sessionmaker

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return accounts.create_api_key(session, name=name)[1]
    finally:
        engine.dispose()


def _answers(base: str) -> bool:
    try:
        httpx.get(f"{base}/catalog", timeout=1)
    except httpx.HTTPError:
        return False
    return True
