"""``medshard simulate``: the placement code over a synthetic region, no I/O.

Why a simulation: care-aware placement trades load balance against locality, and only a
region-sized population shows the trade. The region is synthetic but shaped like the
paper's: hospitals with many nodes, labs with a few, rural health centres with one or none;
patients whose care teams are a site plus up to two sites near it, drawn in proportion to the
storage deployed there (capacity planned where patients are).

What is the same code as the live system: the node and site views, the near-node sets
(:meth:`CareAwarePlacement.near_nodes`), the distance model (:func:`site_distance`), the
placement-group hash and the rendezvous unit (:func:`unit_of`, evaluated with numpy; a test
checks the vectorised ranking against :meth:`CareAwarePlacement.place_group`), and the load
bound (:meth:`CareAwarePlacement.over_bound`: a node's fill is its copies over its weight,
re-evaluated after every batch of patients, as a live service sees fill at every probe).
What is a model: object keys are integers hashed with the same mix; a node failure loses its
disk; time to repair a node is its bytes over the service's repair rate; the repair policy
is :mod:`medshard.cluster.repair`'s: a lost copy is rebuilt after the dead delay plus the
repair of its node, but a chunk left with one copy is rebuilt at once (``at_risk``). An
object is lost when its second node fails before the first one's copy is rebuilt and its
last node fails before the at-risk repair ends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from medshard.cluster.placement import (
    GOLDEN,
    MIX1,
    MIX2,
    MS_PER_KM,
    PLACEMENT_GROUPS,
    CareAwarePlacement,
    NodeView,
    SiteView,
    node_hash,
    site_distance,
)
from medshard.config import Settings

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
#: Nodes' coordinates match the map (plus jitter and heights): the distance model's scale.
COORD_MS_PER_KM = MS_PER_KM
TOP = 16


@dataclass
class SimulationConfig:
    nodes: int = 2000
    sites: int = 300
    patients: int = 1_000_000
    files_per_patient: int = 20
    replicas: int = 3
    seed: int = 1
    object_kb: int = 300
    failure_rate_per_day: float = 0.01
    days: int = 365
    local_ms: float = 5.0
    batch_patients: int = 10000


def mix64_np(z: U64) -> U64:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def units_np(groups: U64, hashes: U64) -> FloatArray:
    """:func:`unit_of` for arrays (broadcasting groups against node hashes)."""
    z = mix64_np((groups * np.uint64(GOLDEN)) ^ hashes)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


@dataclass
class Region:
    views: list[NodeView]
    sites: dict[str, SiteView]
    site_names: list[str]
    node_site: IntArray
    weight: FloatArray
    hashes: U64
    site_xy: FloatArray
    site_p: FloatArray


def build_region(cfg: SimulationConfig, rng: np.random.Generator) -> Region:
    s = cfg.sites
    kinds = np.array(["hospital"] * max(1, s // 5) + ["lab"] * (s // 5))
    kinds = np.concatenate([kinds, np.array(["rural"] * (s - len(kinds)))])
    xy = rng.uniform(0, 600, size=(s, 2))  # km
    base = np.where(kinds == "hospital", 12.0, np.where(kinds == "lab", 3.0, 1.0))
    base = base * rng.uniform(0.5, 1.5, size=s)
    nodeless = (kinds == "rural") & (rng.random(s) < 0.15)
    site_p = base / base.sum()  # patients per site follow the site's size
    node_site, weight = provision(cfg, rng, xy, site_p, nodeless)
    n = len(node_site)
    reliability = rng.uniform(0.95, 0.999, size=n)
    coords = xy[node_site] * COORD_MS_PER_KM + rng.normal(0, 0.3, size=(n, 2))
    heights = rng.uniform(0.2, 2.0, size=n)
    names = [f"s{i}" for i in range(s)]
    views = [
        NodeView(
            f"n{i}",
            names[node_site[i]],
            weight_override=float(weight[i]),
            reliability=float(reliability[i]),
            coord=(float(coords[i, 0]), float(coords[i, 1]), float(heights[i])),
        )
        for i in range(n)
    ]
    sites = {}
    for j in range(s):
        members = np.flatnonzero(node_site == j)
        anchor = None
        if len(members):
            anchor = (
                float(coords[members, 0].mean()),
                float(coords[members, 1].mean()),
                float(heights[members].mean()),
            )
        lat, lon = 15 + xy[j, 1] / 111.0, 78 + xy[j, 0] / (111.0 * math.cos(math.radians(15)))
        sites[names[j]] = SiteView(names[j], anchor, (float(lat), float(lon)))
    hashes = np.array([node_hash(v.name) for v in views], dtype=np.uint64)
    return Region(views, sites, names, node_site, weight, hashes, xy, site_p)


def provision(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    xy: FloatArray,
    site_p: FloatArray,
    nodeless: npt.NDArray[np.bool_],
) -> tuple[IntArray, FloatArray]:
    """Capacity planned where the patients are: each site with nodes gets node weight in
    proportion to the care-site copies its patients (and those of node-less centres nearest
    it) will need, plus its share of the hashed copies. Nodes come in weights 1, 2 and 4;
    the biggest are placed first, each where the deficit is largest."""
    s = len(site_p)
    with_nodes = np.flatnonzero(~nodeless)
    d = np.linalg.norm(xy[:, None, :] - xy[None, with_nodes, :], axis=2)
    served_by = with_nodes[d.argmin(axis=1)]  # a node-less centre's copies go to its nearest
    sample = _care_sites(min(cfg.patients, 200_000), xy, site_p, rng)
    care_copies = np.bincount(served_by[sample[sample >= 0]], minlength=s).astype(float)
    hashed = sample.shape[0] * cfg.replicas - care_copies.sum()
    weight = rng.choice([1.0, 2.0, 4.0], size=cfg.nodes, p=[0.5, 0.35, 0.15])
    weight = np.sort(weight)[::-1]
    # hashed copies spread over all weight: a site's target share is its care share blended
    # with an equal share of the rest (solved by iteration on the allocation below)
    target = care_copies / care_copies.sum()
    node_site = np.empty(cfg.nodes, dtype=np.int64)
    have = np.zeros(s)
    total = weight.sum()
    care_frac = care_copies.sum() / (care_copies.sum() + hashed)
    # every site with nodes gets one (the smallest weights to the smallest demands)
    order = with_nodes[np.argsort(target[with_nodes])]
    for i, site in enumerate(order):
        node_site[cfg.nodes - 1 - i] = site
        have[site] += weight[cfg.nodes - 1 - i]
    for i in range(cfg.nodes - len(order)):
        # load per weight if node i joined each site; put it where that load is highest
        want = care_frac * target * total + (1 - care_frac) * have
        deficit = np.where(nodeless, -np.inf, want - have)
        site = int(deficit.argmax())
        node_site[i] = site
        have[site] += weight[i]
    return node_site, weight


def near_table(
    region: Region, placement: CareAwarePlacement, alive: npt.NDArray[np.bool_]
) -> IntArray:
    """Per site, the node indices that count as nearest (padded with -1): exactly
    :meth:`CareAwarePlacement.near_nodes` over the live nodes."""
    views = [v for i, v in enumerate(region.views) if alive[i]]
    index = {v.name: i for i, v in enumerate(region.views)}
    rows = [
        [index[v.name] for v in placement.near_nodes(name, views, region.sites)]
        for name in region.site_names
    ]
    width = max(1, max(len(r) for r in rows))
    table = np.full((len(rows), width), -1, dtype=np.int64)
    for j, r in enumerate(rows):
        table[j, : len(r)] = r
    return table


def distances(region: Region) -> FloatArray:
    """Predicted RTT (ms) from every site to every node, by the placement's own model."""
    return np.array(
        [[site_distance(name, v, region.sites) for v in region.views] for name in region.site_names]
    )


