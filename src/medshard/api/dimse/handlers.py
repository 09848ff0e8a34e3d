"""The DIMSE event handlers: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET.

Each handler gets its dependencies as explicit arguments (bound with pynetdicom's
``(event, handler, [args])`` form, as pynetdicom's qrscp does) and runs in the thread of the
association it serves, so a slow ingest holds up only its own peer. Every failure status comes
from :mod:`medshard.api.dimse.status`; no handler lets an exception escape to pynetdicom, which
would answer with an opaque ``0xC0xx`` code.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import Any, Final

from pydicom.dataset import Dataset
from pynetdicom import events as evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.presentation import build_context

from medshard.api.dimse.query import parse_identifier, response_identifier, retrieve_query
from medshard.api.dimse.retrieve import (
    Match,
    accepted_for_sending,
    find_matches,
    load_instance,
    requested_contexts,
    sendable,
    unreadable,
)
from medshard.api.dimse.status import (
    CANCEL,
    PENDING,
    SUCCESS,
    Service,
    failure,
    rejection_error,
)
from medshard.catalog.search import search
from medshard.cluster.archive import Archive
from medshard.errors import MedshardError
from medshard.ingest.pipeline import Ingestor
from medshard.security.context import Caller, acting_as
from medshard.security.gate import Gate
from medshard.security.policy import audit_results, scope_of

log = logging.getLogger(__name__)

#: Received instances up to this size stay in memory; larger ones spill to a temp file.
SPOOL_BYTES: Final = 16 * 1024 * 1024
VERIFICATION: Final = "1.2.840.10008.1.1"
#: Instances a retrieve reads ahead of the one being sent (bounded memory, overlapped I/O).
READ_AHEAD: Final = 2
_PREAMBLE: Final = b"\x00" * 128 + b"DICM"

#: What a C-FIND/C-MOVE/C-GET handler yields: (status, dataset) after optional preambles.
Reply = tuple[int | Dataset, Dataset | None]


def _peer(event: evt.Event) -> str:
    remote = event.assoc.requestor
    return f"{remote.ae_title}@{remote.address}"


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: the service is up."""
    return SUCCESS


def _caller(event: evt.Event, gate: Gate) -> Caller:
    """The service account the calling AE acts as; every handler runs as it."""
    remote = event.assoc.requestor
    return gate.caller(gate.dimse_principal(remote.ae_title, str(remote.address)))


def handle_store(event: evt.Event, ingestor: Ingestor, gate: Gate) -> int | Dataset:
    """C-STORE: ingest the data set exactly as received, as a Part 10 file.

    The file is preamble + file meta (from the request and the negotiated transfer syntax)
    + the encoded data set, never decoded and re-encoded; the same instance sent twice by
    any peer therefore yields identical bytes and is acknowledged as a duplicate.
    """
    source = f"dimse:{_peer(event)}"
    try:
        caller = _caller(event, gate)
        site, hook = gate.store_hook(caller.principal)
    except Exception as exc:
        return _refuse(exc, "C-STORE", event)[0]
    try:
        with acting_as(caller), SpooledTemporaryFile(max_size=SPOOL_BYTES) as fh:
            fh.write(_PREAMBLE)
            fh.write(encode_file_meta(event.file_meta))
            fh.write(event.encoded_dataset(include_meta=False))
            fh.seek(0)
            outcome = ingestor.ingest_stream(
                fh,  # type: ignore[arg-type]
                source,
                site_id=site,
                on_commit=hook,
            )
    except Exception as exc:  # the pipeline reports bad input itself; this is a fault
        return _refuse(exc, "C-STORE", event)[0]
    if outcome.status in ("imported", "duplicate"):
        return SUCCESS
    log.warning("C-STORE from %s rejected: %s", _peer(event), outcome.reason)
    gate.store_refused(caller.principal, outcome.reason, outcome.study_instance_uid)
    return failure(rejection_error(outcome), "C-STORE")


def handle_find(event: evt.Event, archive: Archive, ae_title: str, gate: Gate) -> Iterator[Reply]:
    """C-FIND: one pending response per catalog match the caller may see, then success."""
    try:
        caller = _caller(event, gate)
        query = parse_identifier(event.identifier, str(event.request.AffectedSOPClassUID))
        with archive.catalog.reads() as session:
            rows = search(
                session,
                query.level,
                query.conditions,
                fields=query.catalog_fields(),
                scope=scope_of(caller.principal),
            )
        audit_results(caller, "query", rows, detail=f"C-FIND {query.level}")
    except Exception as exc:
        yield _refuse(exc, "C-FIND", event)
        return
    for row in rows:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, response_identifier(query, row, retrieve_ae_title=ae_title)
    yield SUCCESS, None


