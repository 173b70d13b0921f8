"""REST API latency and throughput: POST /jobs and GET /jobs/{id} (a 240-epoch curve),
against a bare FastAPI app serving the same bytes (``bench/api_bare.py``).

Runs a real uvicorn process against a fresh PostgreSQL database on 127.0.0.1 and enqueues
into the real Redis (a queue nobody consumes, purged at the end), and a second uvicorn with
the bare app; then drives each with 1, 16 and 64 concurrent keep-alive clients for a fixed
time per cell and prints p50 / p99 latency and requests per second. ``GET 304`` is a poller
that sends ``If-None-Match``. The headline is the ratio of ``GET /jobs/{id}`` req/s to the
bare app's at 16 clients (the median of ``--rounds`` interleaved pairs). Targets: ratio >=
0.4, GET p99 < 50 ms at 64 clients, POST p99 < 100 ms.

    python bench/api.py [--quick] [--json PATH] [--workers N] [--rounds R] [--client C]

The clients share the machine with the servers. ``--client wrk`` (the default when ``wrk``
is on PATH; Debian: ``apt-get install wrk``) is a C load generator, one event-loop thread
for all connections, that costs a few per cent of a core; ``--client threads`` is one Python
thread per client in this process, which on a 2-core machine saturates at about 1,300
requests/s of its own and so measures itself, not the server, for anything faster (the bare
app, and its 64-client p99).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
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
        "api.serve",  # uvicorn, with TCP_NODELAY under --workers > 1 too
        "--app-dir",
        str(ROOT),  # the bare app is bench.api_bare (bench/api.py would shadow the api package)
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
    return {"endpoint": label or _endpoint(method, path),
            "clients": clients, "requests": len(latencies), "errors": errors[0],
            "p50_ms": round(pick(0.50), 2), "p99_ms": round(pick(0.99), 2),
            "rps": round(len(latencies) / elapsed, 1)}  # fmt: skip


WRK_SCRIPT = """
wrk.method = os.getenv("WRK_METHOD")
wrk.body = os.getenv("WRK_BODY") ~= "" and os.getenv("WRK_BODY") or nil
wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_KEY")
if wrk.body then wrk.headers["Content-Type"] = "application/json" end
if os.getenv("WRK_IF_NONE_MATCH") ~= "" then
  wrk.headers["If-None-Match"] = os.getenv("WRK_IF_NONE_MATCH")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def drive_wrk(
    base: str,
    key: str,
    method: str,
    path: str,
    clients: int,
    seconds: float,
    label: str | None = None,
    extra_headers: dict | None = None,
) -> dict:
    """The same cell as :func:`drive`, driven by ``wrk`` (one thread, ``clients``
    connections); a status of 400 or more, a timeout or a socket error counts as an error."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        env = os.environ | {
            "WRK_METHOD": method,
            "WRK_KEY": key,
            "WRK_BODY": json.dumps(BODY) if method == "POST" else "",
            "WRK_IF_NONE_MATCH": (extra_headers or {}).get("If-None-Match", ""),
        }
        command = ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s",
                   "-s", script.name, base + path]  # fmt: skip
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    requests, duration_us, errors, p50_us, p99_us = (int(v) for v in line.split()[1:])
    return {"endpoint": label or _endpoint(method, path),
            "clients": clients, "requests": requests, "errors": errors,
            "p50_ms": round(p50_us / 1000, 2), "p99_ms": round(p99_us / 1000, 2),
            "rps": round(requests / (duration_us / 1e6), 1)}  # fmt: skip


def _has(module: str) -> bool:
    """Whether uvicorn's optional C parts are installed (it uses them when they are)."""
    return importlib.util.find_spec(module) is not None


