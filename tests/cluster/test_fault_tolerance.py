"""The archive's promises under real faults, with real node processes, on SQLite and PostgreSQL.

Faults are injected for real: kill -9 of a node process, bytes flipped in a node's files on disk,
a node that is down while data is written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
from sqlalchemy import select

from medshard.catalog.db import Catalog
from medshard.catalog.models import Chunk, Replica
from medshard.cluster.archive import Archive
from medshard.storage.node_client import NodeClient
from tests.conftest import Deployment, make_deployment


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import(dep: Deployment, *paths: Path) -> dict[str, list[dict[str, str]]]:
    return dep.cli_json("import", *[str(p) for p in paths])  # type: ignore[no-any-return]


def _assert_all_back(dep: Deployment, imported: list[dict[str, str]], out: Path) -> None:
    for item in imported:
        target = out / f"{item['sop_instance_uid']}.dcm"
        dep.cli("get", "--sop", item["sop_instance_uid"], "-o", str(target))
        assert _sha(target) == _sha(Path(item["path"])), item["path"]


def _healthy_copies(dep: Deployment) -> dict[str, set[str]]:
    """chunk id -> names of nodes that really hold a verified copy (asked over HTTP)."""
    catalog = Catalog(dep.settings.database_url)
    with catalog.session() as session:
        rows = session.execute(
            select(Chunk.chunk_id, Replica.state, Replica.node_pk).join(
                Replica, Replica.chunk_pk == Chunk.id
            )
        ).all()
        from medshard.catalog.models import Node

        names = {n.id: n.name for n in session.scalars(select(Node))}
    catalog.dispose()
    result: dict[str, set[str]] = {}
    for chunk_id, state, node_pk in rows:
        result.setdefault(chunk_id, set())
        node = next((n for n in dep.nodes if n.name == names[node_pk]), None)
        if state != "ok" or node is None or not node.is_alive():
            continue
        with NodeClient(node.name, node.url, dep.settings.node_secret) as client:
            data = client.get(chunk_id)
        if hashlib.sha256(data).hexdigest() == chunk_id:
            result[chunk_id].add(node.name)
    return result


def test_kill_one_node_everything_reads_back_and_repair_restores_k(
    deployment: Deployment, dicom_dir: Path, tmp_path: Path
) -> None:
    report = _import(deployment, dicom_dir)
    assert report["imported"], report
    victim = deployment.nodes_by_copies()[0]
    victim.kill()  # kill -9
    _assert_all_back(deployment, report["imported"], tmp_path / "out1")

    status = deployment.cli_json("status")
    assert any(n["name"] == victim.name and n["state"] != "alive" for n in status["nodes"])
    assert status["under_replicated"] > 0

    repaired = deployment.cli_json("repair")
    assert repaired["failures"] == []
    assert repaired["copies_made"] > 0
    copies = _healthy_copies(deployment)
    assert copies and all(len(nodes) == 3 for nodes in copies.values())
    assert all(victim.name not in nodes for nodes in copies.values())
    assert deployment.cli_json("status")["under_replicated"] == 0


def test_repair_fails_clearly_with_too_few_live_nodes(
    deployment: Deployment, dicom_dir: Path
) -> None:
    _import(deployment, dicom_dir)
    deployment.nodes[0].kill()
    deployment.nodes[2].kill()
    result = deployment.cli("repair", ok=False)
    assert result.exit_code != 0
    # which message a chunk gets depends on where its copies were placed: a chunk whose two
    # surviving copies are on the two live nodes has nowhere to go at all
    assert (
        "too few live nodes" in result.output
        or "no live storage node with free space to place on" in result.output
    ), result.output


def test_corrupt_chunk_is_detected_read_correctly_and_replaced(
    deployment: Deployment, dicom_dir: Path, tmp_path: Path
) -> None:
    report = _import(deployment, dicom_dir)
    item = report["imported"][0]
    catalog = Catalog(deployment.settings.database_url)
    with catalog.session() as session:
        from medshard.catalog.models import Instance

        inst = session.scalar(
            select(Instance).where(Instance.sop_instance_uid == item["sop_instance_uid"])
        )
        assert inst is not None
        chunk = inst.obj.chunks[0]
        chunk_id = chunk.chunk_id
        holders = [r.node.name for r in chunk.replicas]
    catalog.dispose()

    # Flip bytes of this chunk inside every file of the first holder's data directory.
    victim = deployment.node(holders[0])
    with NodeClient(victim.name, victim.url, deployment.settings.node_secret) as client:
        original = client.get(chunk_id)
    flipped = False
    for path in victim.data_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            at = blob.find(original[:4096])
            if at >= 0:
                with open(path, "r+b") as fh:
                    fh.seek(at + 100)
                    fh.write(bytes(b ^ 0xFF for b in original[100:116]))
                flipped = True
    assert flipped, "chunk bytes not found on the node's disk"
    with NodeClient(victim.name, victim.url, deployment.settings.node_secret) as client:
        assert hashlib.sha256(client.get(chunk_id)).hexdigest() != chunk_id

    # Make the corrupt node the preferred (nearest) replica; the read must still be right.
    with Archive.open(deployment.home) as archive:
        for handle in archive.pool.nodes.values():
            handle.latency_ewma_s = 0.001 if handle.name == victim.name else 1.0
        object_key = archive.store.load_key_of_instance(item["sop_instance_uid"])
        data = archive.store.read_all(object_key)
    assert hashlib.sha256(data).hexdigest() == _sha(Path(item["path"]))
    status = deployment.cli_json("status")
    assert status["bad_replicas"] == 1
    assert status["under_replicated"] >= 1

    repaired = deployment.cli_json("repair")
    assert repaired["corrupt_replaced"] >= 1
    with NodeClient(victim.name, victim.url, deployment.settings.node_secret) as client:
        assert hashlib.sha256(client.get(chunk_id)).hexdigest() == chunk_id
    assert deployment.cli_json("status")["bad_replicas"] == 0


def test_nodes_never_hold_plaintext(deployment: Deployment, dicom_dir: Path) -> None:
    report = _import(deployment, dicom_dir)
    names = set()
    for item in report["imported"]:
        ds = pydicom.dcmread(item["path"], stop_before_pixels=True)
        name = str(ds.get("PatientName", "")).strip()
        if len(name) >= 4:
            names.add(name.encode())
    assert names
    scanned = 0
    for data_dir in deployment.data_dirs():
        for path in data_dir.rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                scanned += len(blob)
                assert b"DICM" not in blob, path
                for name in names:
                    assert name not in blob, (path, name)
    assert scanned > 100_000


def test_node_down_at_write_time_is_healed_when_back(tmp_path: Path, db_url: str) -> None:
    dep = make_deployment(tmp_path, db_url, node_count=3, sites=["a", "b", "c"])
    try:
        down = dep.nodes[2]
        down.stop()
        from medshard.demo import sample_dicom_dir

        report = _import(dep, sample_dicom_dir())
        assert report["imported"] and not [
            r
            for r in report["rejected"]
            if "README" not in r["path"] and "LICENSE" not in r["path"]
        ]
        assert dep.cli_json("status")["under_replicated"] == len(report["imported"])
        result = dep.cli("repair", ok=False)
        assert result.exit_code != 0  # only 2 live nodes for k=3: says so

        down.restart()
        down.wait_ready()
        assert dep.cli_json("repair")["failures"] == []
        copies = _healthy_copies(dep)
        assert all(len(n) == 3 for n in copies.values())
        assert dep.cli_json("status")["under_replicated"] == 0
    finally:
        for proc in dep.nodes:
            proc.stop()


def test_a_write_acknowledged_with_fewer_than_k_copies_says_so(
    sqlite_deployment: Deployment, dicom_dir: Path
) -> None:
    sqlite_deployment.nodes[0].kill()  # kill -9 two of the four nodes: two remain
    sqlite_deployment.nodes[1].kill()
    report = sqlite_deployment.cli_json("import", str(dicom_dir))
    assert report["imported"]
    for item in report["imported"]:
        assert "stored with 2 of 3 copies" in item["note"], item
