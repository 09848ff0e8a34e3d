"""Replica placement: a pure function over a snapshot of the nodes and sites.

Ranking, in order:

1. **care sites first**: for each of the patient's most recent care sites, one copy on the
   healthy node nearest that site (a node *at* the site is nearest; a site without nodes, such
   as a rural health centre, gets the nodes nearest by network coordinates or, lacking those, by
   geography). Nodes within ``near_slack_ms`` of the nearest count as equally near, and among
   them the hashing below decides, so a site's nodes share its patients' load. A node whose
   observed availability is below ``min_reliability`` is used only when nothing better is near.
2. **capacity-weighted rendezvous hashing** for the rest: the object's key falls in one of
   :data:`PLACEMENT_GROUPS` groups (as Ceph's PGs), and nodes are ranked for the group by highest
   random weight with the logarithmic method, each node's weight being its capacity weight times
   its reliability. A node's share of groups is then proportional to its weight, and adding or
   removing a node moves only the groups it wins or held (what consistent hashing with
   capacity-proportional virtual nodes gives, without a ring table).
3. **distinct sites**: while sites are unused, a node at a new site beats a better-ranked node
   at a used one. Never two replicas on one node.
4. **bounded load** (as consistent hashing with bounded loads, Mirrokni et al.): care sites
   are not spread evenly over the storage, so a busy hospital's nodes would fill first. A
   node that reports its capacity and is fuller than ``load_bound`` times the mean fill of
   the placeable nodes takes no new hashed copy while enough others can; fuller than
   ``care_load_bound`` times the mean, no care-site copy either: those spill to the nearest
   nodes with room (the next-nearest site). Nothing is ever moved for the bound: it only
   steers new copies.

Draining, dead, unreachable and full nodes take no new copies. Callers record the chosen nodes
in the catalog: the catalog, not this formula, is the truth for where data lives.

The hash is a 64-bit integer mix (splitmix64) so that ``medshard simulate`` can rank a million
objects with numpy and get exactly what :meth:`CareAwarePlacement.place` returns.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from medshard.errors import ConfigError, InsufficientNodesError

PLACEMENT_GROUPS = 1 << 18
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
#: Predicted RTT (ms) per km of map distance, for sites known only by location: light in
#: fibre gives 0.01 ms per km there and back, and real routes are about twice as long.
MS_PER_KM = 0.02
#: Distance of a pair nobody can estimate: larger than any real one.
UNKNOWN_MS = 1e6
#: A node fuller than this times the mean fill takes no new hashed copies while others can,
#: and above :data:`CARE_LOAD_BOUND` no care-site copies either (they spill to the nearest
#: nodes with room). Hashed copies yield first: a third of all copies, they can even out
#: most busy sites without sending a single care-site copy away.
LOAD_BOUND = 1.05
CARE_LOAD_BOUND = 1.08


@dataclass(frozen=True)
class ReplicationPolicy:
    """k replicas on distinct nodes (distinct sites where possible); acknowledge at quorum."""

    replicas: int = 3
    write_quorum: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.write_quorum <= self.replicas:
            raise ConfigError(f"invalid replication policy {self}")

    def __str__(self) -> str:
        return f"k={self.replicas},w={self.write_quorum}"


@dataclass(frozen=True)
class NodeView:
    """What placement needs to know about one node at one moment."""

    name: str
    site: str
    capacity_bytes: int = 0
    used_bytes: int = 0
    alive: bool = True
    #: Admin-set capacity weight; 0 = derived from the capacity.
    weight_override: float = 0.0
    reliability: float = 1.0
    draining: bool = False
    #: Vivaldi coordinate (x, y, height) in ms, if measured.
    coord: tuple[float, float, float] | None = None
    #: The node said it is out of space (a 507, or too little room left in its health).
    out_of_space: bool = False

    @property
    def full(self) -> bool:
        over = self.capacity_bytes > 0 and self.used_bytes >= self.capacity_bytes
        return self.out_of_space or over

    @property
    def placeable(self) -> bool:
        return self.alive and not self.full and not self.draining

    @property
    def weight(self) -> float:
        """The admin's weight, else capacity in GiB; nodes that report none count as 1 GiB."""
        if self.weight_override > 0:
            return self.weight_override
        return max(self.capacity_bytes / 2**30, 1.0) if self.capacity_bytes else 1.0

    @property
    def effective_weight(self) -> float:
        """Weight scaled by observed availability: reliable nodes win more keys."""
        return self.weight * min(max(self.reliability, 0.01), 1.0)


