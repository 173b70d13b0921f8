"""Live progress and the Python client, against real uvicorn + Celery processes on both stacks:
``GET /jobs/{id}/events`` followed by :meth:`wkd_client.Client.wait`, resumed with
``Last-Event-ID``, bounded per key; every client method on a real job."""

from __future__ import annotations

import contextlib
import hashlib
import time
from itertools import pairwise

import httpx
import pytest

from service.events import Cursor
from wkd_client import Client, WkdError

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

# 50 digits per class in batches of 10: 50 batches an epoch, 2–4 s on 2 cores. The runner
# writes in-epoch progress at most once a second and the stream polls every 0.5 s, so an
# epoch must last a few seconds for a progress event to be seen for sure (with 20 batches,
# about 1 s an epoch, a loaded machine sometimes showed none).
LIVE = {"name": "mnist5k", "train_subset_per_class": 50}
BATCHES = 50
# In-epoch progress is seen only while an epoch trains; on a loaded machine the stream's
# first poll can come after epoch 1, so the resumed stream needs epochs of its own to see.
EPOCHS = 3


def kd_spec(checkpoint_id: str, *, epochs: int) -> dict:
    return {"method": "kd", "teacher": {"checkpoint_id": checkpoint_id},
            "student": {"arch": "resnet8"}, "dataset": LIVE,
            "training": {"epochs": epochs, "batch_size": 10, "lr": 0.05, "lr_milestones": [],
                         "num_workers": 0}}  # fmt: skip


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A randomly initialised resnet8 as safetensors (KD needs a teacher, not a good one)."""
    import torch
    from safetensors.torch import save_file

    from wkd_core.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random-teacher") / "teacher.safetensors"
    save_file(create_model("resnet8", num_classes=10).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def checkpoint_ids() -> dict[str, str]:
    """The teacher uploaded once per stack: stack name → checkpoint id."""
    return {}


def teacher_id(client: Client, teacher_file, cache: dict, stack) -> str:
    if stack.name not in cache:
        uploaded = client.upload_checkpoint(teacher_file, arch="resnet8", num_classes=10)
        assert uploaded.sha256 == hashlib.sha256(teacher_file.read_bytes()).hexdigest()
        assert uploaded.id in [c.id for c in client.checkpoints()]
        assert client.get_checkpoint(uploaded.id).size == teacher_file.stat().st_size
        cache[stack.name] = uploaded.id
    return cache[stack.name]


def test_event_stream_follows_a_job_and_resumes(stack, teacher_file, checkpoint_ids, tmp_path):
    client = Client(stack.base_url, stack.key)
    checkpoint_id = teacher_id(client, teacher_file, checkpoint_ids, stack)
    job = client.submit(kd_spec(checkpoint_id, epochs=EPOCHS))
    assert job.status == "queued" and job.progress.total == EPOCHS

    # First connection: read until the first finished epoch, then drop it.
    seen = []
    for event in client.events(job.id):
        seen.append(event)
        if event.event == "epoch":
            break
    # Resume with Last-Event-ID through wait(), which follows the stream to the end.
    done = client.wait(job.id, timeout=300, on_event=seen.append, last_event_id=seen[-1].id)

    assert done.status == "succeeded", (done.message, stack.log_tail())
    cursors = [Cursor.parse(e.id) for e in seen]
    assert all(a < b for a, b in pairwise(cursors)), [e.id for e in seen]
    epochs = [e for e in seen if e.event == "epoch"]
    assert [e.data["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))  # each once
    assert [{k: v for k, v in e.data.items() if k != "total"} for e in epochs] == [
        m.model_dump() for m in client.metrics(job.id)
    ]
    states = [e.data["status"] for e in seen if e.event == "state"]
    assert "running" in states and states[-1] == "succeeded" and seen[-1].is_end
    progress = [e.data for e in seen if e.event == "progress"]
    assert progress, "no in-epoch progress event"
    assert {p["batches"] for p in progress} == {BATCHES}
    assert all(0 < p["batch"] <= BATCHES and 0 <= p["epoch"] < EPOCHS for p in progress)
    assert done.progress.epoch == EPOCHS and done.progress.batches == BATCHES
    assert done.best_top1 == max(e.data["test_top1"] for e in epochs)

    # A finished job's stream replays what follows the given id, then closes.
    replay = list(client.events(job.id, last_event_id=epochs[0].id))
    assert [e.id for e in replay] == [e.id for e in epochs[1:]] + [seen[-1].id]
    assert list(client.events(job.id, last_event_id=seen[-1].id)) == []

    # The rest of the client on the finished job.
    assert client.health()["status"] == "ok"
    assert "kd" in client.catalog()["methods"]
    assert client.get_job(job.id).curve == client.metrics(job.id)
    assert job.id in [j.id for j in client.iter_jobs(limit=50)]
    assert client.list_jobs(status="succeeded").data[0].id == job.id
    names = {a.name: a for a in client.artifacts(job.id)}
    path = client.download(job.id, "student.safetensors", tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == names["student.safetensors"].sha256
    assert client.cancel(job.id).status == "succeeded"  # terminal: no change
    with pytest.raises(WkdError, match="HTTP 404: job not found"):
        client.get_job("job_nope")


def test_open_streams_are_bounded_per_key_and_cancel_ends_the_stream(
    stack, teacher_file, checkpoint_ids
):
    client = Client(stack.base_url, stack.key)
    job = client.submit(kd_spec(teacher_id(client, teacher_file, checkpoint_ids, stack),
                                epochs=50))  # fmt: skip
    url = f"{stack.base_url}/jobs/{job.id}/events"
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(timeout=30) as http, contextlib.ExitStack() as streams:
        for _ in range(10):  # the default events_max_streams_per_key
            opened = streams.enter_context(http.stream("GET", url, headers=headers))
            assert opened.status_code == 200
        refused = http.get(url, headers=headers)
        assert refused.status_code == 429 and refused.headers["retry-after"]
    # The ten closed: the server releases their slots once it notices.
    deadline = time.monotonic() + 20
    while (code := _status(url, headers)) == 429 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert code == 200

    events = []

    def on_event(event):
        events.append(event)
        if event.event == "progress" and not any(e.event == "cancel" for e in events):
            client.cancel(job.id)  # once it trains; the stream shows the rest
            events.append(type(event)(event="cancel", data={}))

    done = client.wait(job.id, timeout=240, on_event=on_event)
    assert done.status == "cancelled", stack.log_tail()
    states = [e.data["status"] for e in events if e.event == "state"]
    assert "running" in states and states[-1] == "cancelled"
    assert done.progress.epoch < 50


def _status(url: str, headers: dict) -> int:
    with httpx.Client(timeout=30) as http, http.stream("GET", url, headers=headers) as response:
        return response.status_code


def test_cli_commands_against_the_embedded_service(embedded, teacher_file, tmp_path, capsys,
                                                   monkeypatch):  # fmt: skip
    import json

    import yaml

    from cli.main import main

    monkeypatch.setenv("WKD_URL", embedded.base_url)
    monkeypatch.setenv("WKD_API_KEY", embedded.key)

    def wkd(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = wkd("upload-teacher", str(teacher_file), "--arch", "resnet8",
                       "--num-classes", "10")  # fmt: skip
    checkpoint = out.strip()
    assert code == 0 and checkpoint.startswith("ck_")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({
        "method": "kd", "student": {"arch": "resnet8"}, "dataset": LIVE,
        "training": {"epochs": 5, "batch_size": 10, "lr_milestones": [], "num_workers": 0},
    }))  # fmt: skip
    code, out, err = wkd("submit", str(job_file), "--teacher-checkpoint", checkpoint,
                         "--set", "training.epochs=1", "--set", "params.temperature=2",
                         "--watch")  # fmt: skip
    job_id = out.splitlines()[0]
    assert code == 0, (out, err, embedded.log_tail())
    assert "kd resnet8 → resnet8 on mnist5k, 1 epochs" in err
    assert "state: running" in out and "epoch    1/1  train loss" in out
    assert "test top-1 (%)" in out and f"{job_id} succeeded: best top-1" in out

    code, out, _ = wkd("status", job_id, "--json")
    document = json.loads(out)
    assert code == 0 and document["status"] == "succeeded"
    assert document["spec"]["training"]["epochs"] == 1
    assert document["spec"]["params"]["temperature"] == 2.0
    code, out, _ = wkd("status", job_id)
    assert code == 0 and out.startswith(f"{job_id}  succeeded  kd resnet8 → resnet8 on mnist5k")
    assert "progress: epoch 1/1" in out and f"{document['curve'][0]['test_top1']:9.2f}" in out
    code, out, _ = wkd("jobs", "--limit", "5")
    line = next(row for row in out.splitlines() if row.startswith(job_id))
    assert "succeeded" in line and "1/1" in line and "kd resnet8 → resnet8 on mnist5k" in line

    code, out, _ = wkd("download", job_id, "student.safetensors", "--out", str(tmp_path / "dl"))
    saved = tmp_path / "dl" / "student.safetensors"
    assert code == 0 and out.strip() == str(saved)
    sha = {a["name"]: a["sha256"] for a in document["artifacts"]}["student.safetensors"]
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == sha
    assert wkd("cancel", job_id)[1].strip() == f"{job_id} succeeded"

    # Errors are one line on stderr, exit status 2.
    assert wkd("status", job_id, "--key", "wkd_wrong")[::2] == (
        2, "wkd: error: HTTP 401: missing or invalid API key\n")  # fmt: skip
    assert wkd("status", "job_nope")[::2] == (2, "wkd: error: HTTP 404: job not found\n")
    code, _, err = wkd("download", job_id, "nope.bin")
    assert code == 2 and err.startswith(f"wkd: error: job {job_id} has no artifact nope.bin")
    code, _, err = wkd("submit", str(job_file), "--set", "training.epochs=0")
    assert code == 2 and err.count("\n") == 1 and "training.epochs" in err
    code, _, err = wkd("jobs", "--url", "http://127.0.0.1:9")
    assert (code, err) == (2, "wkd: error: cannot reach http://127.0.0.1:9: [Errno 111] "
                              "Connection refused\n")  # fmt: skip
