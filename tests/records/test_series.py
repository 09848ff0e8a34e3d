"""Sensor series on a real service: a day of 1 Hz heart rate with spikes, impossible values,
malformed rows, duplicates, gaps and a +02:00 clock comes back cleaned as documented, in
UTC; a range query returns exactly the right readings; the raw input is kept; °F becomes °C;
outsiders get 404 (audited); erasing the patient removes documents and series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import sqlalchemy as sa

from tests.records.conftest import call
from tests.records.samples import pdf
from tests.security.conftest import World

DAY = datetime(2026, 3, 1, tzinfo=UTC)
LOCAL = timedelta(hours=2)  # the device's clock: +02:00


def _day_of_heart_rate() -> tuple[bytes, dict[int, float], dict[str, int]]:
    """CSV text, the readings that must survive (second of day -> bpm), and what was injected."""
    rng = np.random.default_rng(12)
    seconds = np.arange(86_400)
    base = np.round(65 + 12 * np.sin(seconds / 5400.0))
    gap = ((seconds >= 3600) & (seconds < 5400)) | ((seconds >= 40_000) & (seconds < 40_600))
    candidates = np.flatnonzero(~gap)[::40]
    spikes = set(rng.choice(candidates, 60, replace=False).tolist())
    impossible = set(rng.choice(sorted(set(candidates) - spikes), 20, replace=False).tolist())
    spikes |= {36_000 + 40 * i for i in range(5)}  # some inside the range queried below
    dupes = sorted(
        set(rng.choice(np.flatnonzero(~gap), 10, replace=False).tolist()) - spikes - impossible
    )
    lines = ["timestamp,heart_rate (bpm)"]
    expected: dict[int, float] = {}
    for s in seconds[~gap]:
        stamp = (DAY + timedelta(seconds=int(s)) + LOCAL).strftime("%Y-%m-%dT%H:%M:%S+02:00")
        value = float(base[s])
        if s in spikes:
            value += 80
        elif s in impossible:
            value = [0, 300, -4, 1000][int(s) % 4]
        else:
            expected[int(s)] = value
        if s in dupes:
            lines.append(f"{stamp},{value + 30}")  # the later row for a time wins
        lines.append(f"{stamp},{value}")
    lines += ["not-a-time,70", f"{DAY.isoformat()},abc", f"{DAY.isoformat()},", "2026-03-01,NaN"]
    lines.insert(500, "garbage row without comma")
    injected = {
        "spikes": len(spikes),
        "impossible": len(impossible),
        "duplicates": len(dupes),
        "malformed": 5,
    }
    return ("\n".join(lines) + "\n").encode(), expected, injected


def test_a_day_of_heart_rate_is_cleaned_stored_compactly_and_queried_exactly(
    rworld: World,
) -> None:
    w = rworld
    csv_bytes, expected, injected = _day_of_heart_rate()
    r = call(
        w,
        "test-pacs",
        "POST",
        "/api/patients/PAT-A/series",
        content=csv_bytes,
        headers={"Content-Type": "text/csv"},
        params={"device": "watch-1"},
    )
    assert r.status_code == 201, r.text
    stored = r.json()
    report = stored["report"]
    hr = report["signals"]["heart_rate"]
    assert report["malformed"] == injected["malformed"]
    assert hr["duplicates"] == injected["duplicates"]
    assert hr["out_of_range"] == injected["impossible"]
    assert hr["spikes"] == injected["spikes"]
    assert hr["kept"] == len(expected) and hr["gaps"] == 2
    [segment] = stored["segments"]  # one object per patient, signal and UTC day
    assert segment["day"] == "2026-03-01" and segment["points"] == len(expected)
    assert segment["bytes"] < 200_000, segment

    # a ten-minute range, every reading: exactly the expected ones, in UTC
    start, end = DAY + timedelta(hours=10), DAY + timedelta(hours=10, minutes=10)
    r = call(
        w,
        "doc-a",
        "GET",
        "/api/patients/PAT-A/series/heart_rate",
        params={"start": start.isoformat(), "end": end.isoformat(), "downsample": "none"},
    )
    assert r.status_code == 200, r.text
    got = r.json()
    want = {s: v for s, v in expected.items() if 36_000 <= s < 36_600}
    assert got["unit"] == "/min" and got["total"] == len(want) == got["returned"]
    assert got["t"] == [
        (DAY + timedelta(seconds=s)).isoformat(timespec="milliseconds") for s in sorted(want)
    ]
    assert got["v"] == [want[s] for s in sorted(want)]
    assert all(t.endswith("+00:00") for t in got["t"])

    # the whole day, downsampled for display
    day = call(
        w, "doc-a", "GET", "/api/patients/PAT-A/series/hr", params={"max_points": 500}
    ).json()
    assert day["total"] == len(expected) and day["returned"] == 500
    assert day["t"][0] == DAY.isoformat(timespec="milliseconds")
    mm = call(
        w,
        "doc-a",
        "GET",
        "/api/patients/PAT-A/series/hr",
        params={"max_points": 400, "downsample": "minmax"},
    ).json()
    assert mm["returned"] <= 400 and max(mm["v"]) == max(expected.values())

    # the raw input is kept, byte for byte
    raw = call(w, "doc-a", "GET", f"/api/patients/PAT-A/series/batches/{stored['batch']}/raw")
    assert raw.status_code == 200 and raw.content == csv_bytes

    overview = call(w, "pat-a", "GET", "/api/patients/PAT-A/series").json()
    assert [s["signal"] for s in overview["signals"]] == ["heart_rate"]
    assert overview["batches"][0]["report"]["signals"]["heart_rate"]["kept"] == len(expected)


def test_fahrenheit_json_becomes_celsius_and_outsiders_get_404(rworld: World) -> None:
    w = rworld
    batch = {
        "device": "thermo",
        "points": [
            {"t": "2026-03-02T08:00:00Z", "signal": "temperature", "value": 98.6, "unit": "degF"},
            {"t": "2026-03-02T09:00:00Z", "signal": "temp", "value": 100.4},  # no unit: °F
            {"t": "2026-03-02T10:00:00Z", "signal": "temperature", "value": 37.2, "unit": "Cel"},
            {"t": "2026-03-02T11:00:00Z", "signal": "SpO2", "value": 0.97},  # a fraction
            {"t": "2026-03-02T11:00:00Z", "signal": "temperature", "value": 37, "unit": "kPa"},
            {"t": 1772442000, "signal": "spo2", "value": 98},  # epoch seconds
        ],
    }
    r = call(w, "doc-a", "POST", "/api/patients/PAT-A/series", json=batch)
    assert r.status_code == 201, r.text
    assert r.json()["report"]["malformed"] == 1
    temp = call(
        w,
        "doc-a",
        "GET",
        "/api/patients/PAT-A/series/temperature",
        params={"start": "2026-03-02", "end": "2026-03-03"},
    ).json()
    assert temp["unit"] == "Cel" and temp["v"] == [37.0, 38.0, 37.2]
    spo2 = call(w, "doc-a", "GET", "/api/patients/PAT-A/series/spo2").json()
    assert spo2["v"] == [98.0, 97.0] and spo2["t"][0] == "2026-03-02T09:00:00.000+00:00"
    # content is sniffed: a PDF is not a sensor batch, nor is CSV declared as JSON
    bad = call(
        w,
        "doc-a",
        "POST",
        "/api/patients/PAT-A/series",
        content=pdf(),
        headers={"Content-Type": "text/csv"},
    )
    assert bad.status_code == 415
    bad = call(
        w,
        "doc-a",
        "POST",
        "/api/patients/PAT-A/series",
        content=b"t,hr\n1,2\n",
        headers={"Content-Type": "application/json"},
    )
    assert bad.status_code == 415

    batches = call(w, "doc-a", "GET", "/api/patients/PAT-A/series").json()["batches"]
    for who in ("doc-b", "expert", "admin", "pacs-b"):
        for path in ("", "/temperature", f"/batches/{batches[0]['id']}/raw"):
            r = call(w, who, "GET", f"/api/patients/PAT-A/series{path}")
            assert r.status_code == 404, (who, path, r.status_code)
    r = call(w, "doc-b", "POST", "/api/patients/PAT-A/series", json=batch)
    assert r.status_code == 404
    assert call(w, "pat-a", "GET", "/api/patients/PAT-B/series").status_code == 404
    denied = [e for e in w.audit() if e["outcome"] == "denied" and e["actor"] == "doc-b"]
    assert {"series-list", "series-read", "series-raw", "series-store"} <= {
        e["action"] for e in denied
    }


def test_erasing_a_patient_removes_documents_and_series(rworld: World) -> None:
    w = rworld
    doc = call(
        w,
        "test-pacs",
        "POST",
        "/api/patients/PAT-E/documents",
        content=pdf("erase me"),
        headers={"Content-Type": "application/pdf"},
    ).json()
    r = call(
        w,
        "test-pacs",
        "POST",
        "/api/patients/PAT-E/series",
        json=[{"t": "2026-03-01T00:00:00Z", "signal": "hr", "value": 70}],
    )
    assert r.status_code == 201
    engine = sa.create_engine(w.dep.settings.database_url)
    count = (
        "SELECT (SELECT count(*) FROM documents d JOIN patients p ON p.id = d.patient_pk "
        "WHERE p.patient_id = 'PAT-E'), (SELECT count(*) FROM sensor_segments s JOIN "
        "patients p ON p.id = s.patient_pk WHERE p.patient_id = 'PAT-E')"
    )
    with engine.connect() as conn:
        assert tuple(conn.execute(sa.text(count)).one()) == (1, 1)
        queued = conn.execute(sa.text("SELECT count(*) FROM chunk_deletions")).scalar_one()
    r = call(w, "admin", "POST", "/api/patients/PAT-E/erase", params={"reason": "test"})
    assert r.status_code == 200, r.text
    assert r.json()["objects"] == 3  # the document, the raw batch, one day segment
    with engine.connect() as conn:
        assert tuple(conn.execute(sa.text(count)).one()) == (0, 0)
        rows = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM document_versions "
                "v LEFT JOIN documents d ON d.id = v.document_pk WHERE d.id IS NULL)"
            )
        ).one()
        assert rows[1] == 0  # no orphaned version rows
        after = conn.execute(sa.text("SELECT count(*) FROM chunk_deletions")).scalar_one()
        assert after >= queued + 3 * 2  # every copy of every chunk of the three objects
    engine.dispose()
    assert (
        call(w, "test-pacs", "GET", f"/api/patients/PAT-E/documents/{doc['id']}").status_code == 404
    )
    assert call(w, "test-pacs", "GET", "/api/patients/PAT-E/series").status_code == 404
    assert call(w, "test-pacs", "GET", "/api/patients/PAT-A/series").status_code == 200