@dataclass(frozen=True)
class SiteView:
    """Where a site is: the mean coordinate of its nodes, and its map location (degrees)."""

    name: str
    anchor: tuple[float, float, float] | None = None
    location: tuple[float, float] | None = None


class PlacementPolicy(Protocol):
    def place(
        self,
        key: str,
        nodes: Sequence[NodeView],
        k: int,
        *,
        exclude: Collection[str] = (),
        care_sites: Sequence[str] = (),
        sites: Mapping[str, SiteView] | None = None,
    ) -> list[str]:
        """Up to ``k`` node names for ``key``, best first; InsufficientNodesError if none."""
        ...


def mix64(z: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash of a 64-bit integer."""
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def chunk_key(object_key: str, idx: int) -> str:
    """The key a chunk is placed by: its object's key for the first chunk, ``key/idx`` for
    the others (each chunk of a large object its own replica set). Writes, repair, drain
    and rebalancing all rank nodes by it, so that they agree on where a copy belongs."""
    return object_key if idx == 0 else f"{object_key}/{idx}"


def placement_group(key: str) -> int:
    return key_hash(key) % PLACEMENT_GROUPS


@lru_cache(maxsize=65536)
def node_hash(name: str) -> int:
    return key_hash(f"node/{name}")


def unit_of(group: int, name: str) -> float:
    """A uniform number in (0, 1) for (group, node), identical to the numpy version."""
    z = mix64(((group * GOLDEN) & MASK64) ^ node_hash(name))
    return ((z >> 11) + 0.5) / 2.0**53


def rendezvous_score(key: str, node: NodeView) -> float:
    return group_score(placement_group(key), node)


def group_score(group: int, node: NodeView) -> float:
    return -node.effective_weight / math.log(unit_of(group, node.name))


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(min(1.0, h)))


def site_distance(site: str, node: NodeView, sites: Mapping[str, SiteView]) -> float:
    """Predicted RTT (ms) from a site to a node: 0 at the site, else by coordinates, else by
    map distance, else :data:`UNKNOWN_MS`."""
    if node.site == site:
        return 0.0
    here = sites.get(site)
    if here is None:
        return UNKNOWN_MS
    if here.anchor is not None and node.coord is not None:
        ax, ay, ah = here.anchor
        nx, ny, nh = node.coord
        return math.hypot(ax - nx, ay - ny) + ah + nh
    there = sites.get(node.site)
    if here.location is not None and there is not None and there.location is not None:
        return haversine_km(here.location, there.location) * MS_PER_KM
    return UNKNOWN_MS


class CareAwarePlacement:
    """The default policy (see the module docstring)."""

    def __init__(
        self,
        *,
        min_reliability: float = 0.5,
        near_slack_ms: float = 0.5,
        load_bound: float = LOAD_BOUND,
        care_load_bound: float = CARE_LOAD_BOUND,
    ) -> None:
        self.min_reliability = min_reliability
        self.near_slack_ms = near_slack_ms
        self.load_bound = load_bound
        self.care_load_bound = max(care_load_bound, load_bound)

    def over_bound(self, nodes: Sequence[NodeView], bound: float | None = None) -> set[str]:
        """Placeable nodes whose fill (used over capacity) exceeds ``bound`` (default
        ``load_bound``) times the mean fill of the placeable nodes that report a capacity;
        none when ``load_bound`` is 0."""
        bound = self.load_bound if bound is None else bound
        sized = [n for n in nodes if n.placeable and n.capacity_bytes > 0]
        if self.load_bound <= 0 or len(sized) < 2:
            return set()
        used = sum(n.used_bytes for n in sized)
        if used <= 0:
            return set()
        limit = bound * used / sum(n.capacity_bytes for n in sized)
        return {n.name for n in sized if n.used_bytes > limit * n.capacity_bytes}

    def place(
        self,
        key: str,
        nodes: Sequence[NodeView],
        k: int,
        *,
        exclude: Collection[str] = (),
        care_sites: Sequence[str] = (),
        sites: Mapping[str, SiteView] | None = None,
        keep: Sequence[str] = (),
    ) -> list[str]:
        return self.place_group(
            placement_group(key),
            nodes,
            k,
            exclude=exclude,
            care_sites=care_sites,
            sites=sites,
            keep=keep,
        )

    def place_group(
        self,
        group: int,
        nodes: Sequence[NodeView],
        k: int,
        *,
        exclude: Collection[str] = (),
        care_sites: Sequence[str] = (),
        sites: Mapping[str, SiteView] | None = None,
        keep: Sequence[str] = (),
    ) -> list[str]:
        """:meth:`place` for a key already hashed to its placement group.

        ``keep``: nodes that already hold a copy which stays where it is (a copy serving a
        care site, when rebalancing): they come first in the answer, count towards ``k`` and
        use up their sites, whether or not they could take a new copy now.
        """
        chosen = [n for name in dict.fromkeys(keep) for n in nodes if n.name == name][:k]
        taken = set(exclude) | {n.name for n in chosen}
        candidates = [n for n in nodes if n.placeable and n.name not in taken]
        if not candidates and not chosen:
            raise InsufficientNodesError("no live storage node with free space to place on")
        scores = {n.name: group_score(group, n) for n in candidates}
        ranked = sorted(candidates, key=lambda n: scores[n.name], reverse=True)
        over = self.over_bound(nodes)
        if over:
            crowded = self.over_bound(nodes, self.care_load_bound)
            near_ranked = [n for n in ranked if n.name not in crowded] or ranked
            roomy = [n for n in ranked if n.name not in over]
            ranked = roomy if len(roomy) >= k - len(chosen) else ranked
        else:
            near_ranked = ranked
        for site in dict.fromkeys(care_sites):
            if len(chosen) >= k:
                break
            near = self.nearest(site, [n for n in near_ranked if n not in chosen], sites or {})
            if near is not None:
                chosen.append(near)
        used_sites = {n.site for n in chosen}
        for node in ranked:
            if len(chosen) >= k:
                break
            if node not in chosen and node.site not in used_sites:
                chosen.append(node)
                used_sites.add(node.site)
        for node in ranked:
            if len(chosen) >= k:
                break
            if node not in chosen:
                chosen.append(node)
        return [n.name for n in chosen]

    def nearest(
        self, site: str, ranked: Sequence[NodeView], sites: Mapping[str, SiteView]
    ) -> NodeView | None:
        """The best-ranked node among those nearest ``site`` (reliable ones first)."""
        near = self.near_nodes(site, ranked, sites)
        return near[0] if near else None

    def near_nodes(
        self, site: str, ranked: Sequence[NodeView], sites: Mapping[str, SiteView]
    ) -> list[NodeView]:
        """The nodes that count as nearest ``site``, reliable ones first, in ``ranked`` order:
        those at the site if any, else those within ``near_slack_ms`` of the nearest."""
        if not ranked:
            return []
        at_site = [n for n in ranked if n.site == site]
        if any(n.reliability >= self.min_reliability for n in at_site):
            ranked = at_site  # a node at the site beats any other, however near
        distance = {n.name: site_distance(site, n, sites) for n in ranked}
        best = min(distance.values())
        if best >= UNKNOWN_MS:
            return []  # nothing known about where the site is: leave it to hashing
        near = [n for n in ranked if distance[n.name] <= best + self.near_slack_ms]
        reliable = [n for n in near if n.reliability >= self.min_reliability]
        return reliable + [n for n in near if n not in reliable]


#: The name earlier code and tests know the default policy by.
CapacityWeightedPlacement = CareAwarePlacement
