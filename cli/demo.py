"""``python -m cli.demo`` (``make demo``): the main job, end to end, through the REST API.

On a fresh machine, with nothing running:

1. start ``wkd serve`` (API + one worker on SQLite, the filesystem broker and a local
   artifact folder, all under ``--data-dir``) on a free port;
2. create an API key;
3. train a teacher on ``mnist5k`` with ``POST /jobs`` (method ``vanilla``);
4. distill a smaller student from it with WKD-L (``teacher.job_id`` = the teacher's job),
   printing each epoch as ``GET /jobs/{id}`` reports it;
5. print the student's curve and final accuracy, download its weights and say where they are.

Exits non-zero if a job fails or the service does not come up. The defaults take a few
minutes on a 2-core CPU; ``--quick`` shrinks the data and epochs to a smoke test.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


class Client:
    """The few REST calls the demo makes (a bearer key on every request)."""

    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"})  # fmt: skip

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/jobs", json=spec)
        if response.status_code != 202:
            raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text}")
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def download(self, url: str, destination: Path) -> str:
        """Stream an artifact to ``destination``; returns its sha256."""
        digest = hashlib.sha256()
        with self.http.stream("GET", url) as response, open(destination, "wb") as out:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    def follow(self, job_id: str, *, label: str, poll_s: float = 1.0) -> dict[str, Any]:
        """Poll until the job is terminal, printing status changes and each new epoch."""
        status, printed = None, 0
        while True:
            job = self.job(job_id)
            for row in job["curve"][printed:]:  # epochs first: they happened before the status
                say(f"{label}: {epoch_line(row, job['progress']['total'])}")
            printed = len(job["curve"])
            if job["status"] != status:
                status = job["status"]
                say(
                    f"{label}: {status}"
                    + (f" (attempt {job['attempt']})" if job["attempt"] > 1 else "")
                )
            if job["is_terminal"]:
                return job
            time.sleep(poll_s)


def epoch_line(row: dict[str, Any], total: int) -> str:
    terms = " ".join(f"{k}={v:.4f}" for k, v in row["loss_terms"].items())
    return (f"epoch {row['epoch']:>2}/{total}  test top-1 {row['test_top1']:6.2f}%  "
            f"train loss {row['train_loss']:.4f} ({terms})  lr {row['lr']:g}  "
            f"{row['seconds']:.1f} s")  # fmt: skip


def curve_table(curve: list[dict[str, Any]]) -> str:
    terms = sorted({k for row in curve for k in row["loss_terms"]})
    head = ["epoch", "lr", "train loss", "train top-1", "test top-1", "test top-5", "test loss"]
    lines = ["| " + " | ".join(head + terms) + " |", "|" + "---|" * (len(head) + len(terms))]
    for row in curve:
        cells = [str(row["epoch"]), f"{row['lr']:g}", f"{row['train_loss']:.4f}",
                 f"{row['train_top1']:.2f}", f"{row['test_top1']:.2f}", f"{row['test_top5']:.2f}",
                 f"{row['test_loss']:.4f}"]  # fmt: skip
        cells += [f"{row['loss_terms'].get(t, 0.0):.4f}" for t in terms]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base_url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"wkd serve exited with status {server.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API did not answer /healthz within {timeout:.0f} s")


def job_specs(args: argparse.Namespace) -> tuple[dict, dict]:
    """The teacher's vanilla job and the student's WKD-L job (its teacher filled in later)."""
    subset = 20 if args.quick else None
    teacher_epochs, student_epochs = (1, 2) if args.quick else (args.teacher_epochs, args.epochs)

    def training(epochs: int) -> dict:  # the last epoch at lr / 10 steadies the accuracy
        return {"epochs": epochs, "batch_size": 64, "lr": 0.05, "num_workers": 0,
                "lr_milestones": [epochs - 1] if epochs > 1 else [], "seed": 0}  # fmt: skip

    dataset = {"name": "mnist5k", "train_subset_per_class": subset}
    teacher = {"method": "vanilla", "student": {"arch": args.teacher_arch}, "dataset": dataset,
               "training": training(teacher_epochs)}  # fmt: skip
    student = {"method": "wkd_l", "student": {"arch": args.student_arch}, "dataset": dataset,
               "training": training(student_epochs), "teacher": {}}  # fmt: skip
    return teacher, student


def run_demo(args: argparse.Namespace) -> int:
    from cli.keys import create_key

    data_dir = Path(args.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    say(f"starting `wkd serve` on {base_url}, data in {data_dir}")
    log = open(data_dir / "serve.log", "ab")  # noqa: SIM115  (closed in finally)
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir)], stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    started = time.monotonic()
    try:
        wait_healthy(base_url, server)
        client = Client(base_url, create_key("demo", data_dir=data_dir))
        say("API key created; the service is up")
        teacher_spec, student_spec = job_specs(args)
        teacher = client.submit(teacher_spec)
        say(f"teacher job {teacher['id']}: {args.teacher_arch}, vanilla training on mnist5k")
        teacher = client.follow(teacher["id"], label="teacher")
        if teacher["status"] != "succeeded":
            say(
                f"teacher job {teacher['status']}: {teacher['failure_reason']} {teacher['message']}"
            )
            return 1
        student_spec["teacher"] = {"job_id": teacher["id"]}
        student = client.submit(student_spec)
        say(f"student job {student['id']}: {args.student_arch} distilled from the teacher "
            f"with WKD-L")  # fmt: skip
        student = client.follow(student["id"], label="student")
        if student["status"] != "succeeded":
            say(
                f"student job {student['status']}: {student['failure_reason']} {student['message']}"
            )
            return 1
        return report(client, teacher, student, data_dir, time.monotonic() - started)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def report(client: Client, teacher: dict, student: dict, data_dir: Path, seconds: float) -> int:
    print(f"\nStudent curve ({student['spec']['student']['arch']}, WKD-L, mnist5k):\n")
    print(curve_table(student["curve"]))
    weights = next(a for a in student["artifacts"] if a["name"] == "student.safetensors")
    destination = data_dir / "student.safetensors"
    sha256 = client.download(weights["url"], destination)
    if sha256 != weights["sha256"]:
        say(f"downloaded student weights do not match their sha256 ({sha256})")
        return 1
    print(f"\nTeacher {teacher['spec']['student']['arch']}: best test top-1 "
          f"{teacher['best_top1']:.2f}% (job {teacher['id']})")  # fmt: skip
    print(f"Student {student['spec']['student']['arch']}: final test top-1 "
          f"{student['last_top1']:.2f}%, best {student['best_top1']:.2f}% at epoch "
          f"{student['best_epoch']} (job {student['id']})")  # fmt: skip
    print(f"Student weights: {destination} (sha256 {sha256[:16]}…), load with "
          f"wkd_core.models.create_model({student['spec']['student']['arch']!r}, "
          f"num_classes=10)")  # fmt: skip
    print(f"Demo finished in {seconds:.0f} s.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default="demo-data", help="service data (default ./demo-data)"
    )
    parser.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    parser.add_argument("--teacher-arch", default="resnet14")
    parser.add_argument("--student-arch", default="resnet8")
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="student epochs")
    parser.add_argument("--quick", action="store_true", help="tiny data and 1-2 epochs")
    args = parser.parse_args(argv)
    try:
        return run_demo(args)
    except (RuntimeError, httpx.HTTPError) as error:
        say(f"demo failed: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
