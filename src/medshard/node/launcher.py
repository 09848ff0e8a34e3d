"""Start storage nodes as real child processes, for tests and for ``medshard demo``.

A node is only worth testing as a separate process: durability claims mean something only if
``kill -9`` can hit it mid-flight and a restart must find every acknowledged chunk. The handle
keeps the command line, so :meth:`NodeProcess.restart` brings the same node back on the same
port and data directory. :class:`NodeAuth` signs httpx requests to a node, for tests and
tools that talk to one directly.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from medshard.errors import NodeUnavailableError
from medshard.node.server import SECRET_ENV
from medshard.storage.node_auth import AUTH_HEADER, RequestSigner, content_hash


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, below the kernel's ephemeral range where possible.

    A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, which every
    outgoing connection draws from too: between choosing it and the child binding it, a
    client socket could take it ("address already in use", seen once in a full test run).
    Below that range only another listener can, and a random pick makes that unlikely.
    """
    low = min(_ephemeral_low(), 65536)
    rng = random.SystemRandom()
    for _ in range(50):
        port = rng.randrange(20000, low) if low > 20000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            chosen: int = s.getsockname()[1]
            return chosen
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        fallback: int = s.getsockname()[1]
        return fallback


class NodeAuth(httpx.Auth):
    """Signs every request of an httpx client for the node ``node`` (see
    :mod:`medshard.storage.node_auth`).

    Examples
    --------
    >>> client = httpx.Client(base_url=node.url, auth=NodeAuth(secret, node.name))  # doctest: +SKIP
    """

    def __init__(self, secret: str, node: str) -> None:
        self._signer = RequestSigner(secret, node)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        target = request.url.raw_path.decode("ascii")
        body = request.read()
        content = content_hash(request.method, target, body)
        request.headers[AUTH_HEADER] = self._signer.header(request.method, target, content)
        yield request


@dataclass
class NodeProcess:
    """Handle on one node child process. Neither start nor restart waits: call
    :meth:`wait_ready`, so a demo can start many nodes and then wait for them together."""

    name: str
    site: str
    port: int
    data_dir: Path
    secret: str
    capacity_bytes: int = 0
    log_path: Path | None = None
    host: str = "127.0.0.1"
    volume_bytes: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_file(self) -> Path:
        return self.log_path or self.data_dir / "node.log"

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> NodeProcess:
        """Launch the child; its output is appended to :attr:`log_file`."""
        if self.is_alive():
            raise NodeUnavailableError(self.name, f"already running as pid {self.pid}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "medshard.node.server",
            "--name", self.name, "--site", self.site,
            "--host", self.host, "--port", str(self.port),
            "--data", str(self.data_dir), "--capacity-bytes", str(self.capacity_bytes),
        ]  # fmt: skip
        if self.volume_bytes:
            cmd += ["--volume-bytes", str(self.volume_bytes)]
        env = {**os.environ, SECRET_ENV: self.secret}
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        return self

    def wait_ready(self, timeout: float = 20.0) -> dict[str, object]:
        """Poll ``/health`` until the node answers; return its health document.

        Raises
        ------
        NodeUnavailableError
            If the child exits or does not answer in time; the message carries the log tail.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, auth=NodeAuth(self.secret, self.name)) as client:
            while True:
                if not self.is_alive():
                    code = self._proc.returncode if self._proc else None
                    raise NodeUnavailableError(
                        self.name, f"exited with {code}; log tail:\n{self.log_tail()}"
                    )
                try:
                    r = client.get(f"{self.url}/health")
                    if r.status_code == 200:
                        health: dict[str, object] = r.json()
                        return health
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise NodeUnavailableError(
                        self.name, f"not ready after {timeout}s; log tail:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, like ``kill -9``: no flush, no goodbye; what was acknowledged must survive."""
        self._signal(signal.SIGKILL, timeout=10.0)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait for a clean exit, SIGKILL if it does not come."""
        try:
            self._signal(signal.SIGTERM, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> NodeProcess:
        """Stop if still running, then start again with the same name, port and data."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: int, timeout: float) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(sig)
        self._proc.wait(timeout=timeout)

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_node_process(
    name: str,
    site: str,
    port: int,
    data_dir: str | os.PathLike[str],
    secret: str,
    capacity_bytes: int = 0,
    log_path: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    volume_bytes: int | None = None,
) -> NodeProcess:
    """Launch ``python -m medshard.node.server`` as a child; returns before it is ready."""
    return NodeProcess(
        name=name,
        site=site,
        port=port,
        data_dir=Path(data_dir),
        secret=secret,
        capacity_bytes=capacity_bytes,
        log_path=Path(log_path) if log_path is not None else None,
        host=host,
        volume_bytes=volume_bytes,
    ).start()
