"""Placement is a pure function over a snapshot: tiny topologies built by hand."""

from __future__ import annotations

from collections import Counter

import pytest

from medshard.cluster.placement import CapacityWeightedPlacement, NodeView, ReplicationPolicy
from medshard.errors import ConfigError, InsufficientNodesError

POLICY = CapacityWeightedPlacement()


def nodes(*specs: tuple[str, str, int]) -> list[NodeView]:
    return [NodeView(name, site, capacity_bytes=cap * 2**30) for name, site, cap in specs]


def test_replicas_land_on_distinct_nodes_and_distinct_sites_first() -> None:
    topo = nodes(("a1", "A", 10), ("a2", "A", 10), ("b1", "B", 10), ("c1", "C", 10))
    for i in range(200):
        chosen = POLICY.place(f"key{i}", topo, 3)
        assert len(set(chosen)) == 3
        sites = {n.site for n in topo if n.name in chosen}
        assert sites == {"A", "B", "C"}


def test_more_replicas_than_sites_reuses_sites_but_never_nodes() -> None:
    topo = nodes(("a1", "A", 10), ("a2", "A", 10), ("b1", "B", 10))
    assert sorted(POLICY.place("k", topo, 3)) == ["a1", "a2", "b1"]


def test_share_of_keys_is_proportional_to_capacity() -> None:
    topo = nodes(("small", "A", 10), ("big", "B", 30))
    wins = Counter(POLICY.place(f"object-{i}", topo, 1)[0] for i in range(4000))
    assert 0.68 < wins["big"] / 4000 < 0.82


def test_adding_a_node_moves_only_keys_it_wins() -> None:
    before = nodes(("n1", "A", 10), ("n2", "B", 10), ("n3", "C", 10))
    after = [*before, NodeView("n4", "D", capacity_bytes=10 * 2**30)]
    moved = 0
    for i in range(2000):
        old, new = POLICY.place(f"k{i}", before, 1)[0], POLICY.place(f"k{i}", after, 1)[0]
        if old != new:
            assert new == "n4"
            moved += 1
    assert 0.18 < moved / 2000 < 0.32


def test_dead_full_and_excluded_nodes_are_skipped() -> None:
    topo = [
        NodeView("dead", "A", alive=False),
        NodeView("full", "B", capacity_bytes=100, used_bytes=100),
        NodeView("gone", "C"),
        NodeView("ok1", "D"),
        NodeView("ok2", "E"),
    ]
    assert sorted(POLICY.place("k", topo, 3, exclude={"gone"})) == ["ok1", "ok2"]
    with pytest.raises(InsufficientNodesError):
        POLICY.place("k", topo[:3], 1, exclude={"gone"})


def test_care_sites_get_a_copy_first() -> None:
    topo = nodes(("a1", "A", 10), ("b1", "B", 10), ("c1", "C", 10), ("d1", "D", 10))
    for i in range(50):
        chosen = POLICY.place(f"p{i}", topo, 2, care_sites=["D"])
        assert chosen[0] == "d1"


def test_replication_policy_validates_quorum() -> None:
    assert str(ReplicationPolicy(3, 2)) == "k=3,w=2"
    with pytest.raises(ConfigError):
        ReplicationPolicy(2, 3)
