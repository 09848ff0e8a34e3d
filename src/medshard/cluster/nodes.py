"""The node pool: one HTTP client per storage node, their live health, and I/O threads.

Health is probed, not assumed: :meth:`NodePool.probe` asks every node's ``/health`` in
parallel and records state, usage and last-seen time in the catalog. Between probes, a node
that fails a request is treated as unavailable for new placements in this process, so a node
killed mid-import costs one failed request, not one per file.

A node that answers a write with 507 (out of space) is *full*, not failed: it keeps serving
reads and heartbeats, placement skips it, and the write goes to another node. A probe clears
the mark once the node reports room for a whole chunk again (:func:`room_of`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from medshard.catalog.db import Catalog
from medshard.catalog.topology_rows import (
    all_nodes,
    coordinate_named,
    new_node,
    new_site,
    node_named,
    save_coordinate,
    save_node_health,
    site_locations,
    site_named,
)
from medshard.cluster.health import (
    HealthEvent,
    NodeState,
    missed_event,
    next_state,
    update_reliability,
)
from medshard.cluster.placement import NodeView, SiteView
from medshard.cluster.vivaldi import Coordinate, update
from medshard.config import Settings
from medshard.errors import MedshardError, NotFoundError
from medshard.storage.node_client import NodeClient

log = logging.getLogger(__name__)

#: Room a node needs beyond one plaintext chunk (the envelope, the record header, slack).
CHUNK_OVERHEAD_BYTES = 64 * 1024


def room_of(health: dict[str, Any]) -> int | None:
    """Bytes a node can still take, from its ``/health``: free disk space, bounded by what is
    left of its configured capacity; None if it does not say."""
    free = health.get("free_disk_bytes")
    if free is None:
        return None
    room = int(free)
    capacity = int(health.get("capacity_bytes") or 0)
    if capacity > 0:
        room = min(room, capacity - int(health.get("used_bytes", 0)))
    return max(room, 0)


@dataclass
class NodeHandle:
    """A node as this process sees it: catalog row facts, client, and live observations."""

    pk: int
    name: str
    url: str
    site: str
    capacity_bytes: int
    client: NodeClient
    state: NodeState = NodeState.ALIVE
    used_bytes: int = 0
    chunks: int = 0
    reachable: bool = True
    latency_ewma_s: float = 0.0
    last_seen: datetime | None = None
    health: dict[str, Any] = field(default_factory=dict)
    weight: float = 0.0
    admin_state: str = "active"
    reliability: float = 1.0
    coordinate: Coordinate = field(default_factory=Coordinate)
    rtt_ms: float = 0.0
    last_probe: float = 0.0
    #: Out of space: answered a write with 507, or reported too little room at a probe.
    full: bool = False
    #: Bytes the node can still take, as its last health said (None: not known yet).
    free_bytes: int | None = None
    #: Reads this process has in flight to the node: readers spread a striped object's
    #: chunks over its replicas by it (see ObjectStore.ordered_replicas).
    reads_in_flight: int = 0
    _reads_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reading(self, delta: int) -> None:
        with self._reads_lock:
            self.reads_in_flight += delta

    def view(self) -> NodeView:
        c = self.coordinate
        return NodeView(
            name=self.name,
            site=self.site,
            capacity_bytes=self.capacity_bytes,
            used_bytes=self.used_bytes,
            alive=self.available,
            weight_override=self.weight,
            reliability=self.reliability,
            draining=self.admin_state != "active",
            coord=(c.x, c.y, c.h) if c.error < 1.0 else None,
            out_of_space=self.full,
        )

    @property
    def available(self) -> bool:
        return self.reachable and self.state == NodeState.ALIVE

    def observe_latency(self, seconds: float) -> None:
        self.latency_ewma_s = (
            seconds if not self.latency_ewma_s else (0.8 * self.latency_ewma_s + 0.2 * seconds)
        )


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything here is UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def register_node(catalog: Catalog, *, name: str, url: str, site: str, capacity_bytes: int) -> None:
    """Add or update a node (and its site) in the catalog."""
    with catalog.transaction() as session:
        site_row = site_named(session, site)
        if site_row is None:
            site_row = new_site(session, site)
            session.flush()
        node = node_named(session, name)
        if node is None:
            new_node(
                session, name=name, url=url, site_id=site_row.id, capacity_bytes=capacity_bytes
            )
        else:
            node.url, node.site_id, node.capacity_bytes = url, site_row.id, capacity_bytes


SERVICE_COORDINATE = "service"


def site_views(handles: Any, locations: dict[str, tuple[float, float]]) -> dict[str, SiteView]:
    """Each site's anchor (mean coordinate of its measured nodes) and map location."""
    points: dict[str, list[Coordinate]] = {}
    for handle in handles:
        if handle.coordinate.error < 1.0:
            points.setdefault(handle.site, []).append(handle.coordinate)
    views: dict[str, SiteView] = {}
    for site in set(points) | set(locations):
        coords = points.get(site, [])
        anchor = None
        if coords:
            n = len(coords)
            anchor = (
                sum(c.x for c in coords) / n,
                sum(c.y for c in coords) / n,
                sum(c.h for c in coords) / n,
            )
        views[site] = SiteView(site, anchor, locations.get(site))
    return views


