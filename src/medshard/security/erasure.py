"""Erasure: crypto-shredding a patient, deleting a mis-filed study.

Erasing a patient removes their key first (every replica of every object becomes
unreadable at that instant, wherever it is), then every catalog row that names them, and
queues the deletion of their chunk copies from the nodes. The audit event is appended
before the key goes, sealed under that key: it stays in the chain, verifiable, and no
longer says who was erased.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from medshard.catalog.access_models import BreakGlass, CareTeamDoctor, ChunkDeletion, Share, User
from medshard.catalog.models import (
    AnalysisJob,
    CareSite,
    Chunk,
    Finding,
    Instance,
    Patient,
    Replica,
    Series,
    StoredObject,
    Study,
    utcnow,
)
from medshard.catalog.records import erase_records
from medshard.errors import AccessDeniedError, NotFoundError
from medshard.security.gate import Gate
from medshard.security.policy import is_doctor_of
from medshard.security.principal import Principal


@dataclass(frozen=True)
class Erased:
    studies: int
    instances: int
    objects: int
    chunk_copies_queued: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _queue_object_deletions(session: Session, object_pks: list[int]) -> int:
    if not object_pks:
        return 0
    copies = session.execute(
        select(Chunk.chunk_id, Replica.node_pk)
        .join(Replica, Replica.chunk_pk == Chunk.id)
        .where(Chunk.object_pk.in_(object_pks))
    ).all()
    if copies:
        now = utcnow()
        session.execute(
            insert(ChunkDeletion),
            [{"chunk_id": c, "node_pk": n, "created_at": now, "attempts": 0} for c, n in copies],
        )
    chunk_pks = select(Chunk.id).where(Chunk.object_pk.in_(object_pks))
    session.execute(delete(Replica).where(Replica.chunk_pk.in_(chunk_pks)))
    session.execute(delete(Chunk).where(Chunk.object_pk.in_(object_pks)))
    return len(copies)


def _delete_studies(session: Session, study_pks: list[int]) -> tuple[int, list[int]]:
    """Delete studies with their series and instances; (instance count, their object pks)."""
    if not study_pks:
        return 0, []
    series_pks = select(Series.id).where(Series.study_pk.in_(study_pks))
    inst = session.execute(
        select(Instance.object_pk, Instance.thumbnail_object_pk).where(
            Instance.series_pk.in_(series_pks)
        )
    ).all()
    object_pks = [o for row in inst for o in row if o is not None]
    uids = list(session.scalars(select(Study.study_instance_uid).where(Study.id.in_(study_pks))))
    session.execute(delete(Finding).where(Finding.study_instance_uid.in_(uids)))
    session.execute(delete(AnalysisJob).where(AnalysisJob.study_instance_uid.in_(uids)))
    session.execute(delete(Share).where(Share.study_pk.in_(study_pks)))
    session.execute(delete(Instance).where(Instance.series_pk.in_(series_pks)))
    session.execute(delete(Series).where(Series.study_pk.in_(study_pks)))
    session.execute(delete(Study).where(Study.id.in_(study_pks)))
    return len(inst), object_pks


def erase_patient(gate: Gate, principal: Principal, patient_id: str, reason: str = "") -> Erased:
    """Crypto-shred a patient (admin only); audited in the erasing transaction."""
    gate.require_role(principal, {"admin", "system"}, "erase a patient")
    with gate.catalog.transaction() as session:
        patient = session.scalar(select(Patient).where(Patient.patient_id == patient_id))
        if patient is None:
            raise NotFoundError(f"no patient {patient_id!r}")
        gate.audit.append(
            session,
            gate.event(
                principal,
                "patient-erase",
                patient_pk=patient.id,
                patient_id=patient_id,
                detail=reason[:500],
                flagged=False,
            ),
        )
        # the key first: from here on, no replica anywhere can be decrypted
        session.execute(update(Patient).where(Patient.id == patient.id).values(wrapped_key=None))
        study_pks = list(session.scalars(select(Study.id).where(Study.patient_pk == patient.id)))
        instances, object_pks = _delete_studies(session, study_pks)
        erase_records(session, patient.id)  # documents and series; their objects go below
        object_pks += list(
            session.scalars(
                select(StoredObject.id).where(
                    StoredObject.patient_pk == patient.id, StoredObject.id.not_in(object_pks)
                )
            )
        )
        copies = _queue_object_deletions(session, object_pks)
        session.execute(delete(StoredObject).where(StoredObject.patient_pk == patient.id))
        session.execute(delete(Finding).where(Finding.patient_id == patient_id))
        session.execute(delete(CareSite).where(CareSite.patient_pk == patient.id))
        session.execute(delete(CareTeamDoctor).where(CareTeamDoctor.patient_pk == patient.id))
        session.execute(delete(BreakGlass).where(BreakGlass.patient_pk == patient.id))
        session.execute(delete(Share).where(Share.patient_pk == patient.id))
        session.execute(delete(User).where(User.patient_id == patient_id))
        session.execute(delete(Patient).where(Patient.id == patient.id))
    gate.archive.store.forget_patient(patient_id)
    return Erased(len(study_pks), instances, len(object_pks), copies)


def delete_study(gate: Gate, principal: Principal, study_uid: str, reason: str = "") -> Erased:
    """Delete a (mis-filed) study: by a doctor of that patient, or an admin."""
    with gate.catalog.transaction() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        allowed = study is not None and (
            principal.role in ("admin", "system")
            or bool(session.scalar(select(is_doctor_of(principal, study.patient_pk))))
        )
        if study is None or not allowed:
            if study is not None:
                gate.denied(
                    principal, "study-delete", patient_pk=study.patient_pk, study_uid=study_uid
                )
            if study is not None and principal.role == "admin":
                raise AccessDeniedError("not allowed")
            raise NotFoundError(f"no study {study_uid}")
        gate.audit.append(
            session,
            gate.event(
                principal,
                "study-delete",
                patient_pk=study.patient_pk,
                study_uid=study_uid,
                detail=reason[:500],
                flagged=False,
            ),
        )
        instances, object_pks = _delete_studies(session, [study.id])
        copies = _queue_object_deletions(session, object_pks)
        if object_pks:
            session.execute(delete(StoredObject).where(StoredObject.id.in_(object_pks)))
    return Erased(1, instances, len(object_pks), copies)
