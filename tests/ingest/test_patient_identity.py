"""An instance whose study belongs to another patient is refused by every door, and neither
patient's record is touched (before, it was silently filed under the other patient)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import Service
from tests.security.conftest import ct_image, stow


def _with(data: bytes, **changes: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_study_of_another_patient_is_refused_by_import_stow_and_c_store(
    service: Service, tmp_path: Path
) -> None:
    first = ct_image("OWNER-1")
    study = pydicom.dcmread(io.BytesIO(first)).StudyInstanceUID
    assert stow(service.url, service.token, first).status_code == 200

    intruder = _with(ct_image("OTHER-2"), StudyInstanceUID=study)
    r = stow(service.url, service.token, intruder)
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert "belongs to another patient" in r.headers["warning"]

    path = tmp_path / "intruder.dcm"
    path.write_bytes(
        _with(ct_image("OTHER-2"), StudyInstanceUID=study, SOPInstanceUID=generate_uid())
    )
    report = service.deployment.cli_json("import", str(path))
    assert not report["imported"]
    assert "belongs to another patient" in report["rejected"][0]["reason"]

    ds = pydicom.dcmread(io.BytesIO(_with(intruder, SOPInstanceUID=generate_uid())))
    ae = AE(ae_title="MEDTEST")
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", service.dimse_port, ae_title=service.ae_title)
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0xA900
    assoc.release()

    # a series of the study re-used in another study is refused the same way
    series = pydicom.dcmread(io.BytesIO(first)).SeriesInstanceUID
    moved = _with(ct_image("OWNER-1"), SeriesInstanceUID=series)
    assert stow(service.url, service.token, moved).status_code == 409

    headers = service.auth_headers()
    qido = f"{service.dicomweb}/studies"
    assert httpx.get(qido, params={"PatientID": "OTHER-2"}, headers=headers).json() == []
    [owner] = httpx.get(qido, params={"StudyInstanceUID": study}, headers=headers).json()
    assert owner["00100020"]["Value"] == ["OWNER-1"]
    instances = httpx.get(f"{qido}/{study}/instances", headers=headers).json()
    assert len(instances) == 1
