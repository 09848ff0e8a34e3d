"""Reads of documents and sensor series the records layer asks by name.

The caller passes who may see what as a condition on the rows read (built by
:func:`medshard.records.access.visible`), so the filter runs in the database and a hidden
row answers as a missing one. Each function takes the caller's session and neither commits
nor rolls back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from medshard.catalog.models import StoredObject
from medshard.catalog.records import segment_query
from medshard.catalog.records_models import DocumentVersion, SensorBatch, SensorSegment

#: A segment as read: the row, its object key, and its patient's Patient ID.
SegmentRow = tuple[SensorSegment, str, str]


def version_object_pk(session: Session, doc_pk: int, version: int) -> int | None:
    """The stored object of one version of a document (a metadata-only update reuses it)."""
    return session.scalar(
        select(DocumentVersion.object_pk).where(
            DocumentVersion.document_pk == doc_pk, DocumentVersion.version == version
        )
    )


def segments(
    session: Session, *where: ColumnElement[bool], order_by: Sequence[Any] = ()
) -> list[SegmentRow]:
    """Segments of complete batches matching ``where`` (in ``order_by``, if given)."""
    query = segment_query(*where)
    if order_by:
        query = query.order_by(*order_by)
    return [(seg, key, pid) for seg, key, pid in session.execute(query).all()]


def segment_owner(session: Session, segment_uid: str) -> int | None:
    """The patient pk of a segment, whoever may see it (to audit a refused read)."""
    return session.scalar(
        select(SensorSegment.patient_pk).where(SensorSegment.segment_uid == segment_uid)
    )


def batches_of(
    session: Session, patient_pk: int, visible: ColumnElement[bool]
) -> list[tuple[str, str, datetime, bool, str]]:
    """(public id, device, stored at, complete, cleaning report JSON) of a patient's batches
    that ``visible`` admits, oldest first; incomplete ones included, to show progress."""
    rows = session.execute(
        select(
            SensorBatch.batch_uid,
            SensorBatch.device,
            SensorBatch.created_at,
            SensorBatch.complete,
            SensorBatch.report,
        )
        .where(SensorBatch.patient_pk == patient_pk, visible)
        .order_by(SensorBatch.id)
    ).all()
    return [(uid, dev, at, done, rep) for uid, dev, at, done, rep in rows]


def raw_batch_of(
    session: Session, batch_uid: str, patient_pk: int, visible: ColumnElement[bool]
) -> tuple[str, str] | None:
    """(object key, content type as sent) of a batch's raw input, if it is this patient's
    and ``visible`` admits it."""
    row = session.execute(
        select(StoredObject.object_key, SensorBatch.raw_content_type)
        .join(SensorBatch, SensorBatch.raw_object_pk == StoredObject.id)
        .where(SensorBatch.batch_uid == batch_uid, SensorBatch.patient_pk == patient_pk, visible)
    ).first()
    return (row[0], row[1]) if row is not None else None
