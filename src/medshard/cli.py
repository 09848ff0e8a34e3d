"""The ``medshard`` command (access layer). Each command is thin: it opens the archive and calls
the layer that does the work, then prints (``--json`` for machines, rich for people)."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.table import Table

from medshard.config import load_settings, resolve_home
from medshard.console import err, out, progress_bar
from medshard.errors import MedshardError, NotFoundError

if TYPE_CHECKING:
    from medshard.cluster.archive import Archive
    from medshard.security.gate import Gate

app = typer.Typer(help="medshard: regional medical image archive", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print JSON figures", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="Deployment home (default: $MEDSHARD_HOME)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object")]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MEDSHARD_TOKEN",
        help="Bearer token to act for (a service account's API token or an access token)",
        show_default=False,
    ),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@app.command()
def init(
    home: HomeOpt = None,
    db: Annotated[str, typer.Option("--db", help="Catalog URL (default SQLite in home)")] = "",
    replicas: int = 3,
    write_quorum: int = 2,
    chunk_size_mb: Annotated[float, typer.Option("--chunk-size-mb")] = 4.0,
    shards: int = 128,
) -> None:
    """Create a deployment home: configuration, master key (0600) and the catalog schema."""
    from medshard.home import init_home

    try:
        settings, created = init_home(
            resolve_home(home),
            db_url=db,
            replicas=replicas,
            write_quorum=write_quorum,
            chunk_size=int(chunk_size_mb * 1024 * 1024),
            shards=shards,
        )
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    state = "ready" if created else "already initialised; catalog schema brought up to date"
    out.print(f"medshard home {settings.home} {state} (catalog: {_redact(settings.database_url)})")
    from medshard.cli_backup import announce_new_key

    try:
        announce_new_key(settings.home)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive)")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    workers: Annotated[int, typer.Option(help="Files imported in parallel per process")] = 0,
    processes: Annotated[int, typer.Option(help="Importer processes (use the cores)")] = 1,
    token: TokenOpt = None,
    patient: Annotated[
        str | None,
        typer.Option(
            "--patient", help="Store files that are not DICOM as this patient's documents"
        ),
    ] = None,
) -> None:
    """Import DICOM files and folders as the token's account (attributed to its site); with
    --patient, other files (PDF, CDA, FHIR JSON, images, text) become that patient's documents."""
    from medshard.api.ingestors import analysed_ingestor
    from medshard.cluster.archive import Archive
    from medshard.ingest.batch import import_files
    from medshard.security.local import store_access_for, token_caller

    documents: list[dict[str, object]] = []
    if patient:  # the documents first, then the DICOM files as ever
        from medshard.cli_records import split_documents

        paths, documents, refused = split_documents(home, token, patient, paths)

    try:
        archive = Archive.open(home)
        with _gate(archive) as gate:
            gate.store_hook(token_caller(gate, token).principal)  # refuse before any work
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    with archive, progress_bar() as bar:
        task = bar.add_task("importing", total=None)
        report = import_files(
            archive,
            paths,
            access=store_access_for(token or ""),
            make_ingestor=analysed_ingestor,
            workers=workers,
            processes=processes,
            on_total=lambda n: bar.update(task, total=n),
            on_done=lambda _o: bar.advance(task),
        )
    if patient:
        report["rejected"] += refused
        cast(dict[str, object], report)["documents"] = documents
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for rej in report["rejected"]:
        err.print(f"[yellow]rejected[/yellow] {rej['path']}: {rej['reason']}")
    out.print(
        f"imported {len(report['imported'])}, duplicates {len(report['duplicates'])}, "
        f"rejected {len(report['rejected'])}" + (f", documents {len(documents)}" if patient else "")
    )


