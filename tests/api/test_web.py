"""The web page's files: served from the package, a fixed list, a strict CSP (same origin)."""

from __future__ import annotations

import re


def test_root_redirects_to_the_page_which_loads_only_local_assets(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert set(assets) == {"/ui/favicon.svg", "/ui/app.css", "/ui/app.js", "/ui/chart.js"}
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    # No URL to another host in the script (the SVG namespace is a name, never fetched).
    script = client.get("/ui/app.js").text + client.get("/ui/chart.js").text
    script = script.replace("http://www.w3.org/2000/svg", "")
    assert "http:" not in script and "https:" not in script and "//cdn" not in script


def test_only_the_page_files_are_served(client):
    for path in ("/ui/../api/main.py", "/ui/main.py", "/ui/%2e%2e%2fmain.py", "/ui/x.html"):
        assert client.get(path).status_code == 404, path
