"""OHIF (``@ohif/app``, prebuilt) served by medshard at ``/ohif/``, reading medshard's DICOMweb.

How ``medshard.api.web.Ohif`` serves the files (a fake OHIF folder, no browser); that the built
bundle is complete and rebased under ``/ohif/``; and, in headless chromium against a real
deployment, that a doctor logged in on medshard's page opens a study in OHIF from the viewer's
"Open in OHIF" link and OHIF draws it, with the token only ever in an Authorization header, and
that a study of another doctor's patient does not load there.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from medshard.api import web
from medshard.api.auth import authenticate
from medshard.api.errors import install_error_handlers
from tests.web.conftest import (
    CANVAS_STATS,
    LAPTOP,
    SLICES,
    WebWorld,
    _missing,
    login,
    screenshot,
)

pytestmark = pytest.mark.timeout(120)

OHIF_DIST = web.WEB_DIST / "ohif"
#: Records the page's CSP violations (OHIF must run under medshard's policy for it).
CSP_SPY = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def require_ohif() -> None:
    if not (OHIF_DIST / "index.html").is_file():
        _missing(f"OHIF is not built in {OHIF_DIST}: run `make web`")


# --------------------------------------------------------------------------- serving


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    """The real authentication dependency, the UI's mounts, and a fake OHIF folder."""
    ohif = tmp_path / "ohif"
    (ohif / "assets" / "images").mkdir(parents=True)
    (tmp_path / "index.html").write_text("<!doctype html><title>medshard</title>")
    (ohif / "index.html").write_text("<!doctype html><title>OHIF Viewer</title>")
    (ohif / "app-config.js").write_text("window.config = {};")
    bundle = b"__webpack_require__.p = '/ohif/';" * 100
    (ohif / "app.bundle.0f6159c501addfe9.js").write_bytes(bundle)
    (ohif / "app.bundle.0f6159c501addfe9.js.gz").write_bytes(gzip.compress(bundle))
    (ohif / "app.bundle.css").write_text("body{}")
    (ohif / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (ohif / "assets" / "images" / "CT-Bone.png").write_bytes(b"\x89PNG")
    app = FastAPI(dependencies=[Depends(authenticate)])
    install_error_handlers(app)

    @app.get("/dicom-web/studies")
    def studies() -> list[str]:  # pragma: no cover - never reached without a token
        return ["patient data"]

    web.install(app, tmp_path)
    return TestClient(app)


@pytest.mark.parametrize(
    "path",
    ["/ohif/", "/ohif/viewer", "/ohif/viewer/dicomweb", "/ohif/viewer?StudyInstanceUIDs=1.2"],
)
def test_every_ohif_route_gets_its_page_under_its_own_policy(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200 and "<title>OHIF Viewer</title>" in r.text
    assert r.headers["cache-control"] == "no-cache"
    csp = r.headers["content-security-policy"]
    assert csp == web.OHIF_CONTENT_SECURITY_POLICY
    directives = dict(d.split(" ", 1) for d in csp.split("; "))
    assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"  # no inline script, no eval
    assert directives["connect-src"] == "'self'"  # data only from this origin
    assert directives["frame-ancestors"] == "'none'" and r.headers["x-frame-options"] == "DENY"
    # medshard's own page keeps its stricter policy
    assert client.get("/").headers["content-security-policy"] == web.CONTENT_SECURITY_POLICY


def test_ohif_without_a_slash_redirects_to_its_folder(client: TestClient) -> None:
    r = client.get("/ohif", follow_redirects=False)
    assert r.status_code in (301, 307, 308) and r.headers["location"].endswith("/ohif/")


def test_ohif_files_have_their_types_and_caching(client: TestClient) -> None:
    hashed = client.get("/ohif/app.bundle.0f6159c501addfe9.js", headers={"Accept-Encoding": "gzip"})
    assert hashed.status_code == 200 and hashed.headers["content-type"].startswith(
        "text/javascript"
    )
    assert hashed.headers["cache-control"] == web.IMMUTABLE
    assert hashed.headers["content-encoding"] == "gzip" and hashed.text.startswith("__webpack")
    plain = client.get(
        "/ohif/app.bundle.0f6159c501addfe9.js", headers={"Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers and plain.headers["vary"] == "Accept-Encoding"
    wasm = client.get("/ohif/0ddf166f7a343eda.wasm")
    assert wasm.headers["content-type"] == "application/wasm"
    assert wasm.headers["cache-control"] == web.IMMUTABLE
    css = client.get("/ohif/app.bundle.css")
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["cache-control"] == "no-cache"  # not content-hashed: revalidated
    again = client.get("/ohif/app.bundle.css", headers={"If-None-Match": css.headers["etag"]})
    assert again.status_code == 304 and not again.content
    config = client.get("/ohif/app-config.js")
    assert config.headers["content-type"].startswith("text/javascript")
    assert config.headers["x-content-type-options"] == "nosniff"
    png = client.get("/ohif/assets/images/CT-Bone.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "path",
    [
        "/ohif/nope.js",
        "/ohif/assets/nope.png",
        "/ohif/..%2Findex.html",
        "/ohif/%2e%2e/index.html",
        "/ohif/.hidden",
        "/ohif/a/b/c/d/e/f",
    ],
)
def test_only_ohif_files_and_routes_are_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_ohif_is_read_only_and_its_data_still_needs_a_token(client: TestClient) -> None:
    assert client.post("/ohif/app-config.js", content=b"x").status_code == 405
    assert client.get("/ohif/app-config.js").status_code == 200  # static, public
    assert client.get("/dicom-web/studies").status_code == 401  # data, never
    assert client.get("/ohif/../dicom-web/studies").status_code == 401


def test_a_missing_ohif_build_says_how_to_build_it(tmp_path: Path) -> None:
    app = FastAPI()
    web.install(app, tmp_path)
    r = TestClient(app).get("/ohif/viewer")
    assert r.status_code == 503 and "make web" in r.text


def test_the_built_ohif_if_any_is_complete_and_rebased_under_ohif() -> None:
    """After ``make web``: OHIF's page loads medshard's config and its bundle from /ohif/."""
    require_ohif()
    html = (OHIF_DIST / "index.html").read_text()
    assert "<script>" not in html, "an inline script the page's CSP would block"
    scripts = re.findall(r'<script[^>]* src="([^"]+)"', html)
    assert scripts[0] == "/ohif/app-config.js", scripts
    for src in scripts:
        assert src.startswith("/ohif/") and (OHIF_DIST / src.removeprefix("/ohif/")).is_file()
    assert not re.search(r'(?:href|src)="/(?!ohif/)', html), "a link outside /ohif/"
    app = next(OHIF_DIST.glob("app.bundle.*.js")).read_text()
    assert '__webpack_require__.p = "/ohif/";' in app
    assert (OHIF_DIST / "app-config.js").read_text() == (
        Path(__file__).parents[2] / "web" / "ohif" / "app-config.js"
    ).read_text()
    assert not (OHIF_DIST / "ort").exists() and not (OHIF_DIST / "sw.js").exists()
    assert any(OHIF_DIST.glob("*.wasm")) and any(OHIF_DIST.glob("*.js.gz"))


# --------------------------------------------------------------------------- in a browser


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh context (own sessionStorage) that records CSP violations, script errors and
    every DICOMweb exchange (URL, status, whether it carried a bearer token)."""
    require_ohif()
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(20_000)
    context.add_init_script(CSP_SPY)
    p = context.new_page()
    p.errors = []
    p.dicomweb = []
    p.urls = []
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    p.on("request", lambda r: p.urls.append(r.url))

    def exchange(response: Any) -> None:
        if "/dicom-web/" in response.url:
            auth = response.request.headers.get("authorization", "")
            p.dicomweb.append((response.url, response.status, auth))

    p.on("response", exchange)
    yield p
    context.close()


def _token(page: Any) -> str:
    return str(page.evaluate("JSON.parse(sessionStorage.getItem('medshard.session')).access"))


def test_a_doctor_opens_a_study_in_ohif_and_it_draws_the_image(
    web_world: WebWorld, page: Any
) -> None:
    study = web_world.ct_study
    login(page, web_world.url, "doc-a")
    page.goto(f"{web_world.url}/#/studies/{study}")
    link = page.get_by_role("link", name="Open in OHIF")
    assert link.get_attribute("href") == f"/ohif/viewer?StudyInstanceUIDs={study}"
    link.click()
    page.wait_for_url(re.compile(r"/ohif/viewer\?StudyInstanceUIDs="))
    # the study browser: the study's one series, its description and its slice count
    thumb = page.locator("[data-cy=study-browser-thumbnail]")
    thumb.first.wait_for()
    assert thumb.count() == 1
    assert page.locator("[data-cy=series-description-label]").first.inner_text() == "axial"
    assert str(SLICES) in thumb.first.inner_text()
    # the viewport's canvas: poll until the first image is drawn
    canvas = page.locator("[data-cy=viewport-pane]").first
    stats = None
    for _ in range(100):
        stats = canvas.evaluate(CANVAS_STATS)
        if stats and stats["lit"] > 0.2:
            break
        page.wait_for_timeout(100)
    assert stats and stats["lit"] > 0.2, stats  # the disc and the ramp, not a black canvas
    assert len({v // 32 for v in stats["grid"]}) >= 3, "expected a range of greys"
    screenshot(page, "ohif-viewer-laptop")
    # every DICOMweb request carried the user's token in a header, never in a URL
    token = _token(page)
    frames = [u for u, s, _ in page.dicomweb if "/frames/" in u and s == 200]
    assert frames and all(study in u for u in frames)
    assert all(auth == f"Bearer {token}" for _, _, auth in page.dicomweb), page.dicomweb
    assert all(s == 200 for _, s, _ in page.dicomweb), page.dicomweb
    assert not [u for u in page.urls if token in u]
    assert page.evaluate("window.__cspViolations") == []
    assert not page.errors, page.errors


def test_a_study_of_another_doctors_patient_does_not_load_in_ohif(
    web_world: WebWorld, page: Any
) -> None:
    other = web_world.world.b
    assert other is not None
    login(page, web_world.url, "doc-a")
    page.goto(f"{web_world.url}/ohif/viewer?StudyInstanceUIDs={other.study}")
    page.locator("[data-cy=study-not-found-message]").wait_for()
    assert page.locator("[data-cy=study-browser-thumbnail]").count() == 0
    assert page.locator("canvas.cornerstone-canvas").count() == 0
    # OHIF asked, as doc-a, and learnt nothing: no series, no metadata, no pixels
    mine = [(u, s) for u, s, _ in page.dicomweb if other.study in u]
    assert mine, "OHIF never asked medshard for the study"
    for url, status in mine:
        assert status in (200, 404), (url, status)
    for url in (u for u, s in mine if s == 200 and "/series" in u):
        r = httpx.get(url, headers={"Authorization": f"Bearer {_token(page)}"})
        assert r.status_code == 200 and r.json() == [], url  # QIDO: no match for doc-a
    # the same token reading the study's metadata and pixels directly: 404
    token = _token(page)
    base = f"{web_world.url}/dicom-web/studies/{other.study}"
    for path in ("/metadata", ""):
        r = httpx.get(base + path, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 404, (path, r.status_code)
    screenshot(page, "ohif-not-found-laptop")
    assert page.evaluate("window.__cspViolations") == []


def test_ohif_without_a_medshard_session_goes_to_the_login_page(
    web_world: WebWorld, page: Any
) -> None:
    page.goto(f"{web_world.url}/ohif/viewer?StudyInstanceUIDs={web_world.ct_study}")
    page.wait_for_url(re.compile(r"/#/login$"))
    page.get_by_label("Username").wait_for()
    assert not [u for u, _, _ in page.dicomweb], "OHIF asked for data without a session"
