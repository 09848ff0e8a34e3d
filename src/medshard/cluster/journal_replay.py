"""Replaying the object journal onto a restored home: objects acknowledged after its backup.

:func:`replay_journal` runs in ``medshard restore`` once the newest backup's catalog is in
the new home. It reads every journal blob on the nodes (:mod:`medshard.cluster.journal`),
oldest first, and for each manifest (the last one of an object written twice, e.g. by a
group commit retried a write at a time):

- an object the catalog has (its backup holds it): skipped as *present*;
- a thumbnail (not journaled since, but a manifest of one is harmless): skipped as
  *re-derivable*, the viewer makes it again on first request;
- otherwise its data key is unwrapped (under the patient's restored key, or under the key
  the manifest carries for a patient the backup lacks), every chunk fetched from a node the
  manifest names, hash-checked and decrypted, and the whole checked against the SHA-256:
  chunks gone means a write that was never acknowledged (its commit failed and the chunks
  were discarded), reported with the *unrecoverable* ones;
- a DICOM object is re-ingested from its bytes through the ingest pipeline (``reingest``,
  given by the access layer: cluster/ never imports ingest/) with a ``put`` that records
  the very object the manifest describes (same key, chunks, replicas and wrapped data key:
  nothing is re-encrypted or re-written) in place of writing a new one, so its patient,
  study, series and instance rows come from its header as at first; its source site joins
  the patient's care team again;
- a document version, sensor batch or sensor segment gets the object's rows and the rows
  its manifest carries (:mod:`medshard.catalog.journal_rows`).

Removals (a patient's erasure, a study's deletion) are applied in journal order, and an
object a later removal took away is not replayed (its chunks may be gone already).

Care-team changes (:mod:`medshard.catalog.care_journal`: involvements by writes, doctors
added or removed, shares, break-glass grants) are applied in journal order too, after the
objects of their blob; one naming a user or study the restored catalog lacks is counted as
skipped. So are metadata-only document versions (a new version reusing its predecessor's
object), after the object they point at.

Accounts (users, API tokens, DICOM peers) come back as their rows stood at each journaled
commit (:mod:`medshard.catalog.account_journal`).

Not replayed: analysis jobs (a restore queues analysis again for the images it replays).
Audit events come back from their own shipments (:mod:`medshard.security.audit_shipping`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from medshard.catalog.account_journal import apply_account
from medshard.catalog.care_journal import apply_care_change
from medshard.catalog.care_team import involve
from medshard.catalog.erasure_rows import erase_patient_rows, erase_study_rows
from medshard.catalog.journal_rows import (
    RECORD_KINDS,
    add_record_rows,
    object_known,
    object_pk_and_patient,
    site_pk_named,
    version_known,
)
from medshard.catalog.lookups import patient_named
from medshard.catalog.models import CareSite
from medshard.catalog.studies import study_named
from medshard.catalog.writes import (
    ObjectRow,
    PatientKeyRow,
    PatientValues,
    ensure_patient,
    insert_object,
    patient_key_row,
)
from medshard.cluster.archive import Archive, Put
from medshard.cluster.backup_format import BackupSeal
from medshard.cluster.journal import JOURNAL_FORMAT, parse_journal_name
from medshard.config import load_settings
from medshard.errors import MedshardError, NotFoundError
from medshard.storage.chunkstore import chunk_id_of
from medshard.storage.envelope import ChunkCipher, unwrap_data_key
from medshard.storage.node_client import NodeClient

log = logging.getLogger(__name__)

#: Re-ingests a DICOM object's bytes: (archive, put, bytes, source, site pk, commit hook) ->
#: the outcome's (status, reason), status imported, duplicate or rejected. ``put`` stands in
#: for ``Archive.put_object``; the hook runs in the instance's commit.
DicomReingest = Callable[
    [Archive, Callable[..., Put[None]], bytes, str, int | None, Callable[..., None]],
    tuple[str, str],
]


@dataclass
class ReplayReport:
    """What the journal held and what became of it."""

    blobs: int = 0
    objects: int = 0
    replayed: int = 0
    present: int = 0
    rederivable: int = 0
    #: Objects left out because a later journaled removal took them away.
    removed: int = 0
    #: Journaled erasures and study deletions applied to the restored catalog.
    removals_applied: int = 0
    #: Metadata-only document versions: added, already there, or their object is gone.
    versions_replayed: int = 0
    versions_present: int = 0
    versions_orphaned: int = 0
    #: Journaled care-team changes applied, and skipped (they name what is not restored).
    care_changes_applied: int = 0
    care_changes_skipped: int = 0
    #: Journaled account rows (users, API tokens, DICOM peers) put back, and skipped.
    accounts_applied: int = 0
    accounts_skipped: int = 0
    unrecoverable: list[str] = field(default_factory=list)


class _Unrecoverable(Exception):
    pass


@dataclass(frozen=True)
class Removal:
    """A journaled erasure of a patient, or deletion of a study and its objects."""

    patient: str | None
    study: str | None
    objects: frozenset[str]

    def takes(self, manifest: dict[str, Any]) -> bool:
        """Whether this removal, journaled after ``manifest``, took its object away."""
        return manifest["key"] in self.objects or (
            self.patient is not None and manifest["patient"]["id"] == self.patient
        )


@dataclass(frozen=True)
class Version:
    """A journaled row that points at an object stored earlier (a metadata-only document
    version): the object's key and the rows' facts."""

    object_key: str
    facts: dict[str, Any]


@dataclass(frozen=True)
class RowChange:
    """A journaled change to rows that belong to no object: an account row as it stood at
    its commit (``kind`` "accounts": :mod:`medshard.catalog.account_journal`) or a care-team
    change ("care_changes": :mod:`medshard.catalog.care_journal`)."""

    kind: str
    body: dict[str, Any]


#: How each kind of row change is applied (True: applied, False: skipped).
_APPLY: dict[str, Callable[[Session, dict[str, Any]], bool]] = {
    "accounts": apply_account,
    "care_changes": apply_care_change,
}


#: A journal entry in order: an object's manifest, a removal, a version or a care change.
Entry = dict[str, Any] | Removal | Version | RowChange


def open_sealed_json(
    seal: BackupSeal, clients: list[NodeClient], listing: dict[str, set[str]], name: str
) -> tuple[dict[str, Any] | None, str]:
    """The JSON body of the sealed named blob ``name``, from the first node ``listing`` says
    holds it whose copy opens; else (None, why not)."""
    problem = "no node has a copy"
    for client in clients:
        if name not in listing.get(client.name, set()):
            continue
        try:
            body: dict[str, Any] = json.loads(seal.open(name, client.get_meta(name)))
            return body, ""
        except (MedshardError, ValueError) as exc:
            problem = f"{client.name}: {exc}"
    return None, problem


def read_journal(
    seal: BackupSeal,
    clients: list[NodeClient],
    listing: dict[str, set[str]],
    report: ReplayReport,
) -> list[Entry]:
    """Every journaled manifest, removal and care-team change on the nodes, oldest first.

    An object comes once, at its last manifest; one that a later removal took away is left
    out (counted as *removed*): its chunks may already be gone from the nodes.
    """
    names = sorted({n for held in listing.values() for n in held if parse_journal_name(n)})
    report.blobs = len(names)
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    removals: list[tuple[int, Removal]] = []
    changes: list[tuple[int, Entry]] = []
    position = 0
    for name in names:
        body, problem = open_sealed_json(seal, clients, listing, name)
        if body is None or body.get("format") != JOURNAL_FORMAT:
            report.unrecoverable.append(f"journal blob {name}: {problem}")
            continue
        for manifest in body["objects"]:
            last[manifest["key"]] = (position, manifest)
            position += 1
        for removal in body.get("removals", []):
            taken = frozenset(removal.get("objects") or ())
            removals.append(
                (position, Removal(removal.get("patient"), removal.get("study"), taken))
            )
            position += 1
        for version in body.get("versions", []):
            changes.append((position, Version(version["key"], version["link"])))
            position += 1
        for snapshot in body.get("accounts", []):  # before the care changes that name them
            changes.append((position, RowChange("accounts", snapshot)))
            position += 1
        for change in body.get("care", []):
            changes.append((position, RowChange("care_changes", change)))
            position += 1
    report.objects = len(last)
    entries: list[tuple[int, Entry]] = [*removals, *changes]
    for at, manifest in last.values():
        if any(later > at and r.takes(manifest) for later, r in removals):
            report.removed += 1
        else:
            entries.append((at, manifest))
    return [entry for _at, entry in sorted(entries, key=lambda e: e[0])]


def replay_journal(
    home: Path,
    seal: BackupSeal,
    clients: list[NodeClient],
    listing: dict[str, set[str]],
    reingest: DicomReingest | None,
) -> ReplayReport:
    """Bring back into the restored catalog at ``home`` every journaled object it lacks, and
    apply every journaled removal, in journal order."""
    report = ReplayReport()
    entries = read_journal(seal, clients, listing, report)
    if not entries:
        return report
    by_name = {c.name: c for c in clients}
    with Archive(load_settings(home)) as archive:
        for entry in entries:
            if isinstance(entry, Removal):
                report.removals_applied += _remove(archive, entry)
                continue
            if isinstance(entry, Version):
                outcome = _add_version(archive, entry)
                setattr(report, outcome, getattr(report, outcome) + 1)
                continue
            if isinstance(entry, RowChange):
                with archive.catalog.transaction() as session:
                    applied = _APPLY[entry.kind](session, entry.body)
                counter = f"{entry.kind}_{'applied' if applied else 'skipped'}"
                setattr(report, counter, getattr(report, counter) + 1)
                continue
            try:
                outcome = _replay(archive, by_name, entry, reingest)
            except (MedshardError, _Unrecoverable) as exc:
                report.unrecoverable.append(f"{entry['kind']} object {entry['key']}: {exc}")
                continue
            setattr(report, outcome, getattr(report, outcome) + 1)
    if report.unrecoverable:
        log.warning("journal replay: %d not restored", len(report.unrecoverable))
    return report


def _add_version(archive: Archive, version: Version) -> str:
    """Add a journaled metadata-only document version to the restored catalog; the report
    field it counts in."""
    with archive.catalog.transaction() as session:
        if version_known(session, version.facts):
            return "versions_present"
        found = object_pk_and_patient(session, version.object_key)
        if found is None:  # its document was erased or deleted later
            return "versions_orphaned"
        object_pk, patient_pk = found
        add_record_rows(
            session, "document", version.facts, patient_pk=patient_pk, object_pk=object_pk
        )
    return "versions_replayed"


def _remove(archive: Archive, removal: Removal) -> int:
    """Apply a journaled removal to the restored catalog: 1 if it found what it removes (the
    backup or an earlier replay held it), else 0. Its chunk copies are queued for deletion,
    as at first (those already gone are nothing to delete)."""
    with archive.catalog.transaction() as session:
        if removal.patient is not None:
            patient = patient_named(session, removal.patient)
            if patient is None:
                return 0
            erase_patient_rows(session, patient.id, removal.patient)
        elif removal.study is not None:
            study = study_named(session, removal.study)
            if study is None:
                return 0
            erase_study_rows(session, study.id)
        else:
            return 0
    if removal.patient is not None:
        archive.store.forget_patient(removal.patient)
    return 1


def _replay(
    archive: Archive,
    clients: dict[str, NodeClient],
    manifest: dict[str, Any],
    reingest: DicomReingest | None,
) -> str:
    kind = manifest["kind"]
    with archive.catalog.session() as session:
        if object_known(session, manifest["key"]):
            return "present"
        site = site_pk_named(session, manifest["link"].get("site"))
    if kind == "thumbnail":
        return "rederivable"
    if kind != "dicom" and kind not in RECORD_KINDS:
        raise _Unrecoverable(f"nothing says what a {kind!r} object belongs to")
    data = _read(archive, clients, manifest, _data_key(archive, manifest))

    def care_site(session: Session, patient_pk: int, *_rest: Any) -> None:
        if site is not None:
            involve(session, CareSite, patient_pk=patient_pk, site_id=site)

    if kind == "dicom":
        if reingest is None:
            raise _Unrecoverable("no DICOM re-ingest was given to the restore")
        put = partial(_put, archive, manifest)
        source = str(manifest["link"].get("source") or f"journal:{manifest['key']}")
        status, reason = reingest(archive, put, data, source, site, care_site)
        if status == "imported":
            return "replayed"
        if status == "duplicate":
            return "present"
        raise _Unrecoverable(reason)
    with archive.catalog.transaction() as session:
        row, object_pk = _record(session, archive, manifest, _patient_values(manifest))
        add_record_rows(session, kind, manifest["link"], patient_pk=row.pk, object_pk=object_pk)
        care_site(session, row.pk)
    return "replayed"


def _patient_values(manifest: dict[str, Any]) -> PatientValues:
    p = manifest["patient"]
    return PatientValues(p["id"], p.get("name", ""), p.get("birth_date", ""), p.get("sex", ""))


def _offered(manifest: dict[str, Any]) -> PatientKeyRow:
    p = manifest["patient"]
    wrapped = base64.b64decode(p["wrapped_key"]) or None
    return PatientKeyRow(0, p["id"], int(p["shard"]), wrapped, str(p["key_id"]))


def _data_key(archive: Archive, manifest: dict[str, Any]) -> bytes:
    """The object's data key, under the patient's restored key or the journaled one."""
    wrapped = base64.b64decode(manifest["data_key"])
    with archive.catalog.engine.connect() as conn:
        known = patient_key_row(conn, manifest["patient"]["id"])
    problems = []
    for candidate in [r for r in (known, _offered(manifest)) if r is not None]:
        try:
            patient_key = archive.store.patient_key(candidate)
            return unwrap_data_key(patient_key, wrapped, manifest["key"])
        except MedshardError as exc:
            problems.append(str(exc))
    raise _Unrecoverable(f"its data key does not open: {'; '.join(problems)}")


def _read(
    archive: Archive, clients: dict[str, NodeClient], manifest: dict[str, Any], data_key: bytes
) -> bytes:
    """The object's plaintext, every chunk hash-checked, the whole checked by SHA-256."""
    cipher = ChunkCipher(data_key, manifest["key"])
    pieces = []
    for idx, chunk_id, _size, names in sorted(manifest["chunks"]):
        sealed = _fetch(archive, clients, chunk_id, names)
        if sealed is None:
            raise _Unrecoverable(
                f"chunk {idx} is on none of {', '.join(names)} (its write was never "
                "acknowledged and was undone, or those nodes are down)"
            )
        pieces.append(cipher.open(idx, sealed))
    data = b"".join(pieces)
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise _Unrecoverable("its chunks do not add up to its SHA-256")
    return data


