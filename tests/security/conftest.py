"""A small hospital world over a real service: two sites, their PACS, doctors, an expert, a
patient and an admin, and one patient's study stored at each site."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medshard.api.dicomweb.multipart import multipart_content_type, multipart_stream
from tests.conftest import TEST_ACCOUNT, Deployment, Service, make_deployment, start_service

BOUNDARY = "matrix-boundary"
PASSWORD = "correct-horse-battery"
OTHER_AE = "CITYPACS"


def ct_image(patient_id: str, study: str | None = None, name: str = "Doe^Jane") -> bytes:
    """A small, valid CT image as Part 10 bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName = patient_id, name
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.StudyDate, ds.InstanceNumber = "CT", "20260101", 1
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 7).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def stow(url: str, token: str | None, *files: bytes) -> httpx.Response:
    body = b"".join(
        multipart_stream([({"Content-Type": "application/dicom"}, f) for f in files], BOUNDARY)
    )
    headers = {"Content-Type": multipart_content_type(BOUNDARY), "Accept": "application/dicom+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/dicom-web/studies", content=body, headers=headers, timeout=60)


def login(url: str, username: str, password: str = PASSWORD) -> str:
    r = httpx.post(f"{url}/api/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0 and body["refresh_token"]
    return str(body["access_token"])


@dataclass
class Study:
    patient_id: str
    study: str
    series: str
    sop: str


@dataclass
class World:
    dep: Deployment
    svc: Service
    tokens: dict[str, str] = field(default_factory=dict)
    a: Study | None = None  # stored at st-marys (test-pacs)
    b: Study | None = None  # stored at city-general (pacs-b)

    def get(self, who: str | None, path: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if who:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return httpx.get(f"{self.svc.url}{path}", headers=headers, timeout=60, **kw)

    def admin(self, path: str, **kw: Any) -> Any:
        r = self.get("admin", path, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def audit(self) -> list[dict[str, Any]]:
        time.sleep(0.2)  # reads are audited by the background writer within milliseconds
        return list(self.admin("/api/audit", params={"limit": 10000}))


def _stored(svc: Service, token: str, data: bytes) -> Study:
    r = stow(svc.url, token, data)
    assert r.status_code == 200, r.text
    ds = pydicom.dcmread(io.BytesIO(data))
    return Study(str(ds.PatientID), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def build_world(root: Path, db_url: str = "", **overrides: Any) -> World:
    dep = make_deployment(root, db_url)
    dep.cli("user", "add", "pacs-b", "--role", "service", "--site", "city-general")
    dep.cli("dicom", "allow", OTHER_AE, "--user", "pacs-b")
    people = [
        ("admin", "admin", []),
        ("doc-a", "doctor", ["st-marys"]),
        ("doc-b", "doctor", ["city-general"]),
        ("expert", "expert", []),
    ]
    for name, role, sites in people:
        args = ["user", "add", name, "--role", role, "--password", PASSWORD]
        for site in sites:
            args += ["--site", site]
        dep.cli(*args)
    svc = start_service(dep, **overrides)
    world = World(dep, svc)
    world.tokens[TEST_ACCOUNT] = dep.token
    world.tokens["pacs-b"] = dep.cli_json("token", "create", "pacs-b")["token"]
    world.a = _stored(svc, dep.token, ct_image("PAT-A", name="Alpha^Ann"))
    world.b = _stored(svc, world.tokens["pacs-b"], ct_image("PAT-B", name="Beta^Bob"))
    dep.cli("user", "add", "pat-a", "--role", "patient", "--patient-id", "PAT-A",
            "--password", PASSWORD)  # fmt: skip
    for name in ("admin", "doc-a", "doc-b", "expert", "pat-a"):
        world.tokens[name] = login(svc.url, name)
    r = httpx.post(
        f"{svc.url}/api/shares",
        json={"study": world.a.study, "expert": "expert", "days": 1},
        headers={"Authorization": f"Bearer {world.tokens['doc-a']}"},
    )
    assert r.status_code == 201, r.text
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("world"), break_glass_minutes=0.05)
    yield w
    w.svc.process.stop()
    for node in w.dep.nodes:
        node.stop()
