"""Bounded-load placement, placing around kept copies, and the at-risk repair rule."""

from __future__ import annotations

from medshard.cluster.placement import CareAwarePlacement, NodeView, SiteView
from medshard.cluster.repair import at_risk

POLICY = CareAwarePlacement(min_reliability=0.5, near_slack_ms=0.5)
GIB = 2**30
SITES = {
    "A": SiteView("A", (0, 0, 1)),
    "B": SiteView("B", (5, 0, 1)),
    "C": SiteView("C", (50, 0, 1)),
    "D": SiteView("D", (100, 0, 1)),
}


def topo(used_a: float) -> list[NodeView]:
    """Four equal nodes, one per site; a1 holds ``used_a`` GiB, the others 10 GiB each."""
    coords = {"A": (0, 0, 1), "B": (5, 0, 1), "C": (50, 0, 1), "D": (100, 0, 1)}
    return [
        NodeView(
            f"{s.lower()}1",
            s,
            capacity_bytes=100 * GIB,
            used_bytes=int((used_a if s == "A" else 10) * GIB),
            coord=coords[s],
        )
        for s in "ABCD"
    ]


def test_under_the_bound_placement_is_the_plain_policy() -> None:
    nodes = topo(10.4)  # 1.03x the mean
    assert POLICY.over_bound(nodes) == set()
    for i in range(50):
        assert POLICY.place(f"o{i}", nodes, 2, care_sites=["A"], sites=SITES)[0] == "a1"


def test_a_node_over_the_bound_gets_no_hashed_copies_but_keeps_its_care_copies() -> None:
    nodes = topo(10.7)  # over 1.05x the mean, under 1.08x
    assert POLICY.over_bound(nodes) == {"a1"}
    for i in range(100):
        chosen = POLICY.place(f"o{i}", nodes, 2, care_sites=["A"], sites=SITES)
        assert chosen[0] == "a1"  # the care-site copy stays at the site
        assert POLICY.place(f"o{i}", nodes, 3)[:3].count("a1") == 0  # hashing avoids it


def test_a_node_over_the_care_bound_spills_care_copies_to_the_nearest_node() -> None:
    nodes = topo(14.0)
    for i in range(50):
        assert POLICY.place(f"o{i}", nodes, 1, care_sites=["A"], sites=SITES) == ["b1"]


def test_nodes_without_a_capacity_are_never_over_the_bound() -> None:
    nodes = [NodeView("x", "A", used_bytes=100 * GIB), NodeView("y", "B", used_bytes=GIB)]
    assert POLICY.over_bound(nodes) == set()


def test_kept_copies_count_and_use_up_their_sites() -> None:
    nodes = [NodeView(f"{s}{i}", s) for s in "ABC" for i in range(2)]
    for i in range(50):
        chosen = POLICY.place(f"k{i}", nodes, 3, keep=["A0"])
        assert chosen[0] == "A0" and len(set(chosen)) == 3
        assert {n[0] for n in chosen} == {"A", "B", "C"}  # never a second copy at A


def test_a_chunk_is_at_risk_only_with_one_reachable_copy_and_two_missing() -> None:
    assert at_risk(1, 3, 3)  # two silent holders: repair now
    assert at_risk(1, 2, 3)  # one dead (not counted) and one silent
    assert not at_risk(2, 3, 3)  # one silent node: wait out the dead delay
    assert not at_risk(1, 2, 2)  # k=2: a single blip never triggers copying
    assert not at_risk(0, 3, 3)  # nothing to copy from
    assert not at_risk(1, 1, 3)  # nothing silent left to stop counting