def _fetch(
    archive: Archive, clients: dict[str, NodeClient], chunk_id: str, names: list[str]
) -> bytes | None:
    for name in names:
        client = clients.get(name)
        if client is None and name in archive.pool.nodes:
            client = archive.pool.nodes[name].client
        if client is None:
            continue
        try:
            data = client.get(chunk_id)
        except MedshardError:
            continue
        if chunk_id_of(data) == chunk_id:
            return data
    return None


def _record(
    session: Session, archive: Archive, manifest: dict[str, Any], patient: PatientValues
) -> tuple[PatientKeyRow, int]:
    """The journaled object's rows (and its patient's, if the backup lacks the patient)."""
    offered = _offered(manifest)
    row = patient_key_row(session, offered.patient_id) or ensure_patient(
        session,
        patient,
        shard=offered.shard,
        wrapped_key=offered.wrapped_key or b"",
        key_id=offered.master_key_id,
    )
    wrapped = base64.b64decode(manifest["data_key"])
    unwrap_data_key(archive.store.patient_key(row), wrapped, manifest["key"])  # the same key?
    node_pks = {h.name: h.pk for h in archive.pool.nodes.values()}
    for idx, _cid, _size, names in manifest["chunks"]:
        if not any(n in node_pks for n in names):
            raise NotFoundError(
                f"chunk {idx} is only on nodes this catalog does not know ({', '.join(names)})"
            )
    obj = ObjectRow(
        object_key=manifest["key"],
        kind=manifest["kind"],
        content_type=manifest["content_type"],
        size=int(manifest["size"]),
        sha256=manifest["sha256"],
        chunk_size=int(manifest["chunk_size"]),
        wrapped_key=wrapped,
        chunks=[
            (idx, cid, size, [node_pks[n] for n in names if n in node_pks])
            for idx, cid, size, names in manifest["chunks"]
        ],
    )
    return row, insert_object(session, row, obj)


def _put(
    archive: Archive,
    manifest: dict[str, Any],
    patient: PatientValues,
    _stream: Any,
    link: Callable[[Session, int, int], Any],
    **_options: Any,
) -> Put[Any]:
    """``Archive.put_object`` for a journaled object: its bytes are on the nodes already."""
    with archive.catalog.transaction() as session:
        row, object_pk = _record(session, archive, manifest, patient)
        linked = link(session, row.pk, object_pk)
    copies = min((len(c[3]) for c in manifest["chunks"]), default=0)
    return Put(row.pk, object_pk, int(manifest["size"]), copies, linked)
