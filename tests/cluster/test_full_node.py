"""A full node is skipped for placement and reported; ingest goes on, every copy elsewhere.

The node's data directory is a real 8 MiB tmpfs, filled with a filler file after the service
has seen it healthy: its writes then meet a real ENOSPC and it answers 507. The service must
place those copies on another node (k copies still), mark the node full (not failed), and
report it; a fresh process (the CLI's import) learns it from the node's health and never
tries it. Once the filler is gone the node has room again.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from medshard.api.dicomweb.multipart import multipart_content_type, multipart_stream
from medshard.catalog.db import Catalog
from medshard.catalog.models import Chunk, Node, Replica, StoredObject
from medshard.demo import sample_dicom_dir
from tests.cluster.netfaults import fill, tmpfs
from tests.conftest import TEST_SITE, Deployment, make_deployment, start_service

BOUNDARY = "full-node-boundary"


def copies_by_object(dep: Deployment) -> dict[str, list[list[str]]]:
    """object key -> for each chunk, the nodes holding a healthy copy (as the catalog says)."""
    catalog = Catalog(dep.settings.database_url)
    found: dict[str, list[list[str]]] = {}
    with catalog.session() as session:
        rows = session.execute(
            select(StoredObject.object_key, Chunk.idx, Node.name)
            .join(Chunk, Chunk.object_pk == StoredObject.id)
            .join(Replica, Replica.chunk_pk == Chunk.id)
            .join(Node, Node.id == Replica.node_pk)
            .where(Replica.state == "ok")
            .order_by(StoredObject.object_key, Chunk.idx)
        ).all()
    catalog.dispose()
    by_chunk: dict[tuple[str, int], list[str]] = {}
    for key, idx, node in rows:
        by_chunk.setdefault((key, idx), []).append(node)
    for (key, _idx), nodes in by_chunk.items():
        found.setdefault(key, []).append(nodes)
    return found


def node_entry(status: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(n for n in status["nodes"] if n["name"] == name)
    return entry


def test_a_full_node_is_skipped_and_reported_while_ingest_goes_on(tmp_path: Path) -> None:
    # 4 nodes at 4 sites; node0 is the only node at st-marys, the test account's site, so the
    # care-site copy of everything stored is placed there first, whatever the hashing ranks
    dep = make_deployment(tmp_path, sites=[TEST_SITE, "city-general", "rural-clinic", "lab-x"])
    full = dep.nodes[0]
    full.stop()
    shutil.rmtree(full.data_dir)
    files = sorted(sample_dicom_dir().glob("*.dcm"))
    by_stow, by_import = files[::2], files[1::2]
    service = None
    try:
        with tmpfs(full.data_dir, "8m"):
            full.start().wait_ready()
            # a long heartbeat: the service keeps its start-up view (room) until a write fails
            service = start_service(dep, heartbeat_interval_s=3600.0, scrub_bytes_per_s=0)
            fill(full.data_dir)  # the disk is now really full: the next write gets ENOSPC

            # 1. the running service learns it from a 507 and writes the copy elsewhere
            body = b"".join(
                multipart_stream(
                    [({"Content-Type": "application/dicom"}, p.read_bytes()) for p in by_stow],
                    BOUNDARY,
                )
            )
            r = httpx.post(
                f"{service.dicomweb}/studies",
                content=body,
                headers={
                    **service.auth_headers(),
                    "Content-Type": multipart_content_type(BOUNDARY),
                },
                timeout=120,
            )
            assert r.status_code == 200, r.text
            assert "00081198" not in r.json(), r.text  # no failed instance
            log = (dep.home / "service.log").read_text(errors="replace")
            assert "HTTP 507 (out of space)" in log, "the write path never met the 507"
            assert f"storage node {full.name} is full" in log
            status = httpx.get(
                f"{service.url}/api/status", headers=service.auth_headers(), timeout=30
            ).json()
            entry = node_entry(status, full.name)
            assert entry["full"] is True and entry["reachable"] is True, entry
            assert entry["state"] == "alive"  # full, not failed: it still serves reads

            # 2. a fresh process (the CLI) learns it from the node's health: never tries it
            inbox = tmp_path / "inbox"
            inbox.mkdir()
            for p in by_import:
                shutil.copy(p, inbox / p.name)
            report = dep.cli_json("import", str(inbox))
            assert len(report["imported"]) == len(by_import), report
            assert not report.get("rejected"), report
            status = dep.cli_json("status")
            entry = node_entry(status, full.name)
            assert entry["full"] is True and entry["free_bytes"] < dep.settings.chunk_size
            assert status["under_replicated"] == 0

            # every object has k copies on distinct nodes, none on the full node
            objects = copies_by_object(dep)
            assert len(objects) >= len(files)
            for key, chunks in objects.items():
                for nodes in chunks:
                    assert len(set(nodes)) == dep.settings.replicas, (key, nodes)
                    assert full.name not in nodes, (key, nodes)
            assert full.wait_ready()["chunks"] == 0

            # 3. room again: the next probe takes the mark off
            (full.data_dir / "filler.bin").unlink()
            entry = node_entry(dep.cli_json("status"), full.name)
            assert entry["full"] is False and entry["free_bytes"] > dep.settings.chunk_size
            full.stop()
    finally:
        if service is not None:
            service.process.stop()
        for proc in dep.nodes:
            proc.stop()
