"""Studies as authorization asks about them: by UID whole, if the caller may see it, or
only whose they are (to audit a refusal against the patient), and whether a patient has
any study the caller may see.

Reads only; each takes the caller's session. Where the answer depends on who asks, the
caller passes the security layer's condition on studies (``visible``:
:func:`medshard.security.policy.visible_studies`), so the policy runs in the database.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from medshard.catalog.models import Study


def study_named(session: Session, study_uid: str) -> Study | None:
    """The study row with this Study Instance UID, whoever may see it (None: unknown)."""
    return session.scalar(select(Study).where(Study.study_instance_uid == study_uid))


def visible_study(session: Session, study_uid: str, visible: ColumnElement[bool]) -> Study | None:
    """The study row with this UID if ``visible`` admits it; None for a missing and a hidden
    one alike."""
    return session.scalar(select(Study).where(Study.study_instance_uid == study_uid, visible))


def patient_pk_of_study(session: Session, study_uid: str) -> int | None:
    """Whose study this is (the patient's row key), whoever may see it (None: unknown)."""
    return session.scalar(select(Study.patient_pk).where(Study.study_instance_uid == study_uid))


def has_visible_study(session: Session, patient_pk: int, visible: ColumnElement[bool]) -> bool:
    """Whether ``visible`` admits at least one of a patient's studies."""
    found = session.scalar(select(Study.id).where(Study.patient_pk == patient_pk, visible).limit(1))
    return found is not None
