"""The Dockerfile, the compose files and .env.example: linted, parsed by Compose v2, and held
to what DESIGN.md §8 and docs/deploy.md promise. A lint or parse error fails CI here."""

from __future__ import annotations

import json
import re

import pytest
from deploy_tools import ROOT, compose_config, hadolint_binary, run_compose

from service.settings import Settings

DOCKERFILE = ROOT / "Dockerfile"


def hadolint(path) -> tuple[int, str]:
    import subprocess

    done = subprocess.run(
        [str(hadolint_binary()), "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_dockerfile_passes_hadolint_at_warning_level():
    code, output = hadolint(DOCKERFILE)
    assert code == 0, output


def test_hadolint_check_can_fail(tmp_path):
    """The gate is real: an unpinned apt-get install is a warning and fails the check."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    code, output = hadolint(bad)
    assert code != 0 and "DL3008" in output


@pytest.mark.parametrize(
    ("files", "profiles"),
    [
        (("docker-compose.yml",), ()),
        (("docker-compose.yml",), ("gpus-8", "multigpu")),
        (("docker-compose.yml", "docker-compose.cpu.yml"), ()),
        (("docker-compose.yml", "docker-compose.multihost.yml"), ()),
    ],
)
def test_compose_files_pass_the_compose_v2_parser(files, profiles, tmp_path):
    env_file = tmp_path / ".env"  # .env.example with its multihost lines filled in
    env_file.write_text((ROOT / ".env.example").read_text()
                        + "PRIVATE_ADDRESS=10.0.0.5\nREDIS_PASSWORD=secret\n")  # fmt: skip
    done = run_compose("config", "--quiet", files=files, profiles=profiles, env_file=env_file)
    assert done.returncode == 0, done.stderr


def test_compose_check_can_fail(tmp_path):
    """The bundled binary's exit status is used: a GPU reservation with both count and
    device_ids is an error, and so is a missing POSTGRES_PASSWORD."""
    broken = (
        (ROOT / "docker-compose.yml")
        .read_text()
        .replace('device_ids: ["0"]', 'device_ids: ["0"]\n            count: 1', 1)
    )
    (tmp_path / "docker-compose.yml").write_text(broken)
    done = run_compose("config", "--quiet", files=(str(tmp_path / "docker-compose.yml"),))
    assert done.returncode != 0 and "exclusive" in done.stderr
    (tmp_path / "empty.env").write_text("API_PORT=8000\n")
    done = run_compose("config", "--quiet", env_file=tmp_path / "empty.env")
    assert done.returncode != 0 and "POSTGRES_PASSWORD" in done.stderr


def test_dockerfile_targets_user_and_healthcheck():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, flags=re.M)
    names = [name for _image, name in stages]
    assert {"api", "worker"} <= set(names)
    for target in ("api", "worker"):
        body = text.split(f"AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER 10001:10001$", body, flags=re.M), target  # numeric, not root
        assert "HEALTHCHECK" in body and "CMD [" in body, target
        assert "build-essential" not in body and "gcc" not in body
    assert "torch==2.14.1 torchvision==0.29.1" in text
    worker = text.split("AS worker\n", 1)[1]
    assert "COPY --from=build-worker /opt/venv /opt/venv" in worker
    api = text.split("AS api\n", 1)[1].split("\nFROM ", 1)[0]
    assert "COPY --from=build-api /opt/venv /opt/venv" in api  # the torch-free venv
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "tests"} <= set(ignored)


def test_the_images_default_commands_are_composes():
    """``docker run`` of an image starts the process as compose does (no --concurrency that
    would override WKD_JOBS_PER_GPU; the API's short graceful shutdown)."""
    text = DOCKERFILE.read_text()
    commands = {target: json.loads(re.findall(r"^CMD (\[.*\])$", body, flags=re.M)[-1])
                for target, body in ((t, text.split(f"AS {t}\n", 1)[1].split("\nFROM ", 1)[0])
                                     for t in ("api", "worker"))}  # fmt: skip
    services = compose_config()["services"]
    assert commands["worker"] == services["worker"]["command"]
    assert commands["api"] == services["api"]["command"]  # API_WORKERS unset: 2, as the image


def test_compose_services_as_documented():
    config = compose_config(profiles=("gpus-8", "multigpu"))
    services, volumes = config["services"], config["volumes"]
    assert {"pgdata", "redisdata", "artifacts", "checkpoints"} <= set(volumes)

    postgres = services["postgres"]
    assert any(v["source"] == "pgdata" for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    # room for the api container's processes at their pools' worst case, plus workers
    (max_connections,) = [int(arg.split("=")[1]) for arg in postgres["command"]
                          if arg.startswith("max_connections=")]  # fmt: skip
    api_workers = int(services["api"]["command"][services["api"]["command"].index("--workers") + 1])
    pools = 2 * (10 + 20) + 2  # service.db pools (write and read) and the poll fast path's 2
    assert max_connections >= api_workers * pools + 50
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in postgres and "ports" not in redis  # private by default

    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"]["restart"] == "no"
    assert services["api"]["ports"][0]["target"] == 8000
    assert "healthz" in " ".join(services["api"]["healthcheck"]["test"])

    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert len(workers) == 9  # worker (GPU 0), worker-gpu1 … 7, worker-multigpu
    for name, service in {"api": services["api"], **workers}.items():
        depends = service["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        mounts = {v["target"]: v["source"] for v in service["volumes"]}
        assert mounts["/data/artifacts"] == "artifacts", name  # one shared data directory
        assert mounts["/data/checkpoints"] == "checkpoints", name
        assert service["environment"]["WKD_DATA_DIR"] == "/data", name
    for index in range(8):
        name = "worker" if index == 0 else f"worker-gpu{index}"
        (device,) = workers[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "device_ids": [str(index)], "capabilities": ["gpu"]}
        assert workers[name]["environment"]["WKD_WORKER_GPUS"] == "1"
        assert _seconds(workers[name]["stop_grace_period"]) >= 120
    multi = workers["worker-multigpu"]
    (device,) = multi["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == int(multi["environment"]["WKD_WORKER_GPUS"])


def test_cpu_override_reserves_no_gpu():
    config = compose_config(files=("docker-compose.yml", "docker-compose.cpu.yml"))
    worker = config["services"]["worker"]
    assert not (worker.get("deploy") or {}).get("resources")
    assert worker["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert worker["command"] == compose_config()["services"]["worker"]["command"]


def test_every_setting_is_documented_in_env_example():
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(WKD_[A-Z0-9_]+)=", text, flags=re.M))
    fields = {f"WKD_{name.upper()}" for name in Settings.model_fields}
    assert fields - documented == set()


def _seconds(duration: str) -> float:
    """Compose's Go duration (``3m0s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", duration))
