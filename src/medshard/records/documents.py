"""Documents in a patient's record: add, update (a new version), list, read, history.

Every operation acts for the caller set in the context (:func:`require_caller`), so the REST
routes, the FHIR routes and the CLI share one set of rules. The bytes go through
``Archive.put_object`` (encrypted under the patient's key, chunked, replicated); the version
row, the care-team involvement and the audit event are added in that write's one commit, so
a document is never stored without its audit record, nor recorded without its bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from medshard.catalog import records as rows
from medshard.catalog.journal_rows import version_facts
from medshard.catalog.lookups import object_key_of
from medshard.catalog.record_reads import version_object_pk
from medshard.catalog.records import DocFields, DocRow
from medshard.catalog.records_models import Document, DocumentVersion
from medshard.catalog.writes import PatientValues
from medshard.errors import InvalidInputError, NotFoundError, VersionConflictError
from medshard.ingest.sniff import checked_type
from medshard.records import access
from medshard.security.context import Caller, require_caller

#: Documents are read whole (to sniff and hash them); larger files are refused.
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
#: Version numbers are 32-bit in the catalog; a larger one names no version.
MAX_VERSION = 2**31 - 1


@dataclass(frozen=True)
class Content:
    """Bytes as a client sent them, with the type it claimed (checked, never trusted)."""

    data: bytes
    declared_type: str | None = None


def _checked(caller: Caller, content: Content, action: str) -> str:
    if len(content.data) > MAX_DOCUMENT_BYTES:
        raise InvalidInputError(f"documents are limited to {MAX_DOCUMENT_BYTES} bytes")
    try:
        return checked_type(content.data, content.declared_type)
    except InvalidInputError as exc:
        caller.gate.audit.submit(
            caller.gate.event(caller.principal, action, outcome="failed", detail=str(exc))
        )
        raise


def add(patient_id: str, content: Content, fields: DocFields) -> DocRow:
    """Store a new document for a patient (created if new); returns its version 1."""
    caller = require_caller()
    gate, principal = caller.gate, caller.principal
    site = access.check_store(gate, principal, patient_id, "document-store")
    media = _checked(caller, content, "document-store")

    def link(session: Session, patient_pk: int, object_pk: int) -> str:
        access.involve(session, principal, patient_pk)
        body = rows.body_of(session, object_pk, media)
        uid = rows.insert_document(
            session, patient_pk, body, fields, site=site, stored_by=principal.actor
        )
        gate.audit.append(
            session,
            gate.event(
                principal,
                "document-store",
                patient_pk=patient_pk,
                patient_id=patient_id,
                detail=f"document {uid} v1 {media} {body.size} bytes",
                flagged=False,
            ),
        )
        return uid

    put = gate.archive.put_object(
        PatientValues(patient_id),
        io.BytesIO(content.data),
        link,
        kind="document",
        content_type=media,
    )
    return version_of(put.linked, 1, audit=False)


def update(
    doc_uid: str,
    replaces: int | None,
    content: Content | None,
    fields: DocFields,
    *,
    patient_id: str | None = None,
) -> DocRow:
    """A new version of a document, replacing version ``replaces`` (which must be latest).

    Without ``content`` the new version keeps the bytes of the one it replaces and changes
    only the metadata. Raises VersionConflictError when ``replaces`` is missing or stale.
    """
    caller = require_caller()
    gate, principal = caller.gate, caller.principal
    current = get(doc_uid, patient_id=patient_id, action="document-update", audit=False)
    access.check_store(gate, principal, current.patient_id, "document-update")
    if replaces is None or not 0 < replaces <= MAX_VERSION:
        raise VersionConflictError(
            f"an update must name the version it replaces (the latest is "
            f"{current.latest_version}): nothing is overwritten silently",
            current.latest_version,
        )
    site = principal.home_site
    doc_pk_owner = _owner(doc_uid)
    fields = _defaults(fields, current)

    def link(session: Session, patient_pk: int, object_pk: int) -> int:
        access.involve(session, principal, patient_pk)
        body = rows.body_of(session, object_pk, media)
        version = rows.add_version(
            session, doc_pk_owner[0], replaces, body, fields, site=site, stored_by=principal.actor
        )
        gate.audit.append(
            session,
            gate.event(
                principal,
                "document-update",
                patient_pk=patient_pk,
                patient_id=current.patient_id,
                detail=f"document {doc_uid} v{version} replaces v{replaces} {media}",
                flagged=False,
            ),
        )
        return version

    if content is None:  # metadata only: the new version points at the same object
        media = current.content_type
        archive = gate.archive
        with archive.journaled_transaction() as session:
            obj = version_object_pk(session, doc_pk_owner[0], current.latest_version)
            assert obj is not None
            version = link(session, doc_pk_owner[1], obj)
            key = object_key_of(session, obj)
            if archive.journaling and key is not None:  # no new object: no manifest has it
                archive.journal.note_version(
                    session, object_key=key, facts=version_facts(session, doc_pk_owner[0], version)
                )
        return version_of(doc_uid, version, audit=False)
    media = _checked(caller, content, "document-update")
    put = gate.archive.put_object(
        PatientValues(current.patient_id),
        io.BytesIO(content.data),
        link,
        kind="document",
        content_type=media,
    )
    return version_of(doc_uid, put.linked, audit=False)


def _defaults(fields: DocFields, current: DocRow) -> DocFields:
    """Metadata not given in an update is kept from the version it replaces."""
    return DocFields(
        doc_type=fields.doc_type or current.doc_type,
        title=fields.title or current.title,
        author=fields.author or current.author,
        date=fields.date or current.date,
        filename=fields.filename or current.filename,
    )


def _owner(doc_uid: str) -> tuple[int, int]:
    with require_caller().gate.catalog.session() as session:
        owner = rows.document_owner(session, doc_uid)
    if owner is None:
        raise NotFoundError(f"no document {doc_uid}")
    return owner


def _visible(caller: Caller) -> ColumnElement[bool]:
    return access.visible(caller.principal, Document.patient_pk, Document.source_site_id)


def _denied(caller: Caller, doc_uid: str, action: str) -> NotFoundError:
    """A document the caller may not see answers as a missing one; audited as denied."""
    with caller.gate.catalog.session() as session:
        owner = rows.document_owner(session, doc_uid)
    if owner is not None:
        caller.gate.denied(caller.principal, action, patient_pk=owner[1], detail=doc_uid)
    return NotFoundError(f"no document {doc_uid}")


def get(
    doc_uid: str,
    *,
    patient_id: str | None = None,
    action: str = "document-read",
    audit: bool = True,
) -> DocRow:
    """A document's latest version, if the caller may see it (404 otherwise)."""
    caller = require_caller()
    where = [Document.doc_uid == doc_uid, _visible(caller)]
    with caller.gate.catalog.session() as session:
        found = rows.doc_rows(session, rows.doc_query(*where))
    if not found or (patient_id is not None and found[0].patient_id != patient_id):
        raise _denied(caller, doc_uid, action)
    if audit:
        _audit_read(caller, found[0], action)
    return found[0]