@app.command()
def get(
    sop: Annotated[str, typer.Option("--sop", help="SOP Instance UID")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the file")],
    home: HomeOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write one stored instance, byte-identical to what was imported (as the token's caller)."""
    from medshard.catalog.instances import study_of_instance
    from medshard.cluster.archive import Archive
    from medshard.security.context import acting_as
    from medshard.security.local import token_caller
    from medshard.security.policy import visible_studies

    try:
        with Archive.open(home) as archive, _gate(archive) as gate:
            caller = token_caller(gate, token)
            with acting_as(caller), archive.catalog.session() as session:
                row = study_of_instance(session, sop, visible_studies(caller.principal))
            if row is None:
                raise NotFoundError(f"no instance with SOP Instance UID {sop}")
            gate.read(caller.principal, "export", patient_pk=row[1], study_uid=row[0], sop_uid=sop)
            key = archive.store.load_key_of_instance(sop)
            _write_object(archive, key, output, near_site=gate.site_of(caller.principal))
    except NotFoundError as exc:
        raise _fail(str(exc), 2) from exc
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"wrote {output}")


def _gate(archive: Archive) -> Gate:
    from medshard.security.gate import Gate

    return Gate(archive)


def _write_object(
    archive: Archive, object_key: str, output: Path, *, near_site: str | None = None
) -> None:
    """Stream an object to a file, atomically (a failed read leaves no partial file), from
    the replicas nearest ``near_site`` (the caller's site)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".part")
    try:
        with open(tmp, "wb") as fh:
            for piece in archive.store.read(object_key, near_site=near_site):
                fh.write(piece)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)


@app.command()
def export(
    study: Annotated[str, typer.Option("--study", help="Study Instance UID")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write into")],
    home: HomeOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write every instance of a study as SERIES_UID/SOP_UID.dcm (as the token's caller)."""
    from medshard.catalog.instances import objects_of_study
    from medshard.cluster.archive import Archive
    from medshard.security.local import token_caller
    from medshard.security.policy import visible_studies

    try:
        with Archive.open(home) as archive, _gate(archive) as gate:
            caller = token_caller(gate, token)
            found = gate.study_visible(caller.principal, study)
            gate.read(caller.principal, "export", patient_pk=found.patient_pk, study_uid=study)
            with archive.catalog.session() as session:
                rows = objects_of_study(session, study, visible_studies(caller.principal))
            if not rows:
                raise _fail(f"no study with Study Instance UID {study}", 2)
            site = gate.site_of(caller.principal)
            for series_uid, sop, object_key in rows:
                target = out_dir / series_uid / f"{sop}.dcm"
                _write_object(archive, object_key, target, near_site=site)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"exported {len(rows)} instance(s) to {out_dir}")


@app.command()
def status(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Nodes, objects, shard spread and under-replicated objects."""
    from medshard.cluster.archive import Archive
    from medshard.cluster.status import cluster_status

    try:
        with Archive.open(home) as archive:
            report = cluster_status(archive)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title="storage nodes")
    for col in ("name", "site", "state", "used", "capacity", "free", "chunks", "url"):
        table.add_column(col)
    table.add_column("rtt/predicted ms")
    for n in report["nodes"]:
        table.add_row(
            n["name"],
            n["site"],
            n["state"] + (", FULL" if n["full"] else ""),
            _size(n["used_bytes"]),
            _size(n["capacity_bytes"]) if n["capacity_bytes"] else "unlimited",
            _size(n["free_bytes"]) if n["free_bytes"] is not None else "?",
            str(n["chunks"]),
            n["url"],
            f"{n['rtt_ms']:.2f}/{n['predicted_rtt_ms']:.2f}",
        )
    out.print(table)
    coords = report["coordinates"]
    out.print(
        f"Vivaldi: service at {coords['service']}; predicted vs measured RTT error median "
        f"{coords['median_rtt_error']}, max {coords['max_rtt_error']}"
    )
    shards = report["shards"]
    out.print(
        f"objects {report['objects']} ({_size(report['stored_bytes'])}), instances "
        f"{report['instances']}, patients {report['patients']}; shards used "
        f"{shards['used']}/{shards['total']} (objects per shard {shards['min_objects']}-"
        f"{shards['max_objects']}); under-replicated objects {report['under_replicated']}"
    )
    comp = report["compaction"]
    out.print(
        f"compaction: {comp['pending_volumes']} volume(s) waiting, {comp['nodes_compacting']} "
        f"node(s) compacting; {_size(comp['reclaimable_bytes'])} reclaimable of "
        f"{_size(comp['dead_bytes'])} dead; {comp['volumes_compacted']} volume(s) compacted, "
        f"{_size(comp['bytes_reclaimed'])} reclaimed since the nodes started"
    )
    backup = report["backup"]
    if backup["last_backup_at"]:
        out.print(
            f"metadata backup {backup['last_backup_at']} ({_size(backup['bytes'] or 0)}) on "
            f"{backup['copies']}/{backup['wanted']} nodes"
            + (f"; last error: {backup['last_error']}" if backup["last_error"] else "")
        )
    else:
        out.print("metadata backup: none yet (`medshard backup`)")
    if backup.get("audit_shipped_through_seq"):
        out.print(f"audit log on the nodes through event {backup['audit_shipped_through_seq']}")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@app.command()
def repair(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Restore every object to k healthy replicas; exits non-zero if it cannot."""
    from medshard.cluster.archive import Archive
    from medshard.cluster.repair import repair as run_repair

    try:
        archive = Archive.open(home)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    with archive, progress_bar() as bar:
        task = bar.add_task("repairing shards", total=archive.settings.shards)
        report = run_repair(archive.store, lambda done, _t: bar.update(task, completed=done))
    summary = {
        "chunks_checked": report.chunks_checked,
        "chunks_repaired": report.chunks_repaired,
        "copies_made": report.copies_made,
        "corrupt_replaced": report.corrupt_replaced,
        "extras_removed": report.extras_removed,
        "failures": report.failures,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        out.print(
            f"checked {report.chunks_checked} chunks, repaired {report.chunks_repaired} "
            f"({report.copies_made} copies, {report.corrupt_replaced} corrupt replaced, "
            f"{report.extras_removed} extra removed)"
        )
    if not report.ok:
        for failure in report.failures[:20]:
            err.print(f"[red]cannot repair[/red] {failure}")
        raise typer.Exit(1)


@app.command()
def serve(
    home: HomeOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    dimse_port: Annotated[int | None, typer.Option("--dimse-port")] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM)")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="Private key of --tls-cert (PEM)")
    ] = None,
) -> None:
    """Run the application service (REST, DICOMweb, DIMSE, metrics)."""
    from medshard.api.server import run_service
    from medshard.security.tls import check_pair, resolve

    try:
        settings = load_settings(home)
        if host:
            settings.api_host = host
        if port:
            settings.api_port = port
        if dimse_port is not None:
            settings.dimse_port = dimse_port
        if tls_cert is not None or tls_key is not None:
            settings.tls_cert = str(tls_cert.resolve()) if tls_cert else ""
            settings.tls_key = str(tls_key.resolve()) if tls_key else ""
        check_pair(
            resolve(settings.home, settings.tls_cert),
            resolve(settings.home, settings.tls_key),
            "HTTPS (--tls-cert/--tls-key, tls_cert/tls_key)",
        )
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    run_service(settings)


tls_app = typer.Typer(help="TLS certificates for HTTPS and DICOM TLS", no_args_is_help=True)
app.add_typer(tls_app, name="tls")


@tls_app.command("self-signed")
def tls_self_signed(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for server.crt and server.key")],
    hosts: Annotated[
        list[str] | None, typer.Option("--host", help="Name or IP it is valid for (repeatable)")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days")] = 365,
    as_json: JsonOpt = False,
) -> None:
    """Make a self-signed certificate and key (for tests and demos; key file mode 0600)."""
    from medshard.security.tls import LOOPBACK_HOSTS, write_self_signed

    pair = write_self_signed(out_dir, hosts=hosts or LOOPBACK_HOSTS, days=days)
    if as_json:
        print(json.dumps({"cert": str(pair.cert), "key": str(pair.key)}))
        return
    out.print(f"certificate {pair.cert}\nkey         {pair.key}")
    out.print(f"serve with: medshard serve --tls-cert {pair.cert} --tls-key {pair.key}")


@app.command("dimse")
def dimse(
    home: HomeOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="DIMSE port (0: any free port)")] = None,
) -> None:
    """Run only the DIMSE service (C-ECHO/STORE/FIND/MOVE/GET) until SIGTERM or Ctrl-C."""
    from medshard.api.dimse.scp import DimseServer, serve_forever

    def ready(server: DimseServer) -> None:
        out.print(f"DIMSE {server.ae_title} on {server.host}:{server.port} (Ctrl-C to stop)")

    try:
        serve_forever(load_settings(home), host=host, port=port, on_ready=ready)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc


