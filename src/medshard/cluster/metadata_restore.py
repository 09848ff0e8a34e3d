"""Rebuilding a lost metadata service's home from the backups on the storage nodes.

What an operator still has after losing the service's disk: the storage nodes (each
started with ``--name`` and the node secret in its environment), and the recovery key
printed by ``medshard init`` (see :mod:`medshard.cluster.backup_format`). That is all
:func:`restore_home` needs: it lists the named blobs of every node it is given, takes the
newest backup whose manifest opens with the recovery key and whose parts (each checked
against the manifest's SHA-256) can all be fetched from some node, and writes the catalog,
settings and master key into a new home. The catalog's records of nodes whose URL changed
are updated to the URLs given, and the schema is migrated to this version.

Objects acknowledged after that backup was taken are not in it, but their manifests are in
the write-ahead object journal on the nodes: :func:`restore_home` then replays it
(:mod:`medshard.cluster.journal_replay`), so they are named again before any service runs
on the new home (whose reconciler would otherwise delete their chunks as orphans after
``orphan_grace_s``). The report counts the journaled objects replayed, skipped as present
in the backup or re-derivable (thumbnails), and those it could not restore, with why.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medshard.catalog.db import Catalog, migrate
from medshard.catalog.topology_rows import set_node_url
from medshard.cluster.backup_format import BackupSeal, manifest_name, parse_blob_name, unpack_files
from medshard.cluster.journal_replay import DicomReingest, replay_journal
from medshard.config import CONFIG_NAME, load_settings
from medshard.errors import (
    ConfigError,
    CryptoError,
    InvalidInputError,
    MedshardError,
    NotFoundError,
    StorageError,
)
from medshard.storage.node_client import NodeClient


@dataclass
class RestoreReport:
    home: str
    backup_id: str
    created_at: str
    catalog: str
    objects: int | None
    instances: int | None
    files: list[str]
    nodes_answered: list[str]
    nodes_unreachable: list[str]
    node_urls_updated: list[str] = field(default_factory=list)
    skipped_backups: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The object journal replayed after the backup (see journal_replay.ReplayReport).
    journal: dict[str, Any] = field(default_factory=dict)
    #: The audit events shipped after the backup, appended (see security/audit_shipping.py).
    audit: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Appends the audit events shipped to the nodes after the backup to the restored catalog:
#: (home, seal, clients, listing) -> a report (``problems``: where the chain stopped).
AuditReplayer = Callable[[Path, BackupSeal, list[NodeClient], dict[str, set[str]]], dict[str, Any]]


def parse_node_spec(text: str) -> tuple[str, str]:
    """``NAME=URL`` -> (name, url). The name is needed: requests are signed for it."""
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith("http://"):
        raise InvalidInputError(
            f"--node {text!r}: give NAME=http://host:port, NAME being the node's --name "
            "(requests to a node are signed for its name)"
        )
    return name.strip(), url.strip()


def restore_home(
    home: Path,
    nodes: list[tuple[str, str]],
    node_secret: str,
    recovery_key: str,
    *,
    timeout_s: float = 30.0,
    reingest: DicomReingest | None = None,
    replay_audit: AuditReplayer | None = None,
) -> RestoreReport:
    """Write a new home at ``home`` from the newest usable backup on ``nodes``, then append
    the audit events shipped since (``replay_audit``, from the security layer) and replay
    the object journal onto it (DICOM objects through ``reingest``; without it they are
    reported as not restored).

    Raises
    ------
    ConfigError
        ``home`` already holds a deployment, or no node secret was given.
    InvalidInputError
        The recovery key or a node spec is malformed.
    StorageError
        No node answered, or no backup could be fetched whole.
    NotFoundError
        The nodes answered but hold no backup.
    CryptoError
        Backups exist but none opens with this recovery key.
    """
    if (home / CONFIG_NAME).exists() or (home / "catalog.db").exists():
        raise ConfigError(f"{home} already holds a medshard home: restore into a new directory")
    if not node_secret:
        raise ConfigError(
            "the node secret is needed to reach the nodes: pass --node-secret or set "
            "MEDSHARD_NODE_SECRET (the nodes were started with it)"
        )
    if not nodes:
        raise InvalidInputError("name at least one storage node (--node NAME=URL)")
    seal = BackupSeal(recovery_key)
    clients = [NodeClient(name, url, node_secret, timeout_s) for name, url in nodes]
    try:
        listing, unreachable = _list(clients)
        manifests = sorted(
            {
                parsed[0]
                for names in listing.values()
                for name in names
                if (parsed := parse_blob_name(name)) and parsed[1] == "manifest"
            },
            reverse=True,
        )
        if not manifests:
            raise NotFoundError(
                f"no metadata backup on {', '.join(sorted(listing))}: was `medshard backup` "
                "(or the service, every backup_interval_s) ever run against these nodes?"
            )
        problems: list[tuple[str, MedshardError]] = []
        for backup_id in manifests:
            try:
                manifest, files = _fetch(seal, backup_id, clients, listing)
                break
            except (CryptoError, StorageError) as exc:
                problems.append((backup_id, exc))
        else:
            detail = "; ".join(f"{bid}: {exc}" for bid, exc in problems[:3])
            if all(isinstance(exc, CryptoError) for _b, exc in problems):
                raise CryptoError(
                    f"no backup opens with this recovery key (wrong key?): {detail}"
                ) from problems[0][1]
            raise StorageError(f"no backup could be read whole: {detail}") from problems[0][1]
        report = _restored(home, nodes, recovery_key, backup_id, manifest, files)
        report.nodes_answered, report.nodes_unreachable = sorted(listing), unreachable
        report.skipped_backups = [f"{bid}: {exc}" for bid, exc in problems]
        if "catalog.db" in files and replay_audit is not None:
            audit = replay_audit(home, seal, clients, listing)
            report.audit = audit
            for problem in audit.get("problems", []):
                report.warnings.append(f"audit events after the backup: {problem}")
        if "catalog.db" in files:
            replayed = replay_journal(home, seal, clients, listing, reingest)
            report.journal = asdict(replayed)
            if replayed.unrecoverable:
                report.warnings.append(
                    f"{len(replayed.unrecoverable)} journaled object(s) acknowledged after "
                    f"{report.created_at} could not be restored: see journal.unrecoverable"
                )
    finally:
        for client in clients:
            client.close()
    return report


def _restored(
    home: Path,
    nodes: list[tuple[str, str]],
    recovery_key: str,
    backup_id: str,
    manifest: dict[str, Any],
    files: dict[str, bytes],
) -> RestoreReport:
    """Write the backup's files into the new home; the report so far."""
    report = RestoreReport(
        home=str(home),
        backup_id=backup_id,
        created_at=str(manifest["created_at"]),
        catalog=str(manifest["catalog"]),
        objects=manifest.get("counts", {}).get("objects"),
        instances=manifest.get("counts", {}).get("instances"),
        files=sorted(files),
        nodes_answered=[],
        nodes_unreachable=[],
    )
    _write_home(home, files, recovery_key, report)
    report.node_urls_updated = _update_node_urls(home, nodes)
    return report


