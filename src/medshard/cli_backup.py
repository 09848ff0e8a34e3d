"""Metadata durability commands of ``medshard`` (access layer): ``backup`` and ``restore``.

``medshard backup`` writes an encrypted backup of the catalog, settings and master key to
the storage nodes now (the service does so every ``backup_interval_s`` on its own);
``medshard restore`` rebuilds a lost home from those backups, given the node names and URLs,
the node secret and the recovery key, and replays the object journal (objects acknowledged
since the backup) onto it. See :mod:`medshard.cluster.metadata_backup`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medshard.cli_security import HomeOpt, JsonOpt, _fail
from medshard.errors import MedshardError

if TYPE_CHECKING:
    from medshard.cluster.archive import Archive, Put
    from medshard.cluster.backup_format import BackupSeal
    from medshard.storage.node_client import NodeClient


def backup(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Write an encrypted backup of the catalog, settings and master key to the nodes now."""
    from medshard.cli import out
    from medshard.cluster.archive import Archive
    from medshard.cluster.metadata_backup import ensure_recovery_key, take_backup

    try:
        with Archive.open(home) as archive:
            report = take_backup(archive)
            key = ensure_recovery_key(archive.settings)[0] if report.recovery_key_created else ""
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    summary = report.as_dict()
    if key:
        summary["recovery_key"] = key
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        out.print(
            f"backup {report.backup_id}: {report.bytes} bytes on {report.copies}/{report.wanted} "
            f"nodes ({', '.join(report.nodes)}); {report.objects} objects in the catalog"
        )
        if report.blobs_recopied:
            out.print(
                f"re-copied {report.blobs_recopied} journal and audit blob copies lost with "
                "their nodes"
            )
        for failure in report.failures:
            out.print(f"[yellow]not written[/yellow] {failure}")
    if key:
        _announce_key(key)


def restore(
    node: Annotated[
        list[str],
        typer.Option("--node", help="NAME=http://host:port of a storage node (repeat)"),
    ],
    recovery_key: Annotated[
        str,
        typer.Option(
            "--recovery-key",
            envvar="MEDSHARD_RECOVERY_KEY",
            help="The recovery key printed by `medshard init`",
            show_default=False,
        ),
    ],
    node_secret: Annotated[
        str,
        typer.Option(
            "--node-secret",
            envvar="MEDSHARD_NODE_SECRET",
            help="The secret the nodes were started with",
            show_default=False,
        ),
    ] = "",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild a lost home (catalog, settings, master key) from the backups on the nodes."""
    from medshard.cli import out
    from medshard.cluster.metadata_restore import parse_node_spec, restore_home
    from medshard.config import resolve_home

    try:
        specs = [parse_node_spec(n) for n in node]
        report = restore_home(
            resolve_home(home),
            specs,
            node_secret,
            recovery_key,
            reingest=reingest_dicom,
            replay_audit=replay_audit_events,
        )
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    out.print(
        f"restored {report.home} from backup {report.backup_id} taken {report.created_at}: "
        f"{report.objects} objects, {report.instances} instances"
    )
    audit = report.audit
    if audit.get("shipments"):
        out.print(
            f"audit log: {audit['restored']} events after the backup's last "
            f"({audit['backup_head']}) appended; the chain now ends at {audit['head']}"
        )
    journal = report.journal
    if journal.get("blobs"):
        out.print(
            f"object journal: {journal['replayed']} acknowledged since replayed, "
            f"{journal['present']} already in the backup, {journal['rederivable']} "
            f"re-derivable skipped, {journal['removed']} removed later, "
            f"{journal['removals_applied']} erasures and study deletions applied, "
            f"{journal['versions_replayed']} metadata-only document versions replayed, "
            f"{journal['care_changes_applied']} care-team changes applied "
            f"({journal['care_changes_skipped']} naming what the backup lacks), "
            f"{journal['accounts_applied']} account changes applied, "
            f"{len(journal['unrecoverable'])} not restored"
        )
    for problem in journal.get("unrecoverable", []):
        out.print(f"[red]not restored[/red] {problem}")
    for warning in report.warnings:
        out.print(f"[yellow]note[/yellow] {warning}")


def reingest_dicom(
    archive: Archive,
    put: Callable[..., Put[None]],
    data: bytes,
    source: str,
    site_id: int | None,
    on_commit: Callable[..., None],
) -> tuple[str, str]:
    """A journaled DICOM object through the ingest pipeline, recorded by ``put`` (restore):
    queued for analysis again where the rules select it (an analysis finished before the
    disk went finds its SR already replayed, by the SR's fixed UID, and only writes its
    finding)."""
    from medshard.api.ingestors import analysed_ingestor

    ingestor = analysed_ingestor(archive, put=put)
    outcome = ingestor.ingest_stream(io.BytesIO(data), source, site_id=site_id, on_commit=on_commit)
    return outcome.status, outcome.reason


def replay_audit_events(
    home: Path, seal: BackupSeal, clients: list[NodeClient], listing: dict[str, set[str]]
) -> dict[str, Any]:
    """The audit events shipped after the backup, appended to the restored chain (restore)."""
    from dataclasses import asdict

    from medshard.security.audit_shipping import replay_shipments

    return asdict(replay_shipments(home, seal, clients, listing))


def _announce_key(key: str) -> None:
    from medshard.cli import err

    err.print(
        "[bold yellow]recovery key[/bold yellow] (shown once; keep it off this machine, "
        f"`medshard restore` needs it): {key}",
        markup=True,
        highlight=False,
    )


def mount(app: typer.Typer) -> None:
    app.command("backup")(backup)
    app.command("restore")(restore)


def announce_new_key(home: Path) -> None:
    """At ``medshard init``: make the recovery key and show it once."""
    from medshard.cluster.metadata_backup import ensure_recovery_key
    from medshard.config import load_settings

    key, created = ensure_recovery_key(load_settings(home))
    if created:
        _announce_key(key)
