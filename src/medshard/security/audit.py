"""The audit log: an append-only chain of events, keyed-hash linked, in the catalog.

Each event's ``hash`` is HMAC-SHA256 over the previous event's hash and the event's own
canonical fields, keyed by a chain key that the master key wraps (kept in ``audit_head``).
Editing, deleting or reordering any event breaks the chain from there on; cutting the tail
leaves the head row pointing past the last event; and someone with database access alone
cannot recompute the chain, because they lack the key. ``verify`` names the first bad event.

Appends are serialised by updating the head row first, which takes the database's row (or,
on SQLite, write) lock, so concurrent writers in several processes still form one chain.
Changes (stores, shares, erasures, admin actions) append in the transaction that makes the
change; reads append through a background writer that group-commits a batch every few
milliseconds, so auditing a read costs the request an enqueue, not an fsync.

Patient identity is sealed: ``patient_tag`` is an HMAC of the patient's key (a patient finds
their own events with it) and ``sealed`` holds patient ID, study and instance UIDs encrypted
under a key derived from the patient key. Erasing the patient shreds both meanings while
every event, and the chain, stays intact and verifiable.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medshard.catalog.audit_rows import (
    add_audit_head,
    append_events,
    audit_head,
    event_rows,
    take_head,
)
from medshard.catalog.db import Catalog, peek_scratch, transaction_scratch
from medshard.catalog.models import utcnow
from medshard.catalog.patient_keys import key_row_of, key_rows_of
from medshard.catalog.writes import PatientKeyRow
from medshard.errors import ConfigError
from medshard.storage.keys import KeyProvider

log = logging.getLogger(__name__)

GENESIS = "0" * 64
CHAIN_CONTEXT = b"medshard-audit-chain"
_FIELDS = (
    "seq", "at", "actor", "role", "action", "outcome", "source",
    "patient_pk", "patient_tag", "sealed", "detail", "flagged", "prev_hash",
)  # fmt: skip
_COLUMNS = (*_FIELDS, "hash")
#: An event row's columns, as stored, shipped (:mod:`.audit_shipping`) and verified.
EVENT_COLUMNS = _COLUMNS


@dataclass
class Event:
    """What happened, before it is sealed and chained."""

    actor: str
    role: str
    action: str
    outcome: str = "success"  # success | denied | failed
    source: str = ""
    patient_pk: int | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    sop_uid: str | None = None
    detail: str = ""
    flagged: bool = False
    sealed_actor: bool = False  # a patient acting: their username is sealed too

    def secret_part(self) -> dict[str, str]:
        out = {"patient_id": self.patient_id, "study": self.study_uid, "sop": self.sop_uid}
        if self.sealed_actor:
            out["actor"] = self.actor
        return {k: v for k, v in out.items() if v}


@functools.lru_cache(maxsize=4096)  # the same few patients' keys, event after event
def _derive(patient_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(patient_key)


@functools.lru_cache(maxsize=4096)  # an HMAC per event was ~8% of the audit writer's time
def patient_tag(patient_key: bytes) -> str:
    """The pseudonym under which a patient's events are found."""
    return hmac.new(_derive(patient_key, b"audit-tag"), b"tag", hashlib.sha256).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)  # building the cipher cost more than encrypting an event
def _sealer(patient_key: bytes) -> AESGCM:
    return AESGCM(_derive(patient_key, b"audit-seal"))


#: ``json.dumps(values, sort_keys=True)`` without building an encoder for every event.
_SEAL_JSON = json.JSONEncoder(sort_keys=True)


def seal(patient_key: bytes, values: dict[str, str]) -> bytes:
    nonce = secrets.token_bytes(12)
    body = _SEAL_JSON.encode(values).encode()
    return nonce + _sealer(patient_key).encrypt(nonce, body, b"audit")


def unseal(patient_key: bytes, sealed: bytes) -> dict[str, str]:
    try:
        plain = _sealer(patient_key).decrypt(sealed[:12], sealed[12:], b"audit")
    except (InvalidTag, ValueError):
        return {}
    loaded: dict[str, str] = json.loads(plain)
    return loaded


