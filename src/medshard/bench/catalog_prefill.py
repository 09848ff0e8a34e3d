"""Bulk prefill for `medshard bench catalog --prefill N`: a catalog of N instances in minutes.

Filling 10^6 instances through the record path takes hours on a 2-core machine (that path's
rate is what the bench measures), and the question at that size is whether the record path
and the searches stay fast over a big catalog, not how long the filling took. So the rows are
made here directly, in batches of multi-row INSERTs, in the shape the record path leaves them:
patients with a wrapped key and a care site, 2 studies x 2 series x 10 instances each, one
object, one chunk and three replica rows per instance, the instance's source site. Audit
events are not prefilled (the chain is append-only: its length costs an insert nothing), and
object keys are placeholders that no read unwraps (the bench leaves node I/O out anyway).

Primary keys are given explicitly, above what the catalog already holds, so no ``RETURNING``
round trip is needed; PostgreSQL's sequences are moved past them afterwards.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select, text

from medshard.catalog.models import (
    CareSite,
    Chunk,
    Instance,
    Node,
    Patient,
    Replica,
    Series,
    Site,
    StoredObject,
    Study,
    utcnow,
)
from medshard.cluster.archive import Archive
from medshard.cluster.objects import shard_of
from medshard.security.identity import site_pk

BATCH_ROWS = 5000
_KEYED = (Patient, Study, Series, StoredObject, Chunk, Replica, Instance)
_ORDER = (Patient, CareSite, Study, Series, StoredObject, Chunk, Replica, Instance)


def _table(model: type) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


@dataclass(frozen=True)
class Shape:
    """What the record path's bench generates per patient, and the values it draws from."""

    sites: list[str]
    modalities: list[str]
    studies_per_patient: int
    series_per_study: int
    instances_per_series: int
    sop_class_uid: str


class _Filler:
    """Makes rows with explicit keys and inserts them in batches, parents first."""

    def __init__(self, archive: Archive, conn: Connection, shape: Shape) -> None:
        self.archive, self.conn, self.shape = archive, conn, shape
        self.next_id: dict[type, int] = {
            m: int(conn.execute(select(func.max(_table(m).c.id))).scalar() or 0) + 1 for m in _KEYED
        }
        self.site_pk = dict(conn.execute(select(Site.name, Site.id)).tuples().all())
        self.node_pks = list(conn.execute(select(Node.id).order_by(Node.id)).scalars())[:3]
        self.pending: dict[type, list[dict[str, Any]]] = {m: [] for m in _ORDER}
        self.now = utcnow()

    def key(self, model: type) -> int:
        pk = self.next_id[model]
        self.next_id[model] = pk + 1
        return pk

    def add(self, model: type, row: dict[str, Any]) -> None:
        rows = self.pending[model]
        rows.append(row)
        if len(rows) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        for model in _ORDER:  # parents before children, for the foreign keys
            if rows := self.pending[model]:
                self.conn.execute(insert(_table(model)), rows)
                rows.clear()

    def patient(self, patient_id: str, site: str) -> int:
        wrapped, key_id = self.archive.store.new_patient_key(patient_id)
        pk, shard = self.key(Patient), shard_of(patient_id, self.archive.settings.shards)
        self.add(Patient, {
            "id": pk, "patient_id": patient_id, "name": f"Bench^{patient_id[-7:]}",
            "birth_date": "", "sex": "", "shard": shard,
            "wrapped_key": wrapped, "master_key_id": key_id, "created_at": self.now,
        })  # fmt: skip
        self.add(CareSite, {"patient_pk": pk, "site_id": self.site_pk[site], "since": self.now,
                            "last_involved_at": self.now})  # fmt: skip
        return pk

    def study(self, patient_pk: int, uid: str, date: str) -> int:
        pk = self.key(Study)
        self.add(Study, {"id": pk, "study_instance_uid": uid, "patient_pk": patient_pk,
                         "study_date": date, "created_at": self.now})  # fmt: skip
        return pk

    def series(self, study_pk: int, uid: str, modality: str, date: str) -> int:
        pk = self.key(Series)
        self.add(Series, {"id": pk, "series_instance_uid": uid, "study_pk": study_pk,
                          "modality": modality, "series_date": date})  # fmt: skip
        return pk

    def instance(
        self, patient_pk: int, series_pk: int, sop_uid: str, number: int, site: str
    ) -> None:
        object_pk, chunk_pk = self.key(StoredObject), self.key(Chunk)
        digest = hashlib.sha256(sop_uid.encode()).hexdigest()
        self.add(StoredObject, {
            "id": object_pk, "object_key": digest[:32], "patient_pk": patient_pk, "shard": 0,
            "kind": "dicom", "content_type": "application/dicom", "size": 600, "sha256": digest,
            "chunk_size": 4 << 20, "wrapped_key": os.urandom(40), "created_at": self.now,
        })  # fmt: skip
        self.add(Chunk, {"id": chunk_pk, "object_pk": object_pk, "idx": 0, "chunk_id": digest,
                         "size": 616})  # fmt: skip
        for node_pk in self.node_pks:
            self.add(Replica, {"id": self.key(Replica), "chunk_pk": chunk_pk, "node_pk": node_pk,
                               "state": "ok", "created_at": self.now})  # fmt: skip
        self.add(Instance, {
            "id": self.key(Instance), "sop_instance_uid": sop_uid, "series_pk": series_pk,
            "sop_class_uid": self.shape.sop_class_uid, "instance_number": number,
            "transfer_syntax_uid": "1.2.840.10008.1.2.1", "rows": 8, "columns": 8,
            "bits_allocated": 16, "object_pk": object_pk, "source_site_id": self.site_pk[site],
            "created_at": self.now, "deleted": False,
        })  # fmt: skip