@app.command()
def demo(
    home: Annotated[Path, typer.Option(help="Demo home")] = Path("medshard-demo"),
    port: Annotated[int, typer.Option(help="API port")] = 8080,
    nodes: Annotated[int, typer.Option(help="Storage-node processes")] = 4,
    tls: Annotated[bool, typer.Option("--tls", help="Serve HTTPS (self-signed pair)")] = False,
) -> None:
    """Start a local deployment with node processes, sample data and the service."""
    from medshard.demo import run_demo

    try:
        run_demo(home.resolve(), port=port, node_count=nodes, tls=tls)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc


@bench_app.command("ingest")
def bench_ingest(
    as_json: JsonOpt = False,
    instances: Annotated[int, typer.Option(help="Generated instances to ingest")] = 400,
    big_file_mb: Annotated[int, typer.Option("--big-file-mb")] = 1024,
    nodes: Annotated[int, typer.Option(help="Storage nodes")] = 4,
) -> None:
    """Ingest throughput beside the disk's raw durable write speed; peak RSS of a big file."""
    from medshard.bench.ingest import run_ingest_bench

    result = run_ingest_bench(instances=instances, big_file_mb=big_file_mb, nodes=nodes)
    print(json.dumps(result, indent=2 if not as_json else None))


@bench_app.command("catalog")
def bench_catalog(
    as_json: JsonOpt = False,
    instances: Annotated[int, typer.Option(help="Instances to record")] = 1000,
    db: Annotated[
        str, typer.Option(help="Catalog URL (PostgreSQL: a scratch database is made beside it)")
    ] = "",
    threads: Annotated[int, typer.Option(help="Concurrent writers")] = 8,
    queries: Annotated[int, typer.Option(help="QIDO-RS searches per kind")] = 200,
    prefill: Annotated[
        int, typer.Option(help="Instances bulk-inserted between two record-path runs (scale)")
    ] = 0,
) -> None:
    """Catalog ingest rate and QIDO-RS latency at scale (node I/O left out)."""
    from medshard.bench.catalog import run_catalog_bench

    result = run_catalog_bench(
        instances=instances, db=db or None, threads=threads, queries=queries, prefill=prefill
    )
    print(json.dumps(result, indent=2 if not as_json else None))


