"""Replica placement: a pure function over a snapshot of the nodes.

Ranking, in order:

1. nodes at the patient's care sites (one per care site, best-ranked first), so each
   hospital treating the patient holds a nearby copy;
2. capacity-weighted rendezvous hashing (highest random weight with the logarithmic weight
   method) for the rest: each node's share of keys is proportional to its capacity, and adding
   or removing a node moves only the keys that node wins or held (the property consistent
   hashing with capacity-proportional virtual nodes gives, without a ring table);
3. distinct sites first: while sites are unused, a node at a new site beats a better-ranked
   node at a used one. Never two replicas on one node.

Callers record the chosen nodes in the catalog: the catalog, not this formula, is the truth.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from medshard.errors import ConfigError, InsufficientNodesError


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

    @property
    def full(self) -> bool:
        return self.capacity_bytes > 0 and self.used_bytes >= self.capacity_bytes

    @property
    def weight(self) -> float:
        """Capacity in GiB; nodes that report none count as 1 GiB."""
        return max(self.capacity_bytes / 2**30, 1.0) if self.capacity_bytes else 1.0


class PlacementPolicy(Protocol):
    def place(
        self,
        key: str,
        nodes: Sequence[NodeView],
        k: int,
        *,
        exclude: Collection[str] = (),
        care_sites: Sequence[str] = (),
    ) -> list[str]:
        """Up to ``k`` node names for ``key``, best first; InsufficientNodesError if none."""
        ...


def rendezvous_score(key: str, node: NodeView) -> float:
    digest = hashlib.blake2b(f"{key}/{node.name}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -node.weight / math.log(unit)


class CapacityWeightedPlacement:
    """The default policy (see the module docstring)."""

    def place(
        self,
        key: str,
        nodes: Sequence[NodeView],
        k: int,
        *,
        exclude: Collection[str] = (),
        care_sites: Sequence[str] = (),
    ) -> list[str]:
        candidates = [n for n in nodes if n.alive and not n.full and n.name not in exclude]
        if not candidates:
            raise InsufficientNodesError("no live storage node with free space to place on")
        ranked = sorted(candidates, key=lambda n: rendezvous_score(key, n), reverse=True)
        chosen: list[NodeView] = []
        for site in care_sites:
            at_site = [n for n in ranked if n.site == site and n not in chosen]
            if at_site and len(chosen) < k:
                chosen.append(at_site[0])
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