def changed_sites(a: IntArray, b: IntArray) -> list[int]:
    """Sites whose near-node sets differ between two tables."""
    return [
        j for j in range(len(a)) if set(a[j][a[j] >= 0].tolist()) != set(b[j][b[j] >= 0].tolist())
    ]


def care_top(
    near: IntArray,
    weight_eff: FloatArray,
    hashes: U64,
    k: int,
    sites: list[int] | None = None,
    into: npt.NDArray[np.int16] | None = None,
) -> npt.NDArray[np.int16]:
    """For every site and placement group, the k best-ranked of the site's near nodes (-1
    padded): a care-site copy is then a lookup, not a ranking, per object."""
    table = into if into is not None else np.full((len(near), PLACEMENT_GROUPS, k), -1, np.int16)
    groups = np.arange(PLACEMENT_GROUPS, dtype=np.uint64)[:, None]
    for j in sites if sites is not None else range(len(near)):
        members = near[j][near[j] >= 0]
        table[j] = -1
        if not len(members):
            continue
        score = -weight_eff[members][None, :] / np.log(units_np(groups, hashes[members][None, :]))
        width = min(k, len(members))
        if len(members) > width:
            part = np.argpartition(-score, width - 1, axis=1)[:, :width]
            part_scores = np.take_along_axis(score, part, axis=1)
            order = np.take_along_axis(part, np.argsort(-part_scores, axis=1), axis=1)
        else:
            order = np.argsort(-score, axis=1)
        table[j, :, :width] = members[order]
    return table


