"""`medshard demo`: a whole local deployment on loopback, for a first look.

Starts storage-node processes over three named sites and the application service as child
processes, imports the sample data kept in the package, writes ``HOME/demo.json`` and waits.
Ctrl-C or SIGTERM stops every child; none is left behind.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from medshard.catalog.db import Catalog
from medshard.cluster.nodes import register_node
from medshard.demo_cast import create_cast
from medshard.errors import ConfigError
from medshard.home import init_home
from medshard.node.launcher import NodeProcess, free_port, start_node_process
from medshard.security.tls import TlsPair, client_context, write_self_signed

DEMO_SITES = ["st-marys-hospital", "city-general", "rural-health-centre"]


def sample_dicom_dir() -> Path:
    return Path(__file__).parent / "sample_data" / "dicom"


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ServiceProcess:
    """The application service (`medshard serve`) as a child process.

    With ``tls`` (a certificate and key) it serves HTTPS, :attr:`url` says ``https`` and
    :attr:`verify` is the certificate to trust (pass it to httpx as ``verify=``).
    """

    def __init__(
        self, home: Path, port: int, log_path: Path, extra: list[str], tls: TlsPair | None = None
    ) -> None:
        self.port = port
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.verify: ssl.SSLContext | bool = client_context(tls.cert) if tls else True
        self.log_path = log_path
        cmd = [sys.executable, "-m", "medshard", "serve", "--home", str(home), "--port", str(port)]
        if tls:
            cmd += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd + extra, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=2, verify=self.verify)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise ConfigError(f"the service did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_demo(home: Path, *, port: int = 8080, node_count: int = 4, tls: bool = False) -> None:
    if node_count < 3:
        raise ConfigError("the demo needs at least 3 storage nodes for k=3 replicas")
    if not _port_free(port):
        raise ConfigError(f"port {port} is in use: pass --port")
    settings, _created = init_home(home)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    nodes: list[NodeProcess] = []
    service: ServiceProcess | None = None
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        catalog = Catalog(settings.database_url)
        for i in range(node_count):
            site = DEMO_SITES[i % len(DEMO_SITES)]
            node_port = port + 1 + i if _port_free(port + 1 + i) else free_port()
            proc = start_node_process(
                f"node{i}",
                site,
                node_port,
                home / "nodes" / f"node{i}",
                settings.node_secret,
                log_path=logs / f"node{i}.log",
            )
            nodes.append(proc)
        for proc in nodes:
            proc.wait_ready()
            register_node(catalog, name=proc.name, url=proc.url, site=proc.site, capacity_bytes=0)
        catalog.dispose()
        dimse_port = settings.dimse_port if _port_free(settings.dimse_port) else free_port()
        pair = write_self_signed(home / "tls") if tls else None  # HTTPS: clients pin pair.cert
        service = ServiceProcess(
            home, port, logs / "service.log", ["--dimse-port", str(dimse_port)], tls=pair
        )
        service.wait_ready()
        sample = sorted(sample_dicom_dir().glob("*.dcm"))
        sample.extend(_chest_xrays(home))
        cast = create_cast(home, DEMO_SITES, sample)
        report = cast.report
        records = _records(home, cast.token, cast.users)
        info: dict[str, Any] = {
            "home": str(home),
            "api_url": service.url,
            "dicomweb_url": f"{service.url}/dicom-web",
            "dimse": {
                "host": "127.0.0.1",
                "port": dimse_port,
                "ae_title": settings.dimse_ae_title,
                "calling_ae_titles": cast.calling_ae_titles,
            },
            "token": cast.token,
            "users": cast.users,
            "metrics_url": f"{service.url}/metrics",
            "findings_url": f"{service.url}/api/findings",
            "nodes": [
                {
                    "name": n.name,
                    "url": n.url,
                    "site": n.site,
                    "pid": n.pid,
                    "data_dir": str(n.data_dir),
                }
                for n in nodes
            ],
            "service_pid": service.proc.pid,
            "imported": len(report["imported"]),
            "duplicates": len(report["duplicates"]),
            "rejected": len(report["rejected"]),
            "records": records,
        }
        if pair is not None:
            info["tls_cert"] = str(pair.cert)
        demo_json = home / "demo.json"
        demo_json.touch(mode=0o600)
        demo_json.chmod(0o600)  # it holds the cast's passwords and tokens
        demo_json.write_text(json.dumps(info, indent=2))
        _print_banner(info)
        while not stop.is_set():
            if service.proc.poll() is not None:
                print("the service exited; see", service.log_path, file=sys.stderr)
                break
            stop.wait(1.0)
    finally:
        if service is not None:
            service.stop()
        for proc in nodes:
            proc.stop()
        print("medshard demo stopped; every child process has exited.", file=sys.stderr)


def _records(home: Path, token: str, users: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Documents and a day of heart rate for the demo patient (once per demo home)."""
    from medshard.records.demo import load_demo_records

    patients = [u["patients"][0] for u in users if u["role"] == "patient" and u["patients"]]
    return load_demo_records(home, token, patients[0]) if patients else None


def _chest_xrays(home: Path) -> list[Path]:
    """Validation-split chest X-rays as DICOM CR, when the analysis extra is installed."""
    try:
        from medshard.analysis.dataset import sample_npz_path
        from medshard.analysis.synth import chest_xray_dicoms
    except ImportError:
        return []
    out = home / "sample-chest-xrays"
    if not out.exists():
        chest_xray_dicoms(sample_npz_path(), split="val", count=8, out_dir=out)
    return [out]


def _print_banner(info: dict[str, Any]) -> None:
    print("medshard demo is running (Ctrl-C to stop)")
    print(f"  web UI:          {info['api_url']}/  (log in as one of the users below)")
    print(f"  API:             {info['api_url']}")
    print(f"  cluster status:  {info['api_url']}/api/status")
    print(f"  DICOMweb:        {info['dicomweb_url']}")
    dimse = info["dimse"]
    print(f"  DIMSE:           {dimse['ae_title']}@{dimse['host']}:{dimse['port']}")
    print(f"  metrics:         {info['metrics_url']}")
    for n in info["nodes"]:
        print(f"  node {n['name']:<6} {n['site']:<22} {n['url']}  pid {n['pid']}")
    print(
        f"  imported {info['imported']} sample instances "
        f"({info['duplicates']} already there, {info['rejected']} rejected)"
    )
    if info.get("records"):
        rec = info["records"]
        print(
            f"  records of {rec['patient_id']}: {len(rec['documents'])} new documents, "
            f"{'a day of heart rate' if rec['series'] else 'already loaded'} "
            f"(FHIR: {info['api_url']}/fhir)"
        )
    print("  users (passwords and tokens in demo.json):")
    for u in info.get("users", []):
        where = f" at {u['site']}" if u.get("site") else ""
        print(f"    {u['role']:<8} {u['username']}{where}")
    print(f"  details in {info['home']}/demo.json")
    sys.stdout.flush()
