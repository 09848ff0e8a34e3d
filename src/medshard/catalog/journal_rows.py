"""The object journal's catalog statements: what a record write's link added, and adding it
again on restore (see :mod:`medshard.cluster.journal` and ``journal_replay``).

A DICOM instance is rebuilt from its own bytes; the rows of a document version, a sensor
batch or a sensor segment are not in their bytes, so the write's journal manifest carries
them (*facts*: every column but row keys and references, datetimes as ISO text, the site
by name) and a replay inserts them under the restored rows' keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Table, insert, select, update
from sqlalchemy.orm import Session

from medshard.catalog.models import Site, StoredObject
from medshard.catalog.records_models import Document, DocumentVersion, SensorBatch, SensorSegment
from medshard.errors import NotFoundError

#: Kinds whose rows a journal manifest carries (thumbnails are made again on demand).
RECORD_KINDS = ("document", "sensor-raw", "sensor")
#: Row keys and references: re-made on replay, never carried.
_REFS = frozenset(
    {"id", "patient_pk", "document_pk", "object_pk", "raw_object_pk", "batch_pk", "source_site_id"}
)


def _table(model: type) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def object_known(session: Session, object_key: str) -> bool:
    """Whether the catalog has an object of this key."""
    found = session.scalar(select(StoredObject.id).where(StoredObject.object_key == object_key))
    return found is not None


def site_name_of(session: Session, site_pk: int) -> str | None:
    return session.scalar(select(Site.name).where(Site.id == site_pk))


def site_pk_named(session: Session, name: str | None) -> int | None:
    if not name:
        return None
    return session.scalar(select(Site.id).where(Site.name == name))


def _row(session: Session, model: type, column: str, value: Any) -> dict[str, Any]:
    table = _table(model)
    row = session.connection().execute(select(table).where(table.c[column] == value)).first()
    if row is None:
        raise NotFoundError(f"no {table.name} row with {column} {value!r}")
    return dict(row._mapping)


def _facts(row: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in row.items()
        if name not in _REFS
    }


def _values(model: type, facts: dict[str, Any]) -> dict[str, Any]:
    table = _table(model)
    values: dict[str, Any] = {}
    for column in table.columns:
        if column.name in facts and column.name not in _REFS:
            value = facts[column.name]
            if isinstance(column.type, DateTime) and isinstance(value, str):
                value = datetime.fromisoformat(value)
            values[column.name] = value
    return values


def link_facts(session: Session, kind: str, object_pk: int) -> dict[str, Any]:
    """The rows the write of a ``kind`` object added for it, in its open transaction.

    Site references are given as ``*site_id`` keys (the journal turns them into names).
    """
    if kind == "document":
        return _document_facts(session, _row(session, DocumentVersion, "object_pk", object_pk))
    if kind == "sensor-raw":
        batch = _row(session, SensorBatch, "raw_object_pk", object_pk)
        return {"site_id": batch["source_site_id"], "batch": _facts(batch)}
    if kind == "sensor":
        segment = _row(session, SensorSegment, "object_pk", object_pk)
        batch = _row(session, SensorBatch, "id", segment["batch_pk"])
        return {
            "site_id": segment["source_site_id"],
            "segment": _facts(segment),
            "batch_uid": batch["batch_uid"],
        }
    return {}


def _document_facts(session: Session, version: dict[str, Any]) -> dict[str, Any]:
    document = _row(session, Document, "id", version["document_pk"])
    return {
        "site_id": version["source_site_id"],
        "document_site_id": document["source_site_id"],
        "document": _facts(document),
        "version": _facts(version),
    }


def version_facts(session: Session, doc_pk: int, version: int) -> dict[str, Any]:
    """:func:`link_facts` of a document version that reuses an earlier version's object (a
    metadata-only update), in its open transaction."""
    table = _table(DocumentVersion)
    row = (
        session.connection()
        .execute(select(table).where(table.c.document_pk == doc_pk, table.c.version == version))
        .first()
    )
    if row is None:
        raise NotFoundError(f"no version {version} of document row {doc_pk}")
    return _document_facts(session, dict(row._mapping))


def version_known(session: Session, facts: dict[str, Any]) -> bool:
    """Whether the catalog has the document version ``facts`` describe."""
    found = session.scalar(
        select(DocumentVersion.id)
        .join(Document, Document.id == DocumentVersion.document_pk)
        .where(
            Document.doc_uid == facts["document"]["doc_uid"],
            DocumentVersion.version == facts["version"]["version"],
        )
    )
    return found is not None


def object_pk_and_patient(session: Session, object_key: str) -> tuple[int, int] | None:
    """(object row key, patient row key) of the object of this key, if the catalog has it."""
    row = session.execute(
        select(StoredObject.id, StoredObject.patient_pk).where(
            StoredObject.object_key == object_key
        )
    ).first()
    return None if row is None else (row[0], row[1])


def add_record_rows(
    session: Session, kind: str, facts: dict[str, Any], *, patient_pk: int, object_pk: int
) -> None:
    """Insert again the rows :func:`link_facts` described, for the restored object."""
    site = site_pk_named(session, facts.get("site"))
    conn = session.connection()
    if kind == "document":
        doc = _values(Document, facts["document"])
        found = conn.execute(
            select(Document.id, Document.latest_version).where(Document.doc_uid == doc["doc_uid"])
        ).first()
        if found is None:
            doc_site = site_pk_named(session, facts.get("document_site"))
            doc_pk = conn.execute(
                insert(_table(Document))
                .values(**doc, patient_pk=patient_pk, source_site_id=doc_site)
                .returning(_table(Document).c.id)
            ).scalar_one()
        else:
            doc_pk = found.id
            if doc["latest_version"] > found.latest_version:  # this version is the latest
                latest = {k: v for k, v in doc.items() if k not in ("doc_uid", "created_at")}
                conn.execute(update(_table(Document)).where(Document.id == doc_pk).values(latest))
        version = _values(DocumentVersion, facts["version"])
        conn.execute(
            insert(_table(DocumentVersion)).values(
                **version, document_pk=doc_pk, object_pk=object_pk, source_site_id=site
            )
        )
    elif kind == "sensor-raw":
        batch = {**_values(SensorBatch, facts["batch"]), "complete": True}
        conn.execute(
            insert(_table(SensorBatch)).values(
                **batch, patient_pk=patient_pk, raw_object_pk=object_pk, source_site_id=site
            )
        )
    elif kind == "sensor":
        batch_pk = conn.execute(
            select(SensorBatch.id).where(SensorBatch.batch_uid == facts["batch_uid"])
        ).scalar()
        if batch_pk is None:
            raise NotFoundError(f"its sensor batch {facts['batch_uid']} is not in the catalog")
        segment = _values(SensorSegment, facts["segment"])
        conn.execute(
            insert(_table(SensorSegment)).values(
                **segment,
                batch_pk=batch_pk,
                patient_pk=patient_pk,
                object_pk=object_pk,
                source_site_id=site,
            )
        )
    else:
        raise NotFoundError(f"no rows of kind {kind!r} are journaled")
