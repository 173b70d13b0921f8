"""The web page's files: served from the package, a fixed list, a strict CSP (same origin)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path


def test_root_redirects_to_the_page_which_loads_only_local_assets(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "form-action 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert set(assets) == {"/ui/favicon.svg", "/ui/app.css", "/ui/app.js", "/ui/chart.js",
                           "/ui/studies.js"}  # fmt: skip
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    # No URL to another host in the script (the SVG namespace is a name, never fetched).
    script = "".join(
        client.get(f"/ui/{name}").text for name in ("app.js", "chart.js", "studies.js")
    )
    script = script.replace("http://www.w3.org/2000/svg", "")
    assert "http:" not in script and "https:" not in script and "//cdn" not in script


def test_only_the_page_files_are_served(client):
    for path in ("/ui/../api/main.py", "/ui/main.py", "/ui/%2e%2e%2fmain.py", "/ui/x.html"):
        assert client.get(path).status_code == 404, path


def test_api_reference_pages_load_only_vendored_assets(client):
    """/docs (Swagger UI) and /redoc name only files of this service, and those files exist."""
    for path, names in (("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}),
                        ("/redoc", {"redoc.standalone.js"})):  # fmt: skip
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        urls = set(re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text))
        assert urls == {"/openapi.json", "/ui/favicon.svg", *(f"/static/docs/{n}" for n in names)}
        assert "http:" not in page.text and "https:" not in page.text  # no CDN, no fonts
        for url in urls:
            assert client.get(url).status_code == 200, url
        csp = page.headers["content-security-policy"]
        assert (
            csp.startswith("default-src 'self'; script-src 'self'")
            and "img-src 'self' data:;" in csp
        )
    assert "'sha256-" in client.get("/docs").headers["content-security-policy"]  # its inline script
    assert '"validatorUrl": null' in client.get("/docs").text  # no badge from validator.swagger.io
    script = client.get("/static/docs/swagger-ui-bundle.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert len(script.content) > 500_000  # the real bundle, not a placeholder
    for path in ("/static/docs/LICENSE", "/static/docs/../web/app.js", "/static/docs/x.js"):
        assert client.get(path).status_code == 404, path


def test_package_data_ships_every_page_and_vendored_file():
    """pyproject's package-data globs cover every file of api/web and api/static (a wheel
    without them would serve 404s where the pages expect their scripts)."""
    api = Path(__file__).resolve().parents[2] / "api"
    globs = tomllib.loads((api.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["api"]
    shipped = {p for g in globs for p in api.glob(g) if p.is_file()}
    needed = {p for d in ("web", "static") for p in (api / d).rglob("*") if p.is_file()}
    assert needed and needed <= shipped, sorted(str(p) for p in needed - shipped)
    assert {"LICENSE", "swagger-ui-bundle.js"} <= {p.name for p in needed if "swagger" in str(p)}