class NodePool:
    """Clients for every registered node plus a thread pool for parallel chunk I/O."""

    def __init__(self, catalog: Catalog, settings: Settings, io_threads: int = 16) -> None:
        self.catalog = catalog
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="node-io")
        self._lock = threading.Lock()
        self.nodes: dict[str, NodeHandle] = {}
        #: This service's own Vivaldi coordinate (it measures RTTs to every node).
        self.coordinate = Coordinate()
        self.site_views: dict[str, SiteView] = {}
        self.reload()
        with self.catalog.session() as session:
            row = coordinate_named(session, SERVICE_COORDINATE)
            if row is not None:
                self.coordinate = Coordinate(row.x, row.y, row.h, row.error)

    def reload(self) -> None:
        """Pick up nodes registered since (e.g. a node process started later)."""
        with self.catalog.session() as session:
            facts = [
                (r.id, r.name, r.url, r.site.name, r.capacity_bytes, NodeState(r.state), r)
                for r in all_nodes(session)
            ]
            locations = site_locations(session)
        with self._lock:
            for name in set(self.nodes) - {f[1] for f in facts}:  # removed by an admin
                self.nodes.pop(name).client.close()
            for pk, name, url, site, cap, state, row in facts:
                handle = self.nodes.get(name)
                if handle is None or handle.url != url:
                    client = NodeClient(
                        name,
                        url,
                        self.settings.node_secret,
                        self.settings.node_timeout_s,
                        batch_puts=self.settings.node_put_batching,
                    )
                    self.nodes[name] = NodeHandle(
                        pk,
                        name,
                        url,
                        site,
                        cap,
                        client,
                        state=state,
                        used_bytes=row.used_bytes,
                        chunks=row.chunk_count,
                        last_seen=aware(row.last_seen),
                        reliability=row.reliability,
                        coordinate=Coordinate(
                            row.coord_x, row.coord_y, row.coord_h, row.coord_error
                        ),
                        rtt_ms=row.rtt_ms,
                    )
                handle = self.nodes[name]
                handle.site, handle.capacity_bytes = site, cap
                handle.weight, handle.admin_state = row.weight, row.admin_state
        self.site_views = site_views(self.nodes.values(), locations)

    def get(self, name: str) -> NodeHandle:
        try:
            return self.nodes[name]
        except KeyError:
            raise NotFoundError(f"unknown storage node {name!r}") from None

    def by_pk(self, pk: int) -> NodeHandle | None:
        for handle in self.nodes.values():
            if handle.pk == pk:
                return handle
        return None

    def views(self) -> list[NodeView]:
        return [h.view() for h in self.nodes.values()]

    def mark_failed(self, name: str) -> None:
        """A request to this node failed: stop placing on it until a probe says otherwise."""
        handle = self.nodes.get(name)
        if handle is not None:
            handle.reachable = False

    def mark_full(self, name: str) -> None:
        """The node refused a write for want of space: place nothing on it until a probe
        finds room again. It stays reachable (reads, heartbeats) and is not failed."""
        handle = self.nodes.get(name)
        if handle is not None and not handle.full:
            handle.full = True
            log.warning("storage node %s is full: placing new copies elsewhere", name)

    def probe(self, *, persist: bool = True) -> dict[str, NodeHandle]:
        """Ask every node for its health in parallel; update states (and the catalog)."""
        self.reload()
        handles = list(self.nodes.values())

        def ask(handle: NodeHandle) -> tuple[NodeHandle, dict[str, Any] | None, float]:
            start = time.perf_counter()
            try:
                return handle, handle.client.health(), time.perf_counter() - start
            except MedshardError:
                return handle, None, time.perf_counter() - start

        now = datetime.now(UTC)
        for handle, health, elapsed in self.executor.map(ask, handles):
            clock = time.monotonic()
            since = clock - handle.last_probe if handle.last_probe else 0.0
            handle.last_probe = clock
            handle.reliability = update_reliability(handle.reliability, health is not None, since)
            if health is not None:
                handle.rtt_ms = elapsed * 1000.0
                update(self.coordinate, handle.coordinate, handle.rtt_ms)
                update(handle.coordinate, self.coordinate, handle.rtt_ms)
                handle.reachable = True
                handle.health = health
                handle.used_bytes = int(health.get("used_bytes", 0))
                handle.chunks = int(health.get("chunks", 0))
                handle.last_seen = now
                self._update_room(handle, room_of(health))
                handle.observe_latency(elapsed)
                handle.state = next_state(handle.state, HealthEvent.HEARTBEAT)
            else:
                handle.reachable = False
                silent = (now - handle.last_seen).total_seconds() if handle.last_seen else 1e9
                event = missed_event(
                    silent, self.settings.suspect_after_s, self.settings.dead_after_s
                )
                if event is not None:
                    handle.state = next_state(handle.state, event)
        if persist:
            self._persist(handles)
        return self.nodes

    def _update_room(self, handle: NodeHandle, room: int | None) -> None:
        handle.free_bytes = room
        if room is None:
            return
        full = room < self.settings.chunk_size + CHUNK_OVERHEAD_BYTES
        if full != handle.full:
            log.warning(
                "storage node %s %s (%d bytes of room)",
                handle.name,
                "is full: placing new copies elsewhere" if full else "has room again",
                room,
            )
        handle.full = full

    def measure_peers(self, rng: random.Random | None = None) -> int:
        """Each available node measures its RTT to one random other node; both coordinates
        are the service's to keep, so the measuring node's coordinate moves (Vivaldi).
        Returns how many measurements succeeded (saved at the next probe)."""
        rng = rng or random.Random()
        live = [h for h in self.nodes.values() if h.available]
        if len(live) < 2:
            return 0
        pairs = [(h, rng.choice([p for p in live if p is not h])) for h in live]

        def ask(pair: tuple[NodeHandle, NodeHandle]) -> float | None:
            node, peer = pair
            try:
                return node.client.rtt_to(peer.name, peer.url)
            except MedshardError:
                return None

        done = 0
        for (node, peer), rtt in zip(pairs, self.executor.map(ask, pairs), strict=True):
            if rtt is not None:
                update(node.coordinate, peer.coordinate, rtt, rng)
                done += 1
        return done

    def _persist(self, handles: list[NodeHandle]) -> None:
        with self.catalog.transaction() as session:
            for handle in handles:
                c = handle.coordinate
                seen = handle.last_seen
                saved = save_node_health(
                    session,
                    handle.pk,
                    state=handle.state.value,
                    reliability=handle.reliability,
                    coordinate=(c.x, c.y, c.h, c.error),
                    rtt_ms=handle.rtt_ms,
                    seen=None if seen is None else (seen, handle.used_bytes, handle.chunks),
                )
                if seen is None:
                    handle.last_seen = aware(saved)
            c = self.coordinate
            save_coordinate(session, SERVICE_COORDINATE, (c.x, c.y, c.h, c.error))

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        for handle in self.nodes.values():
            handle.client.close()
