"""Master key rotation and crypto-shredding, on real node processes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import Deployment
from tests.security.conftest import ct_image


def _import(dep: Deployment, root: Path, patients: dict[str, int]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    folder = root / "input"
    folder.mkdir()
    for pid, count in patients.items():
        study = None
        for i in range(count):
            data = ct_image(pid, study=study, name=f"{pid}^Name")
            import io

            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data))
            study = ds.StudyInstanceUID
            (folder / f"{pid}-{i}.dcm").write_bytes(data)
            files[str(ds.SOPInstanceUID)] = data
    report = json.loads(dep.cli("import", str(folder), "--json").stdout)
    assert len(report["imported"]) == len(files)
    return files


def test_rotation_rewraps_patient_keys_and_every_object_reads_back(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    dep = sqlite_deployment
    files = _import(dep, tmp_path, {"ROT-1": 2, "ROT-2": 1})
    key_file = dep.settings.master_key_path
    before = key_file.read_bytes()
    engine = sa.create_engine(dep.settings.database_url)
    with engine.connect() as conn:
        query = sa.text("SELECT patient_id, wrapped_key FROM patients")
        wrapped_before = {pid: key for pid, key in conn.execute(query)}
    result = json.loads(dep.cli("keys", "rotate", "--json").stdout)
    assert result["patients"] == 2 and result["old_key_id"] != result["new_key_id"]
    assert key_file.read_bytes() != before and oct(key_file.stat().st_mode)[-3:] == "600"
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT patient_id, wrapped_key, master_key_id FROM patients"))
        for pid, wrapped, key_id in rows:
            assert wrapped != wrapped_before[pid] and key_id == result["new_key_id"]
    engine.dispose()
    for sop, data in files.items():
        out = tmp_path / "out" / f"{sop}.dcm"
        dep.cli("get", "--sop", sop, "-o", str(out))
        assert out.read_bytes() == data
    assert json.loads(dep.cli("audit", "verify", "--json").stdout)["ok"]


def test_erasure_shreds_the_patient_everywhere_and_keeps_the_chain(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    dep = sqlite_deployment
    files = _import(dep, tmp_path, {"ERASE-ME": 3, "KEEP-ME": 1})
    engine = sa.create_engine(dep.settings.database_url)
    with engine.connect() as conn:
        chunks = [
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT c.chunk_id FROM chunks c JOIN objects o ON c.object_pk = o.id "
                    "JOIN patients p ON o.patient_pk = p.id WHERE p.patient_id = 'ERASE-ME'"
                )
            )
        ]
    assert chunks
    summary = json.loads(
        dep.cli(
            "patient", "erase", "ERASE-ME", "--yes", "--reason", "GDPR art. 17", "--json"
        ).stdout
    )
    assert summary["instances"] == 3 and summary["pending"] == 0
    # no node answers for any of the patient's chunks
    from medshard.storage.node_client import NodeClient

    for node in dep.nodes:
        client = NodeClient(node.name, node.url, dep.settings.node_secret, 10)
        for chunk in chunks:
            try:
                client.get(chunk)
            except Exception as exc:  # NotFoundError
                assert "not found" in str(exc).lower() or "404" in str(exc)
            else:
                raise AssertionError(f"{node.name} still serves chunk {chunk[:12]}")
    # no catalog row names the patient; the plaintext name is nowhere in the catalog file
    with engine.connect() as conn:
        for table in ("patients", "studies", "findings", "users"):
            text = " ".join(str(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}")))
            assert "ERASE-ME" not in text
        events = conn.execute(sa.text("SELECT actor, detail, sealed FROM audit_events")).all()
    engine.dispose()
    assert not any("ERASE-ME" in f"{a}{d}" for a, d, _s in events)
    db_bytes = Path(dep.settings.database_url.removeprefix("sqlite:///")).read_bytes()
    assert b"ERASE-ME" not in db_bytes or _only_in_free_pages(dep)
    exported = json.loads(dep.cli("audit", "export").stdout)
    erasure = [e for e in exported if e["action"] == "patient-erase"]
    assert len(erasure) == 1 and erasure[0]["patient_id"] is None  # sealed, key gone
    assert json.loads(dep.cli("audit", "verify", "--json").stdout)["ok"]
    # the other patient is untouched
    keep = [s for s, d in files.items() if b"KEEP-ME" in d]
    out = tmp_path / "keep.dcm"
    dep.cli("get", "--sop", keep[0], "-o", str(out))
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(files[keep[0]]).digest()
    erased = [s for s, d in files.items() if b"ERASE-ME" in d]
    assert dep.cli("get", "--sop", erased[0], "-o", str(tmp_path / "x.dcm"), ok=False).exit_code


def _only_in_free_pages(dep: Deployment) -> bool:
    """SQLite keeps deleted rows in free pages until VACUUM; after one they must be gone."""
    engine = sa.create_engine(dep.settings.database_url)
    with engine.connect() as conn:
        conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM"))
    engine.dispose()
    db = Path(dep.settings.database_url.removeprefix("sqlite:///"))
    return b"ERASE-ME" not in db.read_bytes()
