"""Start the service as real processes, for the end-to-end tests and ``bench/queue_latency.py``.

- :func:`postgres_redis_stack`: a uvicorn API and a ``celery worker`` on the PostgreSQL and
  Redis on 127.0.0.1; a fresh PostgreSQL database, its own Redis queue name on a Redis
  database number of its own (``WKD_E2E_REDIS_DB``, default 13) and a temporary data folder,
  so that runs on one machine do not see each other.
- :func:`embedded_stack`: ``wkd serve`` on its embedded defaults (SQLite + filesystem broker).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.testing import temporary_postgres_database

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = int(os.environ.get("WKD_E2E_REDIS_DB", "13"))


@dataclass
class Stack:
    """A running service: its URL, an API key, its data folder and its processes' logs."""

    name: str
    base_url: str
    key: str
    data_dir: Path
    logs: list[Path]

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30,
                            headers={"Authorization": f"Bearer {key or self.key}"})  # fmt: skip

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in self.logs if p.exists())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**values: str) -> dict[str, str]:
    """The environment without any ``WKD_*`` of the caller, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WKD_")}
    env.update(values, PYTHONUNBUFFERED="1")
    return env


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, process_group=0)  # fmt: skip


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def wait_until(predicate, *, timeout: float, what: str, processes=(), interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(
                    f"a process exited ({process.args[:4]}) while waiting for {what}"
                )
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def make_key(database_url: str, name: str) -> str:
    from service import accounts
    from service.db import make_engine, make_sessionmaker

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return accounts.create_api_key(session, name=name)[1]
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_redis_stack(data_dir: Path) -> Iterator[Stack]:
    """uvicorn + ``celery -A worker.celery_app worker`` on PostgreSQL and Redis."""
    import redis

    from service.db import upgrade

    queue = f"wkd-e2e-{secrets.token_hex(4)}"
    broker_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    with temporary_postgres_database() as database_url:
        upgrade(database_url)
        env = clean_env(WKD_DATA_DIR=str(data_dir), WKD_DATABASE_URL=database_url,
                        WKD_BROKER_URL=broker_url, WKD_QUEUE_NAME=queue,
                        WKD_HEARTBEAT_SECONDS="1")  # fmt: skip
        port = free_port()
        logs = [data_dir / "worker.log", data_dir / "api.log"]
        worker_command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                          "--pool", "prefork", "--concurrency", "1", "--queues", queue,
                          "--hostname", f"{queue}@%h", "--loglevel", "INFO"]  # fmt: skip
        worker = start(worker_command, env, logs[0])
        api = start([sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                     "--port", str(port)], env, logs[1])  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: healthy(base_url), timeout=60, what="the API",
                       processes=[api, worker])  # fmt: skip
            wait_until(lambda: b"ready." in logs[0].read_bytes(), timeout=60,
                       what="the worker", processes=[worker])  # fmt: skip
            key = make_key(database_url, "e2e")
            yield Stack("postgres+redis", base_url, key, data_dir, logs)
        finally:
            stop(api)
            stop(worker)
            client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
            client.delete(queue, f"_kombu.binding.{queue}")


@contextlib.contextmanager
def embedded_stack(data_dir: Path) -> Iterator[Stack]:
    """``wkd serve --data-dir DIR``: SQLite, the filesystem broker, local folders."""
    from cli.keys import create_key

    port = free_port()
    log = data_dir / "serve.log"
    server = start([sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1",
                    "--port", str(port), "--data-dir", str(data_dir)],
                   clean_env(WKD_HEARTBEAT_SECONDS="1"), log)  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    logs = [log, data_dir / "logs" / "worker.log", data_dir / "logs" / "api.log"]
    try:
        wait_until(lambda: healthy(base_url), timeout=60, what="wkd serve", processes=[server])
        wait_until(lambda: logs[1].exists() and b"ready." in logs[1].read_bytes(), timeout=60,
                   what="the embedded worker", processes=[server])  # fmt: skip
        yield Stack("embedded", base_url, create_key("e2e", data_dir=data_dir), data_dir, logs)
    finally:
        stop(server, timeout=40)
    assert server.returncode == 0, f"wkd serve exited {server.returncode} on SIGTERM"
