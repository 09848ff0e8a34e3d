"""The browser UI: the bundle built from ``web/`` (``make web``), served at ``/``.

The bundle lives in the package (``medshard/web_dist/``, git-ignored, written by Vite), so a
running service needs no Node.js. ``/`` and ``/index.html`` answer the one HTML page (no-cache:
a new build is picked up at once); ``/assets/*`` answers Vite's content-hashed files with a
year-long immutable cache, and their gzip twins (written at build time) to clients that accept
gzip. Client routes live in the URL fragment (``/#/studies/1.2.3``), which browsers never send:
every deep link is ``/``, and patient ids and UIDs stay out of server and proxy logs.

None of this carries patient data: the page and its scripts are the same for everyone, and
every request they make for data goes through the API's authentication. ``/`` and
``/index.html`` are therefore in :data:`medshard.api.auth.PUBLIC`; ``/assets`` is a mounted
static-file app outside the API's routes. Without a bundle, ``/`` answers 503 with a page that
says how to build one, never a blank page.

The OHIF Viewer, prebuilt from ``@ohif/app`` by ``web/ohif/bundle.mjs``, is served the same way
from ``web_dist/ohif/`` under ``/ohif/``: a static mount (:class:`Ohif`), its own page for every
OHIF route (``/ohif/viewer?StudyInstanceUIDs=...``) under a CSP of its own, as strict as OHIF
runs under, and its ``app-config.js`` that reads medshard's DICOMweb with the token of the user
logged in on medshard's page (from the tab's sessionStorage, never from a URL). Nothing there
carries patient data either; OHIF's data requests go through the API's authentication. Unlike
medshard's page, OHIF routes by query string, so a study UID it opens appears in the request
line of ``/ohif/viewer`` (as in every DICOMweb path it then reads); a token never does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

#: Where ``make web`` (Vite) writes the bundle.
WEB_DIST: Final = Path(__file__).resolve().parents[1] / "web_dist"
ASSETS_PREFIX: Final = "/assets"
#: Vite's asset names: flat, content-hashed; nothing else is served from the folder.
_ASSET_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_MEDIA_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming insists on it
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
    ".html": "text/html; charset=utf-8",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
    ".webapp": "application/x-web-app-manifest+json",
    ".txt": "text/plain; charset=utf-8",
}
IMMUTABLE: Final = "public, max-age=31536000, immutable"
#: The page may load only its own scripts (and compile the codecs' WebAssembly), talk only to
#: this origin, and may not be framed: a stolen token is worth less when nothing else can run.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self' blob:",
        "img-src 'self' blob: data:",
        "style-src 'self' 'unsafe-inline'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
MISSING_BUNDLE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medshard: web UI not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto">
<h1>The web UI is not built</h1>
<p>This medshard service runs, but its browser UI bundle is missing from
<code>{dist}</code>.</p>
<p>Build it once with Node.js 20 or later, from the source checkout:</p>
<pre>make web</pre>
<p>(which runs <code>npm ci &amp;&amp; npm run build</code> in <code>web/</code>), then reload
this page. The API (<code>/api</code>, <code>/dicom-web</code>) works without it.</p>
</body></html>
"""

OHIF_PREFIX: Final = "/ohif"
#: OHIF's files: names of at most four folders deep, each segment like an asset's name.
_OHIF_MAX_DEPTH: Final = 4
#: webpack's content-hashed names (``89.bundle.b327bf3664812958.js``, ``0ddf166f7a343eda.wasm``).
_OHIF_HASHED: Final = re.compile(r"(^|\.)[0-9a-f]{16}\.(js|wasm|woff2)$")
#: OHIF under medshard's rules, loosened only where OHIF cannot run otherwise: its codecs'
#: WebAssembly, its image-decoding workers (some made from blob: URLs), React's inline styles,
#: and thumbnails as blob:/data: URLs. No inline script and no eval: index.html's inline
#: scripts are moved into app-config.js at build time. Data goes only to this origin.
OHIF_CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self' blob:",
        "img-src 'self' blob: data:",
        "style-src 'self' 'unsafe-inline'",
        "connect-src 'self'",
        "media-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
