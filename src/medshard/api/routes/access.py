"""REST for the security layer: users, care teams, shares, break-glass, audit, erasure.

Thin: each route checks the shape of its input and calls :mod:`medshard.security`, where
the rules and the audit live.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from medshard.api.auth import CallerDep
from medshard.api.dicomweb.path_uids import valid_path_uids
from medshard.catalog.lookups import patient_named
from medshard.security import careteam, erasure, identity
from medshard.security.audit import events, patient_tag, verify

router = APIRouter(prefix="/api", tags=["access"], dependencies=[Depends(valid_path_uids)])


class NewUser(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    role: str
    password: str | None = Field(default=None, max_length=1024)
    sites: list[str] = Field(default_factory=list, max_length=32)
    patient_id: str | None = Field(default=None, max_length=128)
    full_name: str = Field(default="", max_length=256)


class ShareRequest(BaseModel):
    study: str = Field(min_length=1, max_length=64)
    expert: str = Field(min_length=1, max_length=128)
    days: float = Field(gt=0, le=3650)


class BreakGlassRequest(BaseModel):
    patient_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=1024)


class DoctorRef(BaseModel):
    username: str = Field(min_length=1, max_length=128)


@router.get("/users")
def list_users(caller: CallerDep) -> list[dict[str, object]]:
    """Every user (admin only)."""
    caller.gate.require_role(caller.principal, {"admin"}, "list users")
    with caller.gate.catalog.session() as session:
        users = [u.as_dict() for u in identity.list_users(session)]
    caller.gate.read(caller.principal, "user-list")
    return users


@router.post("/users", status_code=201)
def add_user(body: NewUser, caller: CallerDep) -> dict[str, str]:
    """Create a user (admin only)."""
    gate = caller.gate
    gate.require_role(caller.principal, {"admin"}, "add users")
    with gate.archive.journaled_transaction() as session:
        identity.add_user(
            session,
            username=body.username,
            role=body.role,
            password=body.password,
            sites=body.sites,
            patient_id=body.patient_id,
            full_name=body.full_name,
        )
        gate.audit.append(
            session, gate.event(caller.principal, "user-add", detail=f"{body.username} {body.role}")
        )
    return {"username": body.username, "role": body.role}


@router.post("/users/{username}/disable")
def disable_user(username: str, caller: CallerDep) -> dict[str, str]:
    """Disable an account (admin only); its sessions and tokens stop working."""
    gate = caller.gate
    gate.require_role(caller.principal, {"admin"}, "disable users")
    with gate.archive.journaled_transaction() as session:
        identity.set_disabled(session, username, True)
        gate.audit.append(session, gate.event(caller.principal, "user-disable", detail=username))
    return {"username": username, "disabled": "true"}


@router.get("/patients/{patient_id}/careteam")
def show_careteam(patient_id: str, caller: CallerDep) -> dict[str, object]:
    """The sites and doctors of a patient's care team, with their last involvement."""
    return careteam.show(caller.gate, caller.principal, patient_id).as_dict()


@router.post("/patients/{patient_id}/careteam/doctors")
def add_doctor(patient_id: str, body: DoctorRef, caller: CallerDep) -> dict[str, object]:
    """Add a doctor to the care team (an admin, or a doctor already in it)."""
    careteam.change_doctor(caller.gate, caller.principal, patient_id, body.username, add=True)
    return careteam.show(caller.gate, caller.principal, patient_id).as_dict()


@router.delete("/patients/{patient_id}/careteam/doctors/{username}")
def remove_doctor(patient_id: str, username: str, caller: CallerDep) -> dict[str, str]:
    """Remove a doctor from the care team."""
    careteam.change_doctor(caller.gate, caller.principal, patient_id, username, add=False)
    return {"patient_id": patient_id, "removed": username}


@router.post("/shares", status_code=201)
def share(body: ShareRequest, caller: CallerDep) -> dict[str, str]:
    """Share a study with an expert for N days (a doctor of that patient only)."""
    return careteam.share_study(caller.gate, caller.principal, body.study, body.expert, body.days)


@router.get("/shares")
def list_shares(caller: CallerDep) -> list[dict[str, object]]:
    """An expert's shares with the time left, or the shares a doctor granted."""
    return careteam.shares_of(caller.gate, caller.principal)


@router.post("/break-glass", status_code=201)
def break_glass(body: BreakGlassRequest, caller: CallerDep) -> dict[str, str]:
    """Emergency, time-limited access to one patient, flagged in the audit log."""
    return careteam.break_glass(caller.gate, caller.principal, body.patient_id, body.reason)


@router.get("/audit/me")
def my_audit(caller: CallerDep, limit: int = Query(500, ge=1, le=5000)) -> dict[str, Any]:
    """Who accessed my records, and when (patients only)."""
    gate, p = caller.gate, caller.principal
    gate.require_role(p, {"patient"}, "read a patient's own access log")
    assert p.patient_id is not None
    with gate.catalog.session() as session:
        patient = patient_named(session, p.patient_id)
        if patient is None or patient.wrapped_key is None:
            return {"patient_id": p.patient_id, "events": []}
        tag = patient_tag(gate.archive.store.patient_key(patient))
        found = events(session, gate.patient_key_of, tag=tag, limit=limit)
    gate.read(p, "audit-me", patient_pk=patient.id, patient_id=p.patient_id)
    return {
        "patient_id": p.patient_id,
        "events": [{k: v for k, v in e.as_dict().items() if k not in ("hash",)} for e in found],
    }


@router.get("/audit")
def audit_log(
    caller: CallerDep,
    since: str | None = Query(None, max_length=40),
    limit: int = Query(1000, ge=1, le=10000),
) -> list[dict[str, Any]]:
    """The audit log (admin only), patient identities opened where the key still exists."""
    gate = caller.gate
    gate.require_role(caller.principal, {"admin"}, "read the audit log")
    gate.audit.flush(2.0)
    with gate.catalog.session() as session:
        found = events(session, gate.patient_key_of, since=since, limit=limit)
    gate.read(caller.principal, "audit-read")
    return [e.as_dict() for e in found]


@router.get("/audit/verify")
async def audit_verify(caller: CallerDep) -> dict[str, Any]:
    """Verify the whole chain (admin only)."""
    gate = caller.gate
    gate.require_role(caller.principal, {"admin"}, "verify the audit log")
    verdict = await run_in_threadpool(verify, gate.catalog, gate._master_key())
    return verdict.as_dict()


@router.delete("/studies/{study}")
def delete_study(study: str, caller: CallerDep, reason: str = Query("", max_length=500)) -> dict:
    """Delete a mis-filed study (a doctor of that patient)."""
    result = erasure.delete_study(caller.gate, caller.principal, study, reason)
    return {"study": study, **result.as_dict()}


@router.post("/patients/{patient_id}/erase")
def erase_patient(
    patient_id: str, caller: CallerDep, reason: str = Query("", max_length=500)
) -> dict[str, object]:
    """Crypto-shred a patient (admin only); their chunks leave the nodes in the background."""
    result = erasure.erase_patient(caller.gate, caller.principal, patient_id, reason)
    return {"patient_id": patient_id, **result.as_dict()}
