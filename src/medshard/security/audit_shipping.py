"""Audit events off the service's disk: shipped to the nodes within seconds, replayed by a restore.

The audit log lives in the catalog (:mod:`medshard.security.audit`). A metadata backup holds
it up to its snapshot and the object journal holds objects, not events, so without this,
losing the service's disk would lose the record of who saw and changed what since the last
backup (five minutes by default): the record a HIPAA-style audit control must keep.

So the service's :class:`AuditShipper` wakes every ``audit_ship_interval_s`` and ships the
events appended since its last shipment (by any process: they are read from the chain by
``seq``) as blobs of at most :data:`EVENTS_PER_SHIPMENT` events, sealed with the recovery
key and written to ``replicas`` nodes like the journal's (a quorum, or it retries next
time). Patients stay pseudonymous in them, as in the catalog: the events carry only tags and
sealed parts. Blob names are ``audit-<first seq>-<last seq>``; a backup deletes those its
snapshot holds (:func:`medshard.cluster.metadata_backup.take_backup`).

``medshard restore`` then appends them after the restored backup's last event
(:func:`replay_shipments`), each checked against the chain: the next ``seq``, linked to the
event before, and its keyed hash under the restored chain key. The restored chain verifies
end to end; an event that does not fit (a gap, a forgery) stops the replay there, and the
report says where. What can still be lost: events appended in the last interval before the
disk went. SQLite catalogs only, as the journal (PostgreSQL has its standby).
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from medshard.catalog.audit_rows import append_events, audit_head, event_rows
from medshard.catalog.db import Catalog
from medshard.cluster.archive import Archive
from medshard.cluster.backup_format import (
    BackupSeal,
    audit_shipment_name,
    parse_audit_shipment_name,
)
from medshard.cluster.journal_replay import open_sealed_json
from medshard.cluster.metadata_backup import load_state, save_state
from medshard.config import load_settings
from medshard.errors import MedshardError
from medshard.security.audit import CHAIN_CONTEXT, EVENT_COLUMNS, chain_hash
from medshard.storage.keys import key_provider_for
from medshard.storage.node_client import NodeClient

log = logging.getLogger(__name__)

SHIPMENT_FORMAT: Final = 1
#: Events per blob at most (a blob of 5,000 events is ~2.5 MB of JSON).
EVENTS_PER_SHIPMENT: Final = 5000
#: Blobs per wake at most: a long log (a first start) catches up over a few wakes.
SHIPMENTS_PER_WAKE: Final = 8
_STATE_KEY: Final = "audit_shipped"


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if out.get("sealed") is not None:
        out["sealed"] = bytes(out["sealed"]).hex()
    return out


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in EVENT_COLUMNS}
    if out.get("sealed") is not None:
        out["sealed"] = bytes.fromhex(out["sealed"])
    return out


class AuditShipper:
    """Ships the audit chain's new events to the nodes (the service runs one)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.settings = archive.settings
        self.shipped = int(load_state(self.settings).get(_STATE_KEY) or 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.archive.journaling and self.settings.audit_ship_interval_s > 0

    def start(self) -> AuditShipper:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="audit-shipper", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.enabled:
            self.step()  # what the last wake missed: a clean stop leaves nothing behind

    def _run(self) -> None:
        while not self._stop.wait(self.settings.audit_ship_interval_s):
            self.step()

    def step(self) -> int:
        """Ship what was appended since the last shipment; the events shipped."""
        shipped = 0
        try:
            for _ in range(SHIPMENTS_PER_WAKE):
                with self.archive.catalog.session() as session:
                    rows = list(
                        itertools.islice(
                            event_rows(session, EVENT_COLUMNS, after=self.shipped),
                            EVENTS_PER_SHIPMENT,
                        )
                    )
                if not rows:
                    break
                first, last = rows[0]["seq"], rows[-1]["seq"]
                body = {"format": SHIPMENT_FORMAT, "events": [_encode(r) for r in rows]}
                self.archive.journal.write_sealed(
                    audit_shipment_name(first, last),
                    json.dumps(body, separators=(",", ":")).encode(),
                    "audit shipment",
                )
                self.shipped = last
                save_state(self.settings, {_STATE_KEY: last})
                shipped += len(rows)
        except MedshardError as exc:  # the nodes are short: the events wait for next time
            log.warning("audit shipment deferred: %s", exc)
        return shipped


@dataclass
class AuditReplay:
    """What the shipped audit events held and what became of them."""

    shipments: int = 0
    restored: int = 0
    #: The backup's last event, and the chain's last after the replay.
    backup_head: int = 0
    head: int = 0
    problems: list[str] = field(default_factory=list)


def replay_shipments(
    home: Path, seal: BackupSeal, clients: list[NodeClient], listing: dict[str, set[str]]
) -> AuditReplay:
    """Append to the restored catalog at ``home`` every shipped event after its last one."""
    report = AuditReplay()
    names = sorted(
        {
            (parsed, name)
            for held in listing.values()  # a shipment is on several nodes: once each
            for name in held
            if (parsed := parse_audit_shipment_name(name)) is not None
        }
    )
    settings = load_settings(home)
    catalog = Catalog(settings.database_url)
    try:
        with catalog.transaction() as session:
            head = audit_head(session)
            if head is None:
                report.problems.append("the restored catalog has no audit chain head")
                return report
            key = key_provider_for(settings.master_key_path).unwrap(head.wrapped_key, CHAIN_CONTEXT)
            seq, prev = head.seq, head.hash
            report.backup_head = seq
            for (_first, last), name in names:
                if last <= seq:
                    continue  # the backup holds these (a shipment not trimmed yet)
                events = _open(name, seal, clients, listing, report)
                if events is None:
                    break
                report.shipments += 1
                fitting: list[dict[str, Any]] = []
                for row in events:
                    if row["seq"] <= seq + len(fitting):
                        continue
                    expected = seq + len(fitting) + 1
                    link = fitting[-1]["hash"] if fitting else prev
                    problem = _misfit(key, row, expected, link)
                    if problem:
                        report.problems.append(f"event {row['seq']} ({name}): {problem}")
                        break
                    fitting.append(row)
                if fitting:
                    append_events(
                        session.connection(), fitting, fitting[-1]["seq"], fitting[-1]["hash"]
                    )
                    seq, prev = fitting[-1]["seq"], fitting[-1]["hash"]
                    report.restored += len(fitting)
                if report.problems:
                    break
            report.head = seq
    finally:
        catalog.dispose()
    if report.problems:
        log.warning("audit replay stopped at event %d: %s", report.head, report.problems[0])
    return report


def _misfit(key: bytes, row: dict[str, Any], expected: int, link: str) -> str | None:
    if row["seq"] != expected:
        return f"the chain needs event {expected} here (events are missing)"
    if row["prev_hash"] != link:
        return "does not link to the event before"
    if not hmac.compare_digest(chain_hash(key, row), row["hash"]):
        return "its keyed hash does not hold (altered, or not this chain's)"
    return None


def _open(
    name: str,
    seal: BackupSeal,
    clients: list[NodeClient],
    listing: dict[str, set[str]],
    report: AuditReplay,
) -> list[dict[str, Any]] | None:
    body, problem = open_sealed_json(seal, clients, listing, name)
    if body is not None and body.get("format") == SHIPMENT_FORMAT:
        return [_decode(row) for row in body["events"]]
    if body is not None:
        problem = f"unknown format {body.get('format')!r}"
    report.problems.append(f"shipment {name}: {problem}")
    return None
