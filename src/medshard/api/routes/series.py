"""REST for a patient's sensor series: ``/api/patients/{patient_id}/series``.

* ``POST``: one batch, CSV or JSON, for one ``device`` (query), naive times read in ``tz``
  (query, IANA name; UTC by default). Answers the batch id, the cleaning report (what was
  dropped and why, see :mod:`medshard.ingest.sensors`) and the day segments stored.
* ``GET``: the signals recorded (time span, readings) and the batches with their reports.
* ``GET /{signal}?start=&end=&downsample=lttb|minmax|none&max_points=``: cleaned readings in
  ``[start, end)``, UTC, downsampled for display (``none``: every reading, up to 100 000).
* ``GET /batches/{batch}/raw``: the raw input of a batch, exactly as it was sent.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from medshard.api.routes.records import read_upload
from medshard.errors import InvalidInputError
from medshard.ingest.times import parse_instant
from medshard.records import series

router = APIRouter(prefix="/api/patients/{patient_id}/series", tags=["series"])


@router.post("", status_code=201)
async def add_batch(
    patient_id: str,
    request: Request,
    device: str = Query("", max_length=128),
    tz: str | None = Query(None, max_length=64),
    signal: str | None = Query(None, max_length=32, description="for data without a signal"),
) -> dict[str, Any]:
    """Clean and store a batch of readings from one device."""
    content, _values = await read_upload(request)
    if content is None:
        raise InvalidInputError("no sensor data in the request")
    return await run_in_threadpool(
        series.ingest, patient_id, content, device=device, tz=tz, signal=signal
    )


@router.get("")
def list_series(patient_id: str) -> dict[str, Any]:
    """The signals recorded for the patient and the batches they came in."""
    return series.overview(patient_id)


@router.get("/{signal}")
def get_series(
    patient_id: str,
    signal: str,
    start: str | None = Query(None, max_length=40),
    end: str | None = Query(None, max_length=40),
    downsample: str = Query("lttb", pattern="^(lttb|minmax|none)$"),
    max_points: int = Query(2000, ge=2, le=series.MAX_POINTS),
) -> dict[str, Any]:
    """Cleaned readings of one signal in ``[start, end)``, in UTC."""
    return series.points(
        patient_id,
        signal,
        parse_instant(start) if start else None,
        parse_instant(end) if end else None,
        downsample=downsample,
        max_points=max_points,
    )


@router.get("/batches/{batch}/raw")
def raw_batch(patient_id: str, batch: str) -> StreamingResponse:
    """The raw input, byte for byte."""
    media, body = series.raw_batch(patient_id, batch)
    return StreamingResponse(body, media_type=media)
