"""The ingest pipeline shared by every source (file import, C-STORE, STOW-RS, browser upload).

validate the whole file (:mod:`medshard.ingest.validate`) + parse the header -> index fields
-> duplicate check -> encrypt + replicate (quorum) -> one catalog transaction (instance with
its object rows, plus any in-transaction hooks such as the analysis queue) -> outcome. A
rejected file never leaves anything behind in the catalog or on the nodes. A preamble that
could make the file a polyglot is zeroed on the way in, and the outcome's ``note`` says so.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, cast

from sqlalchemy import ColumnElement, Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from medshard import metrics
from medshard.catalog.models import Instance, Patient, Series, StoredObject, Study, utcnow
from medshard.cluster.archive import Archive
from medshard.cluster.objects import shard_of
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


def attach_analysis(ingestor: Ingestor) -> None:
    """Enqueue analysis on ingest (every source: import, STOW-RS, C-STORE) when the analysis
    extra is installed; the queue itself applies the configured rules. Idempotent."""
    if ingestor.analysis_attached:
        return
    ingestor.analysis_attached = True
    try:
        from medshard.analysis.queue import attach_to_ingestor
    except ImportError:  # medshard[ai] not installed: ingest works, nothing is analysed
        log.debug("analysis extra not installed; ingest without analysis")
        return
    attach_to_ingestor(ingestor)


def file_sha256(fh: BinaryIO) -> str:
    start = fh.tell()
    digest = hashlib.sha256()
    while piece := fh.read(1 << 20):
        digest.update(piece)
    fh.seek(start)
    return digest.hexdigest()


class Ingestor:
    """Ingests DICOM streams into an :class:`Archive`."""

    #: Entries kept in each lookup cache before it is cleared (bounded memory).
    CACHE_LIMIT = 50_000

    def __init__(self, archive: Archive, *, analysis: bool = True) -> None:
        self.archive = archive
        self.hooks: list[InstanceHook] = []
        self.analysis_attached = False
        if analysis:
            attach_analysis(self)
        # Patient, study and series rows never change identity once created, and a profile
        # showed their look-ups costing a quarter of ingest CPU: remember them per ingestor.
        self._patients: dict[str, Patient] = {}
        self._pks: dict[tuple[str, ...], int] = {}

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
            fields = instance_fields(read_header(fh, source, max_inflated_bytes=cap))
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
            existing = conn.execute(
                select(StoredObject.sha256)
                .join(Instance, Instance.object_pk == StoredObject.id)
                .where(Instance.sop_instance_uid == fields.sop_instance_uid)
            ).scalar()
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
        archive = self.archive
        patient = self.patient(fields)
        study_pk = self._study(patient, fields)
        series_pk = self._series(study_pk, fields)
        written = archive.store.write(archive.store.patient_key(patient), fh)

        def commit(session: Session) -> None:
            object_pk = archive.store.record(session, patient, written)
            instance_values = {
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
                "created_at": utcnow(),
                "deleted": False,
            }
            table = cast(Table, Instance.__table__)
            instance_pk = session.execute(
                insert(table).returning(table.c.id), [instance_values]
            ).scalar_one()
            instance = Instance(id=instance_pk, **instance_values)  # detached, for hooks
            for hook in self.hooks:
                hook(session, instance, fields)
            if on_commit is not None:
                on_commit(session, patient.id, instance, fields)

        try:
            archive.catalog.commit_grouped(commit)
        except BaseException:
            archive.store.discard(written)
            raise
        metrics.INGEST_BYTES.inc(written.size)
        return written.min_copies

    # -- get-or-create, each in its own short transaction (no savepoints needed) -------------
    def patient(self, fields: InstanceFields) -> Patient:
        catalog = self.archive.catalog
        pid = fields.patient_id
        cached = self._patients.get(pid)
        if cached is not None:
            return cached
        with catalog.session() as session:
            found = session.scalar(select(Patient).where(Patient.patient_id == pid))
        if found is not None:
            return self._remember_patient(found)
        wrapped_key, key_id = self.archive.store.new_patient_key(pid)
        try:
            with catalog.transaction() as session:
                session.add(
                    Patient(
                        patient_id=pid,
                        name=fields.patient_name,
                        birth_date=fields.patient_birth_date,
                        sex=fields.patient_sex,
                        shard=shard_of(pid, self.archive.settings.shards),
                        wrapped_key=wrapped_key,
                        master_key_id=key_id,
                    )
                )
        except IntegrityError:
            pass
        with catalog.session() as session:
            created = session.scalar(select(Patient).where(Patient.patient_id == pid))
        assert created is not None
        return self._remember_patient(created)

    def _remember_patient(self, patient: Patient) -> Patient:
        if len(self._patients) >= self.CACHE_LIMIT:
            self._patients.clear()
        self._patients[patient.patient_id] = patient
        return patient

    def _study(self, patient: Patient, fields: InstanceFields) -> int:
        def make() -> Study:
            return Study(
                study_instance_uid=fields.study_instance_uid,
                patient_pk=patient.id,
                study_date=fields.study_date,
                study_time=fields.study_time,
                accession_number=fields.accession_number,
                study_id=fields.study_id,
                study_description=fields.study_description,
                referring_physician=fields.referring_physician,
            )

        pk = self._get_or_create(
            ("study", fields.study_instance_uid),
            Study.id,
            Study.study_instance_uid == fields.study_instance_uid,
            make,
        )
        owner = self._parent_of(
            ("study", fields.study_instance_uid), Study.patient_pk, Study.id, pk
        )
        if owner != patient.id:
            raise IdentityConflictError(
                f"Study Instance UID {fields.study_instance_uid} belongs to another patient, not "
                f"to Patient ID {fields.patient_id!r}; refused so that neither record is mixed up "
                "(correct the Patient ID, or the study UID, and send it again)"
            )
        return pk

    def _series(self, study_pk: int, fields: InstanceFields) -> int:
        def make() -> Series:
            return Series(
                series_instance_uid=fields.series_instance_uid,
                study_pk=study_pk,
                modality=fields.modality,
                series_number=fields.series_number,
                series_description=fields.series_description,
                body_part=fields.body_part,
                series_date=fields.series_date,
                series_time=fields.series_time,
            )

        pk = self._get_or_create(
            ("series", fields.series_instance_uid),
            Series.id,
            Series.series_instance_uid == fields.series_instance_uid,
            make,
        )
        parent = self._parent_of(
            ("series", fields.series_instance_uid), Series.study_pk, Series.id, pk
        )
        if parent != study_pk:
            raise IdentityConflictError(
                f"Series Instance UID {fields.series_instance_uid} belongs to another study, "
                f"not to {fields.study_instance_uid}"
            )
        return pk

    def _parent_of(
        self,
        cache_key: tuple[str, str],
        parent_column: InstrumentedAttribute[int],
        pk_column: InstrumentedAttribute[int],
        pk: int,
    ) -> int:
        """The patient of a study or the study of a series (they never change: cached)."""
        key = ("parent", *cache_key)
        cached = self._pks.get(key)
        if cached is not None:
            return cached
        with self.archive.catalog.session() as session:
            parent = session.scalar(select(parent_column).where(pk_column == pk))
        assert parent is not None
        self._pks[key] = parent
        return parent

    def _get_or_create(
        self,
        cache_key: tuple[str, str],
        pk_column: InstrumentedAttribute[int],
        where: ColumnElement[bool],
        make: Callable[[], Study | Series],
    ) -> int:
        cached = self._pks.get(cache_key)
        if cached is not None:
            return cached
        pk = self._find_or_create(pk_column, where, make)
        if len(self._pks) >= self.CACHE_LIMIT:
            self._pks.clear()
        self._pks[cache_key] = pk
        return pk

    def _find_or_create(
        self,
        pk_column: InstrumentedAttribute[int],
        where: ColumnElement[bool],
        make: Callable[[], Study | Series],
    ) -> int:
        catalog = self.archive.catalog
        with catalog.session() as session:
            pk = session.scalar(select(pk_column).where(where))
        if pk is not None:
            return pk
        try:
            with catalog.transaction() as session:
                row = make()
                session.add(row)
                session.flush()
                return row.id
        except IntegrityError:
            with catalog.session() as session:
                found = session.scalar(select(pk_column).where(where))
            assert found is not None
            return found
