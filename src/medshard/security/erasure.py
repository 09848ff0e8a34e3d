"""Erasure: crypto-shredding a patient, deleting a mis-filed study.

Erasing a patient removes their key first (every replica of every object becomes
unreadable at that instant, wherever it is), then every catalog row that names them, and
queues the deletion of their chunk copies from the nodes. The audit event is appended
before the key goes, sealed under that key: it stays in the chain, verifiable, and no
longer says who was erased. The rows go by :mod:`medshard.catalog.erasure_rows`. Both
removals are journaled on the nodes before they commit (:mod:`medshard.cluster.journal`),
so restoring a backup taken before them does not bring the patient or study back.
"""

from __future__ import annotations

from medshard.catalog.care_team import in_care_team
from medshard.catalog.erasure_rows import (
    Erased,
    erase_patient_rows,
    erase_study_rows,
    study_object_keys,
)
from medshard.catalog.lookups import patient_named
from medshard.catalog.studies import study_named
from medshard.errors import AccessDeniedError, NotFoundError
from medshard.security.gate import Gate
from medshard.security.policy import is_doctor_of
from medshard.security.principal import Principal

__all__ = ["Erased", "delete_study", "erase_patient"]


def erase_patient(gate: Gate, principal: Principal, patient_id: str, reason: str = "") -> Erased:
    """Crypto-shred a patient (admin only); audited in the erasing transaction."""
    gate.require_role(principal, {"admin", "system"}, "erase a patient")
    with gate.archive.journaled_transaction() as session:
        patient = patient_named(session, patient_id)
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
        # the event is sealed under the patient's key; the rows go next, the key first
        erased = erase_patient_rows(session, patient.id, patient_id)
        gate.archive.journal.note_removal(session, patient=patient_id)
    gate.archive.store.forget_patient(patient_id)
    return erased


def delete_study(gate: Gate, principal: Principal, study_uid: str, reason: str = "") -> Erased:
    """Delete a (mis-filed) study: by a doctor of that patient, or an admin."""
    with gate.archive.journaled_transaction() as session:
        study = study_named(session, study_uid)
        allowed = study is not None and (
            principal.role in ("admin", "system")
            or in_care_team(session, is_doctor_of(principal, study.patient_pk))
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
        keys = study_object_keys(session, study.id)
        erased = erase_study_rows(session, study.id)
        gate.archive.journal.note_removal(session, study=study_uid, objects=keys)
    return erased
