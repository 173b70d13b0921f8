"""REST API latency and throughput: POST /jobs and GET /jobs/{id} (a 240-epoch curve),
against a bare FastAPI app serving the same bytes (``bench/api_bare.py``).

Runs a real uvicorn process against a fresh PostgreSQL database on 127.0.0.1 and enqueues
into the real Redis (a queue nobody consumes, purged at the end), and a second uvicorn with
the bare app; then drives each with 1, 16 and 64 concurrent keep-alive clients (threads) for
a fixed time per cell and prints p50 / p99 latency and requests per second. ``GET 304`` is a
poller that sends ``If-None-Match``. The headline is the ratio of ``GET /jobs/{id}`` req/s
to the bare app's at 16 clients (the median of ``--rounds`` interleaved pairs). Targets:
ratio >= 0.4, GET p99 < 50 ms at 64 clients, POST p99 < 100 ms.

    python bench/api.py [--quick] [--json PATH] [--workers N] [--rounds R]

The client threads share the machine with the server; on a 2-core box their own CPU time
is part of what the latency figures show.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service import accounts, crud  # noqa: E402
from service.db import make_engine, make_sessionmaker, upgrade  # noqa: E402
from service.queue import Enqueuer  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.spec import validate_job_spec  # noqa: E402
from service.tables import JobStatus  # noqa: E402
from service.testing import DEFAULT_POSTGRES, temporary_postgres_database  # noqa: E402

BODY = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "mnist5k"},
        "training": {"epochs": 240}}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(settings: Settings) -> tuple[str, str]:
    """An API key and a finished job with 240 metrics rows and three artifacts."""
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        _, key = accounts.create_api_key(session, name="bench")
        owner = accounts.verify_api_key(session, key)
        spec = validate_job_spec(BODY).to_stored()
        job, _ = crud.create_job(session, owner_id=owner.id, spec=spec, max_attempts=1)
        crud.claim_job(session, job_id=job.id, worker_id="bench")
        crud.set_running(session, job_id=job.id)
        for epoch in range(1, 241):
            crud.record_epoch(session, job_id=job.id, metrics={
                "epoch": epoch, "lr": 0.05, "train_loss": 1 / epoch, "train_top1": 50 + epoch / 10,
                "test_top1": 40 + epoch / 10, "test_top5": 90.0, "test_loss": 1.0, "seconds": 12.5,
                "loss_terms": {"loss_ce": 0.5, "loss_kd": 0.25}})  # fmt: skip
        for name in ("student.safetensors", "metrics.csv", "manifest.json"):
            crud.add_artifact(session, job_id=job.id, name=name, kind="file", size=1,
                              sha256="0" * 64, path=f"{job.id}/{name}")  # fmt: skip
        crud.finish_job(session, job_id=job.id, status=JobStatus.succeeded)
    engine.dispose()
    return key, job.id


def start_server(
    env: dict[str, str], port: int, workers: int, app: str = "api.main:app"
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(ROOT / "bench") if app.startswith("api_bare") else str(ROOT),
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("uvicorn did not become healthy")


def drive(
    base: str,
    key: str,
    method: str,
    path: str,
    clients: int,
    seconds: float,
    label: str | None = None,
    extra_headers: dict | None = None,
) -> dict:
    """``clients`` threads each looping one request until ``seconds`` pass."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = [0.0]
    # the clock starts once every client is connected-ready (the barrier's action)
    start = threading.Barrier(
        clients + 1, action=lambda: stop_at.__setitem__(0, time.perf_counter() + seconds)
    )

    def loop() -> None:
        own: list[float] = []
        headers = {"Authorization": f"Bearer {key}"} | (extra_headers or {})
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            start.wait()
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                response = client.request(method, path, json=BODY if method == "POST" else None)
                own.append(time.perf_counter() - t0)
                if response.status_code not in (200, 202, 304):
                    errors[0] += 1
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    begin = stop_at[0] - seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    endpoint = f"{method} {path.split('/job_')[0] + ('/{id}' if 'job_' in path else '')}"
    return {"endpoint": label or endpoint,
            "clients": clients, "requests": len(latencies), "errors": errors[0],
            "p50_ms": round(pick(0.50), 2), "p99_ms": round(pick(0.99), 2),
            "rps": round(len(latencies) / elapsed, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per cell instead of 10 s")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved pairs for the ratio")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 10.0
    rows = []
    with temporary_postgres_database(args.postgres) as url, tempfile.TemporaryDirectory() as tmp:
        upgrade(url)
        queue = f"wkd_bench_{secrets.token_hex(4)}"
        env = os.environ | {"WKD_DATABASE_URL": url, "WKD_BROKER_URL": args.redis,
                            "WKD_QUEUE_NAME": queue, "WKD_DATA_DIR": tmp,
                            "WKD_REAPER_INTERVAL_S": "0",  # no per-key limits: POST loops
                            "WKD_MAX_QUEUED_JOBS_PER_KEY": "0",
                            "WKD_MAX_RUNNING_JOBS_PER_KEY": "0"}  # fmt: skip
        settings = Settings(data_dir=Path(tmp), database_url=url, broker_url=args.redis,
                            queue_name=queue)  # fmt: skip
        key, job_id = seed(settings)
        port, bare_port = free_port(), free_port()
        server = start_server(env, port, args.workers)
        base, bare = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
        try:
            document = httpx.get(f"{base}/jobs/{job_id}",
                                 headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            body_file = Path(tmp) / "job.json"
            body_file.write_bytes(document.content)
            etag = document.headers.get("etag")
            bare_server = start_server(env | {"WKD_BENCH_BODY_FILE": str(body_file)},
                                       bare_port, args.workers, app="api_bare:app")  # fmt: skip
            try:
                get = f"/jobs/{job_id}"
                drive(base, key, "GET", get, 4, 1.0)  # warm up
                drive(bare, key, "GET", get, 4, 1.0, label="bare")
                pairs = []
                for _ in range(args.rounds):  # interleaved, so a burst of load hits both
                    ours = drive(base, key, "GET", get, 16, seconds)
                    theirs = drive(bare, key, "GET", get, 16, seconds, label="bare GET /jobs/{id}")
                    pairs.append((ours, theirs))
                pairs.sort(key=lambda p: p[0]["rps"] / p[1]["rps"])
                median = pairs[len(pairs) // 2]
                ratio = median[0]["rps"] / median[1]["rps"]
                rows += list(median)
                for clients in (1, 64):
                    rows.append(drive(base, key, "GET", get, clients, seconds))
                    rows.append(drive(bare, key, "GET", get, clients, seconds,
                                      label="bare GET /jobs/{id}"))  # fmt: skip
                for clients in (1, 16, 64):
                    if etag:
                        rows.append(drive(base, key, "GET", get, clients, seconds,
                                          label="GET 304 /jobs/{id}",
                                          extra_headers={"If-None-Match": etag}))  # fmt: skip
                    rows.append(drive(base, key, "POST", "/jobs", clients, seconds))
            finally:
                bare_server.terminate()
                bare_server.wait(timeout=30)
        finally:
            server.terminate()
            server.wait(timeout=30)
            purged = Enqueuer(settings).purge()
    rows.sort(key=lambda r: (r["endpoint"], r["clients"]))
    print(
        f"API benchmark: uvicorn x{args.workers}, PostgreSQL + Redis, {seconds:.0f} s per cell, "
        f"{os.cpu_count()} CPUs (clients on the same machine); {purged} queued ids purged"
    )
    print(f"{'endpoint':<20} {'clients':>7} {'requests':>8} {'errors':>6} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'req/s':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['endpoint']:<20} {r['clients']:>7} {r['requests']:>8} {r['errors']:>6} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>8.1f}")  # fmt: skip
    print(
        f"GET /jobs/{{id}} at 16 clients: {ratio:.2f} of the bare app's req/s "
        f"(median of {args.rounds} interleaved pairs; target >= 0.4)"
    )
    if args.json:
        args.json.write_text(json.dumps({"workers": args.workers, "seconds": seconds,
                                         "ratio_16": ratio, "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
