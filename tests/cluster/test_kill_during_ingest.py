"""kill -9 of storage nodes while STOW-RS goes on: nothing acknowledged is lost or corrupted.

One continuous ingest runs throughout (each instance a fresh study, kept with the bytes sent).
A write quorum of 2 lets it go on while a node is down; only a write in flight when the node
died is acknowledged short of k (its STOW-RS Warning says so), since the first failed request
takes the node out of placement. Then:

- a blip: the busiest node is killed and restarted within the dead delay. No copy is made
  beyond healing the writes acknowledged short; every copy recorded before the kill is where
  it was, still healthy (the node lost nothing it had acknowledged).
- a death: a node is killed and left dead. Once the dead delay is out the service, with no
  operator action, brings every object back to k healthy copies on distinct live nodes.

Every acknowledged instance then reads back through WADO-RS byte-identical (SHA-256), with the
dead node still dead.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from medshard.api.dicomweb.multipart import boundary_of, iter_parts_sync
from medshard.catalog.db import Catalog
from medshard.catalog.models import Chunk, Instance, Node, Replica
from tests.cluster.test_cut_off_node import AS_STORED, Ingest
from tests.cluster.test_self_healing import FAST, copies_made, health_of, status, wait_for
from tests.conftest import Deployment, Service, make_deployment, start_service

#: FAST, with a dead delay that leaves a restart on two busy cores well inside it.
SETTINGS = {**FAST, "dead_after_s": 8.0}


def replicas(dep: Deployment) -> tuple[set[str], set[tuple[str, str, str]]]:
    """Every chunk id and every replica as (chunk id, node, state), as the catalog says."""
    catalog = Catalog(dep.settings.database_url)
    with catalog.session() as session:
        chunks = set(session.scalars(select(Chunk.chunk_id)))
        rows = session.execute(
            select(Chunk.chunk_id, Node.name, Replica.state)
            .join(Replica, Replica.chunk_pk == Chunk.id)
            .join(Node, Node.id == Replica.node_pk)
        ).all()
    catalog.dispose()
    return chunks, {(cid, node, state) for cid, node, state in rows}


def stored_instances(dep: Deployment) -> set[str]:
    catalog = Catalog(dep.settings.database_url)
    with catalog.session() as session:
        sops = set(session.scalars(select(Instance.sop_instance_uid)))
    catalog.dispose()
    return sops


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_back_identical(service: Service, acked: dict[str, tuple[str, bytes]]) -> None:
    """Each acknowledged instance (alone in its study) comes back as the one part, as sent."""
    with httpx.Client(headers=service.auth_headers(), timeout=60) as client:
        for sop, (study, data) in acked.items():
            r = client.get(f"{service.dicomweb}/studies/{study}", headers={"Accept": AS_STORED})
            assert r.status_code == 200, (sop, r.text)
            boundary = boundary_of(r.headers["content-type"])
            parts = [part.read() for part in iter_parts_sync([r.content], boundary)]
            assert [sha(p) for p in parts] == [sha(data)], sop


def test_kill_9_during_ingest_loses_nothing_and_heals_without_an_operator(
    tmp_path: Path,
) -> None:
    dep = make_deployment(tmp_path, node_count=4, sites=["a", "b", "c", "d"])
    service = start_service(dep, **SETTINGS)
    k = dep.settings.replicas
    ingest = Ingest(service.dicomweb, service.auth_headers())

    def node_doc(name: str) -> dict[str, Any]:
        doc: dict[str, Any] = next(n for n in status(service)["nodes"] if n["name"] == name)
        return doc

    def acked_since(moment: float) -> int:
        return sum(1 for t in list(ingest.acked_at) if t > moment)

    def totals() -> dict[str, int]:
        found: dict[str, int] = status(service)["background"]["totals"]
        return found

    try:
        ingest.start()
        wait_for("ingest to start", lambda: len(ingest.acked) >= 20)
        assert not ingest.short, "acknowledged short of k with every node up"

        # (a) a blip: killed mid-ingest, restarted before the dead delay
        victim = dep.nodes_by_copies()[0]
        chunks_before, before = replicas(dep)
        assert any(node == victim.name for _c, node, _s in before)
        made_before, reconciled_before = copies_made(service), totals()["reconciled"]
        victim.kill()
        killed = time.monotonic()
        wait_for("suspect", lambda: health_of(service, victim.name) == "suspect")
        assert status(service)["awaiting_dead_delay"] > 0  # its copies wait, uncopied
        wait_for("acknowledgements while it is down", lambda: acked_since(killed) >= 10)
        victim.restart().wait_ready()
        wait_for("alive again", lambda: node_doc(victim.name)["state"] == "alive")
        back = time.monotonic()
        assert back - killed < SETTINGS["dead_after_s"], "the blip outlasted the dead delay"
        wait_for("reconciled", lambda: totals()["reconciled"] > reconciled_before)
        wait_for("acknowledgements with it back", lambda: acked_since(back) >= 10)
        wait_for("k copies of everything", lambda: status(service)["under_replicated"] == 0)
        blip_short = list(ingest.short)
        # one ingest thread: at most the write in flight at the kill is short of k
        assert len(blip_short) <= 1, blip_short
        blip_copies = copies_made(service) - made_before
        assert blip_copies <= len(blip_short), (blip_copies, blip_short)
        assert totals()["corrupt_replaced"] == 0
        _chunks, after = replicas(dep)
        unchanged = {row for row in after if row[0] in chunks_before}
        assert unchanged == before, "copies recorded before the kill changed with the blip"
        assert health_of(service, victim.name) == "alive"

        # (b) a death: killed mid-ingest and left dead
        dead = dep.nodes_by_copies()[0]
        made_before, short_before = copies_made(service), len(ingest.short)
        dead.kill()
        killed = time.monotonic()
        wait_for("suspect", lambda: health_of(service, dead.name) == "suspect")
        assert status(service)["awaiting_dead_delay"] > 0
        wait_for("dead", lambda: health_of(service, dead.name) == "dead", timeout=30)
        assert time.monotonic() - killed >= SETTINGS["dead_after_s"] - 0.5
        wait_for("acknowledgements after the death", lambda: acked_since(killed) >= 30)
        ingest.stop.set()
        ingest.join(timeout=60)
        assert not ingest.is_alive()
        wait_for("k copies of everything", lambda: status(service)["under_replicated"] == 0, 60)
        assert health_of(service, dead.name) == "dead"
        death_copies = copies_made(service) - made_before
        print(
            f"acknowledged {len(ingest.acked)} instances, refused {ingest.refused}, short of k "
            f"{len(ingest.short)}; copies made for the blip {blip_copies}, for the death "
            f"{death_copies}"
        )

        # the catalog: every acknowledged instance, each chunk k healthy copies on live nodes
        assert set(ingest.acked) <= stored_instances(dep)
        chunks, rows = replicas(dep)
        # one copy for each chunk the dead node held, and one for each write acknowledged short
        on_dead = {cid for cid, node, state in rows if node == dead.name and state == "ok"}
        assert on_dead
        assert death_copies == len(on_dead) + len(ingest.short) - short_before
        live = Counter(cid for cid, node, state in rows if state == "ok" and node != dead.name)
        assert {cid for cid in chunks if live[cid] < k} == set()
        # the CLI, in a process of its own, agrees
        cli_status = dep.cli_json("status")
        assert cli_status["under_replicated"] == 0
        assert next(n for n in cli_status["nodes"] if n["name"] == dead.name)["health"] == "dead"

        # (c) nothing lost or corrupted: every acknowledged instance reads back as sent
        read_back_identical(service, ingest.acked)
    finally:
        ingest.stop.set()
        service.process.stop()
        for proc in dep.nodes:
            proc.stop()
