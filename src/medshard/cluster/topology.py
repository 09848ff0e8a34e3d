"""Topology administration: regions, sites (hospital, lab, rural health centre) and nodes.

The catalog holds the topology; these functions change it and say why they refuse. Data is
never moved here: draining only marks a node, and the service's monitor (or ``medshard node
drain --wait``) moves its copies off by copy, verify, switch, delete. A node may be removed
once drained, or, with ``force``, when it is dead and its copies are to be rebuilt elsewhere.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from medshard.catalog.models import Node, Site
from medshard.catalog.replicas import copies_on_nodes, replica_counts_per_node
from medshard.catalog.topology_rows import (
    ensure_region,
    new_node,
    new_site,
    node_counts_per_site,
    node_named,
    nodes_by_name,
    region_names,
    remove_node,
    site_named,
    sites_by_name,
)
from medshard.errors import InvalidInputError, NotFoundError

SITE_KINDS = ("hospital", "lab", "rural")
ADMIN_STATES = ("active", "draining", "drained")


def add_site(
    session: Session,
    name: str,
    *,
    kind: str = "hospital",
    region: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
) -> Site:
    """Create a site, or update the kind, region and location of an existing one."""
    if kind not in SITE_KINDS:
        raise InvalidInputError(f"site kind {kind!r}: expected one of {', '.join(SITE_KINDS)}")
    if (latitude is None) != (longitude is None):
        raise InvalidInputError("give both --lat and --lon, or neither")
    if latitude is not None and not (-90 <= latitude <= 90 and -180 <= (longitude or 0) <= 180):
        raise InvalidInputError("latitude must be within ±90 and longitude within ±180")
    site = site_named(session, name) or new_site(session, name)
    site.kind = kind
    if region is not None:
        site.region_id = ensure_region(session, region).id
    if latitude is not None:
        site.latitude, site.longitude = latitude, longitude
    session.flush()
    return site


def list_sites(session: Session) -> list[dict[str, Any]]:
    regions = region_names(session)
    nodes = node_counts_per_site(session)
    return [
        {
            "name": s.name,
            "kind": s.kind,
            "region": regions.get(s.region_id) if s.region_id else None,
            "latitude": s.latitude,
            "longitude": s.longitude,
            "nodes": nodes.get(s.id, 0),
        }
        for s in sites_by_name(session)
    ]


def node_row(session: Session, name: str) -> Node:
    node = node_named(session, name)
    if node is None:
        raise NotFoundError(f"unknown storage node {name!r}")
    return node


def add_node(
    session: Session, name: str, *, url: str, site: str, capacity_bytes: int = 0, weight: float = 0
) -> Node:
    """Register a node (its process is started separately, e.g. by `medshard node --name`)."""
    if not url.startswith("http://"):
        raise InvalidInputError(f"node URL {url!r}: expected http://host:port")
    site_row = site_named(session, site) or add_site(session, site)
    node = node_named(session, name) or new_node(
        session, name=name, url=url, site_id=site_row.id, capacity_bytes=capacity_bytes
    )
    node.url, node.site_id, node.capacity_bytes = url, site_row.id, capacity_bytes
    node.weight = set_weight_value(weight)
    node.admin_state = "active"
    session.flush()
    return node


def set_weight_value(weight: float) -> float:
    if not 0 <= weight <= 1e6:
        raise InvalidInputError("weight must be between 0 (from capacity) and 1e6")
    return float(weight)


def set_weight(session: Session, name: str, weight: float) -> None:
    node_row(session, name).weight = set_weight_value(weight)


def drain(session: Session, name: str) -> None:
    """Take no new copies; the monitor moves the node's copies off, then marks it drained."""
    node = node_row(session, name)
    if node.admin_state == "active":
        node.admin_state = "draining"


def undrain(session: Session, name: str) -> None:
    node_row(session, name).admin_state = "active"


def remove(session: Session, name: str, *, force: bool = False) -> int:
    """Remove a node from the catalog; returns the copies forgotten (only with ``force``)."""
    node = node_row(session, name)
    copies = copies_on_nodes(session, [node.id])
    if copies and not force:
        raise InvalidInputError(
            f"node {name} still holds {copies} copies: `medshard node drain {name}` first "
            "(or --force for a node that is dead, whose copies repair then rebuilds)"
        )
    remove_node(session, node)
    return copies


def list_nodes(session: Session) -> list[dict[str, Any]]:
    copies = replica_counts_per_node(session)
    return [
        {
            "name": n.name,
            "site": n.site.name,
            "url": n.url,
            "state": n.state,
            "admin_state": n.admin_state,
            "weight": n.weight,
            "capacity_bytes": n.capacity_bytes,
            "used_bytes": n.used_bytes,
            "reliability": round(n.reliability, 4),
            "copies": copies.get(n.id, 0),
            "coordinate": {
                "x": round(n.coord_x, 3),
                "y": round(n.coord_y, 3),
                "h": round(n.coord_h, 3),
                "error": round(n.coord_error, 3),
            },
            "rtt_ms": round(n.rtt_ms, 3),
        }
        for n in nodes_by_name(session)
    ]
