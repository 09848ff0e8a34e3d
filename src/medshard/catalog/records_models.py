"""Catalog tables of the patient record beyond images: documents and sensor series.

The bytes of every document version, raw sensor batch and cleaned series segment are
ordinary objects (``objects``), written by ``Archive.put_object``: the same encryption under
the patient's key, placement, replication, repair and crypto-shredding as images. These rows
only say what each object is. Rows are never updated in place except for the "latest"
pointer of a document and the completion flag of a batch: a new version is a new row.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from medshard.catalog.models import Base, utcnow


class Document(Base):
    """A document in a patient's record; its metadata is that of its latest version.

    ``doc_uid`` is the public id (REST and FHIR ``DocumentReference``/``Binary`` id); the
    latest version's fields are copied here so that lists and FHIR searches by date are one
    indexed query, without a join to the versions.
    """

    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    doc_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    latest_version: Mapped[int] = mapped_column(Integer, default=1)
    doc_type: Mapped[str] = mapped_column(String(64), default="")
    title: Mapped[str] = mapped_column(String(256), default="")
    author: Mapped[str] = mapped_column(String(256), default="")
    doc_date: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    content_type: Mapped[str] = mapped_column(String(64))
    source_site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DocumentVersion(Base):
    """One immutable version of a document: its object and the metadata given with it."""

    __tablename__ = "document_versions"
    __table_args__ = (UniqueConstraint("document_pk", "version", name="uq_document_versions"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_pk: Mapped[int] = mapped_column(ForeignKey("documents.id"))
    version: Mapped[int] = mapped_column(Integer)
    object_pk: Mapped[int] = mapped_column(ForeignKey("objects.id"), index=True)
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(256), default="")
    doc_type: Mapped[str] = mapped_column(String(64), default="")
    title: Mapped[str] = mapped_column(String(256), default="")
    author: Mapped[str] = mapped_column(String(256), default="")
    doc_date: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source_site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    stored_by: Mapped[str] = mapped_column(String(160), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SensorBatch(Base):
    """One uploaded batch of sensor readings: the raw input (kept as sent) and what cleaning
    did to it (``report``, JSON). Its segments count only once ``complete`` is set, so a
    batch whose writes failed half-way is never half-visible."""

    __tablename__ = "sensor_batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_uid: Mapped[str] = mapped_column(String(32), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    device: Mapped[str] = mapped_column(String(128), default="")
    raw_object_pk: Mapped[int] = mapped_column(ForeignKey("objects.id"))
    raw_content_type: Mapped[str] = mapped_column(String(64))
    report: Mapped[str] = mapped_column(Text, default="{}")
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    source_site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    stored_by: Mapped[str] = mapped_column(String(160), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SensorSegment(Base):
    """The cleaned readings of one signal of one batch on one UTC day, as a Parquet object.

    A later batch covering the same day adds a segment rather than rewriting one: a query
    merges the segments and, for a timestamp present in several, keeps the latest batch's.
    """

    __tablename__ = "sensor_segments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    segment_uid: Mapped[str] = mapped_column(String(32), unique=True)
    batch_pk: Mapped[int] = mapped_column(ForeignKey("sensor_batches.id"), index=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    signal: Mapped[str] = mapped_column(String(32))
    unit: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(128), default="")
    day: Mapped[str] = mapped_column(String(10))
    start_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    points: Mapped[int] = mapped_column(Integer)
    object_pk: Mapped[int] = mapped_column(ForeignKey("objects.id"), index=True)
    source_site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Index("ix_documents_patient_date", Document.patient_pk, Document.doc_date)
# the patient beside the date: a search by date alone filters by patient from the index
Index("ix_documents_date_patient", Document.doc_date, Document.patient_pk)
Index("ix_sensor_segments_patient_signal", SensorSegment.patient_pk, SensorSegment.signal,
      SensorSegment.start_at)  # fmt: skip
Index("ix_sensor_segments_start", SensorSegment.start_at)
