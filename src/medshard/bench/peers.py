"""Finding the real DICOM peers (dcmtk, Orthanc) on this machine, never a look-alike.

pynetdicom installs its own ``echoscu``, ``storescu``, ``findscu``... into the virtual
environment's ``bin``, where they shadow dcmtk's for anyone who activated the venv. A test or
benchmark that claims to use dcmtk must therefore look outside the venv and check the banner
dcmtk prints (``$dcmtk: storescu v3.6.7 2022-04-22 $``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from medshard.errors import ConfigError
from medshard.node.launcher import free_port

DCMTK_BANNER = re.compile(r"\$dcmtk: (\S+) v(\d+\.\d+\.\d+)")


def _path_outside_venv() -> str:
    venv_bins = {Path(sys.prefix, "bin").resolve(), Path(sys.executable).parent.resolve()}
    entries = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(e for e in entries if e and Path(e).resolve() not in venv_bins)


@functools.cache
def dcmtk(tool: str) -> str:
    """The path of dcmtk's ``tool`` (e.g. ``storescu``), its banner checked.

    Raises ConfigError, saying what was found instead, when dcmtk's tool is not installed.
    """
    found = shutil.which(tool, path=_path_outside_venv())
    if found is None:
        raise ConfigError(f"dcmtk's {tool} is not installed (apt-get install dcmtk)")
    try:
        banner = subprocess.run(
            [found, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{found} did not answer --version: {exc}") from exc
    match = DCMTK_BANNER.search(banner)
    if match is None or match.group(1) != tool:
        raise ConfigError(f"{found} is not dcmtk's {tool} (its --version printed {banner[:80]!r})")
    return found


def dcmtk_version(tool: str = "storescu") -> str:
    """dcmtk's version, from the banner of one of its tools."""
    banner = subprocess.run([dcmtk(tool), "--version"], capture_output=True, text=True).stdout
    match = DCMTK_BANNER.search(banner)
    assert match is not None
    return match.group(2)


def dcmtk_available(*tools: str) -> list[str]:
    """The tools among ``tools`` that are missing or not dcmtk's."""
    missing = []
    for tool in tools:
        try:
            dcmtk(tool)
        except ConfigError:
            missing.append(tool)
    return missing


@dataclass(frozen=True)
class OrthancProcess:
    """A running throwaway Orthanc: its HTTP root and its DICOM port and AE title."""

    url: str
    dicom_port: int
    ae_title: str


@contextmanager
def orthanc(root: Path, **config: Any) -> Iterator[OrthancProcess]:
    """Orthanc (Debian's) in ``root`` on free loopback ports, default configuration plus
    ``config``; yields once its REST API answers, stops it afterwards."""
    root.mkdir(parents=True)
    http_port, dicom_port = free_port(), free_port()
    settings = {
        "Name": "medshard-bench",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "BENCHORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        **config,
    }
    (root / "orthanc.json").write_text(json.dumps(settings))
    with open(root / "orthanc.log", "wb") as log:
        proc = subprocess.Popen(
            ["Orthanc", str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/system", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (root / "orthanc.log").read_text(errors="replace")[-2000:]
                raise ConfigError(f"Orthanc did not start:\n{tail}")
            time.sleep(0.3)
        yield OrthancProcess(url, dicom_port, str(settings["DicomAet"]))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
