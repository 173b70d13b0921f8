"""The API's reference pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served offline.

FastAPI's own pages load their scripts and styles from a CDN (and ReDoc its fonts from Google).
These load the copies vendored in ``api/static/`` by ``scripts/vendor_api_docs.sh`` (versions
in ``api/static/VERSIONS``, each with its licence) from ``/static/docs/…``, and Swagger UI's
online validator is switched off. A Content-Security-Policy of this origin only (plus the
page's own inline script by its hash, the inline styles both libraries inject and ReDoc's
search worker, a ``blob:``) makes the browser refuse anything else: ReDoc's sidebar would
otherwise fetch its "API docs by Redocly" logo from cdn.redoc.ly.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ASSETS = "/static/docs"
FILES = {
    "swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui/swagger-ui.css", "text/css"),
    "redoc.standalone.js": ("redoc/redoc.standalone.js", "text/javascript"),
}
FAVICON = "/ui/favicon.svg"  # the web page's icon (api/routes/web.py)

CSP = (
    "default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def same_origin_only(page: HTMLResponse) -> HTMLResponse:
    """``page`` with the CSP above, allowing its inline scripts by their sha256."""
    scripts = re.findall(rb"<script>(.*?)</script>", page.body, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts
    )
    page.headers["Content-Security-Policy"] = CSP.format(hashes=hashes)
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return same_origin_only(
        get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="WKD distillation service – API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=FAVICON,
            # by default a badge image is fetched from validator.swagger.io, naming our schema URL
            swagger_ui_parameters={"validatorUrl": None},
        )
    )


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return same_origin_only(
        get_redoc_html(
            openapi_url="/openapi.json",
            title="WKD distillation service – API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=FAVICON,
            with_google_fonts=False,
        )
    )


@router.get(f"{ASSETS}/{{name}}")
def docs_asset(name: str) -> FileResponse:
    """One vendored file (a fixed list: nothing else on disk is reachable)."""
    if name not in FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found")
    path, media_type = FILES[name]
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    return FileResponse(STATIC_DIR / path, media_type=media_type, headers=headers)
