"""The API's own documentation: /docs (Swagger UI), /redoc (ReDoc), /openapi.json.

Under the same access rules as the API (api/auth.py: the pages send a browser without a
session to /signin; the document needs a person's or the operator's credentials; open mode:
anyone, as everything else). Their scripts and styles come from this app, never a CDN: the
`fastapi-offline` package ships the Swagger UI and ReDoc builds (MIT), served under
/docs/assets/ (an allow-list, nothing else from that directory), with a CSP that allows only
this origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from core.errors import NotFound

router = APIRouter(include_in_schema=False)

VENDOR = Path(fastapi_offline.__file__).resolve().parent / "static"
OWN = Path(__file__).resolve().parent.parent / "static" / "docs"
ASSETS = {
    "swagger-ui-bundle.js": (VENDOR, "text/javascript; charset=utf-8"),
    "swagger-ui.css": (VENDOR, "text/css; charset=utf-8"),
    "redoc.standalone.js": (VENDOR, "text/javascript; charset=utf-8"),
    "favicon.png": (VENDOR, "image/png"),
    "swagger-init.js": (OWN, "text/javascript; charset=utf-8"),
}
# Swagger UI and ReDoc set style attributes and (ReDoc) insert <style> elements at run time,
# and ReDoc's search runs in a worker made from a blob: nothing else is loosened, and no
# script runs that this app did not serve.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src blob:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
SWAGGER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MySisterDB API · Swagger UI</title>
<link rel="icon" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-init.js"></script>
</body></html>
"""
REDOC = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MySisterDB API · ReDoc</title>
<link rel="icon" href="/docs/assets/favicon.png"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="/docs/assets/redoc.standalone.js"></script>
</body></html>
"""


@router.get("/openapi.json")
def openapi(request: Request) -> JSONResponse:
    document: dict[str, Any] = request.app.openapi()
    return JSONResponse(document)


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui() -> HTMLResponse:
    return HTMLResponse(SWAGGER, headers=HEADERS)


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    return HTMLResponse(REDOC, headers=HEADERS)


@router.get("/docs/assets/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound("ファイルが見つかりません。")
    directory, media_type = ASSETS[name]
    return FileResponse(directory / name, media_type=media_type,
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
