"""The web page: ``/`` redirects to ``/ui/``, which serves the files of ``api/web/``.

A single page (vanilla JavaScript, SVG charts drawn in the browser) that talks to the same
JSON API with the key the user types in; the key lives in the tab's ``sessionStorage`` only.
Every file ships inside the package and the Content-Security-Policy allows nothing but this
origin, so the page never fetches anything from the internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, RedirectResponse

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
FILES = {"index.html": "text/html", "app.js": "text/javascript", "chart.js": "text/javascript",
         "studies.js": "text/javascript", "app.css": "text/css",
         "favicon.svg": "image/svg+xml"}  # fmt: skip
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"  # the forms are sent by script (fetch), never by navigation
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/")
@router.get("/ui/{name}")
def web_file(name: str = "index.html") -> FileResponse:
    """One of the page's files (a fixed list: nothing else on disk is reachable)."""
    if name not in FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found")
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
               "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP 2
               "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}  # fmt: skip
    return FileResponse(WEB_DIR / name, media_type=FILES[name], headers=headers)
