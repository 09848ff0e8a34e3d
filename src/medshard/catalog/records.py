"""Catalog rows of documents and sensor series: inserts (inside ``put_object``'s commit),
lookups, and their removal when a patient is erased.

Versions are compare-and-set: a new version is accepted only if the document's latest
version is still the one the writer says it replaces (``UPDATE ... WHERE latest_version =
:replaces``), so two writers racing on one document cannot both win, on SQLite or PostgreSQL,
and the unique (document, version) constraint backs that up.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Select, delete, func, insert, select, update
from sqlalchemy.orm import Session

from medshard.catalog.models import Patient, Site, StoredObject, utcnow
from medshard.catalog.records_models import (
    Document,
    DocumentVersion,
    SensorBatch,
    SensorSegment,
)
from medshard.catalog.writes import _table
from medshard.errors import VersionConflictError


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime (SQLite hands back naive ones, which are UTC by construction)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class DocFields:
    """What a writer says about a document version (the content type is sniffed, not said)."""

    doc_type: str = ""
    title: str = ""
    author: str = ""
    date: datetime | None = None
    filename: str = ""


@dataclass(frozen=True)
class VersionBody:
    """A version's stored object, as the write path recorded it."""

    object_pk: int
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DocRow:
    """A document (its latest version's metadata) or one of its versions, as read back."""

    doc_uid: str
    patient_id: str
    patient_pk: int
    version: int
    latest_version: int
    doc_type: str
    title: str
    author: str
    date: datetime
    content_type: str
    size: int
    sha256: str
    filename: str
    site: str | None
    stored_by: str
    created_at: datetime
    object_key: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.doc_uid,
            "patient_id": self.patient_id,
            "version": self.version,
            "latest_version": self.latest_version,
            "type": self.doc_type,
            "title": self.title,
            "author": self.author,
            "date": self.date.isoformat(),
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "filename": self.filename,
            "source_site": self.site,
            "stored_by": self.stored_by,
            "stored_at": self.created_at.isoformat(),
        }


def _version_values(
    doc_pk: int, version: int, body: VersionBody, fields: DocFields, site: int | None, by: str
) -> dict[str, Any]:
    return {
        "document_pk": doc_pk,
        "version": version,
        "object_pk": body.object_pk,
        "content_type": body.content_type,
        "size": body.size,
        "sha256": body.sha256,
        "filename": fields.filename[:256],
        "doc_type": fields.doc_type[:64],
        "title": fields.title[:256],
        "author": fields.author[:256],
        "doc_date": as_utc(fields.date or utcnow()),
        "source_site_id": site,
        "stored_by": by[:160],
        "created_at": utcnow(),
    }


def body_of(session: Session, object_pk: int, content_type: str) -> VersionBody:
    """The size and hash the write path recorded for an object (inside its commit)."""
    size, sha = session.execute(
        select(StoredObject.size, StoredObject.sha256).where(StoredObject.id == object_pk)
    ).one()
    return VersionBody(object_pk, content_type, int(size), str(sha))


def insert_document(
    session: Session,
    patient_pk: int,
    body: VersionBody,
    fields: DocFields,
    *,
    site: int | None,
    stored_by: str,
) -> str:
    """A new document with its version 1; returns its public id."""
    uid = uuid.uuid4().hex
    values = _version_values(0, 1, body, fields, site, stored_by)
    table = _table(Document)
    doc_pk = session.execute(
        insert(table).returning(table.c.id),
        [
            {
                "doc_uid": uid,
                "patient_pk": patient_pk,
                "latest_version": 1,
                "doc_type": values["doc_type"],
                "title": values["title"],
                "author": values["author"],
                "doc_date": values["doc_date"],
                "content_type": body.content_type,
                "source_site_id": site,
                "created_at": values["created_at"],
                "updated_at": values["created_at"],
            }
        ],
    ).scalar_one()
    session.execute(insert(DocumentVersion), [{**values, "document_pk": doc_pk}])
    return uid


def add_version(
    session: Session,
    doc_pk: int,
    replaces: int,
    body: VersionBody,
    fields: DocFields,
    *,
    site: int | None,
    stored_by: str,
) -> int:
    """Version ``replaces + 1``, if ``replaces`` is still the latest; returns its number.

    Raises
    ------
    VersionConflictError
        Someone else's version came first (the caller must re-read and decide).
    """
    values = _version_values(doc_pk, replaces + 1, body, fields, site, stored_by)
    done = session.execute(
        update(Document)
        .where(Document.id == doc_pk, Document.latest_version == replaces)
        .values(
            latest_version=replaces + 1,
            doc_type=values["doc_type"],
            title=values["title"],
            author=values["author"],
            doc_date=values["doc_date"],
            content_type=body.content_type,
            updated_at=values["created_at"],
        )
    )
    if not cast(Any, done).rowcount:
        current = session.scalar(select(Document.latest_version).where(Document.id == doc_pk))
        raise VersionConflictError(
            f"version {replaces} is not the latest (the latest is {current}): read it and "
            f"send your update as replacing version {current}",
            current,
        )
    session.execute(insert(DocumentVersion), [values])
    return replaces + 1


