"""The pure parts of the record: content sniffing, the cleaning filter, downsampling and FHIR
date periods (no processes needed; the behaviour over HTTP is in the other modules)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from starlette.datastructures import QueryParams

from medshard.api.fhir.model import validated
from medshard.api.fhir.resources import instant
from medshard.api.fhir.search import (
    UnsupportedSearchError,
    accept,
    date_condition,
    sort_keys,
    strict_handling,
)
from medshard.catalog.db import migrate
from medshard.catalog.records_models import Document
from medshard.errors import InvalidInputError, UnsupportedContentError
from medshard.ingest import series_codec
from medshard.ingest.sensors import clean_batch, hampel_mask
from medshard.ingest.sniff import checked_type, sniff
from medshard.ingest.times import period_of
from medshard.records import access
from medshard.security.principal import Principal
from tests.records.samples import cda, fhir_bundle, pdf, png


def test_sniffing_decides_from_the_bytes() -> None:
    assert sniff(pdf()) == "application/pdf"
    assert sniff(png()) == "image/png"
    assert sniff(cda()) == "application/hl7-cda+xml"
    assert sniff(fhir_bundle()) == "application/fhir+json"
    assert sniff(b'{"a": 1}') == "application/json"
    assert sniff(b"<html><body/></html>") == "application/xml"
    assert sniff("temperature 37.2 °C\n".encode()) == "text/plain"
    assert sniff(bytes(range(256))) == "application/octet-stream"
    assert checked_type(fhir_bundle(), "application/json; charset=utf-8") == "application/fhir+json"
    assert checked_type(cda(), "text/xml") == "application/hl7-cda+xml"
    for data, claim in (
        (pdf(), "image/png"),
        (png(), "image/jpeg"),
        (bytes(range(256)), "text/plain"),
    ):
        with pytest.raises(UnsupportedContentError, match="does not match"):
            checked_type(data, claim)
    with pytest.raises(UnsupportedContentError, match="DICOM"):
        sniff(b"\0" * 128 + b"DICM" + b"\0" * 16)
    with pytest.raises(UnsupportedContentError):
        sniff(b"")


def test_hampel_drops_spikes_not_a_steady_change() -> None:
    ramp = np.linspace(60, 120, 200)  # a real, fast rise: no spikes
    assert not hampel_mask(ramp, 10.0).any()
    spiky = np.full(100, 70.0)
    spiky[[10, 50, 51]] = [150.0, 20.0, 21.0]
    assert np.flatnonzero(hampel_mask(spiky, 10.0)).tolist() == [10, 50, 51]
    flat_noise = 70 + np.tile([0.0, 1.0], 50)
    assert not hampel_mask(flat_noise, 10.0).any()  # the floor: a MAD of 0-1 is not a licence


def test_cleaning_reports_every_step_and_converts_units() -> None:
    csv = (
        b"time,signal,value,unit\n"
        b"2026-01-01T00:00:00-05:00,temperature,98.6,degF\n"
        b"2026-01-01T05:00:01Z,temperature,37.1,Cel\n"
        b"2026-01-01T05:00:02Z,temperature,85,Cel\n"
        b"2026-01-01T05:00:03Z,temperature,37.2,mmHg\n"
        b"2026-01-01T05:00:04Z,pressure,120,mmHg\n"
    )
    batch = clean_batch(csv, "text/plain", tz=UTC)
    [temp] = batch.series
    assert temp.values.tolist() == [37.0, 37.1]
    assert temp.t_ms.tolist()[0] == int(datetime(2026, 1, 1, 5, tzinfo=UTC).timestamp() * 1000)
    assert batch.report["malformed"] == 2 and temp.stats["out_of_range"] == 1
    assert temp.stats["converted_from"] == ["degF"]
    with pytest.raises(InvalidInputError, match="no reading survived"):
        clean_batch(b"time,hr\nnever,70\n", "text/plain", tz=UTC)


def test_downsampling_keeps_shape_and_extremes() -> None:
    t = np.arange(10_000, dtype=np.int64) * 1000
    v = np.sin(t / 300_000.0)
    v[4321] = 9.0
    lt, lv = series_codec.lttb(t, v, 300)
    assert len(lt) == 300 and lt[0] == t[0] and lt[-1] == t[-1] and 9.0 in lv
    mt, mv = series_codec.minmax(t, v, 300)
    assert len(mt) <= 300 and mv.max() == 9.0 and mv.min() == v.min()
    assert np.all(np.diff(mt) > 0) and np.all(np.diff(lt) > 0)
    back_t, back_v = series_codec.decode(series_codec.encode(t, np.round(v, 3)))
    assert (back_t == t).all() and np.allclose(back_v, np.round(v, 3), atol=1e-6)


def test_fhir_dates_stand_for_their_whole_period() -> None:
    day = datetime(2026, 2, 10, tzinfo=UTC)
    assert period_of("2026-02-10") == (day, datetime(2026, 2, 11, tzinfo=UTC))
    assert period_of("2026-12")[1] == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_of("2026-02-10T01:00:00+01:00")[0] == datetime(2026, 2, 10, tzinfo=UTC)


def test_search_parameters_lenient_by_default_strict_when_asked() -> None:
    params = QueryParams(
        "patient=PAT-A&author=x&_sort=-date,author,_lastUpdated&_include=DocumentReference:author"
        "&_include=DocumentReference:subject&_total=maybe&_count=5"
    )
    accepted = accept("DocumentReference", params, strict=False)
    assert accepted.params.multi_items() == [
        ("patient", "PAT-A"),
        ("_sort", "-date,_lastUpdated"),
        ("_include", "DocumentReference:subject"),
        ("_count", "5"),
    ]
    assert accepted.ignored == [
        "author=x",
        "_sort=author",
        "_include=DocumentReference:author",
        "_total=maybe",
    ]
    assert accepted.include_patient
    assert sort_keys(accepted.params, "-date") == [("date", True), ("_lastUpdated", False)]
    assert sort_keys(QueryParams(), "-date") == [("date", True)]
    with pytest.raises(UnsupportedSearchError, match=r"author=x.*_total=maybe"):
        accept("DocumentReference", params, strict=True)
    assert not accept("Patient", QueryParams("_include=Patient:subject"), strict=False).params
    assert strict_handling("return=minimal, handling=strict")
    assert strict_handling("handling = strict; respond-async")
    assert not strict_handling("handling=lenient") and not strict_handling(None)


def test_instants_are_written_as_fhir_resources_writes_them() -> None:
    for micro in (0, 120_000, 123_456):
        at = datetime(2026, 3, 1, 12, 0, 5, micro, tzinfo=UTC)
        text = instant(at)
        resource = {"resourceType": "Patient", "id": "X", "meta": {"lastUpdated": text}}
        assert validated(resource)["meta"]["lastUpdated"] == text
    assert instant(datetime(2026, 3, 1, tzinfo=UTC)) == "2026-03-01T00:00:00Z"
    assert instant(datetime(2026, 3, 1, 0, 0, 0, 123_456)) == "2026-03-01T00:00:00.123000Z"


def test_a_search_by_date_alone_reads_the_index_only(tmp_path: Path) -> None:
    """The documents of a month, of patients a doctor may reach, counted from one index."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    migrate(url)
    engine = sa.create_engine(url)
    indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(engine).get_indexes("documents")}
    assert indexes["ix_documents_date_patient"] == ["doc_date", "patient_pk"]
    assert "ix_documents_date" not in indexes  # the new index serves all it did
    doctor = Principal(user_pk=1, username="dr", role="doctor", sites=frozenset({1}))
    where = [
        access.visible(doctor, Document.patient_pk, Document.source_site_id),
        date_condition("2026-03", Document.doc_date, Document.doc_date),
    ]
    counted = sa.select(sa.func.count()).select_from(Document).where(*where)
    sent: list[tuple[str, Any]] = []
    sa.event.listen(
        engine, "before_cursor_execute", lambda _c, _cur, sql, args, *_: sent.append((sql, args))
    )
    with engine.connect() as conn:
        assert conn.execute(counted).scalar() == 0  # as the search sends it
        sql, args = sent[-1]
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", args).all()
    steps = [row[-1] for row in plan]
    assert "SEARCH documents USING COVERING INDEX ix_documents_date_patient" in steps[0]
    engine.dispose()