def group_top(region: Region, weight_eff: FloatArray) -> tuple[IntArray, FloatArray]:
    """For every placement group, the TOP best-ranked nodes and their scores."""
    top = np.empty((PLACEMENT_GROUPS, TOP), dtype=np.int64)
    scores = np.empty((PLACEMENT_GROUPS, TOP))
    step = 2048
    for start in range(0, PLACEMENT_GROUPS, step):
        groups = np.arange(start, start + step, dtype=np.uint64)[:, None]
        score = -weight_eff[None, :] / np.log(units_np(groups, region.hashes[None, :]))
        part = np.argpartition(-score, TOP, axis=1)[:, :TOP]
        part_scores = np.take_along_axis(score, part, axis=1)
        order = np.argsort(-part_scores, axis=1)
        top[start : start + step] = np.take_along_axis(part, order, axis=1)
        scores[start : start + step] = np.take_along_axis(part_scores, order, axis=1)
    return top, scores


def add_to_top(
    top: IntArray, scores: FloatArray, node: int, weight_eff: float, node_hash_: int
) -> tuple[IntArray, FloatArray]:
    groups = np.arange(PLACEMENT_GROUPS, dtype=np.uint64)
    new = -weight_eff / np.log(units_np(groups, np.full(1, node_hash_, dtype=np.uint64)))
    all_top = np.concatenate([top, np.full((len(top), 1), node)], axis=1)
    all_scores = np.concatenate([scores, new[:, None]], axis=1)
    order = np.argsort(-all_scores, axis=1)[:, :TOP]
    return np.take_along_axis(all_top, order, axis=1), np.take_along_axis(all_scores, order, axis=1)


def place_batch(
    groups: U64,
    care: IntArray,
    near_top: npt.NDArray[np.int16],
    top: IntArray,
    node_site: IntArray,
    alive: npt.NDArray[np.bool_],
    k: int,
    roomy: npt.NDArray[np.bool_] | None = None,
) -> IntArray:
    """The placement of a batch of objects: care sites first, then the group ranking
    (over the ``roomy`` nodes only, when given: those under the load bound)."""
    hashable = alive if roomy is None else roomy
    b = len(groups)
    g = groups.astype(np.int64)
    chosen = np.full((b, k), -1, dtype=np.int64)
    count = np.zeros(b, dtype=np.int64)
    rows = np.arange(b)
    for slot in range(care.shape[1]):
        site = care[:, slot]
        done = (site < 0) | (count >= k)
        cands = near_top[np.maximum(site, 0), g].astype(np.int64)  # [b, k], best first
        for c in range(cands.shape[1]):
            if done.all():
                break
            node = cands[:, c]
            ok = ~done & (node >= 0) & alive[np.maximum(node, 0)]
            for j in range(k):
                ok &= node != chosen[:, j]
            chosen[rows[ok], count[ok]] = node[ok]
            count += ok
            done |= ok
    for distinct in (True, False):
        for t in range(top.shape[1]):
            if (count >= k).all():
                break  # almost every object is complete after its first few ranked nodes
            node = top[g, t]
            ok = (count < k) & hashable[node]
            for c in range(k):
                ok &= node != chosen[:, c]
                if distinct:
                    used = chosen[:, c] >= 0
                    ok &= ~(used & (node_site[node] == node_site[np.maximum(chosen[:, c], 0)]))
            chosen[rows[ok], count[ok]] = node[ok]
            count += ok
    return chosen


