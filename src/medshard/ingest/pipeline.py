"""The ingest pipeline shared by every source (file import, C-STORE, STOW-RS, browser upload).

parse (validate the whole file with :mod:`medshard.ingest.validate`, read the header's index
fields) -> duplicate check -> put (:meth:`Archive.put_object`: encrypt, replicate to a quorum,
then commit patient, study, series, instance and object rows, and any hooks such as the
analysis queue, care team and audit, in one transaction) -> a typed outcome. A rejected file
never leaves anything behind in the catalog or on the nodes. A preamble that could make the
file a polyglot is zeroed on the way in, and the outcome's ``note`` says so.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medshard import metrics
from medshard.catalog.models import Instance
from medshard.catalog.writes import (
    PatientValues,
    ensure_series,
    ensure_study,
    insert_instance,
    stored_sha256_of_instance,
)
from medshard.cluster.archive import Archive, Put
from medshard.errors import IdentityConflictError, InvalidInputError, MedshardError
from medshard.ingest.dicom import InstanceFields, instance_fields, read_header
from medshard.ingest.validate import validate_stream

log = logging.getLogger(__name__)

#: Called inside the instance's catalog transaction (e.g. to enqueue analysis durably). Many
#: instances share one group-commit transaction with a single flush at its end, so a hook must
#: not flush: it links its rows to ``instance`` by relationship or by the instance's UIDs.
InstanceHook = Callable[[Session, Instance, InstanceFields], None]
#: Like :data:`InstanceHook`, for one call: (session, patient pk, instance, fields). The
#: security layer passes one to attach care team and audit rows to the instance's commit.
CommitHook = Callable[[Session, int, Instance, InstanceFields], None]
#: Stores an instance's bytes and commits its rows: :meth:`Archive.put_object`, unless a
#: restore replaying the object journal records an object already on the nodes instead.
PutObject = Callable[..., Put[None]]


class Rejection(StrEnum):
    """Why an instance was not stored; each protocol maps these to its own status."""

    INVALID = "invalid"  # not DICOM, or fails validation: never storable as sent
    CONFLICT = "conflict"  # its SOP Instance UID is stored with other bytes (kept)
    IDENTITY = "identity"  # its study/series belongs to another patient/study
    STORAGE = "storage"  # the storage layer refused (no quorum, out of space): retry later


@dataclass
class IngestOutcome:
    status: str  # imported | duplicate | rejected
    path: str
    sop_instance_uid: str = ""
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    patient_id: str = ""
    sop_class_uid: str = ""
    reason: str = ""
    #: Set when the stored bytes differ from the input (e.g. a zeroed preamble).
    note: str = ""
    #: Why a ``rejected`` outcome was refused (:class:`Rejection`); empty otherwise.
    code: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v or k in ("path",)}


def file_sha256(fh: BinaryIO) -> str:
    """The SHA-256 of the whole stream (from its start, wherever it stands); rewinds it."""
    fh.seek(0)
    digest = hashlib.sha256()
    while piece := fh.read(1 << 20):
        digest.update(piece)
    fh.seek(0)
    return digest.hexdigest()


class Ingestor:
    """Ingests DICOM streams into an :class:`Archive`."""

    #: Entries of the filed-rows cache before it is emptied (bounded memory).
    FILED_LIMIT = 100_000

    def __init__(
        self,
        archive: Archive,
        *,
        hooks: Sequence[InstanceHook] = (),
        put: PutObject | None = None,
    ) -> None:
        self.archive = archive
        self._put = put
        #: Run in every instance's commit; the application layer adds analysis here
        #: (:func:`medshard.api.ingestors.analysed_ingestor`), so ingest never imports analysis.
        self.hooks: list[InstanceHook] = list(hooks)
        # (study UID, patient pk) and (series UID, study pk) -> pk, for rows seen committed:
        # four statements per instance fewer. Only agreement is cached; a refusal is always
        # decided by the catalog, and a row deleted since (a mis-filed study) fails its
        # foreign key, which empties the cache and retries once.
        self._filed: dict[tuple[str, str, int], int] = {}

    def ingest_path(
        self, path: Path, *, site_id: int | None = None, on_commit: CommitHook | None = None
    ) -> IngestOutcome:
        try:
            with open(path, "rb") as fh:
                return self.ingest_stream(fh, str(path), site_id=site_id, on_commit=on_commit)
        except OSError as exc:
            metrics.INGEST_TOTAL.labels("rejected").inc()
            return IngestOutcome("rejected", str(path), reason=f"cannot read file: {exc}")

    def ingest_stream(
        self,
        fh: BinaryIO,
        source: str,
        *,
        site_id: int | None = None,
        on_commit: CommitHook | None = None,
    ) -> IngestOutcome:
        """Ingest one seekable stream; never raises for bad input, returns ``rejected``.

        ``site_id`` is the site the instance came from; ``on_commit`` runs in the instance's
        catalog transaction (care team, audit), so they commit together or not at all.
        """
        start = time.perf_counter()
        cap = self.archive.settings.max_decompressed_bytes
        try:
            checked = validate_stream(fh, max_decompressed_bytes=cap)
            header = checked.header  # one pass: the walk kept what the catalog indexes
            if header is None:
                header = read_header(fh, source, max_inflated_bytes=cap)
            fields = instance_fields(header)
        except InvalidInputError as exc:
            metrics.INGEST_TOTAL.labels("rejected").inc()
            return IngestOutcome("rejected", source, reason=str(exc), code=Rejection.INVALID)
        fh = checked.stored_stream(fh)
        outcome = IngestOutcome(
            "imported",
            source,
            sop_instance_uid=fields.sop_instance_uid,
            series_instance_uid=fields.series_instance_uid,
            study_instance_uid=fields.study_instance_uid,
            patient_id=fields.patient_id,
            sop_class_uid=fields.sop_class_uid,
            note=checked.note,
        )
        if checked.note:
            log.warning("%s: %s", source, checked.note)
        duplicate = self._duplicate_of(fh, fields)
        if duplicate is not None:
            outcome.status, outcome.reason = duplicate
            outcome.code = Rejection.CONFLICT if outcome.status == "rejected" else ""
            metrics.INGEST_TOTAL.labels(outcome.status).inc()
            return outcome
        try:
            try:
                copies = self._store(fh, fields, source, site_id, on_commit)
            except IntegrityError:
                if not self._filed or self._duplicate_of(fh, fields) is not None:
                    raise
                self._filed.clear()  # a cached study or series may have been deleted
                fh.seek(0)
                copies = self._store(fh, fields, source, site_id, on_commit)
            wanted = self.archive.settings.replicas
            if copies < wanted:  # acknowledged at the write quorum: say so, repair will follow
                short = f"stored with {copies} of {wanted} copies; repair restores the rest"
                outcome.note = f"{outcome.note}; {short}" if outcome.note else short
                log.warning("%s: %s", source, short)
        except IntegrityError:
            dup = self._duplicate_of(fh, fields)  # a concurrent ingest of the same instance
            outcome.status, outcome.reason = dup or ("rejected", "conflicting concurrent write")
            outcome.code = Rejection.CONFLICT if outcome.status == "rejected" else ""
        except IdentityConflictError as exc:
            outcome.status, outcome.reason, outcome.code = "rejected", str(exc), Rejection.IDENTITY
        except InvalidInputError as exc:
            outcome.status, outcome.reason, outcome.code = "rejected", str(exc), Rejection.INVALID
        except MedshardError as exc:
            outcome.status, outcome.reason, outcome.code = "rejected", str(exc), Rejection.STORAGE
        metrics.INGEST_TOTAL.labels(outcome.status).inc()
        metrics.INGEST_SECONDS.observe(time.perf_counter() - start)
        return outcome

    def _duplicate_of(self, fh: BinaryIO, fields: InstanceFields) -> tuple[str, str] | None:
        with self.archive.catalog.engine.connect() as conn:  # Core: cheap on the hot path
            existing = stored_sha256_of_instance(conn, fields.sop_instance_uid)
        if existing is None:
            return None
        if existing == file_sha256(fh):
            return ("duplicate", "")
        return (
            "rejected",
            f"SOP Instance UID {fields.sop_instance_uid} is already stored with different "
            "bytes (e.g. another transfer syntax); the stored instance was kept",
        )

    def _store(
        self,
        fh: BinaryIO,
        fields: InstanceFields,
        source: str,
        site_id: int | None = None,
        on_commit: CommitHook | None = None,
    ) -> int:
        """Put the instance; returns how many copies its least-copied chunk has."""

        seen: dict[tuple[str, str, int], int] = {}  # filled by the link run that commits

        def link(session: Session, patient_pk: int, object_pk: int) -> None:
            seen.clear()
            study_key = ("study", fields.study_instance_uid, patient_pk)
            study_pk = self._filed.get(study_key)
            if study_pk is None:
                study_pk = seen[study_key] = ensure_study(session, patient_pk, study_values(fields))
            series_key = ("series", fields.series_instance_uid, study_pk)
            series_pk = self._filed.get(series_key)
            if series_pk is None:
                series_pk = ensure_series(session, study_pk, series_values(fields))
                seen[series_key] = series_pk
            values = {
                "sop_instance_uid": fields.sop_instance_uid,
                "series_pk": series_pk,
                "sop_class_uid": fields.sop_class_uid,
                "instance_number": fields.instance_number,
                "transfer_syntax_uid": fields.transfer_syntax_uid,
                "rows": fields.rows,
                "columns": fields.columns,
                "number_of_frames": fields.number_of_frames,
                "bits_allocated": fields.bits_allocated,
                "object_pk": object_pk,
                "source_path": source[:1024],
                "source_site_id": site_id,
            }
            instance = Instance(id=insert_instance(session, values), **values)  # for hooks
            for hook in self.hooks:
                hook(session, instance, fields)
            if on_commit is not None:
                on_commit(session, patient_pk, instance, fields)

        patient = PatientValues(
            fields.patient_id, fields.patient_name, fields.patient_birth_date, fields.patient_sex
        )
        care_sites = self.archive.care_sites(fields.patient_id, site_id)  # copies go near them
        facts = {"source": source[:1024], "site_id": site_id}  # for the object journal
        put_object = self._put or self.archive.put_object
        put = put_object(patient, fh, link, care_sites=care_sites, facts=facts)
        if len(self._filed) > self.FILED_LIMIT:
            self._filed.clear()
        self._filed.update(seen)  # only now: those rows are committed
        metrics.INGEST_BYTES.inc(put.size)
        return put.copies


def study_values(fields: InstanceFields) -> dict[str, str]:
    """A new study row's attributes (kept from the study's first instance)."""
    return {
        "study_instance_uid": fields.study_instance_uid,
        "study_date": fields.study_date,
        "study_time": fields.study_time,
        "accession_number": fields.accession_number,
        "study_id": fields.study_id,
        "study_description": fields.study_description,
        "referring_physician": fields.referring_physician,
    }


def series_values(fields: InstanceFields) -> dict[str, object]:
    """A new series row's attributes (kept from the series' first instance)."""
    return {
        "series_instance_uid": fields.series_instance_uid,
        "modality": fields.modality,
        "series_number": fields.series_number,
        "series_description": fields.series_description,
        "body_part": fields.body_part,
        "series_date": fields.series_date,
        "series_time": fields.series_time,
    }
