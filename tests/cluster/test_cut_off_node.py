"""A node cut off by iptables during a continuous ingest, then restored: no loss, it reconciles.

The node listens on a loopback address of its own; ``iptables -A INPUT -d ADDR -j DROP``
makes it unreachable while its process runs on (a failed link, not a crash: requests in
flight hang until the client's timeout). STOW-RS goes on throughout; every instance the
service acknowledged must read back byte-identical after the rule is deleted, the node must be
alive and reconciled, and every object must again have k healthy copies on distinct nodes.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medshard.api.dicomweb.multipart import multipart_content_type, multipart_stream
from medshard.catalog.db import Catalog
from medshard.catalog.models import Chunk, Node, Replica
from medshard.storage.node_client import NodeClient
from tests.cluster.netfaults import cut_off, loopback_addresses, require_iptables
from tests.cluster.test_self_healing import status, wait_for
from tests.conftest import make_deployment, start_service
from tests.hostile import encode, image

BOUNDARY = "cut-off-boundary"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: What a STOW-RS Warning says of an instance acknowledged at the write quorum, short of k.
SHORT_ACK = re.compile(r"stored with \d+ of \d+ copies")
SETTINGS = {
    "heartbeat_interval_s": 0.5,
    "suspect_after_s": 1.0,
    "dead_after_s": 120.0,  # a cut shorter than this costs no copying (no repair storm)
    "node_timeout_s": 2.0,  # a request to the cut-off node hangs this long
    "scrub_bytes_per_s": 0,
}


def chunks_short_of_k(session: Session, k: int) -> list[int]:
    """Chunks with fewer than ``k`` healthy copies on distinct nodes, as the catalog says."""
    return list(
        session.scalars(
            select(Chunk.id)
            .join(Replica, Replica.chunk_pk == Chunk.id)
            .where(Replica.state == "ok")
            .group_by(Chunk.id)
            .having(func.count(func.distinct(Replica.node_pk)) < k)
        )
    )


class Ingest(threading.Thread):
    """STOW-RS one fresh instance after another until stopped; keeps what was acknowledged."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.acked: dict[str, tuple[str, bytes]] = {}  # SOP UID -> (study UID, bytes sent)
        self.acked_at: list[float] = []
        #: SOP UIDs acknowledged with fewer than k copies (at the write quorum), as the
        #: response's Warning said
        self.short: list[str] = []
        self.refused = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(headers=self.headers, timeout=60) as client:
            while not self.stop.is_set():
                ds = image(patient="CUT-OFF-1")
                data = encode(ds)
                body = b"".join(
                    multipart_stream([({"Content-Type": "application/dicom"}, data)], BOUNDARY)
                )
                r = client.post(
                    f"{self.url}/studies",
                    content=body,
                    headers={"Content-Type": multipart_content_type(BOUNDARY)},
                )
                if r.status_code == 200 and "00081198" not in r.json():
                    sop = str(ds.SOPInstanceUID)
                    self.acked[sop] = (str(ds.StudyInstanceUID), data)
                    self.acked_at.append(time.monotonic())
                    if SHORT_ACK.search(r.headers.get("warning", "")):
                        self.short.append(sop)
                else:
                    self.refused += 1


def test_a_node_cut_off_and_restored_loses_nothing_and_reconciles(tmp_path: Path) -> None:
    require_iptables()
    (cut_ip,) = loopback_addresses(1)
    dep = make_deployment(
        tmp_path, sites=["a", "b", "c", "d"], hosts=["127.0.0.1", "127.0.0.1", "127.0.0.1", cut_ip]
    )
    victim = dep.nodes[3]
    service = start_service(dep, **SETTINGS)
    ingest = Ingest(service.dicomweb, service.auth_headers())

    def node_doc() -> dict[str, Any]:
        doc: dict[str, Any] = next(n for n in status(service)["nodes"] if n["name"] == victim.name)
        return doc

    try:
        ingest.start()
        wait_for("ingest to start", lambda: len(ingest.acked) >= 10)
        with cut_off(cut_ip):
            cut_at = time.monotonic()
            wait_for("the node seen as suspect", lambda: node_doc()["health"] == "suspect")
            time.sleep(3.0)  # ingest goes on without it
            restored_at = time.monotonic()
        wait_for("the node alive again", lambda: node_doc()["state"] == "alive")
        time.sleep(2.0)  # and ingest goes on with it
        ingest.stop.set()
        ingest.join(timeout=60)
        during = [t for t in ingest.acked_at if cut_at + 2.5 < t < restored_at]
        assert during, "nothing was acknowledged while the node was cut off"
        print(
            f"acknowledged {len(ingest.acked)} instances ({len(during)} while cut off, after "
            f"the first timeout), refused {ingest.refused}"
        )

        # self-healing: reconciled on return, short copies (writes in flight at the cut) made up
        wait_for("reconcile", lambda: status(service)["background"]["totals"]["reconciled"] >= 1)
        wait_for("k copies of everything", lambda: status(service)["under_replicated"] == 0, 90)

        # no loss: every acknowledged instance reads back as sent
        with httpx.Client(headers=service.auth_headers(), timeout=60) as client:
            for sop, (study, data) in ingest.acked.items():
                r = client.get(f"{service.dicomweb}/studies/{study}", headers={"Accept": AS_STORED})
                assert r.status_code == 200, (sop, r.text)
                assert data in r.content, sop

        # the catalog and the node agree, and every chunk has k copies on distinct nodes
        catalog = Catalog(dep.settings.database_url)
        with catalog.session() as session:
            short = chunks_short_of_k(session, dep.settings.replicas)
            on_victim = set(
                session.scalars(
                    select(Chunk.chunk_id)
                    .join(Replica, Replica.chunk_pk == Chunk.id)
                    .join(Node, Node.id == Replica.node_pk)
                    .where(Node.name == victim.name, Replica.state == "ok")
                )
            )
        catalog.dispose()
        assert not short
        with NodeClient(victim.name, victim.url, dep.settings.node_secret) as node:
            assert on_victim <= set(node.list_ids())
    finally:
        ingest.stop.set()
        service.process.stop()
        for proc in dep.nodes:
            proc.stop()