def _endpoint(method: str, path: str) -> str:
    return f"{method} {path.split('/job_')[0] + ('/{id}' if 'job_' in path else '')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per cell instead of 10 s")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved pairs for the ratio")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--client", choices=["auto", "wrk", "threads"], default="auto",
                        help="wrk (C) or Python threads; auto: wrk if installed")  # fmt: skip
    args = parser.parse_args()
    client = args.client if args.client != "auto" else "wrk" if shutil.which("wrk") else "threads"
    drive_ = drive_wrk if client == "wrk" else drive
    seconds = 3.0 if args.quick else 10.0
    rows = []
    load_before = os.getloadavg()
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
            bare_env = env | {"WKD_BENCH_BODY_FILE": str(body_file)}
            bare_server = start_server(bare_env, bare_port, args.workers, app="bench.api_bare:app")
            try:
                get = f"/jobs/{job_id}"
                drive_(base, key, "GET", get, 4, 1.0)  # warm up
                drive_(bare, key, "GET", get, 4, 1.0, label="bare")
                # interleaved, so that a burst of load from elsewhere hits both apps
                pairs: dict[int, list] = {16: [], 64: []}
                for _ in range(args.rounds):
                    for clients in pairs:
                        pairs[clients].append((
                            drive_(base, key, "GET", get, clients, seconds),
                            drive_(bare, key, "GET", get, clients, seconds,
                                   label="bare GET /jobs/{id}")))  # fmt: skip
                # the median round: by the req/s ratio at 16 clients, by our p99 at 64
                pairs[16].sort(key=lambda p: p[0]["rps"] / p[1]["rps"])
                pairs[64].sort(key=lambda p: p[0]["p99_ms"])
                median = {c: pairs[c][len(pairs[c]) // 2] for c in pairs}
                ratio = median[16][0]["rps"] / median[16][1]["rps"]
                rows += [*median[16], *median[64]]
                rows.append(drive_(base, key, "GET", get, 1, seconds))
                rows.append(drive_(bare, key, "GET", get, 1, seconds, label="bare GET /jobs/{id}"))
                for clients in (1, 16, 64):
                    if etag:
                        rows.append(drive_(base, key, "GET", get, clients, seconds,
                                          label="GET 304 /jobs/{id}",
                                          extra_headers={"If-None-Match": etag}))  # fmt: skip
                    rows.append(drive_(base, key, "POST", "/jobs", clients, seconds))
            finally:
                bare_server.terminate()
                bare_server.wait(timeout=30)
        finally:
            server.terminate()
            server.wait(timeout=30)
            purged = Enqueuer(settings).purge()
    rows.sort(key=lambda r: (r["endpoint"], r["clients"]))
    load = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    stack = "httptools + uvloop" if _has("httptools") and _has("uvloop") else "h11 + asyncio"
    print(
        f"API benchmark: uvicorn x{args.workers} ({stack}), PostgreSQL + Redis, "
        f"{seconds:.0f} s per cell, "
        f"{os.cpu_count()} CPUs, client {client} (on the same machine); {purged} queued ids "
        f"purged; load average {load[0]} / {load[3]} (1 min, before / after)"
    )
    print(f"{'endpoint':<20} {'clients':>7} {'requests':>8} {'errors':>6} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'req/s':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['endpoint']:<20} {r['clients']:>7} {r['requests']:>8} {r['errors']:>6} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>8.1f}")  # fmt: skip
    ours_64, bare_64 = median[64]
    print(
        f"GET /jobs/{{id}} at 16 clients: {ratio:.2f} of the bare app's req/s (target >= 0.4); "
        f"p99 at 64 clients {ours_64['p99_ms']:.1f} ms, bare app {bare_64['p99_ms']:.1f} ms "
        f"(target < 50 ms); medians of {args.rounds} interleaved rounds"
    )
    if args.json:
        args.json.write_text(json.dumps({"workers": args.workers, "seconds": seconds,
                                         "client": client, "stack": stack, "load_average": load,
                                         "ratio_16": ratio, "p99_64_ms": ours_64["p99_ms"],
                                         "bare_p99_64_ms": bare_64["p99_ms"],
                                         "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
