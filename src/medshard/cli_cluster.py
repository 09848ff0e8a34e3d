"""The cluster commands of ``medshard`` (access layer): sites, nodes, simulation.

``medshard site add|list`` and ``medshard node add|drain|undrain|remove|weight|list`` change the
topology in the catalog as the host operator (see :mod:`medshard.security.local`), each change
audited; ``medshard node --name N --site S --port P --data D`` still runs a storage node, and
``medshard node compact`` has nodes reclaim the space of deleted chunks now.
Data moves in the background (the service's monitor); ``node drain --wait`` and
``node rebalance --wait`` (after nodes are added or re-weighted) move it here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medshard.cli_security import HomeOpt, JsonOpt, _fail, _operator, _record
from medshard.errors import MedshardError

site_app = typer.Typer(help="Sites: hospitals, labs, rural health centres", no_args_is_help=True)
node_app = typer.Typer(
    help="Storage nodes: run one (--name ...), or add|drain|remove|weight|compact|list",
    invoke_without_command=True,
)


def _print(rows: list[dict[str, Any]], columns: list[str], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from medshard.cli import out

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    out.print(table)


@site_app.command("add")
def site_add(
    name: str,
    kind: Annotated[str, typer.Option(help="hospital, lab or rural")] = "hospital",
    region: Annotated[str | None, typer.Option(help="Region (cluster) of the site")] = None,
    lat: Annotated[float | None, typer.Option(help="Latitude (degrees)")] = None,
    lon: Annotated[float | None, typer.Option(help="Longitude (degrees)")] = None,
    home: HomeOpt = None,
) -> None:
    """Add a site, or change its kind, region or location."""
    from medshard.cluster import topology

    with _operator(home) as caller, caller.gate.catalog.transaction() as session:
        try:
            topology.add_site(session, name, kind=kind, region=region, latitude=lat, longitude=lon)
        except MedshardError as exc:
            raise _fail(str(exc)) from exc
        _record(caller, session, "site-add", f"{name} {kind} {region or ''}".strip())
    print(f"site {name} ({kind}) saved")


@site_app.command("list")
def site_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every site with its kind, region, location and node count."""
    from medshard.cluster import topology

    with _operator(home) as caller, caller.gate.catalog.session() as session:
        rows = topology.list_sites(session)
    _print(rows, ["name", "kind", "region", "latitude", "longitude", "nodes"], as_json, "sites")


