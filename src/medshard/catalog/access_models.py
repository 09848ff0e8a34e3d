"""Catalog tables of the security layer: identities, sessions, care teams, shares, audit.

They live in the catalog (not a separate store) so that an audit event and the change it
records commit in one transaction, and so that authorization can be expressed as SQL that
filters QIDO-RS, C-FIND and every list in the database, never after the fact.

Secrets are never stored: passwords as argon2 hashes, tokens as SHA-256 of random 256-bit
values (a token's entropy makes a slow hash pointless, and lookups must be fast).
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
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from medshard.catalog.models import Base, utcnow

ROLES = ("admin", "doctor", "expert", "patient", "service")


class User(Base):
    """A person (admin, doctor, expert, patient) or a system's service account (service).

    ``site_id`` is a service account's site (what it stores is attributed there); doctors work
    at the sites in ``user_sites``. ``patient_id`` links a patient-role user to their record.
    """

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    full_name: Mapped[str] = mapped_column(String(256), default="")
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserSite(Base):
    """A site a doctor works at: they see the patients whose care team includes it."""

    __tablename__ = "user_sites"
    user_pk: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), primary_key=True)


class AuthSession(Base):
    """A login: an access token (short, idle-expiring) and a refresh token (longer)."""

    __tablename__ = "auth_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    access_hash: Mapped[str] = mapped_column(String(64), unique=True)
    refresh_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    access_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    refresh_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(128), default="")


class ApiToken(Base):
    """A revocable bearer token of a service account (a site's PACS, a modality, a script)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DicomPeer(Base):
    """A calling AE title allowed to associate, and the service account it acts as."""

    __tablename__ = "dicom_peers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))


class CareTeamDoctor(Base):
    """A doctor in a patient's care team, with the time of their last involvement."""

    __tablename__ = "care_team_doctors"
    patient_pk: Mapped[int] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True
    )
    user_pk: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_involved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Share(Base):
    """A study shared with an expert by a doctor of that patient, until ``expires_at``."""

    __tablename__ = "shares"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    expert_pk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    granted_by_pk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class BreakGlass(Base):
    """Emergency access of an admin or doctor to one patient, time-limited, with a reason."""

    __tablename__ = "break_glass"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """One audited action, chained to the one before by a keyed hash.

    Who did it is in the clear; which patient is not: ``patient_tag`` is a pseudonym keyed by
    the patient's key (so a patient can find their events) and ``sealed`` holds the patient
    and study identifiers encrypted under that key. Erasing the patient's key leaves every
    event, and the chain, intact while making them unlinkable to the person.
    """

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(160))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(48))
    outcome: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(160), default="")
    patient_pk: Mapped[int | None] = mapped_column(Integer, nullable=True)
    patient_tag: Mapped[str | None] = mapped_column(String(32), nullable=True)
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's head (one row): serialises appends and detects a truncated tail.

    ``wrapped_key`` is the chain's HMAC key wrapped by the master key, so someone with
    database access alone cannot recompute the chain after editing it.
    """

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(64), default="")


Index("ix_audit_events_patient_tag", AuditEvent.patient_tag)
Index("ix_shares_expert", Share.expert_pk, Share.expires_at)
Index("ix_break_glass_user", BreakGlass.user_pk, BreakGlass.expires_at)


class ChunkDeletion(Base):
    """A chunk copy to delete from a node: erasures commit these, a drainer sends DELETEs.

    The catalog change is instant and atomic; the node deletes may wait for a node that is
    down, so they are queued rather than done inside the erasing transaction.
    """

    __tablename__ = "chunk_deletions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_id: Mapped[str] = mapped_column(String(64))
    node_pk: Mapped[int] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
