"""Shared fixtures: real deployments with real storage-node processes, on SQLite or PostgreSQL.

``deployment`` starts a home plus four node processes over three sites (k=3, quorum 2) and
registers them; tests drive it through the real CLI (in-process via typer's runner) and
inject faults for real: kill -9 a node process, flip bytes in a node's files on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medshard.catalog.db import Catalog
from medshard.cli import app
from medshard.cluster.nodes import register_node
from medshard.config import Settings, load_settings
from medshard.node.launcher import NodeProcess, free_port, start_node_process

PG_ADMIN_URL = os.environ.get("MEDSHARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SITES = ["st-marys", "st-marys", "city-general", "rural-clinic"]


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # report why, below
        return str(exc)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    reason = _pg_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is required in CI: {reason}")
        pytest.skip(f"PostgreSQL not reachable: {reason}")
    import psycopg

    name = f"medshard_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset_pg(url: str) -> None:
    """Empty the per-session PostgreSQL database so each deployment starts clean."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


#: The service account every deployment has (site st-marys): tests store and read as it.
TEST_ACCOUNT = "test-pacs"
TEST_SITE = "st-marys"
#: Calling AE titles allowed in every deployment, acting as the test account.
TEST_AES = ("MEDTEST", "STORESCU", "FINDSCU", "MOVESCU", "GETSCU", "ECHOSCU")


@dataclass
class Deployment:
    home: Path
    settings: Settings
    nodes: list[NodeProcess]
    runner: CliRunner = field(default_factory=CliRunner)
    #: API token of the test service account, passed to CLI data commands.
    token: str = ""

    def cli(self, *args: str, ok: bool = True, token: str | None = None) -> Any:
        env = {"MEDSHARD_TOKEN": self.token if token is None else token}
        result = self.runner.invoke(
            app, [*args, "--home", str(self.home)], catch_exceptions=False, env=env
        )
        if ok and result.exit_code != 0:
            raise AssertionError(f"medshard {' '.join(args)} failed:\n{result.output}")
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def restore(self, home: Path, recovery_key: str) -> Any:
        """``medshard restore --json`` of a new home at ``home`` from this deployment's nodes
        (the CliRunner result: a test checks its exit code and output)."""
        args = ["restore", "--home", str(home), "--recovery-key", recovery_key, "--json"]
        for node in self.nodes:
            args += ["--node", f"{node.name}={node.url}"]
        env = {"MEDSHARD_NODE_SECRET": self.settings.node_secret}
        return self.runner.invoke(app, args, env=env, catch_exceptions=False)

    def lose_home_and_restore(self, recovery_key: str) -> dict[str, Any]:
        """Delete the home (the metadata service's disk is gone), restore a new one beside it
        from the nodes, and point this deployment at it; the restore's report, after checking
        it succeeded and that every journaled object came back."""
        shutil.rmtree(self.home)
        home = self.home.parent / "restored"
        result = self.restore(home, recovery_key)
        assert result.exit_code == 0, result.output
        report: dict[str, Any] = json.loads(result.stdout)
        assert report["journal"]["unrecoverable"] == [], report["journal"]
        self.home, self.settings = home, load_settings(home)
        return report

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def data_dirs(self) -> list[Path]:
        return [n.data_dir for n in self.nodes]

    def nodes_by_copies(self) -> list[NodeProcess]:
        """Node processes, those holding the most copies (as the catalog records) first.

        Placement follows each patient's care sites, so which node holds anything depends on the
        data; a fault test picks its victim from here rather than by index, or it may strike a
        node that holds nothing and test nothing."""
        from sqlalchemy import func, select

        from medshard.catalog.models import Node, Replica

        catalog = Catalog(self.settings.database_url)
        with catalog.session() as session:
            held = dict(
                session.execute(
                    select(Node.name, func.count(Replica.id))
                    .join(Replica, Replica.node_pk == Node.id)
                    .where(Replica.state == "ok")
                    .group_by(Node.name)
                ).all()
            )
        catalog.dispose()
        return sorted(self.nodes, key=lambda n: -int(held.get(n.name, 0)))