def _patients(cfg: SimulationConfig, region: Region, rng: np.random.Generator) -> IntArray:
    return _care_sites(cfg.patients, region.site_xy, region.site_p, rng)


def _care_sites(
    count: int, xy: FloatArray, site_p: FloatArray, rng: np.random.Generator
) -> IntArray:
    """Care sites per patient, most recent first (-1 padded): one site, then up to two of
    the eight sites nearest it, each drawn in proportion to the sites' sizes."""
    s = len(site_p)
    d = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=2)
    neighbours = np.argsort(d, axis=1)[:, 1:9]
    first = rng.choice(s, size=count, p=site_p)
    care = np.full((count, 3), -1, dtype=np.int64)
    care[:, 0] = first
    many = rng.choice([1, 2, 3], size=count, p=[0.3, 0.4, 0.3])
    for slot in (1, 2):
        nb = neighbours[first]
        p = site_p[nb]
        pick = p.cumsum(axis=1) / p.sum(axis=1, keepdims=True) > rng.random((count, 1))
        other = nb[np.arange(count), pick.argmax(axis=1)]
        fresh = (many > slot) & np.all(care != other[:, None], axis=1)
        care[fresh, slot] = other[fresh]
    return care


def run_simulation(cfg: SimulationConfig) -> dict[str, Any]:
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    settings = Settings(home=__import__("pathlib").Path("."))
    placement = CareAwarePlacement(
        min_reliability=settings.min_reliability, near_slack_ms=settings.near_slack_ms
    )
    region = build_region(cfg, rng)
    n = len(region.views)
    k = cfg.replicas
    alive = np.ones(n + 1, dtype=bool)
    alive[n] = False  # the slot of the node added later
    reliability = np.array([v.reliability for v in region.views])
    weight = np.append(region.weight, 2.0)
    weight_eff = weight * np.append(reliability, 0.99)
    node_site = np.append(region.node_site, 0)
    top, top_scores = group_top(region, weight_eff[:n])
    bound = placement.load_bound

    # the added node: weight 2 at a random site that has nodes; the removed one: random
    added_site = int(rng.choice(region.node_site))
    node_site[n] = added_site
    added_view = NodeView(
        f"n{n}",
        region.site_names[added_site],
        weight_override=2.0,
        reliability=0.99,
        coord=region.views[int(np.flatnonzero(region.node_site == added_site)[0])].coord,
    )
    hashes = np.append(region.hashes, np.uint64(node_hash(added_view.name)))
    top_add, _ = add_to_top(top, top_scores, n, weight_eff[n], int(hashes[n]))
    grown = Region(
        [*region.views, added_view], region.sites, region.site_names, node_site, weight,
        hashes, region.site_xy, region.site_p,
    )  # fmt: skip
    dist = distances(grown)
    near = near_table(grown, placement, alive)
    alive_add = alive.copy()
    alive_add[n] = True
    near_add = near_table(grown, placement, alive_add)
    removed = int(rng.integers(n))
    alive_rm = alive.copy()
    alive_rm[removed] = False
    near_rm = near_table(grown, placement, alive_rm)
    down = alive.copy()
    down[rng.choice(n, size=max(1, n // 100), replace=False)] = False
    care_base = care_top(near, weight_eff, hashes, k)
    care_add = care_base.copy()
    care_top(near_add, weight_eff, hashes, k, changed_sites(near, near_add), into=care_add)
    care_rm = care_base.copy()
    care_top(near_rm, weight_eff, hashes, k, changed_sites(near, near_rm), into=care_rm)
    # the load bound: nodes over it take no new hashed copies; over the care bound no care
    # copies either, and their sites' care copies spill
    over = np.zeros(n + 1, dtype=bool)
    crowded = np.zeros(n + 1, dtype=bool)
    near_now = np.full((len(near), max(near.shape[1], TOP)), -1, dtype=np.int64)
    near_now[:, : near.shape[1]] = near
    care_now = care_base.copy()
    index = {v.name: i for i, v in enumerate(grown.views)}

    care = _patients(cfg, region, rng)
    moved_care = rng.random(cfg.patients) < 0.01
    new_care = care.copy()
    new_care[moved_care, 0] = rng.choice(len(region.site_names), size=int(moved_care.sum()),
                                         p=region.site_p)  # fmt: skip
    load = np.zeros(n + 1)
    stats = {"objects": 0, "moved_add": 0, "moved_rm": 0, "moved_care": 0, "care_objs": 0,
             "local": 0, "local_down": 0, "within": 0, "at_care": 0, "spilled": 0}  # fmt: skip
    all_replicas = np.empty((cfg.patients * cfg.files_per_patient, k), dtype=np.int16)
    near_mask = np.zeros((len(region.site_names), n + 1), dtype=bool)
    for j, row in enumerate(near):
        near_mask[j, row[row >= 0]] = True
    salt = np.uint64(cfg.seed * 0x1000193)
    # at least 100 batches: the load bound sees the fill after each (a probe's worth)
    batch = max(1, min(cfg.batch_patients, cfg.patients // 100))
    for start in range(0, cfg.patients, batch):
        stop = min(cfg.patients, start + batch)
        pids = np.repeat(np.arange(start, stop, dtype=np.uint64), cfg.files_per_patient)
        files = np.tile(np.arange(cfg.files_per_patient, dtype=np.uint64), stop - start)
        keys = mix64_np(pids * np.uint64(cfg.files_per_patient) + files + salt)
        groups = keys % np.uint64(PLACEMENT_GROUPS)
        pc = care[pids.astype(np.int64)]
        if bound > 0 and load.any():
            now = np.zeros(n + 1, dtype=bool)
            mean = load[:n].sum() / weight[:n].sum()
            over[:n] = alive[:n] & (load[:n] > bound * mean * weight[:n])
            now[:n] = alive[:n] & (load[:n] > placement.care_load_bound * mean * weight[:n])
            if (now != crowded).any():
                flipped = now != crowded
                crowded = now
                rows = _rows_to_respill(near, near_now, flipped)
                ok = [v for i, v in enumerate(grown.views) if alive[i] and not crowded[i]]
                for j in rows:
                    near_j = placement.near_nodes(region.site_names[j], ok, region.sites)
                    got = [index[v.name] for v in near_j]
                    near_now[j] = -1
                    near_now[j, : min(len(got), near_now.shape[1])] = got[: near_now.shape[1]]
                care_top(near_now, weight_eff, hashes, k, rows, into=care_now)
        base = place_batch(groups, pc, care_now, top, node_site, alive, k, alive & ~over)
        all_replicas[start * cfg.files_per_patient : stop * cfg.files_per_patient] = base
        np.add.at(load, base[base >= 0], 1)
        stats["objects"] += len(groups)
        # data movement is the placement function's (the bound never moves a copy): compare
        # placements with the bound off, before and after the change
        ref = place_batch(groups, pc, care_base, top, node_site, alive, k) if over.any() else base
        stats["spilled"] += _moved(ref, base)
        grown_pl = place_batch(groups, pc, care_add, top_add, node_site, alive_add, k)
        stats["moved_add"] += _moved(ref, grown_pl)
        shrunk = place_batch(groups, pc, care_rm, top, node_site, alive_rm, k)
        stats["moved_rm"] += _moved(ref, shrunk)
        mc = moved_care[pids.astype(np.int64)]
        if mc.any():
            after = place_batch(groups[mc], new_care[pids.astype(np.int64)][mc], care_base, top,
                                node_site, alive, k)  # fmt: skip
            stats["moved_care"] += _moved(ref[mc], after)
            stats["care_objs"] += int(mc.sum())
        # one read per object, from one of the patient's care sites
        which = (rng.random(len(groups)) * (pc >= 0).sum(axis=1)).astype(np.int64)
        reader = pc[np.arange(len(groups)), which]
        for healthy, key in ((alive, "local"), (down, "local_down")):
            d = np.where(healthy[base] & (base >= 0), dist[reader[:, None], np.maximum(base, 0)],
                         np.inf)  # fmt: skip
            serving = base[np.arange(len(groups)), d.argmin(axis=1)]
            ok = np.isfinite(d.min(axis=1))
            local = ok & (near_mask[reader, serving] | (node_site[serving] == reader))
            stats[key] += int(local.sum())
            if key == "local":
                stats["within"] += int((d.min(axis=1) <= cfg.local_ms).sum())
        at = np.zeros(len(groups), dtype=bool)
        for slot in range(3):
            site = pc[:, slot]
            has = site >= 0
            hit = near_mask[np.maximum(site, 0)[:, None], np.maximum(base, 0)].any(axis=1)
            at |= has & hit
        stats["at_care"] += int(at.sum())

    per_weight = load[:n] / weight[:n]
    replicas_total = stats["objects"] * k
    busiest = float(load[:n].max()) * cfg.object_kb * 1024
    # what two failed nodes share (the at-risk chunks repaired first): the busiest pair's
    shared = float(np.sort(load[:n])[-2] * load[:n].max() / stats["objects"])
    failures = _failures(cfg, n, rng)
    by_rate = {}
    for label, rate in (
        ("rebalance_bytes_per_s", float(settings.rebalance_bytes_per_s)),
        ("100MB/s", 100e6),
        ("parallel: every node at rebalance_bytes_per_s", settings.rebalance_bytes_per_s * n / k),
    ):
        minutes = busiest / rate / 60
        first = settings.dead_after_s / 60 + minutes
        last = (2 * settings.heartbeat_interval_s + shared * cfg.object_kb * 1024 / rate) / 60
        by_rate[label] = {
            "repair_minutes": round(minutes, 3),
            "lost_copy_rebuilt_within_minutes": round(first, 3),
            "last_copy_rebuilt_within_minutes": round(last, 3),
            "objects_lost": _objects_lost(all_replicas, failures, first, last),
        }
    repair_minutes = by_rate["rebalance_bytes_per_s"]["repair_minutes"]
    lost = by_rate["rebalance_bytes_per_s"]["objects_lost"]
    return {
        "nodes": n,
        "sites": len(region.site_names),
        "patients": cfg.patients,
        "objects": stats["objects"],
        "replicas": k,
        "placement_groups": PLACEMENT_GROUPS,
        "load_max_over_mean": round(float(per_weight.max() / per_weight.mean()), 4),
        "load_min_over_mean": round(float(per_weight.min() / per_weight.mean()), 4),
        "moved_fraction_on_add": round(stats["moved_add"] / replicas_total, 6),
        "ideal_moved_fraction_on_add": round(float(weight[n] / weight.sum()), 6),
        "moved_fraction_on_remove": round(stats["moved_rm"] / replicas_total, 6),
        "ideal_moved_fraction_on_remove": round(float(weight[removed] / weight[:n].sum()), 6),
        "moved_replicas_per_object_on_care_change": round(
            stats["moved_care"] / max(stats["care_objs"], 1), 4
        ),
        "local_read_fraction": round(stats["local"] / stats["objects"], 4),
        "local_read_fraction_1pct_nodes_down": round(stats["local_down"] / stats["objects"], 4),
        f"read_within_{cfg.local_ms:g}ms_fraction": round(stats["within"] / stats["objects"], 4),
        "objects_with_copy_near_a_care_site": round(stats["at_care"] / stats["objects"], 4),
        "repair_minutes_after_node_loss": round(repair_minutes, 2),
        "repair_model": "busiest node's bytes over one service at rebalance_bytes_per_s, "
        "after the dead delay; a chunk down to its last copy: two heartbeats plus the copying "
        "of what the two failed nodes share",
        "load_bound": bound,
        "copies_steered_by_load_bound": round(stats["spilled"] / replicas_total, 4),
        "repair_by_rate": by_rate,
        "objects_lost": lost,
        "failure_model": f"{cfg.failure_rate_per_day:.0%}/node/day for {cfg.days} days, each "
        "losing the node's disk; lost if the second node fails before the first one's copy "
        "is rebuilt and the last before the at-risk repair ends",
        "seconds": round(time.perf_counter() - started, 2),
    }


def _rows_to_respill(
    near: IntArray, near_now: IntArray, flipped: npt.NDArray[np.bool_]
) -> list[int]:
    """Sites whose near set may change when ``flipped`` nodes crossed the load bound: those
    with a flipped node near them (now or without the bound), and those spilling now."""

    def touches(table: IntArray) -> npt.NDArray[np.bool_]:
        return np.asarray(((table >= 0) & flipped[np.maximum(table, 0)]).any(axis=1), dtype=bool)

    spilling = (near_now[:, : near.shape[1]] != near).any(axis=1)
    spilling |= (near_now[:, near.shape[1] :] >= 0).any(axis=1)
    return np.flatnonzero(touches(near) | touches(near_now) | spilling).tolist()


def _moved(before: IntArray, after: IntArray) -> int:
    """Copies in ``after`` that ``before`` did not have (each must be copied)."""
    same = np.zeros(after.shape, dtype=bool)
    for c in range(before.shape[1]):
        same |= after == before[:, c : c + 1]
    return int(((after >= 0) & ~same).sum())


def _failures(
    cfg: SimulationConfig, n: int, rng: np.random.Generator
) -> tuple[FloatArray, IntArray]:
    """Failure times (minutes, sorted) and nodes over ``days`` at the daily failure rate."""
    fails = rng.random((cfg.days, n)) < cfg.failure_rate_per_day
    day, node = np.nonzero(fails)
    minute = day * 1440.0 + rng.uniform(0, 1440, size=len(day))
    order = np.argsort(minute)
    return minute[order], node[order].astype(np.int64)


def _objects_lost(
    replicas: npt.NDArray[np.int16],
    failures: tuple[FloatArray, IntArray],
    first: float,
    last: float,
) -> int:
    """Objects whose copies were all lost before repair put them back: for each failure
    that leaves an object one copy (its (k-1)-th), the earlier k-2 failed within ``first``
    minutes before it (their copies not yet rebuilt) and the last within ``last`` minutes
    after it (the at-risk repair; ``first`` again for k = 2, which has no at-risk rule)."""
    k = replicas.shape[1]
    minute, node = failures
    if k == 1:
        return int(np.isin(replicas[:, 0], node).sum())
    after = last if k >= 3 else first
    lost: set[int] = set()
    for j in range(len(minute)):
        lo, hi = np.searchsorted(minute, [minute[j] - first, minute[j] + after], side="right")
        earlier, later = node[lo:j], node[j + 1 : hi]
        if not len(later) or len(earlier) < k - 2:
            continue
        rows = np.flatnonzero((replicas == node[j]).any(axis=1))
        held = replicas[rows]
        in_earlier, in_later = np.isin(held, earlier), np.isin(held, later)
        ok = (in_earlier | in_later | (held == node[j])).all(axis=1)
        ok &= in_later.any(axis=1) & (in_earlier.sum(axis=1) >= k - 2)
        lost.update(rows[ok].tolist())
    return len(lost)