_SORTED = sorted(_FIELDS)
_SEALED_AT = _SORTED.index("sealed")
#: ``{"action":%s,"actor":%s,...}``: the fields in the order ``sort_keys`` puts them.
_TEMPLATE = "{" + ",".join(f'"{k}":%s' for k in _SORTED) + "}"
#: Each type an event's fields hold, as ``json.dumps`` writes it (ASCII-escaped strings).
_JSON_OF: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    bool: lambda v: "true" if v else "false",
    type(None): lambda v: "null",
}


def _canonical(row: dict[str, Any]) -> bytes:
    """The bytes the chain's hash covers. They must never change, or every stored event
    stops verifying: this is ``json.dumps(fields, sort_keys=True, separators=(",", ":"))``
    with ``sealed`` as hex, written by a template (``json.dumps`` was a fifth of the
    audit writer's time); a value of any other type takes ``json.dumps`` itself."""
    values = [row.get(k) for k in _SORTED]
    sealed = values[_SEALED_AT]
    if isinstance(sealed, bytes | memoryview):
        values[_SEALED_AT] = bytes(sealed).hex()
    try:
        return (_TEMPLATE % tuple([_JSON_OF[v.__class__](v) for v in values])).encode()
    except KeyError:
        fields = dict(zip(_SORTED, values, strict=True))
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC keyed once, copied per event: keying it cost as much as hashing the event."""
    return hmac.new(key, digestmod=hashlib.sha256)


def chain_hash(key: bytes, row: dict[str, Any]) -> str:
    mac = _keyed(key).copy()
    mac.update(_canonical(row))
    return mac.hexdigest()


def ensure_head(catalog: Catalog, keys: KeyProvider) -> None:
    """Create the chain's head row and key once per deployment (idempotent)."""
    with catalog.session() as session:
        if audit_head(session) is not None:
            return
    try:
        with catalog.transaction() as session:
            add_audit_head(
                session,
                genesis=GENESIS,
                wrapped_key=keys.wrap(secrets.token_bytes(32), CHAIN_CONTEXT),
                master_key_id=keys.key_id,
            )
    except IntegrityError:
        pass  # another process created it first


_AT_COMMIT = "audit"


@sa_event.listens_for(Session, "before_commit")
def _chain_at_commit(session: Session) -> None:
    """Chain the events :meth:`AuditLog.append_at_commit` held back, in the committing
    transaction (a failure here fails the commit: no change lands unaudited)."""
    scratch = peek_scratch(session)
    pending = scratch.pop(_AT_COMMIT, None) if scratch else None
    for log, rows in pending or ():
        log._chain(session, rows)


class PatientKey(NamedTuple):
    """A patient's plaintext key and Patient ID, read together (one query per event)."""

    key: bytes
    patient_id: str


#: Looks up a patient's plaintext key and id; None once the patient has been erased.
PatientKeyOf = Callable[[Session, int], PatientKey | None]


def patient_key_lookup(unwrap: Callable[[PatientKeyRow], bytes]) -> PatientKeyOf:
    """Reads the key columns only (:func:`medshard.catalog.patient_keys.key_row_of`): loading
    the ORM row for every audited read cost a third of the service's time under QIDO-RS."""

    def lookup(session: Session, patient_pk: int) -> PatientKey | None:
        row = key_row_of(session.connection(), patient_pk)
        return None if row is None else PatientKey(unwrap(row), row.patient_id)

    return lookup


