"""Transport security of the service: HTTPS for `medshard serve` and DICOM TLS for DIMSE.

Real processes: the service runs as `medshard serve` over a deployment with node processes;
peers are httpx, pynetdicom as a TLS SCU and, where installed, dcmtk's echoscu with ``+tls``.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from pynetdicom import AE
from typer.testing import CliRunner

from medshard.bench.peers import dcmtk, dcmtk_available
from medshard.catalog.db import Catalog
from medshard.cli import app
from medshard.config import load_settings
from medshard.demo import ServiceProcess
from medshard.node.launcher import free_port
from medshard.security.identity import add_user, allow_peer
from medshard.security.tls import TlsPair, client_context, write_self_signed
from tests.conftest import Deployment, Service, start_service

CALLING = "MEDTEST"
VERIFICATION = "1.2.840.10008.1.1"


# -- the self-signed pair ----------------------------------------------------------------------


def test_tls_self_signed_writes_a_loopback_pair_with_a_private_key(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    result = CliRunner().invoke(app, ["tls", "self-signed", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    cert, key = out / "server.crt", out / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)  # they belong together


# -- HTTPS -------------------------------------------------------------------------------------


def _allow_calling_ae(dep: Deployment) -> None:
    """Let CALLING associate: a DICOM peer acting as a service account of a site."""
    catalog = Catalog(dep.settings.database_url)
    try:
        with catalog.transaction() as session:
            add_user(session, username="tls-test-pacs", role="service", sites=["st-marys"])
            allow_peer(session, CALLING, "tls-test-pacs")
    finally:
        catalog.dispose()


def _service(dep: Deployment, tls: TlsPair | None) -> ServiceProcess:
    proc = ServiceProcess(
        dep.home,
        free_port(),
        dep.home / "service.log",
        ["--dimse-port", str(free_port())],
        tls=tls,
    )
    return proc


def test_serve_with_tls_cert_and_key_speaks_https_only(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    pair = write_self_signed(tmp_path / "tls")
    proc = _service(sqlite_deployment, pair)
    try:
        proc.wait_ready()
        assert proc.url.startswith("https://127.0.0.1:")
        trusting = client_context(pair.cert)
        r = httpx.get(f"{proc.url}/healthz", verify=trusting, timeout=10)
        assert r.status_code == 200
        with httpx.Client(verify=trusting, base_url=f"https://localhost:{proc.port}") as c:
            assert c.get("/healthz").status_code == 200  # the DNS name is in the SAN too
        with pytest.raises(httpx.ConnectError):  # the system CAs do not vouch for it
            httpx.get(f"{proc.url}/healthz", timeout=10)
        try:  # no plain HTTP on the same port
            plain: int | None = httpx.get(f"http://127.0.0.1:{proc.port}/healthz").status_code
        except httpx.HTTPError:
            plain = None
        assert plain != 200
    finally:
        proc.stop()


def test_tls_pair_from_the_config_file_relative_to_the_home(
    sqlite_deployment: Deployment,
) -> None:
    dep = sqlite_deployment
    pair = write_self_signed(dep.home / "certs")
    settings = load_settings(dep.home)
    settings.tls_cert, settings.tls_key = "certs/server.crt", "certs/server.key"
    settings.save()
    proc = _service(dep, None)
    proc.url, proc.verify = proc.url.replace("http://", "https://"), client_context(pair.cert)
    try:
        proc.wait_ready()
        assert httpx.get(f"{proc.url}/healthz", verify=proc.verify).status_code == 200
    finally:
        proc.stop()


def test_serve_refuses_half_a_pair_or_missing_files(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    pair = write_self_signed(tmp_path / "tls")
    result = sqlite_deployment.cli("serve", "--tls-cert", str(pair.cert), ok=False)
    assert result.exit_code == 1 and "both" in result.output
    result = sqlite_deployment.cli(
        "serve", "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(pair.key), ok=False
    )
    assert result.exit_code == 1 and "not found" in result.output


# -- DICOM TLS ---------------------------------------------------------------------------------


@pytest.fixture
def tls_service(sqlite_deployment: Deployment, tmp_path: Path) -> Iterator[tuple[Service, int]]:
    """The service with a DICOM TLS listener beside the plain one (no client certificates)."""
    pair = write_self_signed(tmp_path / "dimse-tls", name="dimse")
    tls_port = free_port()
    _allow_calling_ae(sqlite_deployment)
    svc = start_service(
        sqlite_deployment,
        dimse_tls_port=tls_port,
        dimse_tls_cert=str(pair.cert),
        dimse_tls_key=str(pair.key),
    )
    yield svc, tls_port
    svc.process.stop()


def _echo(port: int, ae_title: str, tls_args: tuple[ssl.SSLContext, str] | None) -> int | None:
    """C-ECHO as CALLING; the status, or None when no association was established."""
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def _server_cert(svc: Service) -> Path:
    settings = load_settings(svc.deployment.home)
    return svc.deployment.home / settings.dimse_tls_cert


def test_pynetdicom_tls_scu_echoes_and_plain_tcp_to_the_tls_port_fails(
    tls_service: tuple[Service, int],
) -> None:
    svc, tls_port = tls_service
    ctx = client_context(_server_cert(svc))
    assert _echo(tls_port, svc.ae_title, (ctx, "127.0.0.1")) == 0x0000
    assert _echo(tls_port, svc.ae_title, None) is None  # plain DICOM to the TLS port
    assert _echo(svc.dimse_port, svc.ae_title, None) == 0x0000  # the plain port still serves
    untrusting = ssl.create_default_context()  # a peer that does not trust the certificate
    assert _echo(tls_port, svc.ae_title, (untrusting, "127.0.0.1")) is None


def test_dicom_tls_with_a_client_ca_requires_a_client_certificate_it_signed(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    server = write_self_signed(tmp_path / "server")
    client = write_self_signed(tmp_path / "client", name="modality")
    stranger = write_self_signed(tmp_path / "stranger", name="stranger")
    tls_port = free_port()
    _allow_calling_ae(sqlite_deployment)
    svc = start_service(
        sqlite_deployment,
        dimse_tls_port=tls_port,
        dimse_tls_cert=str(server.cert),
        dimse_tls_key=str(server.key),
        dimse_tls_ca=str(client.cert),  # a self-signed client certificate is its own CA
    )
    try:
        with_cert = client_context(server.cert, client)
        assert _echo(tls_port, svc.ae_title, (with_cert, "127.0.0.1")) == 0x0000
        without = client_context(server.cert)
        assert _echo(tls_port, svc.ae_title, (without, "127.0.0.1")) is None
        wrong = client_context(server.cert, stranger)
        assert _echo(tls_port, svc.ae_title, (wrong, "127.0.0.1")) is None
        # a peer that connects and says nothing does not block the next one
        import socket

        with socket.create_connection(("127.0.0.1", tls_port)):
            assert _echo(tls_port, svc.ae_title, (with_cert, "127.0.0.1")) == 0x0000
    finally:
        svc.process.stop()


@pytest.mark.peers
def test_dcmtk_echoscu_over_tls(tls_service: tuple[Service, int], tmp_path: Path) -> None:
    if dcmtk_available("echoscu"):
        if os.environ.get("CI"):
            pytest.fail("dcmtk's echoscu is required in CI")
        pytest.skip("dcmtk not installed")
    svc, tls_port = tls_service
    server_cert = str(_server_cert(svc))
    client = write_self_signed(tmp_path / "echoscu", name="echoscu")
    base = [dcmtk("echoscu"), "-aet", CALLING, "-aec", svc.ae_title]
    target = ["127.0.0.1", str(tls_port)]
    trust = ["+cf", server_cert]  # pin the service's self-signed certificate
    runs = {
        "anonymous": [*base, "--anonymous-tls", *trust, *target],
        "with a certificate": [*base, "+tls", str(client.key), str(client.cert), *trust, *target],
        "plain": [*base, *target],
    }
    done = {
        what: subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        for what, cmd in runs.items()
    }
    assert done["anonymous"].returncode == 0, done["anonymous"].stderr
    assert done["with a certificate"].returncode == 0, done["with a certificate"].stderr
    assert done["plain"].returncode != 0
