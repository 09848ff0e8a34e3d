"""The catalog rows of a write: patient, study, series, instance, object, chunks, replicas.

Everything here runs inside the one transaction of ``Archive.put_object`` (cluster/archive.py,
a group commit shared with other writers), after the object's bytes are durable on the nodes:
so no row ever points at bytes that are not there, and a failed write leaves no row behind.
Rows are made with Core statements on the session's connection, not ORM objects nor
``Session.execute``: this is the ingest hot path, and profiles showed the ORM unit of work,
then the ORM execution layer (~0.3 ms a statement), costing most of its CPU for these rows.

Parent rows are get-or-create with ``INSERT ... ON CONFLICT DO NOTHING`` then a select, so
two writers creating the same study at once both end up with the one row, on SQLite and on
PostgreSQL alike.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from medshard.catalog.models import (
    Chunk,
    Instance,
    Patient,
    Replica,
    Series,
    StoredObject,
    Study,
    utcnow,
)
from medshard.errors import IdentityConflictError


@dataclass(frozen=True)
class PatientValues:
    """What a write knows about its patient (demographics are kept from the first write)."""

    patient_id: str
    name: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True)
class PatientKeyRow:
    """The parts of a patient row a write needs: its key and its shard."""

    pk: int
    patient_id: str
    shard: int
    wrapped_key: bytes | None
    master_key_id: str


@dataclass(frozen=True)
class ObjectRow:
    """An object whose chunks are durable: ``chunks`` is (idx, chunk id, size, node pks)."""

    object_key: str
    kind: str
    content_type: str
    size: int
    sha256: str
    chunk_size: int
    wrapped_key: bytes
    chunks: Sequence[tuple[int, str, int, Sequence[int]]]


def _table(model: type) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


# Statements are built once and given their values as parameters: a statement built per call
# costs SQLAlchemy a cache-key walk each time (measured: 7% of the service's time under STOW-RS).


@functools.cache
def _insert_ignoring_conflict(dialect: str, model: type, key: str) -> Any:
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(_table(model)).on_conflict_do_nothing(index_elements=[key])


def insert_if_absent(session: Session, model: type, values: Mapping[str, Any], key: str) -> None:
    """``INSERT ... ON CONFLICT (key) DO NOTHING`` in the session's dialect."""
    statement = _insert_ignoring_conflict(session.get_bind().dialect.name, model, key)
    session.connection().execute(statement, [dict(values)])


PATIENT_KEY_COLUMNS = (
    Patient.id,
    Patient.patient_id,
    Patient.shard,
    Patient.wrapped_key,
    Patient.master_key_id,
)


_PATIENT_KEY_ROW = select(*PATIENT_KEY_COLUMNS).where(Patient.patient_id == bindparam("patient_id"))


def patient_key_row(conn: Connection | Session, patient_id: str) -> PatientKeyRow | None:
    """The patient's key row, or None if no such patient is stored yet."""
    row = conn.execute(_PATIENT_KEY_ROW, {"patient_id": patient_id}).first()
    return PatientKeyRow(*row) if row is not None else None


_PATIENT_KEY_ROW_BY_PK = select(*PATIENT_KEY_COLUMNS).where(Patient.id == bindparam("pk"))


def patient_key_row_by_pk(conn: Connection | Session, patient_pk: int) -> PatientKeyRow | None:
    """The key row of a patient by row key (None: no such row): what reading the patient's
    objects, or sealing their identity into an audit event, needs."""
    row = conn.execute(_PATIENT_KEY_ROW_BY_PK, {"pk": patient_pk}).first()
    return PatientKeyRow(*row) if row is not None else None


def ensure_patient(
    session: Session, patient: PatientValues, *, shard: int, wrapped_key: bytes, key_id: str
) -> PatientKeyRow:
    """The patient's row, created with the offered key if absent (a concurrent writer's
    row, with its own key, wins a race: the caller compares ``wrapped_key``)."""
    insert_if_absent(
        session,
        Patient,
        {
            "patient_id": patient.patient_id,
            "name": patient.name,
            "birth_date": patient.birth_date,
            "sex": patient.sex,
            "shard": shard,
            "wrapped_key": wrapped_key,
            "master_key_id": key_id,
            "created_at": utcnow(),
        },
        "patient_id",
    )
    row = patient_key_row(session, patient.patient_id)
    assert row is not None
    return row


def _ensure_child(
    session: Session,
    model: type[Study] | type[Series],
    uid_key: str,
    values: Mapping[str, Any],
    parent: tuple[str, int],
) -> tuple[int, int]:
    """Get-or-create a row by its UID; returns (pk, the parent pk it is filed under)."""
    parent_key, parent_pk = parent
    insert_if_absent(session, model, {**values, parent_key: parent_pk}, uid_key)
    statement = _child_lookup(model, uid_key, parent_key)
    pk, filed_under = session.connection().execute(statement, {"uid": values[uid_key]}).one()
    return int(pk), int(filed_under)


