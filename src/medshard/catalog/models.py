"""Catalog tables (SQLAlchemy 2). Schema changes go through Alembic migrations only.

Indexes follow what the API asks: patient id, study/series/SOP UIDs, study dates, modality,
and replica lookups by chunk and by node (repair walks both directions).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Region(Base):
    """A cluster of sites served by one metadata service (the paper's supernode cluster)."""

    __tablename__ = "regions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class Site(Base):
    """A hospital, lab or rural health centre where storage nodes and care teams live.

    ``kind`` is hospital, lab or rural (health centre); the location (degrees) lets placement
    find the nearest nodes for a site that has none of its own.
    """

    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="hospital", server_default="hospital")
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id"), nullable=True)
    latitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    longitude: Mapped[float | None] = mapped_column(Float, nullable=True)


class Node(Base):
    """A storage-node process. ``state`` follows cluster/health.py's table."""

    __tablename__ = "nodes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(256))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    capacity_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="alive")
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reliability: Mapped[float] = mapped_column(Float, default=1.0)
    coord_x: Mapped[float] = mapped_column(Float, default=0.0)
    coord_y: Mapped[float] = mapped_column(Float, default=0.0)
    coord_h: Mapped[float] = mapped_column(Float, default=0.0)
    #: Vivaldi's own error estimate of the coordinate (1.0 = know nothing yet).
    coord_error: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")
    #: Last RTT the service measured to the node (ms); 0 = never measured.
    rtt_ms: Mapped[float] = mapped_column(Float, default=0.0, server_default="0.0")
    #: Capacity weight set by an admin; 0 = derived from the capacity (GiB, at least 1).
    weight: Mapped[float] = mapped_column(Float, default=0.0, server_default="0.0")
    #: active, draining (data moving off), drained (empty; may be removed).
    admin_state: Mapped[str] = mapped_column(String(16), default="active", server_default="active")

    site: Mapped[Site] = relationship(lazy="joined")


class Coordinate(Base):
    """Vivaldi coordinate of a party that is not a node (the metadata service)."""

    __tablename__ = "coordinates"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    x: Mapped[float] = mapped_column(Float, default=0.0)
    y: Mapped[float] = mapped_column(Float, default=0.0)
    h: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[float] = mapped_column(Float, default=1.0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Patient(Base):
    """A patient, their shard, and their key (wrapped by the master key; erase it to shred)."""

    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    birth_date: Mapped[str] = mapped_column(String(16), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    shard: Mapped[int] = mapped_column(Integer, index=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    master_key_id: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CareSite(Base):
    """A site in a patient's care team; placement prefers nodes near these."""

    __tablename__ = "care_sites"
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_involved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(256), default="")
    referring_physician: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    patient: Mapped[Patient] = relationship(lazy="joined")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(256), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    series_date: Mapped[str] = mapped_column(String(8), default="")
    series_time: Mapped[str] = mapped_column(String(16), default="")

    study: Mapped[Study] = relationship(lazy="joined")


class StoredObject(Base):
    """One stored file (a DICOM instance, a thumbnail, a report): encrypted, chunked, replicated."""

    __tablename__ = "objects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_key: Mapped[str] = mapped_column(String(32), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    shard: Mapped[int] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(16), default="dicom")
    content_type: Mapped[str] = mapped_column(String(64), default="application/dicom")
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    chunk_size: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="obj", order_by="Chunk.idx", cascade="all, delete-orphan"
    )


class Chunk(Base):
    """One encrypted segment of an object; ``chunk_id`` is the SHA-256 of its ciphertext."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("object_pk", "idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_pk: Mapped[int] = mapped_column(ForeignKey("objects.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    chunk_id: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)

    obj: Mapped[StoredObject] = relationship(back_populates="chunks")
    replicas: Mapped[list[Replica]] = relationship(
        back_populates="chunk", cascade="all, delete-orphan"
    )


class Replica(Base):
    """A copy of a chunk on a node. ``state``: ok, or corrupt (a read failed its hash check)."""

    __tablename__ = "replicas"
    __table_args__ = (UniqueConstraint("chunk_pk", "node_pk"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_pk: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"))
    node_pk: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="ok")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    chunk: Mapped[Chunk] = relationship(back_populates="replicas")
    node: Mapped[Node] = relationship(lazy="joined")


class Instance(Base):
    """A DICOM SOP instance; its bytes are the object ``object_pk``."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bits_allocated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    object_pk: Mapped[int] = mapped_column(ForeignKey("objects.id"), unique=True)
    thumbnail_object_pk: Mapped[int | None] = mapped_column(ForeignKey("objects.id"), nullable=True)
    source_path: Mapped[str] = mapped_column(String(1024), default="")
    #: The site it came from (the storing service account's, AE's or doctor's site).
    source_site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)

    series: Mapped[Series] = relationship(lazy="joined")
    obj: Mapped[StoredObject] = relationship(foreign_keys=[object_pk], lazy="joined")


Index("ix_replicas_chunk_state", Replica.chunk_pk, Replica.state)
Index("ix_studies_patient_date", Study.patient_pk, Study.study_date)
Index("ix_instances_source_site", Instance.source_site_id)
Index("ix_care_sites_site_patient", CareSite.site_id, CareSite.patient_pk)
Index("ix_series_study_modality", Series.study_pk, Series.modality)


class AnalysisJob(Base):
    """One model to run on one instance: the durable queue behind analysis on ingest.

    Rows are added by the ingest hook in the instance's own transaction, so an acknowledged
    image always has its job. Workers claim rows by setting a lease (``lease_owner`` until
    ``lease_expires_at``); a crashed worker's lease simply expires and the job is claimed
    again. ``state`` is pending, running, done, failed or not_eligible; ``error`` says why
    for the last two. Linked by SOP Instance UID, not by key, because the hook runs before
    the instance row has been flushed.
    """

    __tablename__ = "analysis_jobs"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "model", name="uq_analysis_jobs_sop_model"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    model: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    model_sha256: Mapped[str] = mapped_column(String(64), default="")
    error: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Finding(Base):
    """A model's verdict on one instance, with exactly which weights produced it.

    At most one per instance and model hash, so re-running a batch or a retried job can
    never add a duplicate. ``sr_sop_instance_uid`` names the DICOM SR stored with the study.
    """

    __tablename__ = "findings"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "model_sha256", name="uq_findings_sop_model_sha256"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(128), default="", index=True)
    model: Mapped[str] = mapped_column(String(256))
    model_id: Mapped[str] = mapped_column(String(128))
    model_sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column(Boolean)
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    sr_series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Index("ix_analysis_jobs_claim", AnalysisJob.state, AnalysisJob.available_at)
