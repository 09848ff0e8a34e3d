"""Metadata durability: encrypted, replicated backups of the catalog and keys on the nodes.

Losing the metadata service's disk must not lose the archive: the chunks on the nodes are
ciphertext whose keys (wrapped by the master key) and locations live in the catalog. So the
service regularly writes a *metadata backup*, a consistent snapshot of

- the SQLite catalog (the online backup API: one read transaction, consistent even while
  writers carry on; in memory, so the plaintext catalog never touches a temporary file),
- ``medshard.toml`` (settings, node secret included), and
- the master key file (and ``master.key.new`` during a rotation),

sealed under the recovery key (:mod:`medshard.cluster.backup_format`) and written as named
blobs to ``replicas`` live nodes on distinct sites where possible. Named blobs live outside
the chunk namespace (:mod:`medshard.node.metablobs`), so reconciliation never deletes them
as orphans and scrubbing never flags them; ``medshard restore``
(:mod:`medshard.cluster.metadata_restore`) finds them knowing only the node URLs.

When: :class:`BackupScheduler` (driven by the service's monitor) backs up every
``backup_interval_s`` and soon after a node joins, leaves or changes availability (its copies
may be gone); ``medshard backup`` takes one now. The newest ``backup_keep`` are kept.

Objects acknowledged after a backup are not in it: the write-ahead object journal
(:mod:`medshard.cluster.journal`) holds their manifests on a quorum of nodes, and a restore
replays them. A backup stored on ``write_quorum`` nodes or more trims the journal blobs its
snapshot holds (:meth:`Journal.mark` before the snapshot, :meth:`Journal.trim` after), then
gives what is left of the journal and the audit shipments ``replicas`` copies again where a
lost node took one (:func:`recopy_short_blobs`; a backup follows a node's loss within
``SOON_S``). On
PostgreSQL the catalog is not in the backup (settings and keys still are) and there is no
journal: the production answer there is streaming replication to a hot standby, whose
promotion loses nothing acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from medshard.catalog.audit_rows import head_seq
from medshard.cluster.backup_format import (
    FORMAT_VERSION,
    BackupSeal,
    manifest_name,
    new_backup_id,
    new_recovery_key,
    pack_files,
    parse_audit_shipment_name,
    parse_blob_name,
    parse_journal_name,
    parse_recovery_key,
    part_name,
    split,
)
from medshard.config import CONFIG_NAME, MASTER_KEY_NAME, Settings
from medshard.errors import ConfigError, InsufficientNodesError, MedshardError
from medshard.node.metablobs import MAX_BLOB_BYTES

if TYPE_CHECKING:
    from medshard.cluster.archive import Archive
    from medshard.cluster.nodes import NodeHandle

log = logging.getLogger(__name__)

#: The last backup as this home saw it, for ``medshard status``.
STATE_NAME = "backup-state.json"
#: Environment variable that may carry the recovery key to ``medshard restore``.
RECOVERY_KEY_ENV = "MEDSHARD_RECOVERY_KEY"
_KEY_FILES = (MASTER_KEY_NAME, MASTER_KEY_NAME + ".new")


@dataclass
class BackupReport:
    """One backup written: where, how big, what it holds."""

    backup_id: str
    created_at: str
    bytes: int
    parts: int
    nodes: list[str]
    wanted: int
    catalog: str
    objects: int | None
    instances: int | None
    recovery_key_created: bool = False
    pruned: int = 0
    journal_trimmed: int = 0
    #: Audit shipments (medshard/security/audit_shipping.py) deleted: the backup holds them.
    audit_shipments_trimmed: int = 0
    #: Copies made of journal blobs and audit shipments left with fewer than ``replicas``.
    blobs_recopied: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def copies(self) -> int:
        return len(self.nodes)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "copies": self.copies}


def ensure_recovery_key(settings: Settings) -> tuple[str, bool]:
    """The home's recovery key, made now (mode 0600) if it has none; and whether it was made."""
    path = settings.recovery_key_path
    if not path.exists():
        key = new_recovery_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it just now: use theirs
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(key + "\n")
            return key, True
    key = path.read_text().strip()
    parse_recovery_key(key)  # refuse a damaged file now, not at restore time
    return key, False