def prefill(
    archive: Archive,
    shape: Shape,
    *,
    instances: int,
    seed: int,
    first_patient: int,
    uid: Callable[[random.Random], str],
) -> int:
    """Insert ``instances`` instances (and their parents) in bulk; returns the patients made.

    Patients are numbered from ``first_patient`` under the record path's naming, so the
    bench's searches by Patient ID reach prefilled patients as well as recorded ones.
    """
    rng = random.Random(seed * 7919 + 17)
    patients = made = 0
    with archive.catalog.transaction() as session:  # the sites patients are cared for at
        for site in shape.sites:
            site_pk(session, site)
    with archive.catalog.engine.begin() as conn:
        fill = _Filler(archive, conn, shape)
        while made < instances:
            number = first_patient + patients
            patients += 1
            site = shape.sites[number % len(shape.sites)]
            patient_pk = fill.patient(f"BENCH-{seed}-{number:07d}", site)
            for _study in range(shape.studies_per_patient):
                date = f"{rng.randint(2016, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
                study_pk = fill.study(patient_pk, uid(rng), date)
                for _series in range(shape.series_per_study):
                    series_uid = uid(rng)
                    series_pk = fill.series(
                        study_pk, series_uid, rng.choice(shape.modalities), date
                    )
                    for n in range(1, shape.instances_per_series + 1):
                        if made < instances:
                            made += 1
                            fill.instance(patient_pk, series_pk, f"{series_uid}.{n}", n, site)
        fill.flush()
    if archive.catalog.engine.dialect.name == "postgresql":  # SQLite's rowid follows max(id)
        with archive.catalog.engine.begin() as conn:
            for model in _KEYED:
                name = _table(model).name
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                        f"(SELECT max(id) FROM {name}))"
                    )
                )
        # what autovacuum does after a bulk load (statistics, and the visibility map that lets
        # the instance counts read an index alone), done now rather than whenever it comes
        # round, so that it does not run in the middle of the measured searches
        engine = archive.catalog.engine.execution_options(isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
    return patients