def _list(clients: list[NodeClient]) -> tuple[dict[str, set[str]], list[str]]:
    listing: dict[str, set[str]] = {}
    unreachable: list[str] = []
    for client in clients:
        try:
            listing[client.name] = {str(b["name"]) for b in client.list_meta()}
        except MedshardError as exc:
            unreachable.append(f"{client.name}: {exc}")
    if not listing:
        raise StorageError(f"no storage node answered: {'; '.join(unreachable)}")
    return listing, unreachable


def _fetch(
    seal: BackupSeal, backup_id: str, clients: list[NodeClient], listing: dict[str, set[str]]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and files of one backup, each blob from the first node with a good copy."""

    def holders(name: str) -> list[NodeClient]:
        return [c for c in clients if name in listing.get(c.name, set())]

    manifest: dict[str, Any] | None = None
    error: MedshardError = NotFoundError(f"no copy of {manifest_name(backup_id)}")
    for client in holders(manifest_name(backup_id)):
        try:
            manifest = seal.open_manifest(backup_id, client.get_meta(manifest_name(backup_id)))
            break
        except MedshardError as exc:
            error = exc
            if isinstance(exc, CryptoError) and "another recovery key" in str(exc):
                raise  # every copy will say the same
    if manifest is None:
        raise error if isinstance(error, CryptoError) else StorageError(str(error))
    pieces: list[bytes] = []
    for part in manifest["parts"]:
        for client in holders(part["name"]):
            try:
                data = client.get_meta(part["name"])
            except MedshardError:
                continue
            if hashlib.sha256(data).hexdigest() == part["sha256"]:
                pieces.append(data)
                break
        else:
            raise StorageError(f"no reachable node has a good copy of {part['name']}")
    bundle = seal.open(f"backup-{backup_id}.bundle", b"".join(pieces))
    return manifest, unpack_files(bundle)


def _write_home(
    home: Path, files: dict[str, bytes], recovery_key: str, report: RestoreReport
) -> None:
    """Every file 0600 (settings hold the node secret, the catalog holds patient data)."""
    home.mkdir(parents=True, exist_ok=True)
    for name, data in {**files, "recovery.key": (recovery_key.strip() + "\n").encode()}.items():
        fd = os.open(home / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    settings = load_settings(home)
    if "catalog.db" in files and settings.db_url:
        report.warnings.append(f"catalog moved from {settings.db_url} into the home")
        settings.db_url = ""
        settings.save()
    if "catalog.db" in files:
        migrate(settings.database_url)
    else:
        report.warnings.append(
            f"the catalog ({report.catalog}) is not in the backup: promote its standby "
            "(streaming replication), then run `medshard init` on this home to migrate it"
        )
    if "master.key" not in files:
        report.warnings.append(
            "the master key was not in the backup (it came from MEDSHARD_MASTER_KEY): "
            "set that variable again before starting the service"
        )
    for label, value in (("tls_cert", settings.tls_cert), ("tls_key", settings.tls_key)):
        if value and not (home / value).exists():
            report.warnings.append(f"{label} {value} is not in the backup: put it back")


def _update_node_urls(home: Path, nodes: list[tuple[str, str]]) -> list[str]:
    """Point the catalog's node rows at the URLs the operator gave (nodes may have moved)."""
    settings = load_settings(home)
    if not settings.database_url.startswith("sqlite"):
        return []
    catalog = Catalog(settings.database_url)
    changed: list[str] = []
    try:
        with catalog.transaction() as session:
            for name, url in nodes:
                if set_node_url(session, name, url):
                    changed.append(name)
    finally:
        catalog.dispose()
    return changed
