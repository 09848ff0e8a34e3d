"""`medshard demo` as a user runs it: a real process tree that leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from medshard.node.launcher import free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_demo_starts_nodes_service_and_data_then_stops_every_child(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    port = free_port()
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "medshard", "demo", "--home", str(home), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        info_path = home / "demo.json"
        deadline = time.monotonic() + 180
        while not info_path.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()
            time.sleep(0.5)
        info = json.loads(info_path.read_text())
        assert info["home"] == str(home)
        assert len(info["nodes"]) >= 4
        assert len({n["site"] for n in info["nodes"]}) >= 3
        assert info["imported"] > 0 and info["rejected"] == 0
        auth = {"Authorization": f"Bearer {info['token']}"}  # the first PACS's service token
        status = httpx.get(f"{info['api_url']}/api/status", headers=auth, timeout=30).json()
        assert status["objects"] >= info["imported"]
        assert all(n["state"] == "alive" for n in status["nodes"])
        _check_cast(info)
        for node in info["nodes"]:
            assert Path(node["data_dir"]).is_dir()
            assert _alive(node["pid"])
        pids = [n["pid"] for n in info["nodes"]] + [info["service_pid"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
    assert proc.returncode == 0, (tmp_path / "demo.log").read_text()[-2000:]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)]


def _check_cast(info: dict[str, object]) -> None:
    """The cast in demo.json logs in and sees what its role says, on the running demo."""
    url = str(info["api_url"])
    users = {u["username"]: u for u in info["users"]}  # type: ignore[attr-defined]
    roles = {u["role"] for u in users.values()}
    assert roles == {"admin", "doctor", "expert", "patient", "service"}
    assert info["dimse"]["calling_ae_titles"]  # type: ignore[index]
    doctors = [u for u in users.values() if u["role"] == "doctor"]
    assert len(doctors) == 2 and doctors[0]["site"] != doctors[1]["site"]
    assert not set(doctors[0]["patients"]) & set(doctors[1]["patients"])

    def studies(user: dict[str, object]) -> set[str]:
        r = httpx.post(
            f"{url}/api/auth/token",
            data={"username": user["username"], "password": user["password"]},
        )
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        found = httpx.get(
            f"{url}/dicom-web/studies",
            params={"includefield": "PatientID"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()
        return {s["00100020"]["Value"][0] for s in found if "Value" in s.get("00100020", {})}

    for doctor in doctors:
        assert studies(doctor) == set(doctor["patients"])
    assert studies(users["admin"]) == set()
    assert studies(users["patient"]) == set(users["patient"]["patients"])
    assert len(studies(users["dr-wilson"])) == 1  # the one shared study
