"""The topology's rows: regions, sites, storage nodes and the service's own coordinate.

:mod:`medshard.cluster.topology` decides what an admin may change and says why it refuses;
:mod:`medshard.cluster.nodes` keeps each node's live health. The rows they read and write are
found and changed here. Each function takes the caller's session and neither commits nor
rolls back; a row added here is flushed only where the caller needs its key at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from medshard.catalog.models import Coordinate as CoordinateRow
from medshard.catalog.models import Node, Region, Replica, Site, utcnow

# -- regions and sites ----------------------------------------------------------------------


def ensure_region(session: Session, name: str) -> Region:
    """The region with this name, added (and flushed, so it has its key) if new."""
    region = session.scalar(select(Region).where(Region.name == name))
    if region is None:
        region = Region(name=name)
        session.add(region)
        session.flush()
    return region


def region_names(session: Session) -> dict[int, str]:
    """Region pk -> name, of every region."""
    return dict(session.execute(select(Region.id, Region.name)).all())


def site_named(session: Session, name: str) -> Site | None:
    """The site with this name (None: no such site)."""
    return session.scalar(select(Site).where(Site.name == name))


def new_site(session: Session, name: str) -> Site:
    """A new site row in the session, not flushed: the caller sets its kind and place."""
    site = Site(name=name)
    session.add(site)
    return site


def sites_by_name(session: Session) -> Sequence[Site]:
    """Every site, in name order."""
    return session.scalars(select(Site).order_by(Site.name)).all()


def site_locations(session: Session) -> dict[str, tuple[float, float]]:
    """Site name -> (latitude, longitude) of the sites placed on the map."""
    return {
        s.name: (s.latitude, s.longitude)
        for s in session.scalars(select(Site)).all()
        if s.latitude is not None and s.longitude is not None
    }


def node_counts_per_site(session: Session) -> dict[int, int]:
    """Site pk -> storage nodes registered there (sites without nodes absent)."""
    return dict(session.execute(select(Node.site_id, func.count()).group_by(Node.site_id)).all())


# -- nodes ----------------------------------------------------------------------------------


def node_named(session: Session, name: str) -> Node | None:
    """The node with this name (None: not registered)."""
    return session.scalar(select(Node).where(Node.name == name))


def new_node(session: Session, *, name: str, url: str, site_id: int, capacity_bytes: int) -> Node:
    """A new node row in the session, not flushed."""
    node = Node(name=name, url=url, site_id=site_id, capacity_bytes=capacity_bytes)
    session.add(node)
    return node


def all_nodes(session: Session) -> Sequence[Node]:
    """Every registered node, with its site (joined)."""
    return session.scalars(select(Node)).all()


def nodes_by_name(session: Session) -> Sequence[Node]:
    """Every registered node in name order, with its site (joined)."""
    return session.scalars(select(Node).order_by(Node.name)).all()


def remove_node(session: Session, node: Node) -> None:
    """Delete a node's row and every replica row naming it (its copies are forgotten, not
    deleted: the node is gone or empty)."""
    session.execute(delete(Replica).where(Replica.node_pk == node.id))
    session.delete(node)


def mark_drained(session: Session, node_pk: int) -> bool:
    """Mark a draining node drained (now empty); whether its row was draining."""
    node = session.get(Node, node_pk)
    if node is not None and node.admin_state == "draining":
        node.admin_state = "drained"
        return True
    return False


def set_node_url(session: Session, name: str, url: str) -> bool:
    """Point a node's row at ``url``; whether it pointed elsewhere before."""
    result = session.execute(update(Node).where(Node.name == name, Node.url != url).values(url=url))
    return bool(getattr(cast(Any, result), "rowcount", 0))


def save_node_health(
    session: Session,
    node_pk: int,
    *,
    state: str,
    reliability: float,
    coordinate: tuple[float, float, float, float],
    rtt_ms: float,
    seen: tuple[datetime, int, int] | None,
) -> datetime | None:
    """Store what a probe found of a node: its health state, reliability, coordinate
    (x, y, height, error) and RTT, and with ``seen`` (when it last answered, its used bytes
    and chunk count) its usage. Returns the row's last-seen time (None: never seen, or the
    row was removed meanwhile, in which case nothing is stored)."""
    row = session.get(Node, node_pk)
    if row is None:
        return None
    row.state = state
    row.reliability = reliability
    row.coord_x, row.coord_y, row.coord_h, row.coord_error = coordinate
    row.rtt_ms = rtt_ms
    if seen is not None:
        row.last_seen, row.used_bytes, row.chunk_count = seen
    return row.last_seen


# -- coordinates of parties that are not nodes ------------------------------------------------


def coordinate_named(session: Session, name: str) -> CoordinateRow | None:
    """The stored Vivaldi coordinate of a party that is not a node (e.g. the service)."""
    return session.get(CoordinateRow, name)


def save_coordinate(
    session: Session, name: str, coordinate: tuple[float, float, float, float]
) -> None:
    """Store a party's coordinate (x, y, height, error), adding its row if new."""
    row = coordinate_named(session, name)
    if row is None:
        row = CoordinateRow(name=name)
        session.add(row)
    row.x, row.y, row.h, row.error = coordinate
    row.updated_at = utcnow()
