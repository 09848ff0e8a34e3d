"""The cluster's state as one JSON-ready dict, shared by `medshard status` and `/api/status`."""

from __future__ import annotations

from typing import Any

from medshard.catalog.replicas import bad_replica_count, replica_counts_per_node
from medshard.catalog.totals import objects_per_shard, stored_totals
from medshard.cluster.archive import Archive
from medshard.cluster.compaction import compaction_summary, node_compaction
from medshard.cluster.metadata_backup import backup_status
from medshard.cluster.repair import under_replicated_objects
from medshard.cluster.vivaldi import relative_error


def cluster_status(archive: Archive) -> dict[str, Any]:
    pool = archive.pool
    with archive.catalog.session() as session:
        replica_counts = replica_counts_per_node(session, state="ok")
        corrupt = bad_replica_count(session)
        totals = stored_totals(session)
        per_shard = objects_per_shard(session)
    nodes = []
    here = pool.coordinate
    errors: list[float] = []
    for handle in sorted(pool.nodes.values(), key=lambda h: h.name):
        predicted = here.rtt_to(handle.coordinate)
        if handle.rtt_ms > 0:
            errors.append(relative_error(predicted, handle.rtt_ms))
        nodes.append(
            {
                "name": handle.name,
                "url": handle.url,
                "site": handle.site,
                "state": handle.state.value if handle.reachable else "unreachable",
                "health": handle.state.value,  # alive, suspect or dead, whatever the last probe
                "reachable": handle.reachable,
                "full": handle.full,  # out of space: takes no new copies, still serves reads
                "free_bytes": handle.free_bytes,
                "used_bytes": handle.used_bytes,
                "capacity_bytes": handle.capacity_bytes,
                "chunks": handle.chunks,
                "compaction": node_compaction(handle.health),
                "replicas_in_catalog": replica_counts.get(handle.pk, 0),
                "last_seen": handle.last_seen.isoformat() if handle.last_seen else None,
                "admin_state": handle.admin_state,
                "weight": handle.view().weight,
                "reliability": round(handle.reliability, 4),
                "coordinate": handle.coordinate.as_dict(),
                "rtt_ms": round(handle.rtt_ms, 3),
                "predicted_rtt_ms": round(predicted, 3),
            }
        )
    counts = list(per_shard.values())
    return {
        "nodes": nodes,
        "objects": totals.objects,
        "instances": totals.instances,
        "patients": totals.patients,
        "stored_bytes": int(totals.stored_bytes),
        "under_replicated": under_replicated_objects(archive.store),
        "bad_replicas": corrupt,
        "awaiting_dead_delay": under_replicated_objects(archive.store)
        - under_replicated_objects(archive.store, dead_only=True),
        "coordinates": {
            "service": here.as_dict(),
            "median_rtt_error": round(sorted(errors)[len(errors) // 2], 4) if errors else None,
            "max_rtt_error": round(max(errors), 4) if errors else None,
        },
        "background": archive.monitor.stats() if archive.monitor is not None else None,
        "compaction": compaction_summary(pool.nodes.values()),
        "backup": backup_status(archive.settings),
        "replication": {
            "replicas": archive.settings.replicas,
            "write_quorum": archive.settings.write_quorum,
        },
        "shards": {
            "total": archive.settings.shards,
            "used": len(per_shard),
            "min_objects": min(counts) if counts else 0,
            "max_objects": max(counts) if counts else 0,
            "objects_per_shard": {str(k): v for k, v in sorted(per_shard.items())},
        },
    }