@node_app.callback()
def node_main(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Run a node: its unique name")] = None,
    site: Annotated[str | None, typer.Option(help="Site (hospital) the node is at")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    data: Annotated[Path | None, typer.Option(help="Directory for the chunk volumes")] = None,
    home: HomeOpt = None,
    host: str = "127.0.0.1",
    capacity_gb: Annotated[float, typer.Option("--capacity-gb")] = 0.0,
) -> None:
    """Run a storage-node daemon (with --name, --site, --port, --data) and register it."""
    if ctx.invoked_subcommand is not None:
        return
    if not (name and site and port and data):
        print(ctx.get_help())
        raise typer.Exit(0 if name is None else 2)
    from medshard.catalog.db import Catalog
    from medshard.cluster.nodes import register_node
    from medshard.config import load_settings
    from medshard.node.server import run_node

    try:
        settings = load_settings(home)
        capacity = int(capacity_gb * 2**30)
        catalog = Catalog(settings.database_url)
        register_node(
            catalog, name=name, url=f"http://{host}:{port}", site=site, capacity_bytes=capacity
        )
        catalog.dispose()
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    run_node(
        name=name,
        site=site,
        port=port,
        data_dir=data,
        secret=settings.node_secret,
        capacity_bytes=capacity,
        host=host,
    )


@node_app.command("add")
def node_add(
    name: str,
    url: Annotated[str, typer.Option(help="http://host:port of the running node")],
    site: Annotated[str, typer.Option(help="Site the node is at")],
    capacity_gb: Annotated[float, typer.Option("--capacity-gb")] = 0.0,
    weight: Annotated[float, typer.Option(help="Capacity weight; 0 = from capacity")] = 0.0,
    home: HomeOpt = None,
) -> None:
    """Register a node; new copies start landing on it at once."""
    from medshard.cluster import topology

    with _operator(home) as caller, caller.gate.catalog.transaction() as session:
        try:
            topology.add_node(
                session,
                name,
                url=url,
                site=site,
                capacity_bytes=int(capacity_gb * 2**30),
                weight=weight,
            )
        except MedshardError as exc:
            raise _fail(str(exc)) from exc
        _record(caller, session, "node-add", f"{name} {site} {url}")
    print(f"node {name} added at {site}")


@node_app.command("weight")
def node_weight(name: str, weight: float, home: HomeOpt = None) -> None:
    """Set a node's capacity weight (0 = derived from its capacity)."""
    _change(home, name, "node-weight", lambda t, s: t.set_weight(s, name, weight), f"{weight}")
    print(f"node {name} weight {weight}")


@node_app.command("drain")
def node_drain(
    name: str,
    wait: Annotated[bool, typer.Option(help="Move the data here and now, then return")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move every copy off a node (copy, verify, switch, delete), then mark it drained."""
    _change(home, name, "node-drain", lambda t, s: t.drain(s, name), "")
    if not wait:
        print(f"node {name} draining; the service moves its data (see `medshard node list`)")
        return
    from medshard.cluster.archive import Archive
    from medshard.cluster.deletions import drain_deletions
    from medshard.cluster.rebalance import RateLimiter, drain_step

    moved = 0
    start = time.monotonic()
    try:
        with Archive.open(home) as archive:
            limiter = RateLimiter(archive.settings.rebalance_bytes_per_s)
            while True:
                report = drain_step(archive, limiter)
                moved += report.moved
                if name in report.drained:
                    break
                if report.failures and not report.moved:
                    raise _fail("; ".join(report.failures[:3]))
            drain_deletions(archive)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc
    result = {"node": name, "moved": moved, "seconds": round(time.monotonic() - start, 3)}
    print(json.dumps(result) if as_json else f"node {name} drained: {moved} copies moved")


@node_app.command("rebalance")
def node_rebalance(
    wait: Annotated[bool, typer.Option(help="Move the data here and now, then return")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move hash-placed copies to where placement puts them now (after nodes were added or
    re-weighted); copies serving a care site stay. Without --wait, count what would move
    (the service moves it in the background after every topology change)."""
    from medshard.cluster.deletions import drain_deletions
    from medshard.cluster.rebalance import RateLimiter, Rebalancer

    start = time.monotonic()
    with _operator(home) as caller:
        archive = caller.gate.archive
        try:
            archive.pool.probe()  # moves need to know which nodes are up now
            limiter = RateLimiter(archive.settings.rebalance_bytes_per_s)
            report = Rebalancer(archive).run_pass(limiter, dry_run=not wait)
            if wait:
                drain_deletions(archive)
        except MedshardError as exc:
            raise _fail(str(exc)) from exc
        if wait:
            with caller.gate.catalog.transaction() as session:
                _record(caller, session, "node-rebalance", f"{report.moved} copies moved")
    if report.failures and not report.moved:
        raise _fail("; ".join(report.failures[:3]))
    result = {
        "moved" if wait else "misplaced": report.moved,
        "bytes": report.bytes_moved,
        "failures": len(report.failures),
        "seconds": round(time.monotonic() - start, 3),
    }
    if as_json:
        print(json.dumps(result))
    elif wait:
        print(f"rebalanced: {report.moved} copies moved")
    else:
        print(f"{report.moved} copies misplaced; the service moves them (or use --wait)")


@node_app.command("compact")
def node_compact(
    names: Annotated[list[str] | None, typer.Argument(help="Nodes (default: every node)")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Compact volumes this share (0-1) reclaimable; default: the node's"),
    ] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Have nodes compact their volumes now, in the background at their own rate limit
    (`medshard status` shows the volumes still waiting and the space reclaimed)."""
    with _operator(home) as caller:
        pool = caller.gate.archive.pool
        try:
            handles = [pool.get(n) for n in names] if names else list(pool.nodes.values())
        except MedshardError as exc:
            raise _fail(str(exc)) from exc
        started: dict[str, Any] = {}
        for handle in handles:
            try:
                started[handle.name] = handle.client.compact(threshold)["pending_volumes"]
            except MedshardError as exc:
                started[handle.name] = f"not started: {exc}"
        with caller.gate.catalog.transaction() as session:
            _record(caller, session, "node-compact", " ".join(started))
    if as_json:
        print(json.dumps({"pending_volumes": started}))
        return
    for name, pending in started.items():
        what = f"compacting ({pending} volumes due)" if isinstance(pending, int) else pending
        print(f"node {name}: {what}")


@node_app.command("undrain")
def node_undrain(name: str, home: HomeOpt = None) -> None:
    """Make a draining or drained node take new copies again."""
    _change(home, name, "node-undrain", lambda t, s: t.undrain(s, name), "")
    print(f"node {name} active")


@node_app.command("remove")
def node_remove(
    name: str,
    force: Annotated[bool, typer.Option(help="Forget a dead node's copies")] = False,
    home: HomeOpt = None,
) -> None:
    """Remove a drained node (or, with --force, a dead one: repair rebuilds its copies)."""
    forgotten: list[int] = []
    _change(
        home,
        name,
        "node-remove",
        lambda t, s: forgotten.append(t.remove(s, name, force=force)),
        "force" if force else "",
    )
    print(f"node {name} removed" + (f"; {forgotten[0]} copies to rebuild" if forgotten[0] else ""))


@node_app.command("list")
def node_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Nodes with site, state, weight, reliability, copies and coordinates."""
    from medshard.cluster import topology

    with _operator(home) as caller, caller.gate.catalog.session() as session:
        rows = topology.list_nodes(session)
    cols = ["name", "site", "state", "admin_state", "weight", "reliability", "copies", "rtt_ms"]
    _print(rows, cols, as_json, "storage nodes")


def _change(home: Path | None, name: str, action: str, change: Any, detail: str) -> None:
    from medshard.cluster import topology

    with _operator(home) as caller, caller.gate.catalog.transaction() as session:
        try:
            change(topology, session)
        except MedshardError as exc:
            raise _fail(str(exc)) from exc
        _record(caller, session, action, f"{name} {detail}".strip())


def simulate(
    nodes: Annotated[int, typer.Option(help="Storage nodes")] = 2000,
    sites: Annotated[int, typer.Option(help="Sites")] = 300,
    patients: Annotated[int, typer.Option(help="Patients")] = 1_000_000,
    files_per_patient: Annotated[int, typer.Option("--files-per-patient")] = 20,
    replicas: Annotated[int, typer.Option(help="k")] = 3,
    seed: int = 1,
    as_json: JsonOpt = False,
) -> None:
    """Run the placement code over a synthetic region (no I/O) and print its figures."""
    from medshard.cluster.simulate import SimulationConfig, run_simulation

    config = SimulationConfig(
        nodes=nodes,
        sites=sites,
        patients=patients,
        files_per_patient=files_per_patient,
        replicas=replicas,
        seed=seed,
    )
    result = run_simulation(config)
    print(json.dumps(result, indent=None if as_json else 2))


def mount(app: typer.Typer) -> None:
    """Add the cluster commands (``node`` both runs a node and administers nodes)."""
    app.add_typer(site_app, name="site")
    app.add_typer(node_app, name="node")
    app.command("simulate")(simulate)
