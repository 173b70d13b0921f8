"""The Celery client: a job id reaches the real broker by task name, as JSON, on our queue."""

from __future__ import annotations

import json
import secrets

import pytest

from service.queue import RUN_JOB_TASK, Enqueuer, celery_config
from service.settings import Settings


def test_queue_settings_are_the_design_ones(tmp_path):
    config = celery_config(Settings(data_dir=tmp_path))
    assert config["task_acks_late"] is False and config["worker_prefetch_multiplier"] == 1
    assert config["worker_disable_prefetch"] is True and config["accept_content"] == ["json"]
    assert config["task_routes"][RUN_JOB_TASK] == {"queue": "wkd"}


def test_filesystem_broker_receives_the_job_id(tmp_path):
    settings = Settings(data_dir=tmp_path, queue_name=f"q{secrets.token_hex(4)}")
    Enqueuer(settings)("job_" + "1" * 24)
    [message] = list((tmp_path / "broker" / "queue").iterdir())
    envelope = json.loads(message.read_text())
    assert envelope["headers"]["task"] == RUN_JOB_TASK
    assert envelope["content-type"] == "application/json"


@pytest.mark.redis
def test_redis_broker_receives_the_job_id_and_purges(tmp_path):
    import base64

    import redis

    queue = f"wkd_test_{secrets.token_hex(4)}"
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0", queue_name=queue)
    enqueue = Enqueuer(settings)
    enqueue("job_" + "2" * 24)
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    try:
        [raw] = client.lrange(queue, 0, -1)
        envelope = json.loads(raw)
        body = json.loads(base64.b64decode(envelope["body"]))
        assert envelope["headers"]["task"] == RUN_JOB_TASK and body[0] == ["job_" + "2" * 24]
        assert enqueue.purge() == 1 and client.llen(queue) == 0
    finally:
        client.delete(queue)
