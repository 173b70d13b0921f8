"""The baseline of ``bench/api.py``: a bare FastAPI app answering ``GET /jobs/{id}`` with the
same bytes the real API returns (read once from ``WKD_BENCH_BODY_FILE``), on the same uvicorn.
No database, no auth, no validation: what the framework alone costs per request."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Response

BODY = Path(os.environ["WKD_BENCH_BODY_FILE"]).read_bytes()
app = FastAPI()


@app.get("/jobs/{job_id}")
async def read_job(job_id: str) -> Response:
    return Response(BODY, media_type="application/json")


@app.get("/healthz")
async def health() -> dict:
    return {"status": "ok"}
