"""Audit events leave the service's disk within seconds: a restore brings back the chain up to
the last shipment, verifiable end to end, and stops at a gap rather than skip it.

Real node processes and a real service: events are made (reads and stores) after the last
backup; the service is killed with SIGKILL (no clean stop, no last shipment) once a shipment
interval has passed; its home is deleted; ``medshard restore`` appends the shipped events to
the backup's chain. A second restore, after one shipment is deleted from every node, stops at
the gap and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
from sqlalchemy import text
from typer.testing import CliRunner

from medshard.bench.data import generate_instances
from medshard.catalog.db import Catalog
from medshard.cli import app
from medshard.cluster.backup_format import parse_audit_shipment_name
from medshard.demo import sample_dicom_dir
from medshard.storage.node_client import NodeClient
from tests.conftest import Deployment, start_service

SHIP_S = 0.5


def _chain(url: str) -> list[tuple[int, str]]:
    catalog = Catalog(url)
    try:
        with catalog.engine.connect() as conn:
            return [
                (int(s), str(h))
                for s, h in conn.execute(text("SELECT seq, hash FROM audit_events ORDER BY seq"))
            ]
    finally:
        catalog.dispose()


def _shipments(dep: Deployment) -> dict[str, list[str]]:
    """shipment name -> the nodes holding it."""
    held: dict[str, list[str]] = {}
    for node in dep.nodes:
        with NodeClient(node.name, node.url, dep.settings.node_secret) as client:
            for blob in client.list_meta():
                if parse_audit_shipment_name(str(blob["name"])):
                    held.setdefault(str(blob["name"]), []).append(node.name)
    return held


def _restore(dep: Deployment, home: Path, key: str) -> dict:
    result = dep.restore(home, key)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _stow(url: str, headers: dict[str, str], files: list[Path]) -> None:
    boundary = "audit-ship-boundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + p.read_bytes()
            + b"\r\n"
            for p in files
        )
        + f"--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        f"{url}/studies",
        content=body,
        headers={
            **headers,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text


def test_the_audit_log_since_the_backup_survives_losing_the_home(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    dep = sqlite_deployment
    key = (dep.home / "recovery.key").read_text().strip()
    dep.cli_json("import", str(sample_dicom_dir()))
    backup = dep.cli_json("backup")
    assert backup["audit_shipments_trimmed"] == 0
    backed_up = _chain(dep.settings.database_url)

    later = tmp_path / "later"
    generate_instances(later, 6, patients=2, seed=5)
    svc = start_service(dep, backup_interval_s=0.0, audit_ship_interval_s=SHIP_S)
    try:
        with httpx.Client(headers=svc.auth_headers(), timeout=60) as http:
            for _ in range(3):  # reads: one audited event per patient shown
                assert http.get(f"{svc.dicomweb}/studies").status_code == 200
            time.sleep(4 * SHIP_S)  # a first shipment
            _stow(svc.dicomweb, svc.auth_headers(), sorted(later.glob("*.dcm")))
            time.sleep(4 * SHIP_S)  # a second
            assert http.get(f"{svc.dicomweb}/studies").status_code == 200
        time.sleep(4 * SHIP_S)  # the audit writer's commit, then a third
        shipped = _chain(dep.settings.database_url)
        status = dep.cli("status").stdout
        assert f"audit log on the nodes through event {shipped[-1][0]}" in status, status
    finally:
        os.kill(svc.process.proc.pid, signal.SIGKILL)  # the disk goes with no clean stop
        svc.process.stop()
    assert len(shipped) > len(backed_up) + 6, "reads and stores after the backup were audited"
    shipments = _shipments(dep)
    assert len(shipments) >= 3, shipments
    assert all(len(nodes) == dep.settings.replicas for nodes in shipments.values())

    shutil.rmtree(dep.home)
    restored = _restore(dep, dep.home.parent / "restored", key)
    audit = restored["audit"]
    assert audit["problems"] == [], audit
    assert audit["backup_head"] == backed_up[-1][0]
    assert audit["head"] >= shipped[-1][0]
    restored_chain = _chain(f"sqlite:///{dep.home.parent / 'restored' / 'catalog.db'}")
    assert restored_chain[: len(shipped)] == shipped  # the same events, the same hashes
    verdict = json.loads(
        CliRunner()
        .invoke(app, ["audit", "verify", "--json", "--home", str(dep.home.parent / "restored")])
        .stdout
    )
    assert verdict["ok"] and verdict["head_seq"] == audit["head"], verdict

    # one shipment (not the first, not the last) gone from every node: the restore stops
    # at the gap, with the events before it appended
    gone = sorted(shipments)[1]
    for node in dep.nodes:
        with NodeClient(node.name, node.url, dep.settings.node_secret) as client:
            client.delete_meta(gone)
    gapped = _restore(dep, dep.home.parent / "gapped", key)
    first_missing = parse_audit_shipment_name(gone)[0]  # type: ignore[index]
    assert gapped["audit"]["head"] == first_missing - 1
    assert any("missing" in p for p in gapped["audit"]["problems"]), gapped["audit"]
    assert any("audit events after the backup" in w for w in gapped["warnings"])