class AuditLog:
    """Appends events to the chain: in a caller's transaction, or batched in the background."""

    #: Events chained per background transaction at most. Fewer a transaction (64) smoothed
    #: the tail of 100-result searches at 10^6 instances but, taking the chain's head (and
    #: SQLite's write lock) 8x as often, cost STOW-RS 12% and QIDO-RS p50 40% in
    #: `medshard bench dicomweb`; a batch of 490 events costs ~20 ms of CPU.
    BATCH_EVENTS = 512
    #: Events sealed between two offers of the GIL. A thread holding the GIL keeps it for
    #: the interpreter's switch interval (5 ms) while others wait; a search's query that
    #: returned meanwhile waited that long for it: sealing a 512-event batch made every
    #: sixth 83-result search at 10^6 instances take 16-20 ms instead of 7. Side by side on
    #: PostgreSQL at 10^6 (`medshard bench catalog`), p99 without / with the offers: date
    #: range 18.5-20.8 / 11.5-11.9 ms, modality 17.2-19.5 / 15.5-16.4 ms, p50s lower too.
    YIELD_EVERY = 16

    def __init__(
        self,
        catalog: Catalog,
        keys: Callable[[], KeyProvider],
        patient_key_of: PatientKeyOf,
        unwrap: Callable[[PatientKeyRow], bytes] | None = None,
    ) -> None:
        self.catalog = catalog
        self.keys = keys  # the current master key (it may be rotated while we run)
        self.patient_key_of = patient_key_of
        #: With it, a batch's patient keys are read in one query (see :meth:`append`).
        self._unwrap = unwrap
        ensure_head(catalog, keys())
        self._chain_key: bytes | None = None
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=100_000)
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._pending = 0

    def chain_key(self, session: Session) -> bytes:
        if self._chain_key is None:
            head = audit_head(session)
            if head is None:
                raise ConfigError("the audit chain has no head row: run `medshard init`")
            self._chain_key = self.keys().unwrap(head.wrapped_key, CHAIN_CONTEXT)
        return self._chain_key

    # -- append in the caller's transaction ----------------------------------------------
    def append(self, session: Session, *events: Event) -> None:
        """Chain ``events`` inside ``session``'s transaction (they commit with it, or not)."""
        if events:
            keys = self._keys_of(session, events)
            rows = []
            for n, event in enumerate(events, 1):
                rows.append(self._row(session, event, keys))
                if n % self.YIELD_EVERY == 0:
                    time.sleep(0)  # hand the GIL to a request waiting for it (see YIELD_EVERY)
            self._chain(session, rows)

    def _keys_of(self, session: Session, events: Sequence[Event]) -> dict[int, PatientKey | None]:
        """The keys of the patients ``events`` name, read in one query (a search's events
        name up to hundreds: one query each was 60% of the audit writer's time)."""
        keys: dict[int, PatientKey | None] = {}
        pks = {e.patient_pk for e in events if e.patient_pk is not None}
        if self._unwrap is not None and len(pks) > 1:
            rows = key_rows_of(session.connection(), pks)
            keys = dict.fromkeys(pks)  # erased: no key
            for pk, row in rows.items():
                keys[pk] = PatientKey(self._unwrap(row), row.patient_id)
        return keys

    def append_at_commit(self, session: Session, *events: Event) -> None:
        """As :meth:`append`, but chained just before the transaction commits, with every
        other event appended this way in it: a group commit of N stores takes the chain's
        head once, not N times (four statements each; measured: 16% of the service's time
        under STOW-RS). Each event is sealed now, with the patient key it has now."""
        if events:
            pending = transaction_scratch(session).setdefault(_AT_COMMIT, [])
            pending.append((self, [self._row(session, event) for event in events]))

    def _chain(self, session: Session, rows: list[dict[str, Any]]) -> None:
        key = self.chain_key(session)
        conn = session.connection()  # Core: the ORM execute layer costs ~0.3 ms a statement
        seq, prev = take_head(conn)
        for row in rows:
            seq += 1
            row["seq"], row["prev_hash"] = seq, prev
            row["hash"] = prev = chain_hash(key, row)
        append_events(conn, rows, seq, prev)

    def _row(
        self, session: Session, event: Event, keys: dict[int, PatientKey | None] | None = None
    ) -> dict[str, Any]:
        """The event's columns, sealed; ``seq``, ``prev_hash`` and ``hash`` come with the chain."""
        tag = sealed = None
        if event.patient_pk is not None:
            if keys is None:
                found = self.patient_key_of(session, event.patient_pk)
            elif event.patient_pk in keys:
                found = keys[event.patient_pk]
            else:
                found = keys[event.patient_pk] = self.patient_key_of(session, event.patient_pk)
            if found is not None:
                if event.patient_id is None:  # sealed with the event, whoever recorded it
                    event.patient_id = found.patient_id
                tag = patient_tag(found.key)
                secret = event.secret_part()
                sealed = seal(found.key, secret) if secret else None
        actor = "patient" if event.sealed_actor else event.actor
        return {
            "seq": 0,
            "at": utcnow().isoformat(timespec="microseconds"),
            "actor": actor[:160],
            "role": event.role,
            "action": event.action,
            "outcome": event.outcome,
            "source": event.source[:160],
            "patient_pk": event.patient_pk,
            "patient_tag": tag,
            "sealed": sealed,
            "detail": event.detail[:2000],
            "flagged": event.flagged,
            "prev_hash": "",
        }

    # -- background appends (reads, denials) ---------------------------------------------
    def submit(self, event: Event) -> None:
        """Queue an event for the background writer (committed within milliseconds)."""
        if self._thread is None:
            self._start()
        with self._idle:
            self._pending += 1
        self._queue.put(event)

    def _start(self) -> None:
        with self._idle:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.BATCH_EVENTS:
                try:
                    item = self._queue.get(timeout=0.005)
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[Event]) -> None:
        for attempt in range(50):
            try:
                with self.catalog.transaction() as session:
                    self.append(session, *batch)
                break
            except Exception:  # a busy database: retry, never drop an audit event silently
                log.exception("audit append failed (attempt %d); retrying", attempt + 1)
                threading.Event().wait(min(2.0, 0.05 * (attempt + 1)))
        else:
            log.critical("%d audit events could not be written", len(batch))
        with self._idle:
            self._pending -= len(batch)
            self._idle.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is committed; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None


