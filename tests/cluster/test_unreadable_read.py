"""A read whose every copy is unreadable answers 503 before any body is sent.

Every copy of one instance's chunk is deleted from its node behind the catalog's back (real
node processes, real HTTP): WADO-RS of that instance, and of its series with it first, must
answer 503 with the reason, never 200 followed by a cut connection. Another instance of the
same deployment still reads.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from medshard.catalog.db import Catalog
from medshard.catalog.models import Chunk, Instance, Node, Replica, Series, Study
from medshard.demo import sample_dicom_dir
from medshard.storage.node_client import NodeClient
from tests.conftest import Deployment, Service, start_service

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def fleet(sqlite_deployment: Deployment) -> Iterator[tuple[Deployment, Service]]:
    # scrubbing and repair off: nothing may put a copy back while the read is tried
    svc = start_service(sqlite_deployment, scrub_bytes_per_s=0, heartbeat_interval_s=3600.0)
    try:
        yield sqlite_deployment, svc
    finally:
        svc.process.stop()


def test_every_copy_gone_answers_503_before_any_body(fleet: tuple[Deployment, Service]) -> None:
    dep, svc = fleet
    imported = dep.cli_json("import", str(sample_dicom_dir()))["imported"]
    assert len(imported) >= 2
    victim, other = imported[0], imported[1]
    catalog = Catalog(dep.settings.database_url)
    with catalog.session() as session:
        study, series = session.execute(
            select(Study.study_instance_uid, Series.series_instance_uid)
            .join(Series, Series.study_pk == Study.id)
            .join(Instance, Instance.series_pk == Series.id)
            .where(Instance.sop_instance_uid == victim["sop_instance_uid"])
        ).one()
        copies = session.execute(
            select(Chunk.chunk_id, Node.name)
            .join(Replica, Replica.chunk_pk == Chunk.id)
            .join(Node, Node.id == Replica.node_pk)
            .join(Instance, Instance.object_pk == Chunk.object_pk)
            .where(Instance.sop_instance_uid == victim["sop_instance_uid"], Chunk.idx == 0)
        ).all()
    catalog.dispose()
    assert len(copies) == dep.settings.replicas
    for chunk_id, name in copies:
        with NodeClient(name, dep.node(name).url, dep.settings.node_secret) as node:
            assert node.delete(chunk_id)

    url = f"{svc.dicomweb}/studies/{study}/series/{series}/instances/{victim['sop_instance_uid']}"
    with httpx.Client(headers=svc.auth_headers(), timeout=60) as client:
        r = client.get(url, headers={"Accept": AS_STORED})
        assert r.status_code == 503, (r.status_code, r.headers, r.content[:200])
        assert "no readable replica" in r.text, r.text

        other_url = (
            f"{svc.dicomweb}/studies/{other['study_instance_uid']}/series/"
            f"{other['series_instance_uid']}/instances/{other['sop_instance_uid']}"
        )
        r = client.get(other_url, headers={"Accept": AS_STORED})
        assert r.status_code == 200