def version_of(doc_uid: str, version: int, *, audit: bool = True) -> DocRow:
    """One version of a document (earlier versions stay readable)."""
    caller = require_caller()
    if not 1 <= version <= MAX_VERSION:
        get(doc_uid, audit=False)  # raises 404 (audited as denied) when the document is hidden
        raise NotFoundError(f"document {doc_uid} has no version {version}")
    where = [Document.doc_uid == doc_uid, DocumentVersion.version == version, _visible(caller)]
    with caller.gate.catalog.session() as session:
        found = rows.doc_rows(session, rows.doc_query(*where, latest=False))
    if not found:
        get(doc_uid, audit=False)  # raises 404 (audited as denied) when the document is hidden
        raise NotFoundError(f"document {doc_uid} has no version {version}")
    if audit:
        _audit_read(caller, found[0], "document-read")
    return found[0]


def history(doc_uid: str, *, patient_id: str | None = None) -> list[DocRow]:
    """Every version of a document, newest first."""
    caller = require_caller()
    latest = get(doc_uid, patient_id=patient_id, action="document-history", audit=False)
    where = [Document.doc_uid == doc_uid, _visible(caller)]
    with caller.gate.catalog.session() as session:
        found = rows.doc_rows(
            session, rows.doc_query(*where, latest=False).order_by(DocumentVersion.version.desc())
        )
    _audit_read(caller, latest, "document-history")
    return found


def list_for_patient(patient_id: str) -> list[DocRow]:
    """A patient's documents (latest versions), newest first, as far as the caller may see."""
    caller = require_caller()
    pk = access.reach_patient(caller.gate, caller.principal, patient_id, "document-list")
    with caller.gate.catalog.session() as session:
        found = rows.doc_rows(
            session,
            rows.doc_query(Document.patient_pk == pk, _visible(caller)).order_by(
                Document.doc_date.desc(), Document.id.desc()
            ),
        )
    caller.gate.read(
        caller.principal,
        "document-list",
        patient_pk=pk,
        patient_id=patient_id,
        detail=f"{len(found)} document(s)",
    )
    return found


def read_bytes(row: DocRow) -> Iterator[bytes]:
    """The stored bytes of a version already authorised and audited (verified on read),
    read from the replicas nearest the caller's site."""
    caller = require_caller()
    near = caller.gate.site_of(caller.principal)
    return caller.gate.archive.store.read(row.object_key, near_site=near)


def _audit_read(caller: Caller, row: DocRow, action: str) -> None:
    caller.gate.read(
        caller.principal,
        action,
        patient_pk=row.patient_pk,
        patient_id=row.patient_id,
        detail=f"document {row.doc_uid} v{row.version}",
    )
