"""The catalog side of FHIR searches: one filtered, ordered page, then its total if needed.

The FHIR layer (:mod:`medshard.api.fhir.queries`) turns search parameters into conditions and
an ORDER BY, and the caller's visibility into a condition; here they become statements. A
search costs what its page costs, not what its matches cost: documents' page keys come from
the indexes alone and their rows are then read by key with plain column selects, and a
page's total is counted only when the page does not already show it (a short page is the
last one). Every function takes the caller's session and leaves the transaction to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, bindparam, func, select
from sqlalchemy.orm import Session

from medshard.catalog import records as rows
from medshard.catalog.models import Instance, Patient, Series, Study
from medshard.catalog.records import DocRow
from medshard.catalog.records_models import Document

Query = Select[*tuple[Any, ...]]


@dataclass(frozen=True)
class Page:
    """Which rows of a search to read: ``count`` from ``offset`` (``count`` 0 reads none),
    and whether to count the total when the page alone does not tell it."""

    count: int
    offset: int
    total: bool = True


def window(
    db: Session | Connection, query: Query, page: Page, counted: Query
) -> tuple[Sequence[Any], int | None]:
    """The rows of ``page``, and the total.

    A page shorter than ``count`` (and not past the end) is the last one, so the total is
    known without counting; otherwise ``counted`` counts, unless ``page.total`` is False.
    """
    count, offset = page.count, page.offset
    got = db.execute(query.limit(count).offset(offset)).all() if count else []
    if count and len(got) < count and (got or offset == 0):
        return got, offset + len(got)
    if not page.total:
        return got, None
    return got, int(db.scalar(counted) or 0)


def counted(query: Query) -> Query:
    """A count of ``query``'s rows (its ORDER BY dropped)."""
    return select(func.count()).select_from(query.order_by(None).subquery())


def patient_pk_in(column: Any, patient_ids: Sequence[str]) -> ColumnElement[bool]:
    """Condition: a patient pk ``column`` is one of these Patient IDs' (a subquery, so no
    join is needed)."""
    return column.in_(select(Patient.id).where(Patient.patient_id.in_(patient_ids)))


# ------------------------------------------------------------------------------- Patient


def patients_by_pk(
    session: Session, patient_pks: Sequence[int], visible: ColumnElement[bool]
) -> Sequence[Patient]:
    """The unerased patients among ``patient_pks`` that ``visible`` admits, by Patient ID."""
    return session.scalars(
        select(Patient)
        .where(Patient.id.in_(patient_pks), visible, Patient.wrapped_key.is_not(None))
        .order_by(Patient.patient_id)
    ).all()


def patients_page(
    session: Session, where: Sequence[ColumnElement[bool]], order_by: Sequence[Any], page: Page
) -> tuple[list[Patient], int | None]:
    """One page of the patients matching ``where``, and their total."""
    query = select(Patient).where(*where).order_by(*order_by)
    total_of = select(func.count()).select_from(Patient).where(*where)
    got, total = window(session, query, page, total_of)
    return [p for (p,) in got], total


def visible_patient(
    session: Session, patient_id: str, visible: ColumnElement[bool]
) -> Patient | None:
    """The patient with this Patient ID if ``visible`` admits it (None: missing or hidden)."""
    return session.scalar(select(Patient).where(Patient.patient_id == patient_id, visible))


# --------------------------------------------------------------------- DocumentReference


#: A page's documents by their public ids (one statement, built once).
_PAGE_ROWS = rows.doc_query(Document.doc_uid.in_(bindparam("uids", expanding=True)))


def documents_page(
    session: Session, where: Sequence[ColumnElement[bool]], order_by: Sequence[Any], page: Page
) -> tuple[list[DocRow], int | None]:
    """One page of the documents (latest versions) matching ``where``, in page order, and
    their total: the page's keys from the indexes (documents only), then its rows by key."""
    keys = select(Document.doc_uid).where(*where).order_by(*order_by)
    total_of = select(func.count()).select_from(Document).where(*where)
    conn = session.connection()  # Core: these selects are of columns, not ORM rows
    got, total = window(conn, keys, page, total_of)
    uids = [uid for (uid,) in got]
    found = rows.doc_rows(conn, _PAGE_ROWS, {"uids": uids}) if uids else []
    position = {uid: i for i, uid in enumerate(uids)}
    return sorted(found, key=lambda r: position[r.doc_uid]), total


# ---------------------------------------------------------------------------- ImagingStudy


def studies_page(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    order_by: Sequence[Any],
    page: Page | None,
) -> tuple[Sequence[Any], int | None]:
    """(study, Patient ID) rows matching ``where``: one page and the total, or with no
    ``page`` all of them (and a total of 0)."""
    query = (
        select(Study, Patient.patient_id)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(*where)
        .order_by(*order_by)
    )
    if page is not None:
        return window(session, query, page, counted(query))
    return session.execute(query).all(), 0


def series_with_counts(session: Session, study_pks: Sequence[int]) -> list[tuple[Series, int]]:
    """The series of these studies with their live instance counts, in series order."""
    found = session.execute(
        select(Series, func.count(Instance.id))
        .join(Instance, Instance.series_pk == Series.id)
        .where(Series.study_pk.in_(study_pks), Instance.deleted.is_(False))
        .group_by(Series.id)
        .order_by(Series.series_number, Series.id)
    ).all()
    return [(series, int(n)) for series, n in found]


# ----------------------------------------------------------------------------- Observation


def segments_page(
    session: Session, where: Sequence[ColumnElement[bool]], order_by: Sequence[Any], page: Page
) -> tuple[Sequence[Any], int | None]:
    """One page of (segment, object key, Patient ID) of complete batches matching
    ``where``, and their total."""
    query = rows.segment_query(*where).order_by(*order_by)
    return window(session, query, page, counted(query))
