"""`medshard bench web`: time from opening a study in the browser viewer to its first image
drawn, and to every slice of the stack loaded, in headless chromium against a fresh deployment.

The deployment is the demo's (storage-node processes on loopback, k=3 replicas, every chunk
AES-GCM encrypted, ``medshard serve`` with the built UI). A site PACS account stores a generated
MR series by STOW-RS; a doctor of that site logs in through the real login page, and the
study's viewer URL is then opened as a full page load. The times are the viewer's own signals,
in ms since that navigation started (``performance.timeOrigin``): ``data-first-image-ms`` (and
the mark ``medshard:first-image``), set on the first ``IMAGE_RENDERED`` of the viewport with an
image in it, and ``data-all-slices-ms`` (``medshard:all-slices``), set when every slice of the
stack is in Cornerstone's image cache (the viewer prefetches the whole stack once the first
image is shown).

Each run is a fresh browser context (empty HTTP cache, new login) opening the study once
(``cold``: bundle, codecs and images all fetched; the first run also meets a cold service),
then reloading it (``warm``: scripts from the browser's cache, every image fetched again, since
DICOMweb responses are not cached). Figures are the medians over the runs, each run listed too.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import httpx

from medshard.api.web import WEB_DIST
from medshard.bench.data import generate_instances
from medshard.bench.dicomweb import _instances, medshard_service, stow
from medshard.catalog.db import Catalog
from medshard.config import load_settings
from medshard.errors import MedshardError

CHROMIUM_ARGS: Final = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT: Final = {"width": 1366, "height": 850}
GOAL_FIRST_IMAGE_MS: Final = 1000.0
GOAL_ALL_SLICES_MS: Final = 5000.0
DOCTOR: Final = "bench-doctor"
PASSWORD: Final = "bench-doctor-password"
#: Longest wait for one opening of the study (every slice loaded, or a failure shown).
OPEN_TIMEOUT_S: Final = 180.0

#: Resolves once the viewer has loaded every slice, given up on some, or shown an error.
_SETTLED: Final = """
() => {
  if (document.querySelector('[data-testid=not-found], main .msg-error')) return true;
  const el = document.querySelector('[data-testid=viewport]');
  if (!el) return false;
  const d = el.dataset;
  if (d.allSlicesMs !== undefined) return true;
  const total = Number(d.slicesTotal || 0);
  const failed = Number(d.slicesFailed || 0);
  return total > 0 && failed > 0 && Number(d.slicesLoaded || 0) + failed >= total;
}
"""

#: The viewer's signals, the state it ended in, and what was fetched.
_READ: Final = """
() => {
  const el = document.querySelector('[data-testid=viewport]');
  const d = el ? el.dataset : {};
  const num = (v) => (v === undefined ? null : Number(v));
  const canvas = el && el.querySelector('canvas');
  let lit = null;
  if (canvas && canvas.width && canvas.height) {
    const copy = document.createElement('canvas');
    copy.width = canvas.width; copy.height = canvas.height;
    const ctx = copy.getContext('2d');
    ctx.drawImage(canvas, 0, 0);
    const px = ctx.getImageData(0, 0, copy.width, copy.height).data;
    let n = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i] + px[i + 1] + px[i + 2] > 24) n++;
    lit = n / (copy.width * copy.height);
  }
  const resources = performance.getEntriesByType('resource');
  const frames = resources.filter((r) => r.name.includes('/frames/'));
  const nav = performance.getEntriesByType('navigation')[0];
  const at = (list, pick, key = 'responseEnd') =>
    list.length ? Math.round(pick(...list.map((r) => r[key]))) : null;
  const scripts = resources.filter((r) => r.initiatorType === 'script' || r.name.endsWith('.wasm'));
  const metadata = resources.filter((r) => r.name.endsWith('/metadata'));
  const qido = resources.filter((r) => r.name.includes('/dicom-web/studies?'));
  const error = document.querySelector('[data-testid=not-found], main .msg-error');
  return {
    first_image_ms: num(d.firstImageMs),
    all_slices_ms: num(d.allSlicesMs),
    slices_loaded: num(d.slicesLoaded),
    slices_failed: num(d.slicesFailed),
    slices_total: num(d.slicesTotal),
    canvas_lit_fraction: lit,
    dom_content_loaded_ms: nav ? nav.domContentLoadedEventEnd : null,
    frame_requests: frames.length,
    phases_ms: {
      scripts_loaded: at(scripts, Math.max),
      study_found: at(qido, Math.min),
      series_metadata: at(metadata, Math.min),
      first_frame_requested: at(frames, Math.min, 'startTime'),
      first_frame_received: at(frames, Math.min),
      last_frame_received: at(frames, Math.max),
    },
    hardware_concurrency: navigator.hardwareConcurrency,
    error: error ? error.textContent : null,
  };
}
"""


def chromium_path() -> str:
    return os.environ.get("MEDSHARD_CHROMIUM", "/usr/bin/chromium")


def require_browser(chromium: str) -> Any:
    """Playwright's sync API, after checking the UI bundle and chromium are there; a
    :class:`MedshardError` naming what to install otherwise (no fallback)."""
    if not (WEB_DIST / "index.html").is_file():
        raise MedshardError(f"the web UI bundle is not built in {WEB_DIST}: run `make web`")
    if not Path(chromium).is_file():
        raise MedshardError(
            f"chromium not found at {chromium}: apt-get install chromium "
            "(or set MEDSHARD_CHROMIUM to a chromium binary)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise MedshardError(
            "the Python package playwright is not installed: pip install -e '.[dev]' "
            "(it drives the system chromium; `playwright install` is not needed)"
        ) from exc
    return sync_playwright


def add_doctor(home: Path, site: str) -> None:
    """A doctor at the storing PACS's site, so the study's patient is in their care."""
    from medshard.security import identity

    catalog = Catalog(load_settings(home).database_url)
    try:
        with catalog.transaction() as session:
            identity.add_user(
                session, username=DOCTOR, role="doctor", password=PASSWORD, sites=[site]
            )
    finally:
        catalog.dispose()


def _check_doctor_sees(url: str, study: str, slices: int) -> None:
    r = httpx.post(f"{url}/api/auth/token", data={"username": DOCTOR, "password": PASSWORD})
    if r.status_code != 200:
        raise MedshardError(f"the benchmark doctor could not log in: {r.status_code} {r.text}")
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = httpx.get(f"{url}/dicom-web/studies", params={"StudyInstanceUID": study}, headers=headers)
    rows = r.json() if r.status_code == 200 else []
    count = rows[0].get("00201208", {}).get("Value", [0])[0] if rows else 0
    if count != slices:
        raise MedshardError(
            f"the doctor sees {count} of the study's {slices} instances ({r.status_code})"
        )


def _open(page: Any, viewer_url: str) -> dict[str, Any]:
    """Open the viewer as a full page load and wait until every slice is loaded."""
    page.goto("about:blank")
    page.goto(viewer_url)
    try:
        page.wait_for_function(_SETTLED, timeout=OPEN_TIMEOUT_S * 1000, polling=200)
    except Exception as exc:  # playwright's TimeoutError
        state = page.evaluate(_READ)
        raise MedshardError(
            f"the viewer did not settle in {OPEN_TIMEOUT_S:.0f} s: {state}"
        ) from exc
    got: dict[str, Any] = page.evaluate(_READ)
    if got["error"]:
        raise MedshardError(f"the viewer showed an error: {got['error'].strip()}")
    if got["slices_failed"] or got["all_slices_ms"] is None or got["first_image_ms"] is None:
        raise MedshardError(f"the viewer did not load every slice: {got}")
    if not got["canvas_lit_fraction"]:
        raise MedshardError(f"the viewer's canvas is blank after loading: {got}")
    return got


def _login(page: Any, url: str) -> None:
    page.goto(f"{url}/#/login")
    page.get_by_label("Username").fill(DOCTOR)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_test_id("whoami").wait_for()


def _summary(opened: list[dict[str, Any]]) -> dict[str, Any]:
    first = [o["first_image_ms"] for o in opened]
    every = [o["all_slices_ms"] for o in opened]
    return {
        "t_first_image_ms": round(statistics.median(first), 1),
        "t_all_slices_ms": round(statistics.median(every), 1),
        "first_image_pass": statistics.median(first) < GOAL_FIRST_IMAGE_MS,
        "all_slices_pass": statistics.median(every) < GOAL_ALL_SLICES_MS,
        "runs": [
            {
                "t_first_image_ms": o["first_image_ms"],
                "t_all_slices_ms": o["all_slices_ms"],
                "slices_loaded": o["slices_loaded"],
                "frame_requests": o["frame_requests"],
                "dom_content_loaded_ms": round(o["dom_content_loaded_ms"] or 0, 1),
                "phases_ms": o["phases_ms"],
            }
            for o in opened
        ],
    }


def run_web_bench(
    *, slices: int = 196, runs: int = 3, nodes: int = 4, chromium: str | None = None
) -> dict[str, Any]:
    """Store a ``slices``-slice MR series, then open it ``runs`` times cold and warm."""
    if runs < 1 or slices < 1:
        raise MedshardError("runs and slices must be at least 1")
    chromium = chromium or chromium_path()
    sync_playwright = require_browser(chromium)
    with tempfile.TemporaryDirectory(prefix="medshard-bench-", dir=os.getcwd()) as tmp:
        root = Path(tmp)
        total = generate_instances(root / "input", slices, patients=1)
        items = _instances(root / "input")
        study = items[0].study
        with medshard_service(root / "medshard", nodes) as ms:
            url = ms.base.removesuffix("/dicom-web")
            stored = stow(ms.base, items, clients=4, batch=14, auth=ms.auth)
            if stored["instances"] != len(items):
                raise MedshardError(f"STOW-RS stored {stored['instances']} of {len(items)}")
            add_doctor(ms.home, "bench")
            _check_doctor_sees(url, study, len(items))
            settings = load_settings(ms.home)
            viewer_url = f"{url}/#/studies/{study}"
            cold: list[dict[str, Any]] = []
            warm: list[dict[str, Any]] = []
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=chromium, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    version = browser.version
                    for _ in range(runs):
                        context = browser.new_context(viewport=VIEWPORT)
                        try:
                            page = context.new_page()
                            _login(page, url)
                            cold.append(_open(page, viewer_url))
                            warm.append(_open(page, viewer_url))
                        finally:
                            context.close()
                finally:
                    browser.close()
    cold_s, warm_s = _summary(cold), _summary(warm)
    return {
        "machine": {"cpus": os.cpu_count()},
        "workload": {
            "slices": len(items),
            "series": 1,
            "modality": "MR",
            "mean_instance_kb": round(total / len(items) / 1024, 1),
            "total_mb": round(total / 1e6, 1),
            "transfer_syntax": "Explicit VR Little Endian (uncompressed 16-bit)",
            "stow_s": stored["seconds"],
        },
        "conditions": {
            "nodes": nodes,
            "replicas_k": settings.replicas,
            "encryption": "AES-256-GCM per chunk, per-object data keys under per-patient keys",
            "access": "doctor logged in through the login page; every WADO-RS request "
            "authenticated, authorized (care site) and audited",
            "browser": f"headless chromium {version} ({chromium}), {' '.join(CHROMIUM_ARGS)}",
            "viewport": f"{VIEWPORT['width']}x{VIEWPORT['height']}",
            "hardware_concurrency": cold[0]["hardware_concurrency"],
            "runs": runs,
            "timed_from": "navigation start of a full page load of the study's viewer URL",
            "cold": "fresh browser context each run (empty HTTP cache), first open of the "
            "viewer; run 1 also meets a cold service",
            "warm": "the same context reloading the viewer: scripts from the HTTP cache, "
            "images fetched again",
        },
        "goals": {"t_first_image_ms": GOAL_FIRST_IMAGE_MS, "t_all_slices_ms": GOAL_ALL_SLICES_MS},
        "cold": cold_s,
        "warm": warm_s,
        "pass": all(
            s[k] for s in (cold_s, warm_s) for k in ("first_image_pass", "all_slices_pass")
        ),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