_DOC_COLUMNS = (
    Document.doc_uid,
    Patient.patient_id,
    Document.patient_pk,
    DocumentVersion.version,
    Document.latest_version,
    DocumentVersion.doc_type,
    DocumentVersion.title,
    DocumentVersion.author,
    DocumentVersion.doc_date,
    DocumentVersion.content_type,
    DocumentVersion.size,
    DocumentVersion.sha256,
    DocumentVersion.filename,
    Site.name,
    DocumentVersion.stored_by,
    DocumentVersion.created_at,
    StoredObject.object_key,
)


#: Documents joined to their versions, objects, patients and sites (built once: every
#: lookup of documents only adds its conditions).
_DOC_FROM = (
    select(*_DOC_COLUMNS)
    .select_from(Document)
    .join(Patient, Patient.id == Document.patient_pk)
    .join(DocumentVersion, DocumentVersion.document_pk == Document.id)
    .join(StoredObject, StoredObject.id == DocumentVersion.object_pk)
    .outerjoin(Site, Site.id == DocumentVersion.source_site_id)
)


def doc_query(*where: ColumnElement[bool], latest: bool = True) -> Select[*tuple[Any, ...]]:
    """Documents (or, with ``latest=False``, all their versions) matching ``where``."""
    query = _DOC_FROM.where(*where)
    if latest:
        query = query.where(DocumentVersion.version == Document.latest_version)
    return query


def doc_rows(
    db: Session | Connection,
    query: Select[*tuple[Any, ...]],
    params: dict[str, Any] | None = None,
) -> list[DocRow]:
    """The rows of a :func:`doc_query` (``params`` for its bound parameters, if any); a
    Core connection skips the ORM's per-statement work."""
    out = []
    for row in db.execute(query, params):
        values = list(row)
        values[8] = as_utc(values[8])
        values[15] = as_utc(values[15])
        out.append(DocRow(*values))
    return out


def count(session: Session, query: Select[*tuple[Any, ...]]) -> int:
    return int(
        session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    )


def document_owner(session: Session, doc_uid: str) -> tuple[int, int] | None:
    """(document pk, patient pk) of a document, whoever may see it (for audit and updates)."""
    row = session.execute(
        select(Document.id, Document.patient_pk).where(Document.doc_uid == doc_uid)
    ).first()
    return (int(row[0]), int(row[1])) if row is not None else None


# ------------------------------------------------------------------------------- sensors


def insert_batch(
    session: Session,
    patient_pk: int,
    raw_object_pk: int,
    *,
    device: str,
    raw_content_type: str,
    report: str,
    site: int | None,
    stored_by: str,
) -> tuple[int, str]:
    """A batch row for raw input just stored (not yet complete); (pk, public id)."""
    uid = uuid.uuid4().hex
    table = _table(SensorBatch)
    pk = session.execute(
        insert(table).returning(table.c.id),
        [
            {
                "batch_uid": uid,
                "patient_pk": patient_pk,
                "device": device[:128],
                "raw_object_pk": raw_object_pk,
                "raw_content_type": raw_content_type,
                "report": report,
                "complete": False,
                "source_site_id": site,
                "stored_by": stored_by[:160],
                "created_at": utcnow(),
            }
        ],
    ).scalar_one()
    return int(pk), uid


def insert_segment(session: Session, values: dict[str, Any]) -> str:
    uid = uuid.uuid4().hex
    session.execute(
        insert(SensorSegment),
        [
            {
                **values,
                "segment_uid": uid,
                "start_at": as_utc(values["start_at"]),
                "end_at": as_utc(values["end_at"]),
                "created_at": utcnow(),
            }
        ],
    )
    return uid


def complete_batch(session: Session, batch_pk: int) -> None:
    session.execute(update(SensorBatch).where(SensorBatch.id == batch_pk).values(complete=True))


def segment_query(*where: ColumnElement[bool]) -> Select[*tuple[Any, ...]]:
    """Segments of complete batches matching ``where``, oldest batch first."""
    return (
        select(SensorSegment, StoredObject.object_key, Patient.patient_id)
        .join(SensorBatch, SensorBatch.id == SensorSegment.batch_pk)
        .join(StoredObject, StoredObject.id == SensorSegment.object_pk)
        .join(Patient, Patient.id == SensorSegment.patient_pk)
        .where(SensorBatch.complete.is_(True), *where)
    )


# ------------------------------------------------------------------------------- erasure


def erase_records(session: Session, patient_pk: int) -> int:
    """Delete every document, version, batch and segment row of a patient (their objects
    are the patient's objects, which erasure removes and queues for deletion itself)."""
    docs = select(Document.id).where(Document.patient_pk == patient_pk)
    removed = count(session, select(Document.id).where(Document.patient_pk == patient_pk))
    session.execute(delete(DocumentVersion).where(DocumentVersion.document_pk.in_(docs)))
    session.execute(delete(Document).where(Document.patient_pk == patient_pk))
    session.execute(delete(SensorSegment).where(SensorSegment.patient_pk == patient_pk))
    session.execute(delete(SensorBatch).where(SensorBatch.patient_pk == patient_pk))
    return removed


def object_pks_of(session: Session, patient_pk: int) -> Sequence[int]:
    """Every object a patient's records point at (for tests and checks)."""
    return list(
        session.scalars(
            select(StoredObject.id).where(
                StoredObject.patient_pk == patient_pk,
                StoredObject.kind.in_(("document", "sensor-raw", "sensor")),
            )
        )
    )
