"""Queue-to-running latency: from ``POST /jobs`` to the job's status changing, idle worker.

Starts a real stack (default: PostgreSQL + Redis on 127.0.0.1, a uvicorn API and one
``celery worker`` process; ``--embedded``: ``wkd serve`` on SQLite + the filesystem broker),
then, one job at a time, submits a tiny job and polls ``GET /jobs/{id}`` every few
milliseconds, recording when it is

- ``claimed``: the worker took the message and claimed the row (status ``preparing``);
- ``running``: the fresh runner process has imported torch, built data and models and
  started training (status ``running``).

Each job is then cancelled, and the next one is submitted ``--settle`` seconds after the
worker finished it: an idle worker, whose spare runner (``worker.standby``) is ready.
Target (issue 4): queue to running under 2 s.

    python bench/queue_latency.py [--quick] [--embedded] [--trials N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # stacks.py: the e2e tests' launchers

TARGET_S = 2.0
SPEC = {"method": "vanilla", "student": {"arch": "resnet8"}, "dataset": {"name": "synthetic"},
        "training": {"epochs": 50, "batch_size": 50, "num_workers": 0,
                     "lr_milestones": []}}  # fmt: skip


def measure(
    client: httpx.Client, spec: dict, *, settle_s: float, poll_s: float = 0.005
) -> dict[str, float]:
    """Seconds from the POST to ``preparing`` and to ``running`` for one job."""
    start = time.perf_counter()
    response = client.post("/jobs", json=spec)
    response.raise_for_status()
    job_id = response.json()["id"]
    seen: dict[str, float] = {"accepted": time.perf_counter() - start}
    while "running" not in seen:
        status = client.get(f"/jobs/{job_id}").json()["status"]
        now = time.perf_counter() - start
        if status in ("preparing", "running"):
            seen.setdefault("claimed", now)
        if status == "running":
            seen["running"] = now
        if status in ("failed", "cancelled", "succeeded"):
            raise RuntimeError(f"job {job_id} ended {status} before running")
        if now > 300:
            raise RuntimeError(f"job {job_id} did not start within 300 s")
        time.sleep(poll_s)
    client.post(f"/jobs/{job_id}/cancel")
    # The supervisor registers runner.log last, after its runner has exited: then the worker
    # is idle again (waiting on the broker) for the next job.
    while not any(
        a["name"] == "runner.log" for a in client.get(f"/jobs/{job_id}").json()["artifacts"]
    ):
        time.sleep(0.1)
    time.sleep(settle_s)  # an idle worker: its spare runner has finished its imports
    return seen


def summarize(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in ("accepted", "claimed", "running"):
        values = sorted(s[key] for s in samples)
        out[key] = {"p50": statistics.median(values), "min": values[0], "max": values[-1]}
    return out


def print_table(stack: str, summary: dict, trials: int) -> None:
    print(f"\nQueue latency, {stack}, idle worker, {trials} jobs ({platform.node()}, CPU)\n")
    print("| from POST /jobs to | p50 (s) | min (s) | max (s) | target |")
    print("|---|---|---|---|---|")
    labels = {"accepted": "202 Accepted", "claimed": "claimed (preparing)",
              "running": "running (training started)"}  # fmt: skip
    for key, label in labels.items():
        row = summary[key]
        target = f"< {TARGET_S:g} s" if key == "running" else ""
        print(f"| {label} | {row['p50']:.3f} | {row['min']:.3f} | {row['max']:.3f} | {target} |")


def run(args: argparse.Namespace) -> dict:
    import tempfile

    from stacks import embedded_stack, postgres_redis_stack  # tests/e2e/stacks.py

    launch = embedded_stack if args.embedded else postgres_redis_stack
    with tempfile.TemporaryDirectory() as tmp, launch(Path(tmp)) as stack:
        client = stack.client()
        spec = {**SPEC, "dataset": {"name": args.dataset}}
        measure(client, spec, settle_s=args.settle)  # warm-up: first imports, connections
        samples = [measure(client, spec, settle_s=args.settle) for _ in range(args.trials)]
    summary = summarize(samples)
    print_table(f"{stack.name}, {args.dataset}", summary, args.trials)
    return {"stack": stack.name, "dataset": args.dataset, "trials": args.trials,
            "samples": samples, "summary": summary, "target_running_s": TARGET_S}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 jobs")
    parser.add_argument("--trials", type=int, default=None, help="jobs to time (default 10)")
    parser.add_argument("--embedded", action="store_true", help="wkd serve, not PostgreSQL+Redis")
    parser.add_argument("--dataset", default="synthetic",
                        help="synthetic (nothing to read) or mnist5k (parses a CSV)")  # fmt: skip
    parser.add_argument("--settle", type=float, default=15.0,
                        help="idle seconds between jobs (default 15)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    args.trials = args.trials or (3 if args.quick else 10)
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