@bench_app.command("nodeput")
def bench_nodeput(
    as_json: JsonOpt = False,
    chunks: Annotated[int, typer.Option(help="Chunks per micro run")] = 1500,
    writers: Annotated[int, typer.Option(help="Concurrent writer threads")] = 16,
    rounds: Annotated[int, typer.Option(help="Runs of each mode (median)")] = 2,
    instances: Annotated[int, typer.Option(help="Also the service path, N per run")] = 0,
) -> None:
    """CPU per chunk copy to storage nodes: single PUTs beside batched ones."""
    from medshard.bench.nodeput import run_nodeput_bench

    result = run_nodeput_bench(chunks=chunks, writers=writers, rounds=rounds, instances=instances)
    print(json.dumps(result, indent=2 if not as_json else None))


@bench_app.command("striping")
def bench_striping(
    as_json: JsonOpt = False,
    size_mb: Annotated[int, typer.Option("--size-mb", help="Object size")] = 1024,
    nodes: Annotated[int, typer.Option(help="Storage nodes of the striped cluster")] = 4,
    link_mb_s: Annotated[
        float, typer.Option("--link-mb-s", help="Each node's emulated link, MB/s (0: none)")
    ] = 125.0,
) -> None:
    """Read rate of one large object striped over nodes vs held by one node."""
    from medshard.bench.striping import run_striping_bench

    result = run_striping_bench(size_mb=size_mb, nodes=nodes, link_mb_s=link_mb_s)
    print(json.dumps(result, indent=2 if not as_json else None))


@bench_app.command("dimse")
def bench_dimse(
    as_json: JsonOpt = False,
    input_dir: Annotated[
        Path | None, typer.Option("--input", help="Folder of DICOM files (default: generated)")
    ] = None,
    instances: Annotated[int, typer.Option(help="Generated instances without --input")] = 196,
    nodes: Annotated[int, typer.Option(help="Storage nodes")] = 4,
) -> None:
    """storescu (dcmtk) into medshard and Orthanc: one association, then four at once."""
    from medshard.bench.dimse import run_dimse_bench

    result = run_dimse_bench(input_dir=input_dir, instances=instances, nodes=nodes)
    print(json.dumps(result, indent=2 if not as_json else None))


