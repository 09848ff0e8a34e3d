"""Space of erased data comes back: real node processes compact their volumes, and the
service reports it (`medshard status`, the monitor's totals across node restarts)."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pydicom

from medshard.cluster.compaction import CompactionTotals, compaction_summary
from medshard.cluster.nodes import NodeHandle
from medshard.storage.node_client import NodeClient
from tests.conftest import Deployment
from tests.security.conftest import ct_image

VOLUME_BYTES = 128 * 1024


def big_ct(patient_id: str) -> tuple[str, bytes]:
    """A CT image with 32 KB of noise for pixels (so it fills volumes), and its SOP UID."""
    ds = pydicom.dcmread(io.BytesIO(ct_image(patient_id, name=f"{patient_id}^Name")))
    ds.Rows = ds.Columns = 128
    ds.PixelData = os.urandom(128 * 128 * 2)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return str(ds.SOPInstanceUID), buf.getvalue()


def import_patient(dep: Deployment, root: Path, patient_id: str, count: int) -> dict[str, bytes]:
    folder = root / patient_id
    folder.mkdir()
    files = dict(big_ct(patient_id) for _ in range(count))
    for i, data in enumerate(files.values()):
        (folder / f"{i}.dcm").write_bytes(data)
    report = json.loads(dep.cli("import", str(folder), "--json").stdout)
    assert len(report["imported"]) == count
    return files


def disk_bytes(dep: Deployment) -> int:
    return sum(p.stat().st_size for d in dep.data_dirs() for p in d.glob("vol-*.dat"))


def test_erased_patients_space_is_reclaimed_and_the_rest_reads_back(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    dep = sqlite_deployment
    for node in dep.nodes:  # small volumes, so that the erased chunks end up in sealed ones
        node.stop()
        node.volume_bytes = VOLUME_BYTES
        node.start()
    for node in dep.nodes:
        node.wait_ready()
    import_patient(dep, tmp_path, "ERASE-ME", 8)
    keep = import_patient(dep, tmp_path, "KEEP-ME", 4)
    clients = [NodeClient(n.name, n.url, dep.settings.node_secret) for n in dep.nodes]
    used_before = sum(c.health()["used_bytes"] for c in clients)
    disk_before = disk_bytes(dep)

    erased = json.loads(dep.cli("patient", "erase", "ERASE-ME", "--yes", "--json").stdout)
    assert erased["pending"] == 0 and erased["chunk_copies_deleted"] > 0
    healths = [c.health() for c in clients]
    erased_bytes = used_before - sum(h["used_bytes"] for h in healths)
    assert erased_bytes > 8 * 3 * 32_000  # every copy of every image
    assert sum(h["dead_bytes"] for h in healths) >= erased_bytes
    assert disk_bytes(dep) >= disk_before  # deleting alone frees nothing

    passes = [h["compaction"]["passes"] for h in healths]
    started = json.loads(dep.cli("node", "compact", "--threshold", "0.3", "--json").stdout)
    assert sorted(started["pending_volumes"]) == sorted(n.name for n in dep.nodes)
    deadline = time.monotonic() + 60
    for client, before in zip(clients, passes, strict=True):
        while (h := client.health())["compaction"]["passes"] <= before or h["compaction"][
            "running"
        ]:
            assert time.monotonic() < deadline, h
            time.sleep(0.1)
    reclaimed = disk_before - disk_bytes(dep)
    assert reclaimed > erased_bytes * 0.6, (reclaimed, erased_bytes)

    status = dep.cli_json("status")
    assert status["compaction"]["bytes_reclaimed"] >= reclaimed
    assert status["compaction"]["volumes_compacted"] > 0
    assert sum(n["compaction"]["volumes_compacted"] for n in status["nodes"]) > 0
    assert "compaction:" in dep.cli("status").stdout

    def read_back_kept() -> None:
        for sop, data in keep.items():
            out = tmp_path / "out" / f"{sop}.dcm"
            dep.cli("get", "--sop", sop, "-o", str(out))
            assert out.read_bytes() == data

    read_back_kept()
    for node in dep.nodes_by_copies()[:2]:  # what compaction left is what a restart finds
        node.restart().wait_ready()
    read_back_kept()
    for client in clients:
        client.close()


def _handle(name: str, health: dict[str, Any]) -> NodeHandle:
    return NodeHandle(1, name, "http://x", "site", 0, client=None, health=health)  # type: ignore[arg-type]


def test_node_counters_are_folded_into_totals_across_node_restarts() -> None:
    def health(compacted: int, reclaimed: int, pending: int = 0) -> dict[str, Any]:
        progress = {
            "volumes_compacted": compacted,
            "bytes_reclaimed": reclaimed,
            "pending_volumes": pending,
        }
        return {"dead_bytes": 10, "reclaimable_bytes": 5, "compaction": progress}

    totals: dict[str, int] = {}
    folded = CompactionTotals()
    folded.add_to(totals, [_handle("a", health(2, 100, 3)), _handle("b", health(1, 50))])
    assert totals == {"volumes_compacted": 3, "bytes_reclaimed": 150}
    folded.add_to(totals, [_handle("a", health(3, 170)), _handle("b", health(1, 50))])
    assert totals == {"volumes_compacted": 4, "bytes_reclaimed": 220}
    folded.add_to(totals, [_handle("a", health(1, 30)), _handle("b", {})])  # a restarted
    assert totals == {"volumes_compacted": 5, "bytes_reclaimed": 250}
    summary = compaction_summary([_handle("a", health(1, 30, 4)), _handle("c", {})])
    assert summary["pending_volumes"] == 4 and summary["dead_bytes"] == 10
