"""The rows an erasure removes: every row that names a patient (after shredding their key),
or a study with its series, instances, findings and shares; and the chunk copies of their
objects, queued for deletion from the nodes.

Who may erase, and the audit event that must be appended before the key goes, are the
security layer's (:mod:`medshard.security.erasure`). Each function runs in the caller's
transaction and neither commits nor rolls back: the catalog change is atomic, and the
node deletes wait in ``chunk_deletions`` for a drainer (a node may be down).
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


@dataclass(frozen=True)
class Erased:
    """What an erasure removed: studies, instances, objects, and chunk copies it queued."""

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


def erase_patient_rows(session: Session, patient_pk: int, patient_id: str) -> Erased:
    """Shred a patient's key, then delete every row that names them (studies, records,
    objects, findings, care team, grants, their patient-role users, the patient) and queue
    their objects' chunk copies for deletion."""
    # the key first: from here on, no replica anywhere can be decrypted
    session.execute(update(Patient).where(Patient.id == patient_pk).values(wrapped_key=None))
    study_pks = list(session.scalars(select(Study.id).where(Study.patient_pk == patient_pk)))
    instances, object_pks = _delete_studies(session, study_pks)
    erase_records(session, patient_pk)  # documents and series; their objects go below
    object_pks += list(
        session.scalars(
            select(StoredObject.id).where(
                StoredObject.patient_pk == patient_pk, StoredObject.id.not_in(object_pks)
            )
        )
    )
    copies = _queue_object_deletions(session, object_pks)
    session.execute(delete(StoredObject).where(StoredObject.patient_pk == patient_pk))
    session.execute(delete(Finding).where(Finding.patient_id == patient_id))
    session.execute(delete(CareSite).where(CareSite.patient_pk == patient_pk))
    session.execute(delete(CareTeamDoctor).where(CareTeamDoctor.patient_pk == patient_pk))
    session.execute(delete(BreakGlass).where(BreakGlass.patient_pk == patient_pk))
    session.execute(delete(Share).where(Share.patient_pk == patient_pk))
    session.execute(delete(User).where(User.patient_id == patient_id))
    session.execute(delete(Patient).where(Patient.id == patient_pk))
    return Erased(len(study_pks), instances, len(object_pks), copies)


def study_object_keys(session: Session, study_pk: int) -> list[str]:
    """The keys of a study's objects (instances and thumbnails): what a study's deletion
    takes away, for the object journal."""
    series_pks = select(Series.id).where(Series.study_pk == study_pk)
    object_pks = (
        select(Instance.object_pk)
        .where(Instance.series_pk.in_(series_pks))
        .union(
            select(Instance.thumbnail_object_pk).where(
                Instance.series_pk.in_(series_pks), Instance.thumbnail_object_pk.is_not(None)
            )
        )
    )
    return list(
        session.scalars(select(StoredObject.object_key).where(StoredObject.id.in_(object_pks)))
    )


def erase_study_rows(session: Session, study_pk: int) -> Erased:
    """Delete a study with its series, instances, objects, findings and shares, and queue
    its objects' chunk copies for deletion."""
    instances, object_pks = _delete_studies(session, [study_pk])
    copies = _queue_object_deletions(session, object_pks)
    if object_pks:
        session.execute(delete(StoredObject).where(StoredObject.id.in_(object_pks)))
    return Erased(1, instances, len(object_pks), copies)
