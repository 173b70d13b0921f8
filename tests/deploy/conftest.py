"""Deployment tests: the Dockerfile and compose files, checked and run without a Docker engine.

The process helpers of the end-to-end tests (``tests/e2e/stacks.py``) are reused here.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
