"""What the containers run, run here: docker-compose.yml's own commands as local processes.

The compose file is resolved by the Compose v2 parser (``config --format json``) with a
``.env`` made from ``.env.example`` exactly as README says (``cp .env.example .env``), plus the
two URLs of this machine's PostgreSQL and Redis, which compose interpolates like any other
value. Each service's ``command``, ``environment`` and ``healthcheck`` are then executed as they
are, with three local stand-ins for what only exists in a container: the executables come
from this virtual environment, ``/data`` (the mounted volumes) is a temporary folder, and the
API listens on a free port instead of 8000. The sequence is compose's: ``migrate`` to
completion, then ``api`` and ``worker`` until their healthchecks pass, then a key made with the
command README gives (``wkd keys create``, in the API's environment) and a job to
``succeeded``. A compose file whose commands drift from the code fails here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from deploy_tools import BIN, ROOT, compose_config
from stacks import free_port, start, stop, wait_until

from service.testing import temporary_postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

REDIS_DB = int(os.environ.get("WKD_E2E_REDIS_DB", "13"))
JOB = {
    "method": "vanilla",
    "student": {"arch": "resnet8"},
    "dataset": {"name": "mnist5k", "train_subset_per_class": 10},
    "training": {"epochs": 1, "batch_size": 50, "lr_milestones": [], "num_workers": 0},
}


class Local:
    """Turns a resolved compose service into a local command and environment."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port

    def env(self, service: dict) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WKD_")}
        env.update({k: str(v) for k, v in service["environment"].items()})
        assert env["WKD_DATA_DIR"] == "/data"  # the volumes' mount point in every container
        env["WKD_DATA_DIR"] = str(self.data_dir)
        env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
                   PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}")  # fmt: skip
        return env

    def command(self, argv: list[str]) -> list[str]:
        argv = [str(BIN / argv[0]), *argv[1:]]
        if "--port" in argv:
            index = argv.index("--port") + 1
            assert argv[index] == "8000"
            argv[index] = str(self.port)
        return argv

    def healthcheck(self, service: dict) -> list[str]:
        kind, *rest = service["healthcheck"]["test"]
        if kind == "CMD-SHELL":  # compose escapes $ as $$ in its output
            return ["sh", "-c", rest[0].replace("$$", "$")]
        assert kind == "CMD"
        return self.command([part.replace(":8000/", f":{self.port}/") for part in rest])


def passes(command: list[str], env: dict[str, str]) -> bool:
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=60)
    return done.returncode == 0


@pytest.fixture
def project(tmp_path):
    """A compose project folder with ``.env`` = ``.env.example`` + this machine's servers."""
    import redis

    queue = f"wkd-compose-{secrets.token_hex(4)}"
    with temporary_postgres_database() as database_url:
        env_file = tmp_path / ".env"
        env_file.write_text(
            (ROOT / ".env.example").read_text()
            + f"WKD_DATABASE_URL={database_url}\n"
            + f"WKD_BROKER_URL=redis://127.0.0.1:6379/{REDIS_DB}\n"
            + f"WKD_QUEUE_NAME={queue}\n"
        )
        config = compose_config(project_dir=tmp_path, env_file=env_file)
        yield config, tmp_path, database_url
        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        client.delete(queue, f"_kombu.binding.{queue}")


def test_compose_commands_run_a_job_to_succeeded(project):
    import httpx
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, text

    from service.db import alembic_config

    config, folder, database_url = project
    services = config["services"]
    local = Local(folder / "data", free_port())
    for name in ("migrate", "api", "worker"):  # .env reached the containers' environment
        assert services[name]["environment"]["WKD_DATABASE_URL"] == database_url, name

    migrate = services["migrate"]
    done = subprocess.run(local.command(migrate["command"]), env=local.env(migrate), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    engine = create_engine(database_url)
    with engine.connect() as connection:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert revision == ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()

    api_env, worker_env = local.env(services["api"]), local.env(services["worker"])
    logs = [folder / "api.log", folder / "worker.log"]
    processes = [
        start(local.command(services["api"]["command"]), api_env, logs[0]),
        start(local.command(services["worker"]["command"]), worker_env, logs[1]),
    ]
    try:
        for name, env in (("api", api_env), ("worker", worker_env)):
            check = local.healthcheck(services[name])
            wait_until(lambda c=check, e=env: passes(c, e), timeout=120, interval=1,
                       what=f"the {name} healthcheck", processes=processes)  # fmt: skip

        keys = subprocess.run([str(BIN / "wkd"), "keys", "create", "--name", "compose"],
                              env=api_env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert keys.returncode == 0, keys.stderr
        assert database_url.rsplit("/", 1)[1] in keys.stderr  # it says where the key went
        key = keys.stdout.strip()

        client = httpx.Client(base_url=f"http://127.0.0.1:{local.port}", timeout=30,
                              headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        response = client.post("/jobs", json=JOB)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 300
        while not (job := client.get(f"/jobs/{job_id}").json())["is_terminal"]:
            assert time.monotonic() < deadline, _tail(logs)
            time.sleep(0.5)
        assert job["status"] == "succeeded", (job["message"], _tail(logs))
        assert [row["epoch"] for row in job["curve"]] == [1]
        (weights,) = [a for a in job["artifacts"] if a["name"] == "student.safetensors"]
        download = client.get(weights["url"])
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == weights["sha256"]
        # The worker wrote where the API reads: the one data directory of both.
        assert (folder / "data" / "artifacts" / job_id / "student.safetensors").is_file()
    finally:
        for process in processes:
            stop(process)


def _tail(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
