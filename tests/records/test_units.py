"""The pure parts of the record: content sniffing, the cleaning filter, downsampling and FHIR
date periods (no processes needed; the behaviour over HTTP is in the other modules)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from medshard.errors import InvalidInputError, UnsupportedContentError
from medshard.ingest import series_codec
from medshard.ingest.sensors import clean_batch, hampel_mask
from medshard.ingest.sniff import checked_type, sniff
from medshard.ingest.times import period_of
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
