"""``medshard records`` and ``medshard import --patient`` against real node processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import Deployment
from tests.records.samples import cda, pdf, png


def test_records_commands_round_trip_and_import_takes_documents(
    sqlite_deployment: Deployment, tmp_path: Path, dicom_dir: Path
) -> None:
    dep = sqlite_deployment
    report = tmp_path / "report.pdf"
    report.write_bytes(pdf("CLI report"))
    added = json.loads(
        dep.cli("records", "add", "CLI-1", str(report), "--type", "report", "--json").stdout
    )
    assert added["content_type"] == "application/pdf" and added["title"] == "report"

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "note.xml").write_bytes(cda("CLI-1"))
    (folder / "scan.png").write_bytes(png())
    (folder / "forged.pdf").write_bytes(png())  # a PNG named as a PDF: caught
    one_dicom = next(p for p in sorted(dicom_dir.rglob("*")) if p.is_file())
    shutil.copy(one_dicom, folder / "image.dcm")
    result = json.loads(dep.cli("import", str(folder), "--patient", "CLI-1", "--json").stdout)
    assert sorted(Path(d["path"]).name for d in result["documents"]) == ["note.xml", "scan.png"]
    assert [Path(r["path"]).name for r in result["rejected"]] == ["forged.pdf"]
    assert "does not match" in result["rejected"][0]["reason"]
    assert len(result["imported"]) == 1  # the DICOM file took the image path

    listed = json.loads(dep.cli("records", "list", "CLI-1", "--json").stdout)
    assert {d["content_type"] for d in listed} == {
        "application/pdf",
        "application/hl7-cda+xml",
        "image/png",
    }
    out = tmp_path / "out" / "note.xml"
    note = next(d for d in listed if d["filename"] == "note.xml")
    dep.cli("records", "get", note["id"], "-o", str(out))
    assert out.read_bytes() == cda("CLI-1")
    history = json.loads(dep.cli("records", "history", added["id"], "--json").stdout)
    assert [h["version"] for h in history] == [1]

    # no token: refused before anything is read; an unknown document: exit 2
    assert dep.cli("records", "list", "CLI-1", ok=False, token="").exit_code == 1
    assert dep.cli("records", "history", "f" * 32, ok=False).exit_code == 2
