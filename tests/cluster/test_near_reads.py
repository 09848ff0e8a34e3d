"""Reads go to the healthy replica nearest the requesting caller's site.

Two sites, each with its own loopback address: st-marys (the test account's site, so the
patient's care site) and far-away, whose nodes the service reaches only through a delaying
TCP proxy (:mod:`tests.cluster.delay_proxy`, 30 ms each way). Every object has a copy at each
site. A caller at st-marys is served from st-marys' nodes; a doctor at far-away, reading the
same instances, from far-away's; the node-side request counters say which served, and the
near reads are measurably faster. The CLI's ``get`` follows the caller's site as well.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import select

from medshard.catalog.db import Catalog
from medshard.catalog.models import Chunk, Node, Patient, Replica, Study
from medshard.cluster.nodes import register_node
from medshard.demo import sample_dicom_dir
from medshard.node.launcher import NodeAuth, NodeProcess
from tests.cluster.delay_proxy import DelayProxy
from tests.cluster.netfaults import loopback_addresses
from tests.conftest import Deployment, make_deployment, start_service

NEAR, FAR = "st-marys", "far-away"
DELAY_S = 0.030  # each way: a far round trip costs 60 ms more
ROUNDS = 5
PASSWORD = "correct horse battery staple 42"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def gets(dep: Deployment, nodes: list[NodeProcess]) -> int:
    """Chunk GETs the nodes have served (asked directly, never through a proxy)."""
    total = 0
    for node in nodes:
        with httpx.Client(auth=NodeAuth(dep.settings.node_secret, node.name)) as client:
            total += int(client.get(f"{node.url}/health").json()["load"]["gets_total"])
    return total


def login(url: str, username: str) -> str:
    r = httpx.post(
        f"{url}/api/auth/token", data={"username": username, "password": PASSWORD}, timeout=30
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def sites_of_copies(dep: Deployment) -> list[set[str]]:
    catalog = Catalog(dep.settings.database_url)
    with catalog.session() as session:
        rows = session.execute(
            select(Chunk.id, Node.name)
            .join(Replica, Replica.chunk_pk == Chunk.id)
            .join(Node, Node.id == Replica.node_pk)
            .where(Replica.state == "ok")
        ).all()
    catalog.dispose()
    site_of = {n.name: n.site for n in dep.nodes}
    by_chunk: dict[int, set[str]] = {}
    for chunk, node in rows:
        by_chunk.setdefault(chunk, set()).add(site_of[node])
    return list(by_chunk.values())


@contextmanager
def two_sites(root: Path) -> Iterator[tuple[Deployment, list[NodeProcess], list[NodeProcess]]]:
    """A deployment with two nodes at NEAR and two at FAR, each site on its own loopback
    address, the FAR ones registered behind delaying proxies: (deployment, near nodes, far
    nodes). The proxies and nodes are stopped afterwards."""
    near_ip, far_ip = loopback_addresses(2)
    dep = make_deployment(
        root, sites=[NEAR, NEAR, FAR, FAR], hosts=[near_ip, near_ip, far_ip, far_ip]
    )
    near_nodes, far_nodes = dep.nodes[:2], dep.nodes[2:]
    proxies = [DelayProxy(n.port, DELAY_S, host=far_ip) for n in far_nodes]
    try:
        catalog = Catalog(dep.settings.database_url)
        for node, proxy in zip(far_nodes, proxies, strict=True):  # the service sees them far
            register_node(catalog, name=node.name, url=proxy.url, site=FAR, capacity_bytes=0)
        catalog.dispose()
        yield dep, near_nodes, far_nodes
    finally:
        for proxy in proxies:
            proxy.close()
        for proc in dep.nodes:
            proc.stop()


def test_reads_come_from_the_replica_nearest_the_callers_site(tmp_path: Path) -> None:
    with two_sites(tmp_path) as (dep, near_nodes, far_nodes):
        service = None
        try:
            imported = dep.cli_json("import", str(sample_dicom_dir()))["imported"]
            assert imported
            assert all(sites == {NEAR, FAR} for sites in sites_of_copies(dep))

            # a doctor at the far site, in the patients' care teams (added by an admin)
            dep.cli(
                "user", "add", "dr-far", "--role", "doctor", "--site", FAR, "--password", PASSWORD
            )
            dep.cli("user", "add", "root-admin", "--role", "admin", "--password", PASSWORD)
            service = start_service(dep, heartbeat_interval_s=3600.0, scrub_bytes_per_s=0)
            near = service.auth_headers()
            far_token = login(service.url, "dr-far")
            far = {"Authorization": f"Bearer {far_token}"}
            admin = {"Authorization": f"Bearer {login(service.url, 'root-admin')}"}
            catalog = Catalog(dep.settings.database_url)
            with catalog.session() as session:  # patients the REST API can name (an ID, not "")
                rows = session.execute(
                    select(Patient.patient_id, Study.study_instance_uid)
                    .join(Study, Study.patient_pk == Patient.id)
                    .where(Patient.patient_id != "")
                ).all()
            catalog.dispose()
            for pid in {pid for pid, _study in rows}:
                team = f"{service.url}/api/patients/{pid}/careteam"
                # the admin's add is committed, though the answer (the team, shown to the admin,
                # who sees no clinical data) is a 404; the doctor's own view proves it
                httpx.post(
                    f"{team}/doctors", json={"username": "dr-far"}, headers=admin, timeout=30
                )
                r = httpx.get(team, headers=far, timeout=30)
                assert r.status_code == 200, r.text
                assert "dr-far" in {d["username"] for d in r.json()["doctors"]}
            urls = [f"{service.dicomweb}/studies/{study}" for _pid, study in rows]
            assert len(urls) >= 5

            def timed_reads(headers: dict[str, str], served_by: list[NodeProcess]) -> list[float]:
                before = gets(dep, dep.nodes)
                before_site = gets(dep, served_by)
                times = []
                with httpx.Client(headers=headers, timeout=60) as client:
                    for url in urls:
                        start = time.perf_counter()
                        r = client.get(url, headers={"Accept": AS_STORED})
                        times.append(time.perf_counter() - start)
                        assert r.status_code == 200, r.text
                served = gets(dep, dep.nodes) - before
                assert served >= len(urls)  # every instance's chunk was fetched
                assert gets(dep, served_by) - before_site == served  # ... all at this site
                return times

            near_times: list[float] = []
            far_times: list[float] = []
            for _ in range(ROUNDS):  # interleaved, so machine load falls on both alike
                near_times += timed_reads(near, near_nodes)
                far_times += timed_reads(far, far_nodes)
            near_ms = statistics.median(near_times) * 1000
            far_ms = statistics.median(far_times) * 1000
            print(f"median study read: near site {near_ms:.1f} ms, far site {far_ms:.1f} ms")
            assert far_ms - near_ms > 2 * DELAY_S * 1000 * 0.8, (near_ms, far_ms)

            # the CLI follows the caller's site too
            sop = imported[0]["sop_instance_uid"]
            before = gets(dep, far_nodes)
            dep.cli("get", "--sop", sop, "-o", str(tmp_path / "far.dcm"), token=far_token)
            assert gets(dep, far_nodes) > before
            before = gets(dep, near_nodes)
            dep.cli("get", "--sop", sop, "-o", str(tmp_path / "near.dcm"))
            assert gets(dep, near_nodes) > before
            assert (tmp_path / "far.dcm").read_bytes() == (tmp_path / "near.dcm").read_bytes()
        finally:
            if service is not None:
                service.process.stop()
