"""Scrubbing: every stored copy is re-verified on a schedule, rate-limited.

Like Ceph's deep scrub and HDFS's block scanner, this finds damage nobody reads. The service
walks the catalog's replicas in id order and asks each copy's node to re-hash it on its own
disk (``GET /chunks/{id}/verify``): only a verdict crosses the network. ``scrub_bytes_per_s``
bounds the bytes re-hashed per second so client I/O keeps its latency; a whole pass is
followed by a pause of ``scrub_pass_interval_s``. A rotten copy is marked ``corrupt`` and a
vanished one ``missing``; repair replaces both (the rotten bytes are rewritten, not outvoted).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from medshard import metrics
from medshard.catalog.replicas import mark_replicas, ok_replicas_after
from medshard.cluster.archive import Archive
from medshard.errors import ChecksumMismatchError, MedshardError, NotFoundError
from medshard.storage.node_client import NodeClient

log = logging.getLogger(__name__)


@dataclass
class ScrubStats:
    passes_done: int = 0
    cursor: int = 0
    verified: int = 0
    verified_bytes: int = 0
    corrupt_found: int = 0
    missing_found: int = 0
    last_pass_s: float = 0.0


class Scrubber:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.stats = ScrubStats()
        self._pass_started = time.monotonic()
        self._resume_at = 0.0

    def step(self, seconds: float) -> int:
        """Verify up to ``seconds`` worth of bytes at the configured rate; returns bad copies
        found in this step."""
        rate = self.archive.settings.scrub_bytes_per_s
        if rate <= 0 or time.monotonic() < self._resume_at:
            return 0
        budget = rate * seconds
        bad = 0
        pool = self.archive.pool
        while budget > 0:
            with self.archive.catalog.session() as session:
                rows = ok_replicas_after(session, self.stats.cursor, limit=100)
            if not rows:
                self._finish_pass()
                break
            for replica_pk, node_pk, chunk_id, size in rows:
                if budget <= 0:
                    break
                self.stats.cursor = replica_pk
                handle = pool.by_pk(node_pk)
                if handle is None or not handle.available:
                    continue  # a node that is down is reconciled when it returns
                budget -= size
                state = self._verify(handle.client, chunk_id)
                self.stats.verified += 1
                self.stats.verified_bytes += size
                if state != "ok":
                    bad += 1
                    self._mark(replica_pk, state)
                    log.error("scrub: copy of %s on %s is %s", chunk_id[:16], handle.name, state)
        return bad

    def _verify(self, client: NodeClient, chunk_id: str) -> str:
        try:
            client.verify(chunk_id)
        except ChecksumMismatchError:
            self.stats.corrupt_found += 1
            metrics.CORRUPT_REPLICAS.inc()
            return "corrupt"
        except NotFoundError:
            self.stats.missing_found += 1
            return "missing"
        except MedshardError:
            return "ok"  # the node is busy or down: not a verdict on the copy
        return "ok"

    def _mark(self, replica_pk: int, state: str) -> None:
        with self.archive.catalog.transaction() as session:
            mark_replicas(session, [replica_pk], state)

    def _finish_pass(self) -> None:
        now = time.monotonic()
        self.stats.passes_done += 1
        self.stats.last_pass_s = round(now - self._pass_started, 3)
        self.stats.cursor = 0
        self._resume_at = now + self.archive.settings.scrub_pass_interval_s
        self._pass_started = self._resume_at
