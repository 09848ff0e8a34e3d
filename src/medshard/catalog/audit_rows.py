"""The audit chain's rows: its head (one row), appends of events, and events in chain order.

The chain itself (its key, each event's keyed hash, sealing the patient's part) is the
security layer's (:mod:`medshard.security.audit`); here is only how the rows are read and
written. An append is :func:`take_head`, then :func:`append_events` with the head they
advance it to, in the caller's transaction: updating the head row first takes the
database's row (on SQLite, write) lock, so concurrent writers in several processes still
form one chain.

Every append of the service runs these (a store's, a read's): they are Core statements on
the session's connection, built once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select, text, update
from sqlalchemy.orm import Session

from medshard.catalog.access_models import AuditEvent, AuditHead

# Built once: a statement built per append costs SQLAlchemy more than running it.
_LOCK_HEAD = update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq)
_READ_HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)
_INSERT_EVENTS = AuditEvent.__table__.insert()  # type: ignore[attr-defined]
_WRITE_HEAD = (
    update(AuditHead)
    .where(AuditHead.id == 1)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_EVENT_COLUMNS = tuple(c.name for c in AuditEvent.__table__.columns)  # type: ignore[attr-defined]
_COPY_EVENTS = f"COPY audit_events ({', '.join(_EVENT_COLUMNS)}) FROM STDIN"
#: Events read per statement when walking the chain.
_PAGE = 2000


def audit_head(session: Session) -> AuditHead | None:
    """The chain's head row, whole (its wrapped key included); None before ``init``."""
    return session.get(AuditHead, 1)


def add_audit_head(
    session: Session, *, genesis: str, wrapped_key: bytes, master_key_id: str
) -> None:
    """Add the head row of an empty chain (a second one fails on its primary key)."""
    session.add(
        AuditHead(id=1, seq=0, hash=genesis, wrapped_key=wrapped_key, master_key_id=master_key_id)
    )


def take_head(conn: Connection) -> tuple[int, str]:
    """Lock the head row until the transaction ends; its (sequence number, hash)."""
    conn.execute(_LOCK_HEAD)
    seq, prev = conn.execute(_READ_HEAD).one()
    return seq, prev


def append_events(conn: Connection, rows: list[dict[str, Any]], seq: int, hash_: str) -> None:
    """Insert chained event rows and move the head to the last one's ``seq`` and ``hash_``."""
    if conn.dialect.name == "postgresql" and len(rows) > 1:
        _copy_events(conn, rows)
    else:
        conn.execute(_INSERT_EVENTS, rows)
    conn.execute(_WRITE_HEAD, {"new_seq": seq, "new_hash": hash_})


def _copy_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """On PostgreSQL, many events go in by ``COPY``, in the caller's transaction. Inserting
    a search's hundred events as one statement each (executemany) was most of what auditing
    added to the next search's latency: by-modality QIDO-RS p99 at 10^5 instances was 21-27
    ms with the inserts, 12 ms with them left out and 7-8 ms with no auditing; by COPY, 14-16
    ms (`medshard bench catalog`, side by side). The record path's rate did not change."""
    raw = conn.connection.driver_connection
    if raw is None:  # a connection SQLAlchemy has already released: a bug, not bad input
        raise RuntimeError("the audit append's connection is closed")
    with raw.cursor() as cursor, cursor.copy(_COPY_EVENTS) as copy:
        for row in rows:
            copy.write_row([row[name] for name in _EVENT_COLUMNS])


def event_rows(
    session: Session,
    columns: Sequence[str],
    *,
    since: str | None = None,
    tag: str | None = None,
    after: int = 0,
) -> Iterator[dict[str, Any]]:
    """Events in chain order (``columns`` of each, the first being ``seq``), optionally
    from a time on, or of one patient (by tag), or after event ``after``; read a page at a
    time, with ``flagged`` as a bool and ``sealed`` as bytes on every backend."""
    last = after
    where = "seq > :last"
    if since:
        where += " AND at >= :since"
    if tag is not None:
        where += " AND patient_tag = :tag"
    while True:
        page = session.execute(
            text(
                f"SELECT {', '.join(columns)} FROM audit_events WHERE {where} "
                f"ORDER BY seq LIMIT {_PAGE}"
            ),
            {"last": last, "since": since, "tag": tag},
        ).all()
        if not page:
            return
        for values in page:
            row = dict(zip(columns, values, strict=True))
            row["flagged"] = bool(row["flagged"])
            if isinstance(row["sealed"], memoryview):
                row["sealed"] = bytes(row["sealed"])
            yield row
        last = page[-1][0]


def head_seq(conn: Connection | Session) -> int:
    """The chain's last event's ``seq`` (0: empty, or no head row yet)."""
    return int(conn.execute(select(AuditHead.seq).where(AuditHead.id == 1)).scalar() or 0)
