"""FHIR searches and reads over the catalog, filtered by who is asking, and audited.

Each search is one filtered, counted, paged query in the database (the caller's visibility
is part of the SQL, as for QIDO-RS), then one audit event per patient shown. A read by id
that finds nothing the caller may see answers 404, audited as denied when the thing exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, not_, or_, select
from starlette.datastructures import QueryParams

from medshard.api.fhir import resources as res
from medshard.api.fhir.search import date_condition, paging, patient_ref
from medshard.catalog import records as rows
from medshard.catalog.models import Instance, Patient, Series, Study
from medshard.catalog.records_models import Document, SensorSegment
from medshard.errors import InvalidInputError, NotFoundError
from medshard.ingest import series_codec
from medshard.ingest.signals import SIGNALS
from medshard.ingest.times import period_of
from medshard.records import access
from medshard.security.context import Caller, require_caller
from medshard.security.policy import visible_patients, visible_studies


def _audit(caller: Caller, kind: str, shown: dict[int, str]) -> None:
    """One read event per patient whose data a search showed (or one, when none)."""
    if not shown:
        caller.gate.read(caller.principal, "fhir-search", detail=f"{kind}: no match")
    for pk, pid in list(shown.items())[:200]:
        caller.gate.read(
            caller.principal, "fhir-search", patient_pk=pk, patient_id=pid, detail=kind
        )


def _page(query: Any, params: QueryParams, counted: Any = None) -> tuple[Any, int]:
    """The page asked for and the total; ``counted`` is a leaner query with the same rows
    to count (without the joins that only fill in the page's columns)."""
    count, offset = paging(params)
    caller = require_caller()
    with caller.gate.catalog.session() as session:
        total = rows.count(session, counted if counted is not None else query)
    return query.limit(count).offset(offset), total


def _patient_filter(params: QueryParams, column: Any) -> list[ColumnElement[bool]]:
    refs = params.getlist("patient") + params.getlist("subject")
    return [column == patient_ref(r) for r in refs]


def _dates(params: QueryParams, start: Any, end: Any) -> list[ColumnElement[bool]]:
    return [date_condition(v, start, end) for v in params.getlist("date")]


# ------------------------------------------------------------------------------- Patient


def _patient_visible(caller: Caller) -> ColumnElement[bool]:
    p = caller.principal
    return or_(visible_patients(p), access.in_reach(p, Patient.id))


def search_patients(params: QueryParams) -> tuple[list[dict[str, Any]], int]:
    caller = require_caller()
    where = [_patient_visible(caller), Patient.wrapped_key.is_not(None)]
    where += [Patient.patient_id == v for v in params.getlist("_id")]
    for ident in params.getlist("identifier"):
        system, _, value = ident.rpartition("|")
        if system and system != res.PATIENT_ID_SYSTEM:
            where.append(Patient.id.is_(None))  # no other identifier system is kept
        where.append(Patient.patient_id == value)
    page, total = _page(select(Patient).where(*where).order_by(Patient.patient_id), params)
    with caller.gate.catalog.session() as session:
        found = [p for p in session.scalars(page) if res.FHIR_ID.match(p.patient_id)]
    _audit(caller, "Patient", {p.id: p.patient_id for p in found})
    return [res.patient(p) for p in found], total


def read_patient(patient_id: str) -> dict[str, Any]:
    caller = require_caller()
    with caller.gate.catalog.session() as session:
        found = session.scalar(
            select(Patient).where(Patient.patient_id == patient_id, _patient_visible(caller))
        )
    if found is None:
        access.reach_patient(caller.gate, caller.principal, patient_id, "fhir-read")  # 404
        raise NotFoundError(f"no Patient/{patient_id}")
    caller.gate.read(
        caller.principal, "fhir-read", patient_pk=found.id, patient_id=patient_id, detail="Patient"
    )
    return res.patient(found)


# --------------------------------------------------------------------- DocumentReference


def search_documents(params: QueryParams) -> tuple[list[dict[str, Any]], int]:
    caller = require_caller()
    where = [access.visible(caller.principal, Document.patient_pk, Document.source_site_id)]
    where += _patient_filter(params, Patient.patient_id)
    where += _dates(params, Document.doc_date, Document.doc_date)
    where += [Document.doc_type == t.rpartition("|")[2] for t in params.getlist("type")]
    query = rows.doc_query(*where).order_by(Document.doc_date.desc(), Document.id.desc())
    counted = select(Document.id).join(Patient, Patient.id == Document.patient_pk).where(*where)
    page, total = _page(query, params, counted)
    with caller.gate.catalog.session() as session:
        found = rows.doc_rows(session, page)
    _audit(caller, "DocumentReference", {r.patient_pk: r.patient_id for r in found})
    return [res.document_reference(r) for r in found], total


# ---------------------------------------------------------------------------- ImagingStudy


def _day(value: datetime) -> str:
    return value.strftime("%Y%m%d")


def _study_dates(params: QueryParams) -> list[ColumnElement[bool]]:
    """``date`` on a study's day (``study_date``, YYYYMMDD): the study spans that whole day."""
    out = []
    day = Study.study_date
    for value in params.getlist("date"):
        prefix = value[:2] if value[:2].isalpha() else "eq"
        lo, hi = period_of(value[2:] if value[:2].isalpha() else value)
        ceil_lo = (
            lo
            if lo == lo.replace(hour=0, minute=0, second=0, microsecond=0)
            else (lo + timedelta(days=1))
        )
        starts_in = and_(day != "", day >= _day(ceil_lo))  # a >= lo
        ends_in = and_(day != "", day < _day(hi))  # b < hi  (b = end of that day)
        within = and_(starts_in, ends_in)
        after = and_(day != "", day >= _day(hi))
        before = and_(day != "", day < _day(ceil_lo))
        table = {
            "eq": within,
            "ne": not_(within),
            "gt": after,
            "lt": before,
            "ge": or_(after, within),
            "le": or_(before, within),
        }
        if prefix not in table:
            raise InvalidInputError(f"date prefix {prefix!r} is not supported")
        out.append(table[prefix])
    return out


def _studies(
    where: list[ColumnElement[bool]], params: QueryParams | None, base: str
) -> tuple[list[dict[str, Any]], int, dict[int, str]]:
    caller = require_caller()
    query = (
        select(Study, Patient.patient_id)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(visible_studies(caller.principal), *where)
        .order_by(Study.study_date.desc(), Study.id.desc())
    )
    total = 0
    if params is not None:
        query, total = _page(query, params)
    with caller.gate.catalog.session() as session:
        found = session.execute(query).all()
        counts = session.execute(
            select(Series, func.count(Instance.id))
            .join(Instance, Instance.series_pk == Series.id)
            .where(Series.study_pk.in_([s.id for s, _pid in found]), Instance.deleted.is_(False))
            .group_by(Series.id)
            .order_by(Series.series_number, Series.id)
        ).all()
    by_study: dict[int, list[tuple[Series, int]]] = {}
    for series, n in counts:
        by_study.setdefault(series.study_pk, []).append((series, int(n)))
    out = [res.imaging_study(s, pid, by_study.get(s.id, []), base) for s, pid in found]
    return out, total, {s.patient_pk: pid for s, pid in found}


def search_studies(params: QueryParams, base: str) -> tuple[list[dict[str, Any]], int]:
    where = _patient_filter(params, Patient.patient_id) + _study_dates(params)
    found, total, shown = _studies(where, params, base)
    _audit(require_caller(), "ImagingStudy", shown)
    return found, total


def read_study(uid: str, base: str) -> dict[str, Any]:
    caller = require_caller()
    study = caller.gate.study_visible(caller.principal, uid)  # 404, audited, when hidden
    found, _total, _shown = _studies([Study.id == study.id], None, base)
    caller.gate.read(
        caller.principal,
        "fhir-read",
        patient_pk=study.patient_pk,
        study_uid=uid,
        detail="ImagingStudy",
    )
    return found[0]


# ----------------------------------------------------------------------------- Observation


def _segment_visible(caller: Caller) -> ColumnElement[bool]:
    return access.visible(caller.principal, SensorSegment.patient_pk, SensorSegment.source_site_id)


def _code_filter(params: QueryParams) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    for token in params.getlist("code"):
        system, _, code = token.rpartition("|")
        names = [
            s.name
            for s in SIGNALS.values()
            if s.code == code and (not system or s.system == system)
        ]
        out.append(SensorSegment.signal.in_(names))
    return out


def _observations(found: Sequence[Any]) -> list[dict[str, Any]]:
    store = require_caller().gate.archive.store
    out = []
    for seg, key, pid in found:
        t, v = series_codec.decode(store.read_all(key))
        out.append(res.observation(seg, pid, t, v))
    return out


def search_observations(params: QueryParams) -> tuple[list[dict[str, Any]], int]:
    caller = require_caller()
    where = [_segment_visible(caller), *_patient_filter(params, Patient.patient_id)]
    where += _dates(params, SensorSegment.start_at, SensorSegment.end_at)
    where += _code_filter(params)
    query = rows.segment_query(*where).order_by(SensorSegment.start_at.desc(), SensorSegment.id)
    page, total = _page(query, params)
    with caller.gate.catalog.session() as session:
        found = session.execute(page).all()
    _audit(caller, "Observation", {seg.patient_pk: pid for seg, _k, pid in found})
    return _observations(found), total


def read_observation(uid: str) -> dict[str, Any]:
    caller = require_caller()
    query = rows.segment_query(SensorSegment.segment_uid == uid, _segment_visible(caller))
    with caller.gate.catalog.session() as session:
        found = session.execute(query).all()
        owner = session.scalar(
            select(SensorSegment.patient_pk).where(SensorSegment.segment_uid == uid)
        )
    if not found:
        if owner is not None:
            caller.gate.denied(
                caller.principal, "fhir-read", patient_pk=owner, detail=f"Observation/{uid}"
            )
        raise NotFoundError(f"no Observation/{uid}")
    seg, _key, pid = found[0]
    caller.gate.read(
        caller.principal,
        "fhir-read",
        patient_pk=seg.patient_pk,
        patient_id=pid,
        detail="Observation",
    )
    return _observations(found)[0]