OHIF_PAGE_HEADERS: Final = PAGE_HEADERS | {"Content-Security-Policy": OHIF_CONTENT_SECURITY_POLICY}
MISSING_OHIF: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medshard: OHIF not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto">
<h1>The OHIF Viewer is not built</h1>
<p>It is missing from <code>{dist}</code>. Build the web UI, OHIF included, with
<code>make web</code> (Node.js 20 or later), then reload this page.</p>
<p><a href="/">Back to medshard</a></p>
</body></html>
"""

router = APIRouter(include_in_schema=False)


def _dist(request: Request) -> Path:
    dist: Path = getattr(request.app.state, "web_dist", WEB_DIST)
    return dist


@router.get("/")
@router.get("/index.html")
def index(request: Request) -> Response:
    """The UI's one page; 503 with build instructions when the bundle is missing."""
    page = _dist(request) / "index.html"
    if not page.is_file():
        return HTMLResponse(
            MISSING_BUNDLE.format(dist=_dist(request)),
            status_code=503,
            headers={"Cache-Control": "no-store", "Retry-After": "60"},
        )
    return FileResponse(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


class Assets:
    """ASGI app for ``/assets/<name>``: hashed bundle files, gzip twins, a year's cache."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response = self.response(scope)
        await response(scope, receive, send)

    def response(self, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            return PlainTextResponse("method not allowed", 405, headers={"Allow": "GET, HEAD"})
        name = scope["path"].removeprefix(scope.get("root_path", "")).lstrip("/")
        if name.startswith(ASSETS_PREFIX.lstrip("/") + "/"):  # servers that keep the prefix
            name = name.split("/", 1)[1]
        path = self.directory / name
        if not _ASSET_NAME.match(name) or not path.is_file():
            return PlainTextResponse("not found", 404, headers={"Cache-Control": "no-store"})
        headers = {"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"}
        media = _MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        twin = path.with_name(name + ".gz")
        if _accepts_gzip(scope) and twin.is_file():
            headers |= {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
            return FileResponse(twin, media_type=media, headers=headers)
        if twin.is_file():
            headers["Vary"] = "Accept-Encoding"
        return FileResponse(path, media_type=media, headers=headers)


class Ohif:
    """ASGI app for ``/ohif/...``: OHIF's prebuilt files, and its page for every OHIF route.

    A path naming a file of the folder gets that file (a gzip twin when accepted; a year's
    cache for webpack's hashed names, revalidation by ETag for the rest). Any other path
    without a file extension is one of OHIF's client routes (``/ohif/``, ``/ohif/viewer``,
    ``/ohif/viewer/dicomweb``) and gets OHIF's ``index.html`` under its own CSP. Anything else
    is 404; only GET and HEAD are served.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response = self.response(scope)
        await response(scope, receive, send)

    def response(self, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            return PlainTextResponse("method not allowed", 405, headers={"Allow": "GET, HEAD"})
        rel = scope["path"].removeprefix(scope.get("root_path", ""))
        if rel.startswith(OHIF_PREFIX + "/"):  # servers that keep the prefix
            rel = rel.removeprefix(OHIF_PREFIX)
        parts = [p for p in rel.split("/") if p]
        if len(parts) > _OHIF_MAX_DEPTH or not all(_ASSET_NAME.match(p) for p in parts):
            return _not_found()
        path = self.directory.joinpath(*parts) if parts else self.directory
        if path.is_file():
            return self.file(scope, path)
        if parts and PurePosixPath(parts[-1]).suffix:
            return _not_found()  # a missing file, not a route
        page = self.directory / "index.html"
        if not page.is_file():
            return HTMLResponse(
                MISSING_OHIF.format(dist=self.directory),
                status_code=503,
                headers={"Cache-Control": "no-store", "Retry-After": "60"},
            )
        return FileResponse(page, media_type=_MEDIA_TYPES[".html"], headers=OHIF_PAGE_HEADERS)

    def file(self, scope: Scope, path: Path) -> Response:
        hashed = bool(_OHIF_HASHED.search(path.name))
        headers = {
            "Cache-Control": IMMUTABLE if hashed else "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if path.suffix == ".html":
            headers |= OHIF_PAGE_HEADERS
        media = _MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        twin = path.with_name(path.name + ".gz")
        if twin.is_file():
            headers["Vary"] = "Accept-Encoding"
            if _accepts_gzip(scope):
                headers["Content-Encoding"] = "gzip"
                path = twin
        stat = os.stat(path)
        response = FileResponse(path, media_type=media, headers=headers, stat_result=stat)
        if not hashed and _header(scope, b"if-none-match") == response.headers["etag"]:
            kept = ("etag", "cache-control", "vary")
            return Response(
                status_code=304,
                headers={k: response.headers[k] for k in kept if k in response.headers},
            )
        return response


def _not_found() -> Response:
    return PlainTextResponse("not found", 404, headers={"Cache-Control": "no-store"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _accepts_gzip(scope: Scope) -> bool:
    """Whether ``Accept-Encoding`` names gzip with a non-zero quality (RFC 9110 12.5.3)."""
    for key, value in scope.get("headers", []):
        if key != b"accept-encoding":
            continue
        for offer in value.decode("latin-1").lower().replace(" ", "").split(","):
            coding, _, params = offer.partition(";")
            if coding != "gzip":
                continue
            q = params.removeprefix("q=") if params.startswith("q=") else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def install(app: FastAPI, dist: Path = WEB_DIST) -> None:
    """Serve the UI from ``dist`` on an app made by ``create_app``."""
    app.state.web_dist = dist
    app.include_router(router)
    app.mount(ASSETS_PREFIX, Assets(dist / "assets"), name="web-assets")
    app.mount(OHIF_PREFIX, Ohif(dist / "ohif"), name="ohif")
