"""The audit chain against real tampering: edit, delete, reorder, truncate, and a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import Deployment, make_deployment


@pytest.fixture
def audited(tmp_path: Path) -> Iterator[Deployment]:
    dep = make_deployment(tmp_path)
    for i in range(3):
        dep.cli("user", "add", f"doc{i}", "--role", "doctor", "--site", "st-marys",
                "--password", "long-enough-pw")  # fmt: skip
    yield dep
    for node in dep.nodes:
        node.stop()


def _engine(dep: Deployment) -> sa.Engine:
    return sa.create_engine(dep.settings.database_url)


def _verify(dep: Deployment) -> tuple[int, dict[str, object]]:
    result = dep.cli("audit", "verify", "--json", ok=False)
    return result.exit_code, json.loads(result.stdout)


def test_an_untouched_chain_verifies(audited: Deployment) -> None:
    code, verdict = _verify(audited)
    assert code == 0 and verdict["ok"] and verdict["events"] >= 10


LAST = -1  # the expected first bad event is the (removed) last one


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        pytest.param(["UPDATE audit_events SET actor = 'someone' WHERE seq = 5"], 5, id="edit"),
        pytest.param(["UPDATE audit_events SET outcome = 'denied' WHERE seq = 3"], 3, id="flip"),
        pytest.param(["DELETE FROM audit_events WHERE seq = 4"], 4, id="delete"),
        pytest.param(
            ["DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)"],
            LAST,
            id="truncate-tail",
        ),
        pytest.param(
            [
                "UPDATE audit_events SET seq = -seq WHERE seq IN (6, 7)",
                "UPDATE audit_events SET seq = 7 WHERE seq = -6",
                "UPDATE audit_events SET seq = 6 WHERE seq = -7",
            ],
            6,
            id="reorder",
        ),
    ],
)
def test_tampering_is_detected_and_the_first_bad_event_named(
    audited: Deployment, tamper: list[str], first_bad: int
) -> None:
    engine = _engine(audited)
    with engine.begin() as conn:
        last = conn.execute(sa.text("SELECT max(seq) FROM audit_events")).scalar_one()
        for statement in tamper:
            conn.execute(sa.text(statement))
    engine.dispose()
    code, verdict = _verify(audited)
    assert code == 1 and not verdict["ok"]
    assert verdict["first_bad_seq"] == (last if first_bad == LAST else first_bad), verdict


def test_recomputing_hashes_without_the_master_key_does_not_help(audited: Deployment) -> None:
    """A database admin who edits an event and re-hashes it with plain SHA-256 is caught."""
    import hashlib

    engine = _engine(audited)
    with engine.begin() as conn:
        row = conn.execute(sa.text("SELECT seq, prev_hash FROM audit_events WHERE seq = 2")).one()
        forged = hashlib.sha256(f"{row.prev_hash}forged".encode()).hexdigest()
        conn.execute(
            sa.text("UPDATE audit_events SET actor='x', hash=:h WHERE seq=2"), {"h": forged}
        )
    engine.dispose()
    code, verdict = _verify(audited)
    assert code == 1 and verdict["first_bad_seq"] == 2


def test_a_service_killed_mid_write_leaves_the_chain_verifiable(
    audited: Deployment, tmp_path: Path
) -> None:
    from tests.security.conftest import ct_image

    files = tmp_path / "burst"
    files.mkdir()
    for i in range(60):
        (files / f"{i}.dcm").write_bytes(ct_image(f"CRASH-{i % 5}"))
    env = {**os.environ, "MEDSHARD_TOKEN": audited.token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medshard", "import", str(files), "--home", str(audited.home)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = _engine(audited)
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once some, not all, instances are in
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM instances")).scalar_one()
        if stored >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM instances")).scalar_one()
        stores = conn.execute(
            sa.text("SELECT count(*) FROM audit_events WHERE action='store'")
        ).scalar_one()
    engine.dispose()
    assert 0 < stored < 60
    assert stores == stored  # every committed instance has its audit event, and no more
    code, verdict = _verify(audited)
    assert code == 0 and verdict["ok"], verdict


def test_export_as_json_csv_and_atna(audited: Deployment, tmp_path: Path) -> None:
    events = json.loads(audited.cli("audit", "export", "--format", "json").stdout)
    assert {"user-add", "token-create", "dicom-allow"} <= {e["action"] for e in events}
    audited.cli("audit", "export", "--format", "csv", "-o", str(tmp_path / "a.csv"))
    assert (tmp_path / "a.csv").read_text().startswith("seq,at,actor")
    atna = audited.cli("audit", "export", "--format", "atna").stdout
    import xml.etree.ElementTree as ET

    root = ET.fromstring(atna)
    assert len(root.findall("AuditMessage")) >= len(events)  # exports are audited too
    assert root.find("AuditMessage/EventIdentification/EventID") is not None
