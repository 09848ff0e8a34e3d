"""Write-ahead object journal: no acknowledged object depends on the service's disk alone.

A metadata backup (:mod:`medshard.cluster.metadata_backup`) is a snapshot: an object
acknowledged after it has its chunks on the nodes, but its data key (wrapped by the
patient's key) and, for a new patient, the patient's key too exist only in the catalog. So
before a write is acknowledged its *manifest* is made durable on the nodes as well: object
key, kind, content type, size, SHA-256, chunk size, chunks (ids, sizes, indices, the nodes
written), the patient (id, demographics, wrapped key and master key id), the data key
wrapped under the patient's key exactly as the catalog stores it, and the link facts a
restore needs to rebuild the object's rows (a DICOM instance's source and site: its other
rows come back from its own bytes; a document's or sensor series' rows: see
:mod:`medshard.catalog.journal_rows`). ``medshard restore`` replays the manifests of every
object its backup lacks (:mod:`medshard.cluster.journal_replay`). Thumbnails are not
journaled: the viewer makes one again on first request. On by default for a SQLite catalog
(setting ``journal``); a PostgreSQL catalog is not in the backups and has its standby.

A metadata-only document update (a new version that reuses the previous version's object)
stores no object, so it is journaled on its own (:meth:`Journal.note_version`) and replayed
after the object it points at.

Care-team changes ride along in the blob of the transaction that made them
(:mod:`medshard.catalog.care_journal`): a write's involvement of its site and doctor, a
doctor added or removed, a share, a break-glass grant (those go through
:meth:`~medshard.cluster.archive.Archive.journaled_transaction`). A restore applies them in
journal order, after the objects of the same blob. So do accounts (users, API tokens, DICOM
peers: :mod:`medshard.catalog.account_journal`), written as their rows stand at commit.

Removals are journaled too (:meth:`Journal.note_removal`, in the removing transaction
through :meth:`~medshard.cluster.archive.Archive.journaled_transaction`): a patient's
erasure, a study's deletion with the keys of its objects. A restore applies them in journal
order, after the backup, and does not replay an object a later removal took away: a
patient erased after the last backup stays erased.

One blob per group commit, not one per object: :meth:`Journal.flush` is the catalog's
``before_group_commit`` hook, so the leader of a group commit writes one blob holding the
manifests of every write in the group, sealed with the recovery key like the backups
(:class:`~medshard.cluster.backup_format.BackupSeal`; nodes see ciphertext only), as a named
blob to ``replicas`` live nodes (distinct sites first) in parallel. Under concurrent ingest a
group holds many objects, so the journal costs a few named-blob PUTs per group.

Order: inside the group's transaction, after every write's rows were added and before
COMMIT; the chunks are durable by then (``put_object`` writes them first). So

- the manifest holds what the catalog commits: the patient row (and key) that won a race
  between two writers of a new patient, and the very wrapped data key of the object row;
- a journal short of ``write_quorum`` raises, the transaction rolls back and the writes fail
  and their chunks are discarded, exactly like a chunk short of quorum (the group is then
  retried a write at a time, as after any failed group commit, each with its own blob);
- a COMMIT that fails after the blob was written leaves the manifest of a write that was
  not acknowledged; its chunks are discarded, and a restore skips an object whose chunks
  are gone (or whose row exists). Writing after COMMIT instead would need committed rows,
  audit entries and queue rows undone when the journal fails.

Blob names are ``journal-<time>-<writer>-<seq>``: the UTC time of the write (so names sort
in time order), this process's random writer id, and its sequence number. A backup trims
what its snapshot holds (:meth:`Journal.mark` before the snapshot, :meth:`Journal.trim`
once the backup has a quorum of copies): this process's blobs settled (committed or rolled
back) before the snapshot began, and any writer's blobs older than :data:`TRIM_SLACK_S`.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy.orm import Session

from medshard import metrics
from medshard.catalog.account_journal import account_snapshots
from medshard.catalog.care_journal import named_care_changes
from medshard.catalog.db import peek_scratch, transaction_scratch
from medshard.catalog.journal_rows import site_name_of
from medshard.cluster.backup_format import (
    BackupSeal,
    journal_name,
    new_backup_id,
    parse_journal_name,
)
from medshard.cluster.metadata_backup import NodeBlobs, choose_targets, ensure_recovery_key
from medshard.config import Settings
from medshard.errors import MedshardError, NodeFullError, NoQuorumError

if TYPE_CHECKING:
    from medshard.catalog.writes import PatientKeyRow, PatientValues
    from medshard.cluster.nodes import NodeHandle, NodePool
    from medshard.cluster.objects import WrittenObject

log = logging.getLogger(__name__)

JOURNAL_FORMAT: Final = 1
_SCRATCH_KEY: Final = "journal"
_REMOVALS_KEY: Final = "journal-removals"
_PATIENTS_KEY: Final = "journal-patients"
_VERSIONS_KEY: Final = "journal-versions"
#: Kinds not journaled: made again from what is (a thumbnail, on its first request).
REDERIVABLE_KINDS: Final = ("thumbnail",)
#: A backup deletes another process's journal blobs (``medshard import`` beside the
#: service) only once they are this much older than its snapshot: by then their transaction
#: has long ended (the blob is written just before COMMIT), so the snapshot holds their rows.
TRIM_SLACK_S = 600.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class JournalMark:
    """What a backup's snapshot, begun after this mark, is sure to hold."""

    writer: str
    #: This writer's blobs below this seq had settled when the mark was taken.
    settled_below: int
    #: Any writer's blobs stamped before this (the mark's time less TRIM_SLACK_S).
    before: str

    def covers(self, name: str) -> bool:
        parsed = parse_journal_name(name)
        if parsed is None:
            return False
        stamp, writer, seq = parsed
        return (writer == self.writer and seq < self.settled_below) or stamp < self.before