# ----------------------------------------------------------------------------- reading


@dataclass
class Verdict:
    ok: bool
    events: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(catalog: Catalog, keys: KeyProvider) -> Verdict:
    """Walk the whole chain; the first event that does not hold is named."""
    with catalog.session() as session:
        head = audit_head(session)
        if head is None:
            return Verdict(False, 0, 0, None, "no audit head row")
        key = keys.unwrap(head.wrapped_key, CHAIN_CONTEXT)
        expected_seq, prev, count = 1, GENESIS, 0
        for row in _rows(session):
            count += 1
            if row["seq"] != expected_seq:
                bad = min(row["seq"], expected_seq)
                return Verdict(False, count, head.seq, bad, f"event {bad} is missing or moved")
            if row["prev_hash"] != prev:
                return Verdict(
                    False, count, head.seq, row["seq"], "does not link to the event before"
                )
            if not hmac.compare_digest(chain_hash(key, row), row["hash"]):
                return Verdict(False, count, head.seq, row["seq"], "content was altered")
            prev = row["hash"]
            expected_seq += 1
        if head.seq != expected_seq - 1 or head.hash != prev:
            return Verdict(
                False,
                count,
                head.seq,
                expected_seq,
                f"the log ends at event {expected_seq - 1} but the head says {head.seq}: "
                "events were removed from the end",
            )
        return Verdict(True, count, head.seq)


def _rows(
    session: Session, *, since: str | None = None, tag: str | None = None
) -> Iterator[dict[str, Any]]:
    """Events in chain order, with every field the chain's hash covers, and the hash."""
    return event_rows(session, _COLUMNS, since=since, tag=tag)


@dataclass
class ReadableEvent:
    seq: int
    at: str
    actor: str
    role: str
    action: str
    outcome: str
    source: str
    detail: str
    flagged: bool
    hash: str
    patient_id: str | None = None
    study: str | None = None
    sop: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        return out


def readable(session: Session, patient_key_of: PatientKeyOf, row: dict[str, Any]) -> ReadableEvent:
    """An event with its sealed part opened, where the patient's key still exists."""
    secret: dict[str, str] = {}
    if row["sealed"] and row["patient_pk"] is not None:
        found = patient_key_of(session, row["patient_pk"])
        if found is not None:
            secret = unseal(found.key, bytes(row["sealed"]))
    return ReadableEvent(
        seq=row["seq"],
        at=row["at"],
        actor=secret.get("actor", row["actor"]),
        role=row["role"],
        action=row["action"],
        outcome=row["outcome"],
        source=row["source"],
        detail=row["detail"],
        flagged=row["flagged"],
        hash=row["hash"],
        patient_id=secret.get("patient_id"),
        study=secret.get("study"),
        sop=secret.get("sop"),
    )


def events(
    session: Session,
    patient_key_of: PatientKeyOf,
    *,
    since: str | None = None,
    tag: str | None = None,
    limit: int | None = None,
) -> list[ReadableEvent]:
    """Events in chain order, optionally from a time on, or of one patient (by tag)."""
    out: list[ReadableEvent] = []
    for row in _rows(session, since=since, tag=tag):
        out.append(readable(session, patient_key_of, row))
        if limit is not None and len(out) >= limit:
            break
    return out
