"""How the service serves the UI bundle (``medshard.api.web``), without a browser or nodes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from medshard.api import web
from medshard.api.auth import authenticate
from medshard.api.errors import install_error_handlers
from tests.web.conftest import require_bundle


def _client(dist: Path) -> TestClient:
    """An app with the real authentication dependency and the UI, and nothing else."""
    app = FastAPI(dependencies=[Depends(authenticate)])
    install_error_handlers(app)

    @app.get("/api/secret")
    def secret() -> dict[str, str]:  # pragma: no cover - never reached without a token
        return {"patient": "data"}

    web.install(app, dist)
    return TestClient(app)


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    assets = tmp_path / "assets"
    assets.mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>medshard</title>")
    script = b"console.log('medshard');" * 100
    (assets / "index-abc123.js").write_bytes(script)
    (assets / "index-abc123.js.gz").write_bytes(gzip.compress(script))
    (assets / "codec-def456.wasm").write_bytes(b"\0asm\1\0\0\0")
    return tmp_path


def test_a_missing_bundle_answers_503_saying_how_to_build_it(tmp_path: Path) -> None:
    r = _client(tmp_path / "nothing-here").get("/")
    assert r.status_code == 503
    assert "text/html" in r.headers["content-type"]
    assert "make web" in r.text and "not built" in r.text
    assert r.headers["cache-control"] == "no-store"


def test_the_page_is_public_uncached_and_locked_down(dist: Path) -> None:
    client = _client(dist)
    for path in ("/", "/index.html"):
        r = client.get(path)
        assert r.status_code == 200 and "<title>medshard</title>" in r.text
        assert r.headers["cache-control"] == "no-cache"
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"


def test_data_still_needs_a_token_beside_the_public_page(dist: Path) -> None:
    client = _client(dist)
    assert client.get("/api/secret").status_code == 401
    assert client.get("/index.html/../api/secret").status_code == 401


def test_hashed_assets_are_cached_for_a_year_and_sent_gzipped_when_accepted(dist: Path) -> None:
    client = _client(dist)
    r = client.get("/assets/index-abc123.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["cache-control"] == web.IMMUTABLE
    assert r.headers["content-encoding"] == "gzip" and r.headers["vary"] == "Accept-Encoding"
    assert r.text.startswith("console.log")  # httpx decodes it
    assert r.headers["content-type"].startswith("text/javascript")
    plain = client.get("/assets/index-abc123.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.text.startswith("console.log")
    refused = client.get("/assets/index-abc123.js", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    wasm = client.get("/assets/codec-def456.wasm")
    assert wasm.headers["content-type"] == "application/wasm"


@pytest.mark.parametrize(
    "path",
    ["/assets/nope.js", "/assets/..%2Findex.html", "/assets/%2e%2e/index.html", "/assets/"],
)
def test_only_files_of_the_assets_folder_are_served(dist: Path, path: str) -> None:
    assert _client(dist).get(path).status_code == 404


def test_assets_are_read_only(dist: Path) -> None:
    r = _client(dist).post("/assets/index-abc123.js", content=b"x")
    assert r.status_code == 405


def test_the_built_bundle_if_any_is_complete() -> None:
    """After ``make web``: the page references hashed scripts that exist, with gzip twins."""
    require_bundle()  # skipped without one; a failure under CI
    html = (web.WEB_DIST / "index.html").read_text()
    scripts = [p.split('"')[0] for p in html.split('src="/assets/')[1:]]
    assert scripts, html
    for name in scripts:
        assert (web.WEB_DIST / "assets" / name).is_file()
        assert (web.WEB_DIST / "assets" / f"{name}.gz").is_file()
    assert any(web.WEB_DIST.joinpath("assets").glob("*.wasm")), "codecs missing from the bundle"
