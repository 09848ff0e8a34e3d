"""The demo's patient record: documents and a day of heart rate, made in code and stored
through the write path ``medshard records add`` uses, on real node processes."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from medshard.cluster.archive import Archive
from medshard.records import series
from medshard.records.demo import heart_rate_day, load_demo_records
from medshard.security.context import acting_as
from medshard.security.gate import Gate
from medshard.security.local import token_caller
from tests.conftest import Deployment

DAY = date(2026, 3, 1)


def test_demo_records_load_once_through_the_write_path(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    dep = sqlite_deployment
    loaded = load_demo_records(dep.home, dep.token, "DEMO-1", DAY)
    _csv, rows = heart_rate_day(DAY)
    assert len(loaded["documents"]) == 3
    assert loaded["series"]["rows"] == rows == 86_400 - 600  # a ten-minute dropout
    # cleaning dropped the sensor faults (zeros, spikes) but nothing else
    assert rows - 60 <= loaded["series"]["kept"] < rows

    listed = json.loads(dep.cli("records", "list", "DEMO-1", "--json").stdout)
    assert {d["id"] for d in listed} == set(loaded["documents"])
    by_type = {d["content_type"]: d for d in listed}  # sniffed from the bytes
    assert set(by_type) == {"application/pdf", "text/plain", "application/hl7-cda+xml"}
    out = tmp_path / "summary.pdf"
    dep.cli("records", "get", by_type["application/pdf"]["id"], "-o", str(out))
    assert out.read_bytes().startswith(b"%PDF-1.4") and out.read_bytes().endswith(b"%%EOF\n")

    with (
        Archive.open(dep.home) as archive,
        Gate(archive) as gate,
        acting_as(token_caller(gate, dep.token)),
    ):
        start = datetime(2026, 3, 1, tzinfo=UTC)
        day = series.points(
            "DEMO-1",
            "heart_rate",
            start,
            start + timedelta(days=1),
            downsample="none",
            max_points=100_000,
        )
        assert day["total"] == loaded["series"]["kept"] == len(day["t"])
        assert day["t"][0].startswith("2026-03-01T00:00") and day["t"][-1].startswith(
            "2026-03-01T23:59"
        )
        assert min(day["v"]) >= 30 and max(day["v"]) <= 140  # no zero, no spike left

    again = load_demo_records(dep.home, dep.token, "DEMO-1", DAY)  # a demo home run again
    assert again["documents"] == [] and again["series"] is None
    assert len(json.loads(dep.cli("records", "list", "DEMO-1", "--json").stdout)) == 3