def _retrieve_matches(event: evt.Event, archive: Archive, gate: Gate, action: str) -> list[Match]:
    caller = _caller(event, gate)
    query = retrieve_query(event.identifier, str(event.request.AffectedSOPClassUID))
    with acting_as(caller):
        return find_matches(archive, query, action)


@dataclass
class Accepted:
    """Contexts a retrieve may send over; known once the sending association is accepted."""

    contexts: set[tuple[str, str]] = field(default_factory=set)


def _read_ahead(archive: Archive, matches: Sequence[Match]) -> Iterator[tuple[Match, Future[Any]]]:
    """Each match with its instance being read; the next ones are read while this one is sent."""
    with ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="dimse-read") as pool:
        pending: deque[tuple[Match, Future[Any]]] = deque()
        upcoming = iter(matches)
        try:
            while True:
                while len(pending) < READ_AHEAD and (match := next(upcoming, None)) is not None:
                    pending.append((match, pool.submit(load_instance, archive, match)))
                if not pending:
                    return
                yield pending.popleft()
        finally:
            for _match, future in pending:
                future.cancel()


def _sub_operations(
    event: evt.Event, archive: Archive, matches: Sequence[Match], accepted: Accepted
) -> Iterator[Reply]:
    """One pending (status, dataset) per instance; unreadable ones fail without stopping."""
    for match, loading in _read_ahead(archive, matches):
        if event.is_cancelled:
            yield CANCEL, None
            return
        try:
            instance: Dataset = sendable(loading.result(), accepted.contexts)
        except Exception as exc:  # one unreadable instance must not end the retrieve
            log.error("retrieve of %s: cannot read it: %s", match.sop_instance_uid, exc)
            instance = unreadable(match)
        yield PENDING, instance


def _refuse(exc: Exception, service: Service, event: evt.Event) -> tuple[Dataset, None]:
    """The failure reply for ``exc``; unexpected errors are logged with their traceback."""
    if isinstance(exc, MedshardError):
        log.warning("%s from %s failed: %s", service, _peer(event), exc)
    else:
        log.error("%s from %s: unexpected error", service, _peer(event), exc_info=exc)
    return failure(exc, service), None


def handle_move(
    event: evt.Event,
    archive: Archive,
    destinations: Mapping[str, Sequence[Any]],
    max_pdu: int,
    gate: Gate,
) -> Iterator[Any]:
    """C-MOVE: send the matching instances to a configured destination AE.

    pynetdicom wants the destination first (``(None, None)`` answers 0xA801, destination
    unknown), then the number of sub-operations, then one (status, dataset) per instance. An
    identifier error can only be reported after those two, which costs one association
    (Verification only) to the destination.
    """
    name = (event.move_destination or "").strip()
    target = destinations.get(name)
    if target is None or len(target) < 2:
        log.warning(
            "C-MOVE from %s to unknown destination %r (known: %s)",
            _peer(event),
            name,
            ", ".join(sorted(destinations)) or "none",
        )
        yield None, None
        return
    host, port = str(target[0]), int(target[1])
    try:
        matches = _retrieve_matches(event, archive, gate, f"move to {name}")
    except Exception as exc:
        yield host, port, {"contexts": [build_context(VERIFICATION)], "max_pdu": max_pdu}
        yield 1
        yield _refuse(exc, "C-MOVE", event)
        return
    accepted = Accepted()

    def remember_contexts(accept_event: evt.Event) -> None:
        accepted.contexts = accepted_for_sending(accept_event.assoc.accepted_contexts)

    yield (
        host,
        port,
        {
            "contexts": requested_contexts(matches) if matches else None,
            "max_pdu": max_pdu,
            "evt_handlers": [(evt.EVT_ACCEPTED, remember_contexts)],
        },
    )
    yield len(matches)
    yield from _sub_operations(event, archive, matches, accepted)


def handle_get(event: evt.Event, archive: Archive, gate: Gate) -> Iterator[Any]:
    """C-GET: send the matching instances back over the requestor's own association."""
    try:
        matches = _retrieve_matches(event, archive, gate, "get")
    except Exception as exc:
        yield 1
        yield _refuse(exc, "C-GET", event)
        return
    accepted = Accepted(accepted_for_sending(event.assoc.accepted_contexts))
    yield len(matches)
    yield from _sub_operations(event, archive, matches, accepted)


def handle_rejected(event: evt.Event) -> None:
    """Log refused associations: a peer missing from the allow-list is a configuration issue."""
    log.warning("association from %s rejected", _peer(event))
