"""Browser tests: Playwright (Python, sync API) driving Debian's chromium against a real service.

One deployment per module (``web_world``): real node processes, ``medshard serve`` with the
built UI, and users of every role from :func:`tests.security.conftest.build_world`. A missing
chromium or a missing UI bundle skips these tests on a developer's machine and fails them under
``CI=true``: CI must never pass by skipping what it was meant to check.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medshard.api.web import WEB_DIST
from tests.security.conftest import PASSWORD, World, build_world, stow

CHROMIUM = os.environ.get("MEDSHARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: Screenshots of the main pages at laptop and phone sizes (test artifacts, git-ignored).
ARTIFACTS = Path(os.environ.get("MEDSHARD_TEST_ARTIFACTS", "test-artifacts")) / "web"
LAPTOP = {"width": 1366, "height": 850}
PHONE = {"width": 375, "height": 667}
#: Slices of the synthetic CT series the viewer tests scroll through.
SLICES = 24


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (required under CI)")
    pytest.skip(what)


def require_bundle() -> None:
    if not (WEB_DIST / "index.html").is_file():
        _missing(f"the web UI bundle is not built in {WEB_DIST}: run `make web`")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian chromium (never a downloaded browser)."""
    require_bundle()
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _missing(f"chromium not found at {CHROMIUM}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def ct_series(patient_id: str, name: str, study: str, slices: int = SLICES) -> list[bytes]:
    """A small CT series whose slices differ: a bright disc that grows slice by slice over a
    ramp, in Hounsfield-like values with a window in the header."""
    series = generate_uid()
    yy, xx = np.mgrid[0:64, 0:64]
    out = []
    for i in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = patient_id, name
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "CT", "20250301", 2, i + 1
        ds.StudyDescription, ds.SeriesDescription = "CT chest", "axial"
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        hu = -200 + xx * 4 + yy * 2  # a ramp across the header's window (-160..240)
        disc = (xx - 32) ** 2 + (yy - 32) ** 2 < (4 + i) ** 2
        hu = np.where(disc, 300 + 20 * i, hu)
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


@dataclass
class WebWorld:
    world: World
    url: str
    #: the multi-slice CT study of PAT-A (doc-a's patient)
    ct_study: str


@pytest.fixture(scope="module")
def web_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebWorld]:
    require_bundle()
    w = build_world(tmp_path_factory.mktemp("web"))
    study = generate_uid()
    r = stow(w.svc.url, w.dep.token, *ct_series("PAT-A", "Alpha^Ann", study))
    assert r.status_code == 200, r.text
    yield WebWorld(w, w.svc.url, study)
    w.svc.process.stop()
    for node in w.dep.nodes:
        node.stop()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Pages in fresh browser contexts (own sessionStorage), closed after the test."""
    contexts: list[Any] = []

    def make(viewport: dict[str, int] = LAPTOP, **kw: Any) -> Any:
        context = browser.new_context(viewport=viewport, **kw)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        return page

    yield make
    for context in contexts:
        context.close()


def login(page: Any, url: str, username: str, password: str = PASSWORD) -> None:
    """Log in through the UI's form and wait for the role's home page."""
    page.goto(f"{url}/#/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_test_id("whoami").wait_for()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


#: Statistics of the viewport's canvas, read back from the page: pixels not black, mean of
#: the RGB values, and a coarse fingerprint (a 16x16 grid of grey means) to compare states.
CANVAS_STATS = """
(el) => {
  const canvas = el.querySelector('canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  const copy = document.createElement('canvas');
  copy.width = canvas.width; copy.height = canvas.height;
  const ctx = copy.getContext('2d');
  ctx.drawImage(canvas, 0, 0);
  const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
  let lit = 0, sum = 0;
  const grid = new Array(256).fill(0), counts = new Array(256).fill(0);
  for (let y = 0; y < copy.height; y++) {
    for (let x = 0; x < copy.width; x++) {
      const i = (y * copy.width + x) * 4;
      const v = (data[i] + data[i + 1] + data[i + 2]) / 3;
      if (v > 8) lit++;
      sum += v;
      const g = Math.floor(y * 16 / copy.height) * 16 + Math.floor(x * 16 / copy.width);
      grid[g] += v; counts[g]++;
    }
  }
  return {
    lit: lit / (copy.width * copy.height),
    mean: sum / (copy.width * copy.height),
    grid: grid.map((g, i) => Math.round(g / Math.max(1, counts[i]))),
  };
}
"""


def grid_distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Mean absolute difference of two fingerprints (0..255)."""
    return float(np.mean(np.abs(np.array(a["grid"]) - np.array(b["grid"]))))


def sample_dicom(name: str) -> Path:
    from medshard.demo import sample_dicom_dir

    return sample_dicom_dir() / name


def read_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
