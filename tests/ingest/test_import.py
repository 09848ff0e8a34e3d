"""`medshard import` over every real DICOM file we have, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import Deployment
from tests.data import shared_dicom


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_shared_file_imports_byte_identical_or_is_rejected_with_a_reason(
    deployment: Deployment, tmp_path: Path
) -> None:
    root = shared_dicom()
    files = [p for p in root.rglob("*") if p.is_file()]
    report = deployment.cli_json("import", str(root))
    seen = [r["path"] for kind in report.values() for r in kind]
    assert sorted(seen) == sorted(str(p) for p in files)  # every file accounted for once
    assert len(report["imported"]) > 200  # the MR series and most pydicom-data files
    for rejected in report["rejected"]:
        assert rejected["reason"].strip(), rejected
    reasons = {Path(r["path"]).name: r["reason"] for r in report["rejected"]}
    assert "not DICOM" in reasons["LICENSE"]
    assert "empty" in reasons["RG1_J2KR.dcm"]

    # Every imported file comes back byte-identical, a whole study through export.
    for item in report["imported"]:
        if "mr-deident-series" in item["path"]:
            continue
        out = tmp_path / "get" / f"{item['sop_instance_uid']}.dcm"
        deployment.cli("get", "--sop", item["sop_instance_uid"], "-o", str(out))
        assert _sha(out) == _sha(Path(item["path"])), item["path"]
    mr = [i for i in report["imported"] if "mr-deident-series" in i["path"]]
    assert len(mr) == 196
    study = mr[0]["study_instance_uid"]
    deployment.cli("export", "--study", study, "--out", str(tmp_path / "export"))
    exported = {_sha(p) for p in (tmp_path / "export").rglob("*.dcm")}
    assert exported == {_sha(Path(i["path"])) for i in mr}

    # Re-importing is a no-op: nothing new, the same files rejected for the same reasons.
    status_before = deployment.cli_json("status")
    again = deployment.cli_json("import", str(root))
    assert again["imported"] == []
    assert len(again["duplicates"]) == len(report["imported"])
    assert {r["path"] for r in again["rejected"]} == {r["path"] for r in report["rejected"]}
    status_after = deployment.cli_json("status")
    assert status_after["objects"] == status_before["objects"]


def test_non_dicom_files_are_rejected_with_one_line_reasons(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    inputs = tmp_path / "mixed"
    inputs.mkdir()
    (inputs / "report.pdf").write_bytes(b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n")
    (inputs / "notes.txt").write_text("patient doing well\n")
    (inputs / "sheet.xlsx").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    nifti = bytearray(352)
    nifti[344:348] = b"n+1\x00"
    (inputs / "brain.nii").write_bytes(bytes(nifti))
    (inputs / "empty.dcm").write_bytes(b"")
    truncated = shared_dicom("pydicom-data", "emri_small.dcm").read_bytes()[:300]
    (inputs / "truncated.dcm").write_bytes(truncated)
    siemens = inputs / "IMAGE0001.IMA"
    siemens.write_bytes(shared_dicom("mr-deident-series", "00001.dcm").read_bytes())
    report = sqlite_deployment.cli_json("import", str(inputs), str(tmp_path / "missing"))
    reasons = {Path(r["path"]).name: r["reason"] for r in report["rejected"]}
    assert "PDF" in reasons["report.pdf"]
    assert "text" in reasons["notes.txt"]
    assert "ZIP" in reasons["sheet.xlsx"]
    assert "NIfTI" in reasons["brain.nii"]
    assert "empty" in reasons["empty.dcm"]
    assert reasons["truncated.dcm"]
    assert "no such file" in reasons["missing"]
    assert all("\n" not in r for r in reasons.values())
    assert [Path(i["path"]).name for i in report["imported"]] == ["IMAGE0001.IMA"]
    assert sqlite_deployment.cli_json("status")["objects"] == 1


def test_dicom_without_preamble_is_recognised_by_content(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    import struct

    import pydicom

    source = shared_dicom("mr-deident-series", "00002.dcm")
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    blob = source.read_bytes()
    assert blob[128:132] == b"DICM" and blob[132:136] == b"\x02\x00\x00\x00"
    meta_length = struct.unpack("<I", blob[140:144])[0]
    raw = tmp_path / "raw" / "noext"  # a bare data set: no preamble, no DICM, no file meta
    raw.parent.mkdir()
    raw.write_bytes(blob[144 + meta_length :])
    report = sqlite_deployment.cli_json("import", str(raw))
    assert len(report["imported"]) == 1, report
    out = tmp_path / "back"
    sqlite_deployment.cli("get", "--sop", str(ds.SOPInstanceUID), "-o", str(out))
    assert out.read_bytes() == raw.read_bytes()


def test_import_over_several_processes_is_complete_and_byte_identical(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    series = shared_dicom("mr-deident-series")
    report = sqlite_deployment.cli_json("import", str(series), "--processes", "2")
    assert len(report["imported"]) == 196
    assert [Path(r["path"]).name for r in report["rejected"]] == ["LICENSE"]
    assert len({i["sop_instance_uid"] for i in report["imported"]}) == 196
    for item in report["imported"][::40]:
        out = tmp_path / f"{item['sop_instance_uid']}.dcm"
        sqlite_deployment.cli("get", "--sop", item["sop_instance_uid"], "-o", str(out))
        assert _sha(out) == _sha(Path(item["path"]))
    again = sqlite_deployment.cli_json("import", str(series), "--processes", "2")
    assert again["imported"] == [] and len(again["duplicates"]) == 196