def sqlite_snapshot(path: Path) -> tuple[bytes, dict[str, int]]:
    """A consistent image of the SQLite catalog at ``path``, and its object/instance counts.

    The online backup API copies every page inside one read transaction, so the image is
    a committed state even while the service writes; it is built in memory, never on disk.
    """
    if not path.exists():
        raise ConfigError(f"catalog {path} does not exist")
    source = sqlite3.connect(path, timeout=60)
    target = sqlite3.connect(":memory:")
    try:
        source.backup(target)
        counts = {
            table: int(target.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("objects", "instances")
        }
        return target.serialize(), counts
    finally:
        target.close()
        source.close()


def snapshot_files(settings: Settings) -> tuple[dict[str, bytes], str, dict[str, int]]:
    """The home's metadata files, the catalog kind ("sqlite" or the external database's),
    and counts. Key files are read before and after the catalog and the pair retried if a
    master-key rotation moved on in between, so the keys always open the catalog's wraps."""
    url = make_url(settings.database_url)
    kind = url.get_backend_name()
    for _attempt in range(5):
        keys = _read_keys(settings.home)
        files = {CONFIG_NAME: settings.config_path.read_bytes(), **keys}
        counts: dict[str, int] = {}
        if kind == "sqlite" and url.database:
            files["catalog.db"], counts = sqlite_snapshot(Path(url.database))
        if _read_keys(settings.home) == keys:
            return files, kind, counts
    raise ConfigError("the master key kept changing during the backup (a rotation?); retry")


def _read_keys(home: Path) -> dict[str, bytes]:
    return {name: (home / name).read_bytes() for name in _KEY_FILES if (home / name).exists()}


def choose_targets(handles: list[NodeHandle], count: int) -> list[NodeHandle]:
    """Up to ``count`` live nodes for the backup's copies: one per site first, nodes with
    room, active (not draining) and reliable nodes first."""
    live = sorted(
        (h for h in handles if h.available),
        key=lambda h: (h.full, h.admin_state != "active", -h.reliability, h.name),
    )
    chosen: list[NodeHandle] = []
    sites: set[str] = set()
    for handle in live:
        if handle.site not in sites:
            chosen.append(handle)
            sites.add(handle.site)
    chosen += [h for h in live if h not in chosen]
    return chosen[: max(count, 1)]


def take_backup(archive: Archive) -> BackupReport:
    """Snapshot, seal and write one backup to ``replicas`` nodes, then prune old ones.

    Raises
    ------
    InsufficientNodesError
        No live node, or no node took a complete copy.
    """
    settings = archive.settings
    key, key_created = ensure_recovery_key(settings)
    seal = BackupSeal(key)
    mark = archive.journal.mark()  # before the snapshot: the journal blobs it will hold
    with archive.catalog.engine.connect() as conn:
        audit_through = head_seq(conn)  # and the audit events (committed: in the snapshot)
    files, kind, counts = snapshot_files(settings)
    created_at = datetime.now(UTC)
    backup_id = new_backup_id(created_at)
    sealed = seal.seal(f"backup-{backup_id}.bundle", pack_files(files))
    parts = split(sealed, min(settings.chunk_size, MAX_BLOB_BYTES))
    part_hashes = [_sha256(p) for p in parts]
    targets = choose_targets(list(archive.pool.nodes.values()), settings.replicas)
    if not targets:
        raise InsufficientNodesError("no live storage node to hold the metadata backup")
    manifest = {
        "format": FORMAT_VERSION,
        "backup_id": backup_id,
        "created_at": created_at.isoformat(),
        "bytes": len(sealed),
        "parts": [
            {"name": part_name(backup_id, i), "sha256": digest, "size": len(part)}
            for i, (part, digest) in enumerate(zip(parts, part_hashes, strict=True))
        ],
        "files": {name: len(data) for name, data in files.items()},
        "catalog": kind,
        "counts": counts,
        "nodes": [t.name for t in targets],
    }
    sealed_manifest = seal.seal_manifest(backup_id, manifest)

    def write(handle: NodeHandle) -> str | None:
        written: list[str] = []
        try:
            for i, part in enumerate(parts):
                handle.client.put_meta(part_name(backup_id, i), part)
                written.append(part_name(backup_id, i))
            handle.client.put_meta(manifest_name(backup_id), sealed_manifest)  # last: complete
        except MedshardError as exc:
            for name in written:  # best effort: a partial copy is useless
                try:
                    handle.client.delete_meta(name)
                except MedshardError:
                    break
            return f"{handle.name}: {exc}"
        return None

    with ThreadPoolExecutor(len(targets), thread_name_prefix="metadata-backup") as pool:
        outcomes = list(pool.map(write, targets))
    held = [t.name for t, failure in zip(targets, outcomes, strict=True) if failure is None]
    failures = [f for f in outcomes if f is not None]
    if not held:
        raise InsufficientNodesError(f"no node took the metadata backup: {'; '.join(failures)}")
    report = BackupReport(
        backup_id=backup_id,
        created_at=created_at.isoformat(),
        bytes=len(sealed),
        parts=len(parts),
        nodes=held,
        wanted=settings.replicas,
        catalog=kind,
        objects=counts.get("objects"),
        instances=counts.get("instances"),
        recovery_key_created=key_created,
        failures=failures,
    )
    listing = list_blobs(list(archive.pool.nodes.values()))  # once, for all that follows
    report.pruned = prune(listing, settings.backup_keep)
    if kind == "sqlite" and report.copies >= settings.write_quorum:
        report.journal_trimmed = archive.journal.trim(listing, mark)
        report.audit_shipments_trimmed = trim_audit_shipments(listing, audit_through)
    if kind == "sqlite":
        report.blobs_recopied = recopy_short_blobs(listing, settings.replicas, seal)
    save_state(settings, {"last": report.as_dict(), "last_error": None})
    if report.copies < settings.replicas:
        log.warning(
            "metadata backup %s has %d of %d copies", backup_id, report.copies, settings.replicas
        )
    return report


@dataclass
class NodeBlobs:
    """The named blobs one live node holds, as listed once per backup: pruning, both trims
    and the re-copy read it, and each keeps it true (what it deletes or copies)."""

    handle: NodeHandle
    names: set[str]

    def delete(self, name: str) -> int:
        """Delete one blob on this node (raises MedshardError); 1 if it was there."""
        deleted = self.handle.client.delete_meta(name)
        self.names.discard(name)
        return deleted


def list_blobs(handles: list[NodeHandle]) -> list[NodeBlobs]:
    """The named blobs of every live node that answers (one that does not is left out)."""
    listing = []
    for handle in handles:
        if not handle.available:
            continue
        try:
            names = {str(b["name"]) for b in handle.client.list_meta()}
        except MedshardError as exc:
            log.info("blob listing on %s failed: %s", handle.name, exc)
            continue
        listing.append(NodeBlobs(handle, names))
    return listing


def prune(listing: list[NodeBlobs], keep: int) -> int:
    """Delete backups older than the newest ``keep`` complete ones (those with a manifest
    somewhere), on every listed node; returns the blobs deleted. A backup newer than the
    oldest kept one is never touched, so one still being written elsewhere survives."""
    parsed = {
        name: found[0]
        for node in listing
        for name in node.names
        if (found := parse_blob_name(name)) is not None
    }
    complete = sorted({bid for name, bid in parsed.items() if name == manifest_name(bid)})
    if len(complete) <= keep:
        return 0
    oldest_kept = complete[-keep]
    deleted = 0
    for node in listing:
        try:
            for name in sorted(n for n in node.names if n in parsed and parsed[n] < oldest_kept):
                deleted += node.delete(name)
        except MedshardError as exc:
            log.info("backup pruning on %s deferred: %s", node.handle.name, exc)
    return deleted


#: A journal blob younger than this may still be being written (or undone after missing its
#: quorum): it is not re-copied yet.
RECOPY_AFTER_S = 60.0


def _recopied_kind(name: str, settled_before: str) -> bool:
    """Named blobs that exist once: the object journal (settled) and audit shipments. (A
    backup is written again whole, soon after a node leaves, so its parts are not.)"""
    journal = parse_journal_name(name)
    if journal is not None:
        return journal[0] < settled_before
    return parse_audit_shipment_name(name) is not None


def recopy_short_blobs(listing: list[NodeBlobs], replicas: int, seal: BackupSeal) -> int:
    """Give every journal blob and audit shipment ``replicas`` copies on live nodes again,
    copying one that opens under the recovery key (a damaged copy is not spread); how many
    copies were made.

    Run after a backup's trim, so only what the backup does not hold is copied. Without it
    a node lost takes one copy of each with it for good, and the next losses could take an
    acknowledged object's only manifest while the home is gone too.
    """
    settled_before = new_backup_id(datetime.now(UTC) - timedelta(seconds=RECOPY_AFTER_S))
    holders: dict[str, list[NodeBlobs]] = {}
    for node in listing:
        for name in node.names:
            if _recopied_kind(name, settled_before):
                holders.setdefault(name, []).append(node)
    made = 0
    for name, held in sorted(holders.items()):
        missing = replicas - len(held)
        if missing <= 0:
            continue
        blob = _intact_copy(name, held, seal)
        if blob is None:
            log.error("no copy of %s opens under the recovery key; not re-copied", name)
            continue
        spare = {n.handle.name: n for n in listing if n not in held}
        targets = [n.handle for n in spare.values()]
        for target in choose_targets(targets, missing) if targets else []:
            try:
                target.client.put_meta(name, blob)
            except MedshardError as exc:
                log.warning("re-copy of %s to %s failed: %s", name, target.name, exc)
                continue
            spare[target.name].names.add(name)
            made += 1
    if made:
        log.info("re-copied %d journal and audit blob copies lost with their nodes", made)
    return made


def _intact_copy(name: str, held: list[NodeBlobs], seal: BackupSeal) -> bytes | None:
    for node in held:
        try:
            blob = node.handle.client.get_meta(name)
            seal.open(name, blob)
        except (MedshardError, ValueError):
            continue
        return blob
    return None


def trim_audit_shipments(listing: list[NodeBlobs], through_seq: int) -> int:
    """Delete, on every listed node, the audit shipments whose events all are at or below
    ``through_seq`` (a backup holds them); how many went."""
    deleted = 0
    for node in listing:
        try:
            for name in sorted(node.names):
                span = parse_audit_shipment_name(name)
                if span is not None and span[1] <= through_seq:
                    deleted += node.delete(name)
        except MedshardError as exc:
            log.info("audit shipment trim on %s deferred: %s", node.handle.name, exc)
    return deleted


def load_state(settings: Settings) -> dict[str, Any]:
    """What this home knows of its backups: ``last`` (a report) and ``last_error``."""
    path = settings.home / STATE_NAME
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state


#: The backup thread and the audit shipper both merge into the state file.
_STATE_LOCK = threading.Lock()


def save_state(settings: Settings, changes: dict[str, Any]) -> None:
    """Merge ``changes`` into the state file, atomically."""
    with _STATE_LOCK:
        state = {**load_state(settings), **changes}
        path = settings.home / STATE_NAME
        tmp = path.with_name(f".{STATE_NAME}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, path)


def backup_status(settings: Settings) -> dict[str, Any]:
    """The ``backup`` section of ``medshard status``: last backup, its copies, any error."""
    state = load_state(settings)
    last = state.get("last") or {}
    age = None
    if last.get("created_at"):
        age = round(time.time() - datetime.fromisoformat(last["created_at"]).timestamp(), 1)
    return {
        "enabled": settings.backup_interval_s > 0,
        "interval_s": settings.backup_interval_s,
        "recovery_key_in_home": settings.recovery_key_path.exists(),
        "last_backup_id": last.get("backup_id"),
        "last_backup_at": last.get("created_at"),
        "age_s": age,
        "bytes": last.get("bytes"),
        "nodes": last.get("nodes", []),
        "copies": len(last.get("nodes", [])),
        "wanted": last.get("wanted", settings.replicas),
        "objects": last.get("objects"),
        "catalog": last.get("catalog"),
        "last_error": state.get("last_error"),
        # the audit events on the nodes beyond the backup (security/audit_shipping.py)
        "audit_shipped_through_seq": state.get("audit_shipped"),
    }


class BackupScheduler:
    """Decides when the service backs up; the backup itself runs on its own thread so a
    large catalog never delays heartbeats.

    Due every ``backup_interval_s`` since the last success (the state file, so a restarted
    service keeps the rhythm), and :data:`SOON_S` after the set of live nodes changed; a
    failure is retried after :data:`RETRY_S`.
    """

    SOON_S = 30.0
    RETRY_S = 60.0

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.runs = 0
        self.failures = 0
        last = (load_state(archive.settings).get("last") or {}).get("created_at")
        self._next = datetime.fromisoformat(last).timestamp() if last else 0.0
        self._next += archive.settings.backup_interval_s
        self._live: frozenset[str] | None = None
        self._thread: threading.Thread | None = None

    def step(self) -> bool:
        """Start a backup if one is due; True if one was started."""
        interval = self.archive.settings.backup_interval_s
        if interval <= 0 or (self._thread is not None and self._thread.is_alive()):
            return False
        live = frozenset(h.name for h in self.archive.pool.nodes.values() if h.available)
        now = time.time()
        if self._live is not None and live != self._live:
            self._next = min(self._next, now + self.SOON_S)
        self._live = live
        if now < self._next:
            return False
        self._thread = threading.Thread(target=self._run, name="metadata-backup", daemon=True)
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a running backup to finish (service shutdown, tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        settings = self.archive.settings
        try:
            report = take_backup(self.archive)
        except Exception as exc:  # the service must carry on; the error shows in status
            self.failures += 1
            self._next = time.time() + self.RETRY_S
            log.error("metadata backup failed: %s", exc)
            save_state(settings, {"last_error": f"{datetime.now(UTC).isoformat()}: {exc}"})
            return
        self.runs += 1
        self._next = time.time() + settings.backup_interval_s
        if report.recovery_key_created:
            log.warning(
                "created the recovery key %s: copy it off this machine; restoring a lost "
                "home needs it",
                settings.recovery_key_path,
            )

    def stats(self) -> dict[str, Any]:
        return {"runs": self.runs, "failures": self.failures}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
