"""``wkd serve``: the API and one worker on embedded defaults, under one data directory.

Everything lives in ``--data-dir`` (default ``.wkd``): the SQLite database ``wkd.db``, the
filesystem broker's folders ``broker/``, uploaded teachers ``checkpoints/``, one folder per
job under ``artifacts/``, the interrelation cache ``cache/`` and the two processes' logs
``logs/``. No external server is needed. Setting ``WKD_DATABASE_URL`` and ``WKD_BROKER_URL``
points the same two processes at PostgreSQL and Redis instead.

Steps: bring the database to the latest migration (``alembic upgrade head``), start
``uvicorn api.main:app`` and one ``celery -A worker.celery_app worker`` (prefork, one
process) as children, wait until either exits or this process gets SIGINT / SIGTERM, then
stop both: SIGTERM first (uvicorn drains requests; Celery's warm shutdown), SIGQUIT to the
worker if it is still busy after a grace period (cold shutdown: the running job's runner
notices its supervisor is gone, stops after its current batch and is resumed from its last
epoch on the next start), SIGKILL as the last resort.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.settings import Settings

SHUTDOWN_GRACE_S = 10.0
KILL_GRACE_S = 5.0


def embedded_settings(data_dir: Path | str | None) -> Settings:
    """The settings ``wkd serve`` runs with: the environment's, with ``data_dir`` applied."""
    if data_dir is None:
        return Settings()
    return Settings(data_dir=Path(data_dir).expanduser().absolute())


def child_env(settings: Settings) -> dict[str, str]:
    """The children's environment: every ``WKD_*`` setting spelled out, plus unbuffered logs."""
    from worker.common import settings_env

    env = settings_env(settings)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def api_command(host: str, port: int) -> list[str]:
    # Open event streams (GET /jobs/{id}/events) are cut after a few seconds on shutdown.
    return [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host,
            "--port", str(port), "--no-access-log",
            "--timeout-graceful-shutdown", "5"]  # fmt: skip


def worker_command(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--pool", "prefork", "--concurrency", str(settings.worker_concurrency()),
            "--queues", settings.queue_name,
            "--hostname", f"wkd-{os.getpid()}@%h", "--loglevel", "INFO",
            "--without-gossip", "--without-mingle"]  # fmt: skip


def serve(host: str = "127.0.0.1", port: int = 8000, data_dir: Path | str | None = None) -> int:
    """Run API + worker until interrupted; returns 0 after a requested stop, 1 if a child died."""
    from service.db import upgrade

    settings = embedded_settings(data_dir)
    settings.ensure_dirs()
    logs = settings.data_dir.absolute() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"wkd serve: data in {settings.data_dir.absolute()}", flush=True)
    upgrade(settings.database_url)
    env = child_env(settings)
    stop = {"signal": None}

    def request_stop(signum, _frame) -> None:
        stop["signal"] = signum

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, subprocess.Popen] = {}
    try:
        # Own process groups: a terminal's Ctrl-C reaches only us, and we stop them in order.
        for name, command in (("worker", worker_command(settings)),
                              ("api", api_command(host, port))):  # fmt: skip
            with open(logs / f"{name}.log", "ab") as log_file:
                children[name] = subprocess.Popen(
                    command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, process_group=0,
                )  # fmt: skip
        print(f"wkd serve: API on http://{host}:{port} (docs at /docs), one worker; "
              f"logs in {logs}", flush=True)  # fmt: skip
        print(f"wkd serve: create a key with `wkd keys create --name NAME "
              f"--data-dir {settings.data_dir}`", flush=True)  # fmt: skip
        died = _wait(children, stop)
    finally:
        _shutdown(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if died is not None:
        print(f"wkd serve: the {died} process exited (status {children[died].returncode}); "
              f"see {logs / (died + '.log')}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _wait(children: dict[str, subprocess.Popen], stop: dict) -> str | None:
    """Block until a stop signal (→ None) or a child's exit (→ its name)."""
    while stop["signal"] is None:
        for name, process in children.items():
            if process.poll() is not None:
                return name
        time.sleep(0.2)
    return None


def _shutdown(children: dict[str, subprocess.Popen]) -> None:
    for process in children.values():
        _send(process, signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    for name, process in children.items():
        if _wait_until(process, deadline):
            continue
        if name == "worker":  # warm shutdown waits for the job: go cold, the job resumes later
            _send(process, signal.SIGQUIT)
            if _wait_until(process, time.monotonic() + KILL_GRACE_S):
                continue
        _send(process, signal.SIGKILL, group=True)
        process.wait()


def _wait_until(process: subprocess.Popen, deadline: float) -> bool:
    try:
        process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        return True
    except subprocess.TimeoutExpired:
        return False


def _send(process: subprocess.Popen, signum: int, *, group: bool = False) -> None:
    if process.poll() is not None:
        return
    try:
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    except ProcessLookupError:
        pass
