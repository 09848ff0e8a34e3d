"""Real faults for cluster tests: a full filesystem (tmpfs), a node cut off by iptables, and
a loopback address of its own per node.

Each needs root in the test's network namespace, which containers and CI runners grant. A
missing tool or permission skips the test on a workstation but fails it under ``CI=true``: CI
must never pass by skipping what it was meant to check. Every rule and mount is undone in a
``finally``, and rules only ever name 127.0.0.N addresses (never another host).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def unavailable(what: str) -> None:
    """Skip (workstation) or fail (CI) a test whose fault cannot be injected here."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (required under CI)")
    pytest.skip(what)


def loopback_addresses(count: int) -> list[str]:
    """``count`` distinct 127.0.0.N addresses, never 127.0.0.1 (the other tests' address),
    drawn at random so two runs at once rarely share one."""
    return [f"127.0.0.{n}" for n in random.sample(range(2, 255), count)]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """``path`` (emptied) as a tmpfs of ``size`` (e.g. ``"8m"``): a real filesystem that
    fills up, so writes meet ENOSPC as on a full disk. Unmounted afterwards."""
    if shutil.which("mount") is None:
        unavailable("mount is not installed")
    path.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs (root needed): {done.stderr.strip()}")
    try:
        yield path
    finally:
        _run("umount", "-l", str(path))


def fill(directory: Path, leave: int = 0) -> int:
    """Write a filler file in ``directory`` until its filesystem is full (ENOSPC), then cut
    it back by ``leave`` bytes; returns the filler's size."""
    filler = directory / "filler.bin"
    block = b"\0" * (64 * 1024)
    written = 0
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                written += fh.write(block)
        except OSError:
            pass
        os.fsync(fh.fileno())
    if leave:
        written = max(written - leave, 0)
        os.truncate(filler, written)
    return written


def require_iptables() -> None:
    if shutil.which("iptables") is None:
        unavailable("iptables is not installed (make system-deps installs it)")
    done = _run("iptables", "-w", "-S", "INPUT")
    if done.returncode != 0:
        unavailable(f"iptables cannot be used here (root needed): {done.stderr.strip()}")


@contextmanager
def cut_off(address: str) -> Iterator[None]:
    """Drop every packet sent to ``address`` (a 127.0.0.N a node listens on) until the block
    ends: the node stays up but nothing reaches it, as behind a failed link."""
    if not address.startswith("127.") or address == "127.0.0.1":
        raise ValueError(f"only a node's own loopback address may be cut off, not {address}")
    rule = ["INPUT", "-d", address, "-j", "DROP"]
    done = _run("iptables", "-w", "-A", *rule)
    if done.returncode != 0:
        unavailable(f"iptables refused the rule: {done.stderr.strip()}")
    try:
        yield
    finally:
        restore(address)


def restore(address: str) -> None:
    """Delete every DROP rule for ``address`` (idempotent)."""
    rule = ["INPUT", "-d", address, "-j", "DROP"]
    while _run("iptables", "-w", "-C", *rule).returncode == 0:
        _run("iptables", "-w", "-D", *rule)
