"""Sensor series in a patient's record: ingest a batch, list what is there, query a range.

A batch is stored in two forms, both through ``Archive.put_object`` under the patient's key:
the raw input exactly as sent (kind ``sensor-raw``), and the cleaned readings
(:mod:`medshard.ingest.sensors`) as one Parquet object per signal and UTC day (kind
``sensor``). The batch becomes visible only when its last segment is committed, so a query
never sees half a batch. Queries read the day objects overlapping the range, merge them (a
later batch wins a timestamp both carry), cut to the range and downsample for display.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from medshard.catalog import record_reads as reads
from medshard.catalog import records as rows
from medshard.catalog.records_models import SensorBatch, SensorSegment
from medshard.catalog.writes import PatientValues
from medshard.errors import InvalidInputError, NotFoundError, UnsupportedContentError
from medshard.ingest import series_codec
from medshard.ingest.sensors import clean_batch
from medshard.ingest.signals import signal_named
from medshard.ingest.sniff import checked_type
from medshard.ingest.times import zone
from medshard.records import access
from medshard.records.documents import MAX_DOCUMENT_BYTES, Content
from medshard.security.context import require_caller

MAX_POINTS = 100_000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def ingest(
    patient_id: str,
    content: Content,
    *,
    device: str = "",
    tz: str | None = None,
    signal: str | None = None,
) -> dict[str, Any]:
    """Clean and store one batch; returns its id, the cleaning report and the day segments.

    Raises
    ------
    UnsupportedContentError
        The body is neither CSV text nor JSON, or its declared type says otherwise.
    InvalidInputError
        Nothing readable in it (nothing is stored).
    """
    caller = require_caller()
    gate, principal = caller.gate, caller.principal
    site = access.check_store(gate, principal, patient_id, "series-store")
    if len(content.data) > MAX_DOCUMENT_BYTES:
        raise InvalidInputError(f"a batch is limited to {MAX_DOCUMENT_BYTES} bytes")
    media = checked_type(content.data, content.declared_type)
    if media not in ("text/plain", "application/json"):
        raise UnsupportedContentError(f"sensor batches are CSV or JSON, not {media}")
    batch = clean_batch(content.data, media, tz=zone(tz), default_signal=signal)
    report = json.dumps(batch.report)

    def link_raw(session: Session, patient_pk: int, object_pk: int) -> tuple[int, str]:
        access.involve(session, principal, patient_pk)
        pk, uid = rows.insert_batch(
            session,
            patient_pk,
            object_pk,
            device=device,
            raw_content_type=media,
            report=report,
            site=site,
            stored_by=principal.actor,
        )
        gate.audit.append(
            session,
            gate.event(
                principal,
                "series-store",
                patient_pk=patient_pk,
                patient_id=patient_id,
                detail=f"batch {uid}: {batch.kept} of {batch.report['rows']} readings kept",
                flagged=False,
            ),
        )
        return pk, uid

    raw = gate.archive.put_object(
        PatientValues(patient_id),
        io.BytesIO(content.data),
        link_raw,
        kind="sensor-raw",
        content_type="text/csv" if media == "text/plain" else media,
    )
    (batch_pk, batch_uid), patient_pk = raw.linked, raw.patient_pk
    segments = []
    for series in batch.series:
        for day, part in series_codec.by_day(series.t_ms):
            t, v = series.t_ms[part], series.values[part]
            values = {
                "batch_pk": batch_pk,
                "patient_pk": patient_pk,
                "signal": series.signal.name,
                "unit": series.signal.unit,
                "device": device[:128],
                "day": datetime.fromtimestamp(day * 86_400, UTC).date().isoformat(),
                "start_at": datetime.fromtimestamp(int(t[0]) / 1000, UTC),
                "end_at": datetime.fromtimestamp(int(t[-1]) / 1000, UTC),
                "points": len(t),
                "source_site_id": site,
            }

            def link_segment(
                session: Session, _p: int, object_pk: int, values: dict[str, Any] = values
            ) -> str:
                return rows.insert_segment(session, {**values, "object_pk": object_pk})

            put = gate.archive.put_object(
                PatientValues(patient_id),
                io.BytesIO(series_codec.encode(t, v)),
                link_segment,
                kind="sensor",
                content_type=series_codec.PARQUET,
            )
            segments.append(
                {
                    "id": put.linked,
                    "signal": series.signal.name,
                    "day": values["day"],
                    "points": len(t),
                    "bytes": put.size,
                }
            )
    with gate.catalog.transaction() as session:
        rows.complete_batch(session, batch_pk)
    return {
        "batch": batch_uid,
        "patient_id": patient_id,
        "report": batch.report,
        "segments": segments,
    }


def _segments(patient_pk: int, *where: Any) -> list[reads.SegmentRow]:
    caller = require_caller()
    condition = access.visible(
        caller.principal, SensorSegment.patient_pk, SensorSegment.source_site_id
    )
    with caller.gate.catalog.session() as session:
        return reads.segments(
            session,
            SensorSegment.patient_pk == patient_pk,
            condition,
            *where,
            order_by=(SensorSegment.batch_pk, SensorSegment.day),
        )


def overview(patient_id: str) -> dict[str, Any]:
    """The signals recorded for a patient (time span, readings, segments) and the batches."""
    caller = require_caller()
    pk = access.reach_patient(caller.gate, caller.principal, patient_id, "series-list")
    signals: dict[str, dict[str, Any]] = {}
    for seg, _key, _pid in _segments(pk):
        s = signals.setdefault(
            seg.signal,
            {
                "signal": seg.signal,
                "unit": seg.unit,
                "start": None,
                "end": None,
                "readings": 0,
                "segments": 0,
            },
        )
        start, end = rows.as_utc(seg.start_at), rows.as_utc(seg.end_at)
        s["start"] = min(s["start"] or start, start)
        s["end"] = max(s["end"] or end, end)
        s["readings"] += seg.points
        s["segments"] += 1
    condition = access.visible(caller.principal, SensorBatch.patient_pk, SensorBatch.source_site_id)
    with caller.gate.catalog.session() as session:
        batches = reads.batches_of(session, pk, condition)
    caller.gate.read(caller.principal, "series-list", patient_pk=pk, patient_id=patient_id)
    for s in signals.values():
        s["start"], s["end"] = s["start"].isoformat(), s["end"].isoformat()
    return {
        "patient_id": patient_id,
        "signals": sorted(signals.values(), key=lambda s: s["signal"]),
        "batches": [
            {
                "id": uid,
                "device": dev,
                "stored_at": rows.as_utc(at).isoformat(),
                "complete": done,
                "report": json.loads(rep),
            }
            for uid, dev, at, done, rep in batches
        ],
    }


def points(
    patient_id: str,
    signal: str,
    start: datetime | None,
    end: datetime | None,
    *,
    downsample: str = "lttb",
    max_points: int = 2000,
    audit: bool = True,
) -> dict[str, Any]:
    """The cleaned readings of one signal in ``[start, end)``, downsampled for display."""
    caller = require_caller()
    name = signal_named(signal).name
    if not 2 <= max_points <= MAX_POINTS:
        raise InvalidInputError(f"max_points must be between 2 and {MAX_POINTS}")
    pk = access.reach_patient(caller.gate, caller.principal, patient_id, "series-read")
    where = [SensorSegment.signal == name]
    if start is not None:
        where.append(SensorSegment.end_at >= rows.as_utc(start))
    if end is not None:
        where.append(SensorSegment.start_at < rows.as_utc(end))
    found = _segments(pk, *where)
    store, near = caller.gate.archive.store, caller.gate.site_of(caller.principal)
    ts, vs = [], []
    for _seg, key, _pid in found:  # oldest batch first: a later one overrides below
        t, v = series_codec.decode(store.read_all(key, near_site=near))
        ts.append(t)
        vs.append(v)
    t = np.concatenate(ts) if ts else np.zeros(0, np.int64)
    v = np.concatenate(vs) if vs else np.zeros(0)
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    last = np.append(t[1:] != t[:-1], True) if len(t) else np.zeros(0, bool)
    t, v = t[last], v[last]
    keep = np.ones(len(t), bool)
    if start is not None:
        keep &= t >= int(rows.as_utc(start).timestamp() * 1000)
    if end is not None:
        keep &= t < int(rows.as_utc(end).timestamp() * 1000)
    t, v = t[keep], v[keep]
    total = len(t)
    if downsample == "none" and total > MAX_POINTS:
        raise InvalidInputError(
            f"{total} readings in range: ask for a shorter range, or downsample"
        )
    t, v = series_codec.downsample(t, v, downsample, max_points)
    if audit:
        caller.gate.read(
            caller.principal,
            "series-read",
            patient_pk=pk,
            patient_id=patient_id,
            detail=f"{name} {total} readings",
        )
    unit = found[0][0].unit if found else signal_named(name).unit
    decimals = max(0, -int(np.floor(np.log10(signal_named(name).resolution))))
    return {
        "patient_id": patient_id,
        "signal": name,
        "unit": unit,
        "start": start.isoformat() if start else None,
        "end": end.isoformat() if end else None,
        "total": total,
        "returned": len(t),
        "downsample": downsample,
        "t": [_iso(int(x)) for x in t],
        "v": [round(float(x), decimals) for x in v],
    }


def raw_batch(patient_id: str, batch_uid: str) -> tuple[str, Iterator[bytes]]:
    """The raw input of a batch exactly as it was sent, with its content type."""
    caller = require_caller()
    pk = access.reach_patient(caller.gate, caller.principal, patient_id, "series-raw")
    condition = access.visible(caller.principal, SensorBatch.patient_pk, SensorBatch.source_site_id)
    with caller.gate.catalog.session() as session:
        row = reads.raw_batch_of(session, batch_uid, pk, condition)
    if row is None:
        raise NotFoundError(f"no batch {batch_uid} for patient {patient_id!r}")
    caller.gate.read(
        caller.principal,
        "series-raw",
        patient_pk=pk,
        patient_id=patient_id,
        detail=f"batch {batch_uid}",
    )
    ctype = "text/csv" if row[1] == "text/plain" else row[1]
    near = caller.gate.site_of(caller.principal)
    return ctype, caller.gate.archive.store.read(row[0], near_site=near)