@functools.cache
def _child_lookup(model: type, uid_key: str, parent_key: str) -> Any:
    table = _table(model)
    return select(table.c.id, table.c[parent_key]).where(table.c[uid_key] == bindparam("uid"))


def ensure_study(session: Session, patient_pk: int, values: Mapping[str, Any]) -> int:
    """The study's pk; refuses a Study Instance UID that belongs to another patient."""
    values = {**values, "created_at": utcnow()}
    pk, owner = _ensure_child(
        session, Study, "study_instance_uid", values, ("patient_pk", patient_pk)
    )
    if owner != patient_pk:
        raise IdentityConflictError(
            f"Study Instance UID {values['study_instance_uid']} belongs to another patient, not "
            "to this instance's Patient ID; refused so that neither record is mixed up (correct "
            "the Patient ID, or the study UID, and send it again)"
        )
    return pk


def ensure_series(session: Session, study_pk: int, values: Mapping[str, Any]) -> int:
    """The series' pk; refuses a Series Instance UID that belongs to another study."""
    pk, study = _ensure_child(
        session, Series, "series_instance_uid", values, ("study_pk", study_pk)
    )
    if study != study_pk:
        raise IdentityConflictError(
            f"Series Instance UID {values['series_instance_uid']} belongs to another study; "
            "refused (correct the series or study UID and send it again)"
        )
    return pk


def insert_instance(session: Session, values: Mapping[str, Any]) -> int:
    """A new instance row (a duplicate SOP Instance UID raises IntegrityError)."""
    row = {"created_at": utcnow(), "deleted": False, **values}
    return int(session.connection().execute(_INSERT_INSTANCE, [row]).scalar_one())


_INSERT_INSTANCE = insert(_table(Instance)).returning(_table(Instance).c.id)
_INSERT_OBJECT = insert(_table(StoredObject)).returning(_table(StoredObject).c.id)
_INSERT_CHUNKS = insert(_table(Chunk)).returning(_table(Chunk).c.id, sort_by_parameter_order=True)
_INSERT_REPLICAS = insert(_table(Replica))


def insert_object(
    session: Session, patient: PatientKeyRow, obj: ObjectRow, *, now: datetime | None = None
) -> int:
    """The object, its chunks and one replica row per durable copy; returns the object pk."""
    now = now or utcnow()
    object_pk = (
        session.connection()
        .execute(
            _INSERT_OBJECT,
            [
                {
                    "object_key": obj.object_key,
                    "patient_pk": patient.pk,
                    "shard": patient.shard,
                    "kind": obj.kind,
                    "content_type": obj.content_type,
                    "size": obj.size,
                    "sha256": obj.sha256,
                    "chunk_size": obj.chunk_size,
                    "wrapped_key": obj.wrapped_key,
                    "created_at": now,
                }
            ],
        )
        .scalar_one()
    )
    chunk_pks = (
        session.connection()
        .execute(
            _INSERT_CHUNKS,
            [
                {"object_pk": object_pk, "idx": idx, "chunk_id": cid, "size": size}
                for idx, cid, size, _nodes in obj.chunks
            ],
        )
        .scalars()
        .all()
    )
    session.connection().execute(
        _INSERT_REPLICAS,
        [
            {"chunk_pk": pk, "node_pk": node_pk, "state": "ok", "created_at": now}
            for pk, (_i, _c, _s, nodes) in zip(chunk_pks, obj.chunks, strict=True)
            for node_pk in nodes
        ],
    )
    return int(object_pk)


def stored_sha256_of_instance(conn: Connection, sop_instance_uid: str) -> str | None:
    """The SHA-256 of the bytes stored for a SOP Instance UID (None: not stored)."""
    return conn.execute(_SHA256_OF_INSTANCE, {"sop": sop_instance_uid}).scalar()


_SHA256_OF_INSTANCE = (
    select(StoredObject.sha256)
    .join(Instance, Instance.object_pk == StoredObject.id)
    .where(Instance.sop_instance_uid == bindparam("sop"))
)


def link_thumbnail(session: Session, instance_pk: int, object_pk: int) -> bool:
    """Point an instance at its thumbnail object unless one is linked already."""
    done = session.connection().execute(
        update(Instance)
        .where(Instance.id == instance_pk, Instance.thumbnail_object_pk.is_(None))
        .values(thumbnail_object_pk=object_pk)
    )
    return bool(cast(Any, done).rowcount)