class Journal:
    """This process's journal writer (one per :class:`~medshard.cluster.archive.Archive`)."""

    def __init__(self, settings: Settings, pool: NodePool) -> None:
        self.settings = settings
        self.pool = pool
        self.writer = secrets.token_hex(4)
        self.blobs = 0
        self.objects = 0
        self._seq = 0
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._seal: BackupSeal | None = None
        self._sites: dict[int, str | None] = {}
        self._executor: ThreadPoolExecutor | None = None

    # -- write path -----------------------------------------------------------------------------
    def note(
        self,
        session: Session,
        *,
        patient: PatientValues,
        row: PatientKeyRow,
        written: WrittenObject,
        wrapped_key: bytes,
        kind: str,
        content_type: str,
        facts: Mapping[str, Any],
    ) -> None:
        """Add an object's manifest to its transaction's blob (written by :meth:`flush`)."""
        link = self._named_sites(session, facts)
        manifest = {
            "key": written.object_key,
            "kind": kind,
            "content_type": content_type,
            "size": written.size,
            "sha256": written.sha256,
            "chunk_size": written.chunk_size,
            "chunks": [[c.idx, c.chunk_id, c.size, c.nodes] for c in written.chunks],
            "patient": {
                "id": row.patient_id,
                "name": patient.name,
                "birth_date": patient.birth_date,
                "sex": patient.sex,
                "shard": row.shard,
                "wrapped_key": b64(row.wrapped_key or b""),
                "key_id": row.master_key_id,
            },
            "data_key": b64(wrapped_key),
            "link": link,
        }
        scratch = transaction_scratch(session)
        scratch.setdefault(_SCRATCH_KEY, []).append(manifest)
        scratch.setdefault(_PATIENTS_KEY, {})[row.pk] = row.patient_id

    def note_removal(
        self,
        session: Session,
        *,
        patient: str | None = None,
        study: str | None = None,
        objects: Sequence[str] = (),
    ) -> None:
        """Add an erasure (of ``patient``) or a study deletion (of ``study``, whose objects
        are ``objects``) to its transaction's blob.

        Without it a restore from a backup taken before the removal would bring the removed
        rows back, and replay the removed objects: an erased patient made whole again.
        """
        entry: dict[str, Any] = {"patient": patient, "study": study, "objects": list(objects)}
        transaction_scratch(session).setdefault(_REMOVALS_KEY, []).append(entry)

    def note_version(self, session: Session, *, object_key: str, facts: Mapping[str, Any]) -> None:
        """Add a row that points at an object stored earlier (a metadata-only document
        version: ``facts`` as :func:`~medshard.catalog.journal_rows.version_facts` gives them)
        to its transaction's blob; no new object means no manifest would carry it."""
        link = self._named_sites(session, facts)
        entry = {"key": object_key, "link": link}
        transaction_scratch(session).setdefault(_VERSIONS_KEY, []).append(entry)

    def _named_sites(self, session: Session, facts: Mapping[str, Any]) -> dict[str, Any]:
        link = dict(facts)
        for key in [k for k in link if k.endswith("site_id")]:  # ids are the catalog's own
            site_pk = link.pop(key)
            link[key.removesuffix("_id")] = self._site_name(session, site_pk)
        return link

    def _site_name(self, session: Session, site_pk: int | None) -> str | None:
        if site_pk is None:
            return None
        if site_pk not in self._sites:
            self._sites[site_pk] = site_name_of(session, site_pk)
        return self._sites[site_pk]

    def flush(self, session: Session) -> Callable[[], None] | None:
        """Write the transaction's manifests as one blob to a quorum of nodes, or raise.

        The catalog's ``before_group_commit`` hook; returns what marks the blob settled.
        """
        scratch = peek_scratch(session) or {}
        manifests = scratch.get(_SCRATCH_KEY, [])
        removals = scratch.get(_REMOVALS_KEY, [])
        versions = scratch.get(_VERSIONS_KEY, [])
        care = named_care_changes(session, scratch.get(_PATIENTS_KEY, {}), self._site_name)
        accounts = account_snapshots(session)
        if not manifests and not removals and not versions and not care and not accounts:
            return None
        if not self.pool.nodes:  # no node registered yet: nothing on any node to restore from
            return None  # (and no object: writing one needs nodes); the first backup holds it
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
            self._inflight.add(seq)
            stamp = new_backup_id(datetime.now(UTC))
        settle = partial(self._settle, seq)
        try:
            body = {
                "format": JOURNAL_FORMAT,
                "writer": self.writer,
                "seq": seq,
                "objects": manifests,
                "removals": removals,
                "versions": versions,
                "care": care,
                "accounts": accounts,
            }
            plaintext = json.dumps(body, separators=(",", ":")).encode()
            self.write_sealed(journal_name(stamp, self.writer, seq), plaintext, "object journal")
        except BaseException:
            settle()
            raise
        self.blobs += 1
        self.objects += len(manifests)
        return settle

    def _settle(self, seq: int) -> None:
        with self._lock:
            self._inflight.discard(seq)

    def write_sealed(self, name: str, plaintext: bytes, what: str) -> None:
        """Seal ``plaintext`` with the recovery key and write it as the named blob ``name`` to
        ``replicas`` live nodes (a node that fails is replaced by the next); raise
        NoQuorumError below ``write_quorum`` copies (those written are removed again)."""
        quorum = self.settings.write_quorum
        blob = self.seal().seal(name, plaintext)
        candidates = choose_targets(list(self.pool.nodes.values()), len(self.pool.nodes))
        targets, spares = candidates[: self.settings.replicas], candidates[self.settings.replicas :]
        if len(targets) < quorum:
            metrics.QUORUM_FAILURES.inc()
            raise NoQuorumError(
                f"only {len(targets)} live storage node(s) for the {what}'s write "
                f"quorum of {quorum}; nothing was acknowledged"
            )
        executor = self._pool()
        held: list[NodeHandle] = []
        while targets:
            futures = [(t, executor.submit(t.client.put_meta, name, blob)) for t in targets]
            failed = 0
            for handle, future in futures:
                try:
                    future.result()
                except NodeFullError as exc:  # full, not failed: it still serves reads
                    self.pool.mark_full(handle.name)
                    failed += 1
                    log.warning("%s blob %s not written to %s: %s", what, name, handle.name, exc)
                except MedshardError as exc:
                    self.pool.mark_failed(handle.name)
                    failed += 1
                    log.warning("%s blob %s not written to %s: %s", what, name, handle.name, exc)
                else:
                    held.append(handle)
            targets, spares = spares[:failed], spares[failed:]  # a copy elsewhere for each
        if len(held) < quorum:
            metrics.QUORUM_FAILURES.inc()
            for handle in held:  # best effort: a manifest without its commit is skipped anyway
                try:
                    handle.client.delete_meta(name)
                except MedshardError:
                    pass
            raise NoQuorumError(
                f"the {what} reached {len(held)} node(s), below the write quorum "
                f"{quorum}; nothing was acknowledged (check `medshard status`)"
            )

    def seal(self) -> BackupSeal:
        if self._seal is None:
            key, created = ensure_recovery_key(self.settings)
            if created:
                log.warning(
                    "created the recovery key %s for the object journal: copy it off this "
                    "machine; restoring a lost home needs it",
                    self.settings.recovery_key_path,
                )
            self._seal = BackupSeal(key)
        return self._seal

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max(self.settings.replicas, 1), thread_name_prefix="journal"
                )
            return self._executor

    # -- trimming -------------------------------------------------------------------------------
    def mark(self) -> JournalMark:
        """Taken just before a backup's snapshot: which blobs that snapshot will hold."""
        with self._lock:
            settled_below = min(self._inflight, default=self._seq)
        before = datetime.now(UTC) - timedelta(seconds=TRIM_SLACK_S)
        return JournalMark(self.writer, settled_below, new_backup_id(before))

    @staticmethod
    def trim(listing: list[NodeBlobs], mark: JournalMark) -> int:
        """Delete, on every listed node, the journal blobs ``mark`` covers; how many went."""
        deleted = 0
        for node in listing:
            try:
                for name in sorted(n for n in node.names if mark.covers(n)):
                    deleted += node.delete(name)
            except MedshardError as exc:
                log.info("journal trim on %s deferred: %s", node.handle.name, exc)
        return deleted

    def stats(self) -> dict[str, Any]:
        with self._lock:
            inflight = len(self._inflight)
        return {"blobs": self.blobs, "objects": self.objects, "in_flight": inflight}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
