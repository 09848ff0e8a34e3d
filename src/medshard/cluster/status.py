"""The cluster's state as one JSON-ready dict, shared by `medshard status` and `/api/status`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from medshard.catalog.models import Instance, Patient, Replica, StoredObject
from medshard.cluster.archive import Archive
from medshard.cluster.repair import under_replicated_objects


def cluster_status(archive: Archive) -> dict[str, Any]:
    pool = archive.pool
    with archive.catalog.session() as session:
        replica_counts = dict(
            session.execute(
                select(Replica.node_pk, func.count())
                .where(Replica.state == "ok")
                .group_by(Replica.node_pk)
            ).all()
        )
        corrupt = session.scalar(select(func.count()).where(Replica.state != "ok")) or 0
        objects = session.scalar(select(func.count(StoredObject.id))) or 0
        stored_bytes = session.scalar(select(func.coalesce(func.sum(StoredObject.size), 0))) or 0
        instances = session.scalar(select(func.count(Instance.id))) or 0
        patients = session.scalar(select(func.count(Patient.id))) or 0
        per_shard = dict(
            session.execute(
                select(StoredObject.shard, func.count()).group_by(StoredObject.shard)
            ).all()
        )
    nodes = []
    for handle in sorted(pool.nodes.values(), key=lambda h: h.name):
        nodes.append(
            {
                "name": handle.name,
                "url": handle.url,
                "site": handle.site,
                "state": handle.state.value if handle.reachable else "unreachable",
                "used_bytes": handle.used_bytes,
                "capacity_bytes": handle.capacity_bytes,
                "chunks": handle.chunks,
                "replicas_in_catalog": replica_counts.get(handle.pk, 0),
                "last_seen": handle.last_seen.isoformat() if handle.last_seen else None,
            }
        )
    counts = list(per_shard.values())
    return {
        "nodes": nodes,
        "objects": objects,
        "instances": instances,
        "patients": patients,
        "stored_bytes": int(stored_bytes),
        "under_replicated": under_replicated_objects(archive.store),
        "bad_replicas": corrupt,
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