@bench_app.command("dicomweb")
def bench_dicomweb(
    as_json: JsonOpt = False,
    instances: Annotated[int, typer.Option(help="Generated MR instances (128-450 KB)")] = 600,
    nodes: Annotated[int, typer.Option(help="Storage nodes")] = 4,
    clients: Annotated[int, typer.Option(help="Concurrent STOW/WADO clients")] = 8,
) -> None:
    """STOW-RS, QIDO-RS and WADO-RS figures for medshard beside Orthanc (when installed)."""
    from medshard.bench.dicomweb import run_dicomweb_bench

    result = run_dicomweb_bench(instances=instances, nodes=nodes, clients=clients)
    print(json.dumps(result, indent=2 if not as_json else None))


@bench_app.command("web")
def bench_web(
    as_json: JsonOpt = False,
    runs: Annotated[int, typer.Option(help="Openings of the study, each cold then warm")] = 3,
    slices: Annotated[int, typer.Option(help="Slices of the generated MR series")] = 196,
    nodes: Annotated[int, typer.Option(help="Storage nodes")] = 4,
) -> None:
    """Viewer in headless chromium: time to the first image drawn and to every slice loaded."""
    from medshard.bench.web import run_web_bench

    try:
        result = run_web_bench(slices=slices, runs=runs, nodes=nodes)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    print(json.dumps(result, indent=2 if not as_json else None))


@bench_app.command("records")
def bench_records(
    as_json: JsonOpt = False,
    documents: Annotated[int, typer.Option(help="Documents through the write path")] = 300,
    resources: Annotated[int, typer.Option(help="DocumentReferences in the catalog")] = 100_000,
    searches: Annotated[int, typer.Option(help="FHIR searches per kind")] = 200,
    db: Annotated[str, typer.Option(help="Catalog URL (default: SQLite in a scratch home)")] = "",
) -> None:
    """Documents stored per second, FHIR search p50/p99, sensor ingest and a day's query."""
    from medshard.bench.records import run_records_bench

    result = run_records_bench(documents_n=documents, resources=resources, searches=searches, db=db)
    print(json.dumps(result, indent=2 if not as_json else None))


@bench_app.command("ai")
def bench_ai(
    as_json: JsonOpt = False,
    images: Annotated[int, typer.Option(help="Timed single-image runs")] = 300,
    batch: Annotated[int, typer.Option(help="Images per throughput run")] = 256,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
) -> None:
    """CNN latency (p50/p99) and throughput from DICOM bytes, beside the paper's figures."""
    from medshard.bench.ai import run_ai_bench

    try:
        result = run_ai_bench(images=images, batch=batch, device=device)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    print(json.dumps(result, indent=2 if not as_json else None))


def _mount_security() -> None:
    from medshard.cli_security import mount

    mount(app)


def _mount_optional() -> None:
    try:
        from medshard.analysis.cli import ai_app
    except ImportError as exc:
        missing = str(exc)
        ai_missing = typer.Typer(help="CNN analysis (needs `pip install medshard[ai]`)")

        @ai_missing.callback(invoke_without_command=True)
        def _unavailable() -> None:
            raise _fail(f"CNN analysis is not installed ({missing}): pip install 'medshard[ai]'")

        app.add_typer(ai_missing, name="ai")
        return
    app.add_typer(ai_app, name="ai")


def _mount_records() -> None:
    from medshard.cli_records import mount

    mount(app)


def _mount_cluster() -> None:
    from medshard.cli_cluster import mount

    mount(app)


def _mount_backup() -> None:
    from medshard.cli_backup import mount

    mount(app)


_mount_optional()
_mount_security()
_mount_records()
_mount_cluster()
_mount_backup()


def main() -> None:
    warnings.filterwarnings("ignore", module="pydicom")  # lenient parsing of real-world files
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.basicConfig(
        level=os.environ.get("MEDSHARD_LOG", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    app()
