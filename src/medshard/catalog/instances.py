"""Stored instances by what a request names them by: a study (and series, and SOP UID), a
set of instance rows, or SOP UIDs; with the object keys their bytes are read under.

Reads only; each takes the caller's session, and those that answer for a caller take the
security layer's ``visible`` condition on studies (:func:`medshard.security.policy.
visible_studies`), so the visibility filter runs in the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sqlalchemy import ColumnElement, Row, select
from sqlalchemy.orm import Session

from medshard.catalog.models import Instance, Series, Site, StoredObject, Study

#: What serving an instance needs (see :func:`instances_of_study`).
InstanceRow = Row[str, str, str, str, str, str, int, int, int, int | None]
#: Instance keys per SQL IN-list (keeps each statement well under every backend's limits).
IN_BATCH: Final = 500


def instances_of_study(
    session: Session,
    study_uid: str,
    *,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    visible: ColumnElement[bool],
) -> Sequence[InstanceRow]:
    """The live instances of a study (optionally of one series, or one instance) that
    ``visible`` admits, in series then instance order, with what serving them needs.

    Each row: study, series and SOP instance UIDs, SOP class UID, transfer syntax UID,
    object key, object size, instance pk, patient pk, and Rows (None: no pixel data).
    """
    query = (
        select(
            Study.study_instance_uid,
            Series.series_instance_uid,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.transfer_syntax_uid,
            StoredObject.object_key,
            StoredObject.size,
            Instance.id,
            Study.patient_pk,
            Instance.rows,
        )
        .select_from(Instance)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(StoredObject, Instance.object_pk == StoredObject.id)
        .where(Study.study_instance_uid == study_uid, Instance.deleted.is_(False))
        .order_by(
            Series.series_number,
            Series.series_instance_uid,
            Instance.instance_number,
            Instance.sop_instance_uid,
        )
    )
    if series_uid is not None:
        query = query.where(Series.series_instance_uid == series_uid)
    if sop_uid is not None:
        query = query.where(Instance.sop_instance_uid == sop_uid)
    return session.execute(query.where(visible)).all()


def live_object_keys(session: Session, instance_pks: Sequence[int]) -> dict[int, str]:
    """Object key per instance pk, for those not deleted meanwhile; asked in IN-lists of
    :data:`IN_BATCH` keys, so a retrieve of a whole archive stays a few statements."""
    keys: dict[int, str] = {}
    for start in range(0, len(instance_pks), IN_BATCH):
        batch = instance_pks[start : start + IN_BATCH]
        found = session.execute(
            select(Instance.id, StoredObject.object_key)
            .join(StoredObject, Instance.object_pk == StoredObject.id)
            .where(Instance.id.in_(batch), Instance.deleted.is_(False))
        ).all()
        keys.update({pk: key for pk, key in found})
    return keys


def study_of_instance(
    session: Session, sop_uid: str, visible: ColumnElement[bool]
) -> tuple[str, int] | None:
    """(Study Instance UID, patient pk) of the instance with this SOP UID, if ``visible``
    admits its study; None for a missing and a hidden one alike."""
    row = session.execute(
        select(Study.study_instance_uid, Study.patient_pk)
        .join(Series, Series.study_pk == Study.id)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Instance.sop_instance_uid == sop_uid, visible)
    ).first()
    return (row[0], row[1]) if row is not None else None


def objects_of_study(
    session: Session, study_uid: str, visible: ColumnElement[bool]
) -> list[tuple[str, str, str]]:
    """(series UID, SOP UID, object key) of every instance row of a study ``visible``
    admits, for exporting it whole."""
    rows = session.execute(
        select(
            Series.series_instance_uid,
            Instance.sop_instance_uid,
            StoredObject.object_key,
        )
        .join(Instance, Instance.series_pk == Series.id)
        .join(StoredObject, Instance.object_pk == StoredObject.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == study_uid, visible)
    ).all()
    return [(series, sop, key) for series, sop, key in rows]


def studies_and_sites_of(
    session: Session, sop_uids: Sequence[str]
) -> list[tuple[str, str, str | None]]:
    """(SOP UID, Study Instance UID, source site name or None) of each of ``sop_uids``
    stored: analysis needs the study to file its result and the site for its prior."""
    rows = session.execute(
        select(Instance.sop_instance_uid, Study.study_instance_uid, Site.name)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .outerjoin(Site, Instance.source_site_id == Site.id)
        .where(Instance.sop_instance_uid.in_(sop_uids))
    ).all()
    return [(sop, study, site) for sop, study, site in rows]
