"""Finding the real DICOM peers (dcmtk, Orthanc) on this machine, never a look-alike.

pynetdicom installs its own ``echoscu``, ``storescu``, ``findscu``... into the virtual
environment's ``bin``, where they shadow dcmtk's for anyone who activated the venv. A test or
benchmark that claims to use dcmtk must therefore look outside the venv and check the banner
dcmtk prints (``$dcmtk: storescu v3.6.7 2022-04-22 $``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from medshard.errors import ConfigError

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