def make_deployment(
    root: Path,
    db_url: str = "",
    node_count: int = 4,
    sites: list[str] | None = None,
    hosts: list[str] | None = None,
) -> Deployment:
    """A fresh home with ``node_count`` node processes registered, the i-th at
    ``sites[i % len]`` listening on ``hosts[i % len]`` (loopback addresses; default 127.0.0.1)."""
    home = root / "home"
    runner = CliRunner()
    args = ["init", "--home", str(home)]
    if db_url:
        args += ["--db", db_url]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    settings = load_settings(home)
    catalog = Catalog(settings.database_url)
    nodes = []
    site_names = sites or SITES
    for i in range(node_count):
        site = site_names[i % len(site_names)]
        host = hosts[i % len(hosts)] if hosts else "127.0.0.1"
        proc = start_node_process(
            f"node{i}",
            site,
            free_port(host),
            root / f"node{i}",
            settings.node_secret,
            log_path=root / f"node{i}.log",
            host=host,
        )
        nodes.append(proc)
    for proc in nodes:
        proc.wait_ready()
        register_node(catalog, name=proc.name, url=proc.url, site=proc.site, capacity_bytes=0)
    catalog.dispose()
    dep = Deployment(home=home, settings=settings, nodes=nodes, runner=runner)
    dep.cli("user", "add", TEST_ACCOUNT, "--role", "service", "--site", TEST_SITE)
    dep.token = dep.cli_json("token", "create", TEST_ACCOUNT)["token"]
    for ae in TEST_AES:
        dep.cli("dicom", "allow", ae, "--user", TEST_ACCOUNT)
    return dep


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("pg_database")
    _reset_pg(url)
    return url


@pytest.fixture
def deployment(tmp_path: Path, db_url: str) -> Iterator[Deployment]:
    dep = make_deployment(tmp_path, db_url)
    yield dep
    for proc in dep.nodes:
        proc.stop()


@pytest.fixture
def sqlite_deployment(tmp_path: Path) -> Iterator[Deployment]:
    dep = make_deployment(tmp_path)
    yield dep
    for proc in dep.nodes:
        proc.stop()


@pytest.fixture
def dicom_dir(tmp_path: Path) -> Path:
    """A small folder of real DICOM files (the repo's sample data) to import."""
    from medshard.demo import sample_dicom_dir

    target = tmp_path / "input"
    shutil.copytree(sample_dicom_dir(), target)
    return target


@dataclass
class Service:
    """A running `medshard serve` child process (HTTP + DIMSE) over a deployment."""

    deployment: Deployment
    url: str
    dimse_port: int
    ae_title: str
    process: Any

    #: Bearer token of the deployment's test service account (full store/read on its site).
    token: str = ""

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate as the test service account."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def start_service(dep: Deployment, **overrides: Any) -> Service:
    """Apply setting overrides to the deployment's home, then start the service on free ports."""
    from medshard.demo import ServiceProcess

    for ae in overrides.pop("dimse_allowed_aes", []):  # allowed as the test account
        dep.cli("dicom", "allow", ae, "--user", TEST_ACCOUNT)
    settings = load_settings(dep.home)
    for key, value in overrides.items():
        setattr(settings, key, value)
    settings.save()
    dep.settings = settings
    port, dimse_port = free_port(), free_port()
    proc = ServiceProcess(
        dep.home, port, dep.home / "service.log", ["--dimse-port", str(dimse_port)]
    )
    proc.wait_ready()
    return Service(dep, proc.url, dimse_port, settings.dimse_ae_title, proc, token=dep.token)


@pytest.fixture
def service(sqlite_deployment: Deployment) -> Iterator[Service]:
    svc = start_service(sqlite_deployment)
    yield svc
    svc.process.stop()
