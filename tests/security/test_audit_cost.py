"""The audit writer's cheaper paths against what they replace: the chain's bytes (every
stored event is re-hashed by ``verify``), seals, tags, and a shredded patient's events."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from medshard.catalog.db import Catalog, migrate
from medshard.catalog.models import Patient
from medshard.catalog.writes import PatientKeyRow, PatientValues, ensure_patient
from medshard.security import audit
from medshard.security.audit import AuditLog, Event, patient_key_lookup
from medshard.storage.envelope import new_key, patient_key_context
from medshard.storage.keys import KeyProvider, LocalKeyFileProvider

TEXTS = [
    "",
    "dr",
    "Zoë Ünïcødé",
    "患者",
    "x-ray 🩻",
    'q"uote\\back\nnl\t\x00\x7f',
    "\u2028",
    "a" * 300,
]
VALUES: dict[str, list[Any]] = {
    "seq": [0, 1, 2**62, -1, 2**100],
    "at": [None, "2026-01-01T00:00:00.000001+00:00", *TEXTS],
    "actor": TEXTS,
    "role": TEXTS,
    "action": TEXTS,
    "outcome": ["success", "denied", *TEXTS],
    "source": TEXTS,
    "patient_pk": [None, 0, 7, 10**18],
    "patient_tag": [None, "f" * 32, *TEXTS],
    "sealed": [None, b"", secrets.token_bytes(61), memoryview(b"\x00\xff"), "already-text"],
    "detail": TEXTS,
    "flagged": [True, False, None, 0, 1],
    "prev_hash": [audit.GENESIS, "", *TEXTS],
    "hash": ["h", None],
    "not_a_field": ["left out"],
}


def _canonical_as_it_was(row: dict[str, Any]) -> bytes:
    """The serialisation every stored event was chained with."""
    values = {k: row.get(k) for k in audit._FIELDS}
    if isinstance(values["sealed"], bytes | memoryview):
        values["sealed"] = bytes(values["sealed"]).hex()
    return json.dumps(values, sort_keys=True, separators=(",", ":")).encode()


#: What COPY's text format must escape (tab, newline, backslash) and more than ASCII.
TRICKY = 'tab\there\nnew line \\N back\\slash "q" 患者 🩻'


class _Text(str):
    pass


def _rows() -> Iterator[dict[str, Any]]:
    rnd = random.Random(20260101)
    for _ in range(3000):
        yield {k: rnd.choice(v) for k, v in VALUES.items() if rnd.random() > 0.05}
    yield {}
    yield {"seq": 1.5, "actor": _Text("sub"), "flagged": 1.0}  # types json.dumps itself writes


def test_the_chain_hashes_the_same_bytes_as_before() -> None:
    key = secrets.token_bytes(32)
    for row in _rows():
        old = _canonical_as_it_was(row)
        assert audit._canonical(row) == old, row
        assert audit.chain_hash(key, row) == hmac.new(key, old, hashlib.sha256).hexdigest()
    with pytest.raises(TypeError):  # what json.dumps refuses is still refused
        audit._canonical({"detail": b"raw"})


def test_seals_and_tags_read_as_before() -> None:
    key = secrets.token_bytes(32)
    values = {"patient_id": "PAT-Ü", "study": "1.2.3", "sop": "1.2.3.4", "actor": "患者"}
    sealed = audit.seal(key, values)
    assert audit.unseal(key, sealed) == values
    derived = audit._derive(key, b"audit-seal")
    body = audit.AESGCM(derived).decrypt(sealed[:12], sealed[12:], b"audit")
    assert body == json.dumps(values, sort_keys=True).encode()
    assert audit.unseal(secrets.token_bytes(32), sealed) == {}
    assert audit.seal(key, values)[:12] != sealed[:12]  # a fresh nonce every time
    tag = hmac.new(audit._derive(key, b"audit-tag"), b"tag", hashlib.sha256).hexdigest()[:32]
    assert audit.patient_tag(key) == audit.patient_tag(bytes(key)) == tag


@pytest.fixture
def keyed(tmp_path: Path, db_url: str) -> Iterator[tuple[Catalog, KeyProvider, list[int]]]:
    """A catalog (SQLite, PostgreSQL) with three patients, each with a key wrapped under the
    master key. On PostgreSQL a batch of events goes in by COPY, not INSERT."""
    path = tmp_path / "master.key"
    LocalKeyFileProvider.create(path)
    keys = LocalKeyFileProvider(path)
    url = db_url or f"sqlite:///{tmp_path / 'catalog.db'}"
    migrate(url)
    catalog = Catalog(url)
    with catalog.transaction() as session:
        pks = [
            ensure_patient(
                session,
                PatientValues(f"PAT-{i}"),
                shard=1,
                wrapped_key=keys.wrap(new_key(), patient_key_context(f"PAT-{i}")),
                key_id=keys.key_id,
            ).pk
            for i in range(3)
        ]
    yield catalog, keys, pks
    catalog.dispose()


def test_a_shredded_patients_later_events_are_not_sealed(
    keyed: tuple[Catalog, KeyProvider, list[int]],
) -> None:
    catalog, keys, pks = keyed

    def unwrap(row: PatientKeyRow) -> bytes:
        assert row.wrapped_key is not None
        return keys.unwrap(row.wrapped_key, patient_key_context(row.patient_id))

    lookup = patient_key_lookup(unwrap)
    log = AuditLog(catalog, lambda: keys, lookup, unwrap=unwrap)

    def batch() -> list[Event]:
        return [
            Event(
                "dr",
                "doctor",
                "instance.read",
                patient_pk=pk,
                sop_uid=f"1.2.{n}",
                detail=TRICKY,
                flagged=n == 1,
            )
            for n in range(4)
            for pk in pks
        ]

    log._write(batch())
    with catalog.transaction() as session:  # shred the first patient's key
        session.execute(update(Patient).where(Patient.id == pks[0]).values(wrapped_key=None))
    log._write(batch())
    with catalog.session() as session:
        rows = list(audit._rows(session))
        assert len(rows) == 24
        first, later = rows[:12], rows[12:]
        assert all(r["patient_tag"] and r["sealed"] for r in first)
        for row in later:
            shredded = row["patient_pk"] == pks[0]
            assert (row["patient_tag"] is None) == shredded
            assert (row["sealed"] is None) == shredded
        kept = audit.readable(session, lookup, later[-1])
        assert kept.patient_id == "PAT-2" and kept.sop == "1.2.3"
        assert kept.detail == TRICKY and [r["flagged"] for r in rows[:3]] == [False] * 3
        assert [r["seq"] for r in rows] == list(range(1, 25))
    verdict = audit.verify(catalog, keys)
    assert verdict.ok and verdict.events == 24, verdict
