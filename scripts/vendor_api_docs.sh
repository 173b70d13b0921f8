#!/usr/bin/env bash
# Vendor the assets of the API's reference pages (/docs: Swagger UI, /redoc: ReDoc) into
# api/static/, so that neither page loads anything from a CDN (api/routes/docs.py).
#
#   bash scripts/vendor_api_docs.sh       (needs npm and the npm registry; run by hand when
#                                          bumping a version, the result is committed)
#
# Only the files the pages load are kept, with each package's licence. The trailing
# `sourceMappingURL` comment is dropped: the .map files are not shipped, so the comment would
# only point the browser's developer tools at a 404.
set -euo pipefail
SWAGGER_UI=5.35.0   # swagger-ui-dist, Apache-2.0
REDOC=2.5.4         # redoc, MIT (FastAPI's get_redoc_html targets redoc 2)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$HERE/api/static"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

unpack() {  # unpack NAME VERSION: npm pack into $TMP/NAME
  (cd "$TMP" && npm pack --silent "$1@$2" >/dev/null && mkdir "$1" && tar xzf "$1-$2.tgz" -C "$1")
}
strip_map() { sed -i '/^\/[*\/]# sourceMappingURL=/d' "$@"; }

unpack swagger-ui-dist "$SWAGGER_UI"
unpack redoc "$REDOC"
rm -rf "$DEST/swagger-ui" "$DEST/redoc"
mkdir -p "$DEST/swagger-ui" "$DEST/redoc"
cp "$TMP"/swagger-ui-dist/package/{swagger-ui-bundle.js,swagger-ui-bundle.js.LICENSE.txt,swagger-ui.css,LICENSE,NOTICE} "$DEST/swagger-ui/"
cp "$TMP"/redoc/package/bundles/{redoc.standalone.js,redoc.standalone.js.LICENSE.txt} "$DEST/redoc/"
cp "$TMP"/redoc/package/LICENSE "$DEST/redoc/LICENSE"
strip_map "$DEST/swagger-ui/swagger-ui-bundle.js" "$DEST/swagger-ui/swagger-ui.css" "$DEST/redoc/redoc.standalone.js"
printf 'swagger-ui-dist %s\nredoc %s\n' "$SWAGGER_UI" "$REDOC" > "$DEST/VERSIONS"
echo "vendored swagger-ui-dist $SWAGGER_UI and redoc $REDOC into $DEST"
