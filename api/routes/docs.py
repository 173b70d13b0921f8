"""The API's reference pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served offline.

FastAPI's own pages load their scripts and styles from a CDN (and ReDoc its fonts from Google).
These load the copies vendored in ``api/static/`` by ``scripts/vendor_api_docs.sh`` (versions
in ``api/static/VERSIONS``, each with its licence) from ``/static/docs/…``, and Swagger UI's
online validator is switched off, so neither page sends a request to another host.
"""

from __future__ import annotations

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

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="WKD distillation service – API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=FAVICON,
        # the default validator posts the schema's URL to validator.swagger.io for a badge
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="WKD distillation service – API",
        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )


@router.get(f"{ASSETS}/{{name}}")
def docs_asset(name: str) -> FileResponse:
    """One vendored file (a fixed list: nothing else on disk is reachable)."""
    if name not in FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found")
    path, media_type = FILES[name]
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    return FileResponse(STATIC_DIR / path, media_type=media_type, headers=headers)
