"""The API never imports torch or wkd_core (DESIGN.md §3): it starts fast, without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import api.main, api.deps, api.schemas, service.crud, service.spec, service.submit
import service.queue, service.storage, service.catalog
app = api.main.create_app()
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'wkd_core',
                                                                       'torchvision', 'numpy'))))
"""


def test_api_and_service_import_no_torch_or_wkd_core(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "WKD_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


CLIENT_PROBE = """
import json, sys
import wkd_client, cli.main, cli.remote, cli.textchart
cli.main.build_parser()
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'wkd_core',
                 'torchvision', 'numpy', 'sqlalchemy', 'fastapi', 'service', 'api'))))
"""


def test_client_and_remote_cli_import_no_torch_nor_the_server():
    run = subprocess.run(
        [sys.executable, "-c", CLIENT_PROBE], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
