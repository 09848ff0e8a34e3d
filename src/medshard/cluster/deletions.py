"""Deleting chunk copies from nodes after an erasure: queued in the catalog, drained here.

The erasing transaction removes the catalog rows and queues one row per chunk copy; this
drainer sends the DELETEs. A node that is down keeps its rows until it answers again, so
an erasure is complete on every node eventually, and never blocks on the slowest one.
"""

from __future__ import annotations

import logging

from medshard.catalog.deletion_queue import pending_deletions, queued_deletions, settle_deletions
from medshard.cluster.archive import Archive
from medshard.errors import MedshardError, NotFoundError

log = logging.getLogger(__name__)


def drain_deletions(archive: Archive, limit: int = 5000) -> tuple[int, int]:
    """Send queued chunk DELETEs; returns (done, still pending)."""
    with archive.catalog.session() as session:
        rows = queued_deletions(session, limit)
    done: list[int] = []
    failed: list[int] = []
    for pk, chunk_id, node_pk in rows:
        handle = archive.pool.by_pk(node_pk)
        if handle is None:  # the node was removed: nothing left to delete there
            done.append(pk)
            continue
        try:
            handle.client.delete(chunk_id)
        except NotFoundError:
            done.append(pk)
        except MedshardError as exc:
            log.info("chunk delete on %s deferred: %s", handle.name, exc)
            failed.append(pk)
        else:
            done.append(pk)
    with archive.catalog.transaction() as session:
        settle_deletions(session, done, failed)
    with archive.catalog.session() as session:
        pending = pending_deletions(session)
    return len(done), pending
