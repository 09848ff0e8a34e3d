"""The storage-node daemon: a small HTTP front on a :class:`VolumeStore`.

Run it as ``python -m medshard.node.server --name N --site S --port P --data PATH`` with the
shared node secret in ``MEDSHARD_NODE_SECRET``. The protocol (every request signed, see below)::

    PUT    /chunks/{id}   raw bytes; 201 stored, 200 already there, 409 hash mismatch,
                          507 capacity or disk full, 400 malformed id, 413 too large
    POST   /chunks        a batch of chunks (framing: medshard/storage/chunk_batch.py), all
                          made durable by one group commit: 200 {"results": [...]}, one per
                          chunk in order with the status its own PUT would have had; 400
                          malformed framing, 413 too many chunks or bytes
    GET    /chunks/{id}   200 the bytes as stored (unverified: readers verify), 404
    HEAD   /chunks/{id}   200 with Content-Length, 404
    DELETE /chunks/{id}   204, 404
    GET    /chunks/{id}/verify   200 the node re-hashed its copy and it is intact, 409 it
                          is not (scrubbing: only the verdict crosses the network), 404
    GET    /chunks        {"chunks": [...]} for reconciliation and repair
    GET    /health        name, site, capacity, usage, load, uptime; dead and reclaimable
                          bytes and compaction progress (see medshard/node/compaction.py)
    POST   /compact[?threshold=F]   202: compact now, in the background, every sealed volume
                          whose reclaimable share is at least F (default: the node's setting)
    GET    /rtt?peer=N&url=U   {"rtt_ms": ...} to peer node N at U (Vivaldi coordinates)
    PUT    /meta/{name}   a named metadata blob (the service's encrypted backups, see
                          medshard/node/metablobs.py); the body's SHA-256 comes in the signed
                          X-Medshard-Content-SHA256 header: 201 stored, 200 replaced, 409
    GET    /meta/{name}   200 the bytes, 404; DELETE /meta/{name}: 204, 404
    GET    /meta          {"blobs": [{"name": ..., "size": ...}]}

Authentication (:mod:`medshard.storage.node_auth`): the secret never travels. Each request
carries ``Authorization: Medshard-HMAC-SHA256 t=<unix s>,n=<nonce>,s=<hmac>``, an HMAC-SHA256
under a key derived from the secret by HKDF over method, node name, path (and query), ``t``, the
nonce and the body's SHA-256, which for ``PUT /chunks/{id}`` is the id itself (the node
refuses a body that does not hash to it, 409), for ``POST /chunks`` the SHA-256 of the batch's
manifest (its ids and lengths: the node reads it first, authenticates, and only then the
chunks, each checked against its id) and for ``PUT /meta/{name}`` the value of the
``X-Medshard-Content-SHA256`` header (checked against the body the same way). The node
answers 401 to a missing, malformed or wrong signature, to ``t`` more than 60 s off its clock,
and to a nonce it has already seen within that window; so clocks of the service and the
nodes must agree within a minute (NTP). Signing and checking cost a few microseconds; the key
is derived once at start.

The app is a bare ASGI callable rather than FastAPI: a few fixed routes need no validation
layer, and per-request overhead matters when a node takes thousands of chunks per second.
Every store call runs on a thread pool, so a writer waiting for its group-commit fdatasync
never blocks the event loop, and many waiting writers are what lets one fdatasync cover many.
A batch is one request, one pool hop and one fdatasync for all its chunks: the service
coalesces concurrent chunk copies to a node into batches (medshard/storage/put_batcher.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import uvicorn

from medshard.errors import (
    ChecksumMismatchError,
    InvalidInputError,
    MedshardError,
    NodeUnavailableError,
    NotFoundError,
    StorageError,
)
from medshard.node.compaction import (
    DEFAULT_BYTES_PER_S,
    DEFAULT_INTERVAL_S,
    DEFAULT_THRESHOLD,
    Compactor,
)
from medshard.node.metablobs import MAX_BLOB_BYTES, MetaBlobStore
from medshard.node.volume import DEFAULT_VOLUME_BYTES, MAX_CHUNK_BYTES, VolumeStore, check_chunk_id
from medshard.storage.chunk_batch import (
    BATCH_PATH,
    MAX_BATCH_CHUNKS,
    decode_manifest,
    manifest_count,
    manifest_sha256,
    manifest_size,
)
from medshard.storage.node_auth import (
    AUTH_HEADER,
    CONTENT_SHA256_HEADER,
    EMPTY_SHA256,
    SCHEME,
    AuthError,
    RequestVerifier,
)

log = logging.getLogger(__name__)

SECRET_ENV = "MEDSHARD_NODE_SECRET"
PROTOCOL_VERSION = 3  # 2: signed requests instead of a secret header; 3: POST /chunks
_AUTH_KEY = AUTH_HEADER.lower().encode()
_CONTENT_KEY = CONTENT_SHA256_HEADER.lower().encode()
STREAM_PIECE_BYTES = 1 << 20
#: Largest batch body: one chunk of the largest size, or many smaller ones.
MAX_BATCH_BODY = MAX_CHUNK_BYTES + manifest_size(MAX_BATCH_CHUNKS)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

_STATUS_OF: list[tuple[type[MedshardError], int]] = [
    (NotFoundError, 404),
    (InvalidInputError, 400),
    (ChecksumMismatchError, 409),
    (NodeUnavailableError, 507),  # the store raises it only for capacity / disk full
    (StorageError, 500),
]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


class NodeApp:
    """ASGI application serving one :class:`VolumeStore`.

    Parameters
    ----------
    store
        The engine; the app does not close it (the caller that opened it does).
    name, site
        Reported by ``/health`` so the cluster can check it reached the node it meant to.
    secret
        Shared node secret; only the signing key derived from it is kept.
    io_threads
        Threads for store calls; more concurrent writers means bigger group commits.
    compactor
        Compacts the store in the background (the caller starts and stops it); by default
        one with default settings, which ``POST /compact`` alone sets to work.
    """

    def __init__(
        self,
        store: VolumeStore,
        *,
        name: str,
        site: str,
        secret: str,
        io_threads: int = 64,
        compactor: Compactor | None = None,
    ) -> None:
        if not secret:
            raise InvalidInputError("the node secret must not be empty")
        self.store = store
        self.compactor = compactor or Compactor(store)
        self.meta = MetaBlobStore(store.root)
        self.name = name
        self.site = site
        self._verifier = RequestVerifier(secret, name)
        self._secret = secret  # to sign RTT probes of peers (see /rtt)
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix=f"node-{name}-io")
        self._started = time.monotonic()
        self.requests_in_flight = 0
        self.puts_total = 0  # chunks, alone or in batches
        self.batches_total = 0
        self.gets_total = 0

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self.requests_in_flight += 1
        try:
            await self._dispatch(scope, receive, send)
        except _HTTPError as e:
            await _send_json(send, e.status, e.body)
        except MedshardError as e:
            await _send_json(send, _status_of(e), _error_body(e))
        except Exception:
            log.exception("node %s: %s %s failed", self.name, scope["method"], scope["path"])
            await _send_json(send, 500, {"error": "internal error; see the node log"})
        finally:
            self.requests_in_flight -= 1

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        method, path = scope["method"], scope["path"]
        if path == BATCH_PATH and method == "POST":
            await self._put_batch(scope, headers, receive, send)  # authenticates its manifest
            return
        self._authenticate(method, path, scope, headers)
        if path == "/health" and method == "GET":
            await _send_json(send, 200, await self._io(self._health))
        elif path == "/compact" and method == "POST":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            threshold = _fraction(query.get("threshold", [""])[0])
            self.compactor.trigger(threshold)
            await _send_json(send, 202, await self._io(self.compactor.stats))
        elif path == "/rtt" and method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            peer, url = query.get("peer", [""])[0], query.get("url", [""])[0]
            rtt = await self._io(self._measure_peer, peer, url)
            await _send_json(send, 200, {"peer": peer, "rtt_ms": rtt})
        elif path == "/chunks" and method == "GET":
            ids = await self._io(lambda: list(self.store.list_ids()))
            await _send_json(send, 200, {"chunks": ids})
        elif path.startswith("/chunks/") and path.endswith("/verify") and method == "GET":
            chunk_id = path[len("/chunks/") : -len("/verify")]
            check_chunk_id(chunk_id)
            await self._io(self.store.verify, chunk_id)
            await _send_json(send, 200, {"chunk_id": chunk_id, "ok": True})
        elif path == "/meta" and method == "GET":
            await _send_json(send, 200, {"blobs": await self._io(self.meta.list)})
        elif path.startswith("/meta/"):
            await self._meta(method, path[len("/meta/") :], headers, receive, send)
        elif path.startswith("/chunks/"):
            chunk_id = path[len("/chunks/") :]
            check_chunk_id(chunk_id)
            if method == "PUT":
                await self._put(chunk_id, headers, receive, send)
            elif method in ("GET", "HEAD"):
                await self._get(chunk_id, send, head=method == "HEAD")
            elif method == "DELETE":
                if not await self._io(self.store.delete, chunk_id):
                    raise NotFoundError(f"chunk {chunk_id} not found on node {self.name}")
                await _send(send, 204)
            else:
                raise _HTTPError(405, f"{method} not allowed on {path}")
        else:
            raise _HTTPError(404, f"no such endpoint {method} {path}")

    def _authenticate(
        self,
        method: str,
        path: str,
        scope: Scope,
        headers: dict[bytes, bytes],
        content: str | None = None,
    ) -> None:
        """Raise 401 unless the request is signed for this node, fresh and not a replay;
        ``content`` is the content hash it must sign (by default, from the route)."""
        target = scope.get("raw_path") or path.encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        target_text = target.decode("latin-1")
        if content is None and method == "PUT" and path.startswith("/chunks/"):
            content = path[len("/chunks/") :]  # the store checks that the body hashes to it
        elif content is None and method == "PUT" and path.startswith("/meta/"):
            content = headers.get(_CONTENT_KEY, b"").decode("latin-1")  # checked in _meta
        elif content is None:
            content = EMPTY_SHA256  # no other request has a body; the node never reads one
        header = headers.get(_AUTH_KEY)
        try:
            self._verifier.verify(
                method,
                target_text,
                header.decode("latin-1") if header is not None else None,
                content,
                time.time(),
            )
        except AuthError as e:
            raise _HTTPError(401, str(e), scheme=SCHEME) from None

    async def _put(
        self, chunk_id: str, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> None:
        data = await _read_body(headers, receive, MAX_CHUNK_BYTES)
        if data is None:
            return  # the client gave up; nothing was stored
        self.puts_total += 1
        created = await self._io(self.store.put, chunk_id, data)
        await _send_json(send, 201 if created else 200, {"chunk_id": chunk_id, "created": created})

    async def _put_batch(
        self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> None:
        """``POST /chunks``: read the manifest, authenticate it, then store every chunk."""
        body = _Body(headers, receive, MAX_BATCH_BODY)
        if not await body.fill(4):
            return
        if body.size < 4:
            raise _HTTPError(400, "batch body shorter than its chunk count")
        count = manifest_count(body.bytes())
        if count > MAX_BATCH_CHUNKS:
            raise _HTTPError(413, f"batch of {count} chunks; at most {MAX_BATCH_CHUNKS}")
        head = manifest_size(count)
        if not await body.fill(head):
            return
        if body.size < head:
            raise _HTTPError(400, f"batch body shorter than its manifest of {count} chunks")
        manifest = body.bytes()[:head]
        self._authenticate("POST", BATCH_PATH, scope, headers, manifest_sha256(manifest))
        entries = decode_manifest(manifest)
        if not await body.fill(None):
            return
        data = memoryview(body.bytes())
        if len(data) != head + sum(n for _cid, n in entries):
            raise _HTTPError(400, "batch body does not match its manifest's lengths")
        items = []
        for chunk_id, n in entries:
            items.append((chunk_id, data[head : head + n]))
            head += n
        self.batches_total += 1
        self.puts_total += count
        outcomes = await self._io(self.store.put_many, items)
        results = [
            _error_body(o, status=True)
            if isinstance(o, MedshardError)
            else {"status": 201 if o else 200}
            for o in outcomes
        ]
        await _send_json(send, 200, {"results": results})

    async def _meta(
        self, method: str, name: str, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> None:
        """Named metadata blobs (backups): outside the chunk namespace, so reconciliation,
        scrubbing and repair, which only ever see ``/chunks``, never take them for orphans."""
        if method == "PUT":
            data = await _read_body(headers, receive, MAX_BLOB_BYTES)
            if data is None:
                return
            declared = headers.get(_CONTENT_KEY, b"").decode("latin-1")
            actual = hashlib.sha256(data).hexdigest()
            if actual != declared:
                raise ChecksumMismatchError(f"metadata blob {name}", declared, actual)
            created = await self._io(self.meta.put, name, data)
            await _send_json(send, 201 if created else 200, {"name": name, "created": created})
        elif method == "GET":
            data = await self._io(self.meta.get, name)
            await _send(send, 200, data)
        elif method == "DELETE":
            if not await self._io(self.meta.delete, name):
                raise NotFoundError(f"metadata blob {name} not found on node {self.name}")
            await _send(send, 204)
        else:
            raise _HTTPError(405, f"{method} not allowed on /meta/{name}")

    async def _get(self, chunk_id: str, send: Send, *, head: bool) -> None:
        if head:
            size = (await self._io(self.store.stat, chunk_id)).size
            await _send(send, 200, b"", content_length=size)
            return
        self.gets_total += 1
        size, first, rest = await self._io(self._open_chunk, chunk_id)
        await send(_start(200, "application/octet-stream", size))
        sent = len(first)
        await send({"type": "http.response.body", "body": first, "more_body": sent < size})
        while sent < size:  # only chunks above one piece: the common case is a single hop
            piece = await self._io(next, rest)
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})

    def _open_chunk(self, chunk_id: str) -> tuple[int, bytes, Iterator[bytes]]:
        size, pieces = self.store.open_stream(chunk_id, STREAM_PIECE_BYTES)
        return size, next(pieces, b""), pieces

    def _measure_peer(self, peer: str, url: str) -> float:
        """RTT to a peer node in ms (best of three signed /health calls), so the service can
        place every node in Vivaldi's space, not only relative to itself."""
        from medshard.storage.node_client import NodeClient

        if not peer or not url.startswith("http://"):
            raise InvalidInputError("rtt needs ?peer=NAME&url=http://host:port")
        best = float("inf")
        with NodeClient(peer, url, self._secret, timeout=2.0) as client:
            for _ in range(3):
                start = time.perf_counter()
                client.health()
                best = min(best, (time.perf_counter() - start) * 1000.0)
        return round(best, 4)

    def _health(self) -> dict[str, Any]:
        disk = os.statvfs(self.store.root)
        compaction = self.compactor.stats()
        return {
            "name": self.name,
            "site": self.site,
            "capacity_bytes": self.store.capacity_bytes,
            "used_bytes": self.store.used_bytes,
            "free_disk_bytes": disk.f_bavail * disk.f_frsize,
            "chunks": self.store.chunk_count,
            "dead_bytes": compaction.pop("dead_bytes"),
            "reclaimable_bytes": compaction.pop("reclaimable_bytes"),
            "compaction": compaction,
            "load": {
                "requests_in_flight": self.requests_in_flight,
                "puts_total": self.puts_total,
                "batches_total": self.batches_total,
                "gets_total": self.gets_total,
            },
            "uptime_s": round(time.monotonic() - self._started, 3),
            "version": PROTOCOL_VERSION,
        }

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


def _status_of(e: MedshardError) -> int:
    return next(code for kind, code in _STATUS_OF if isinstance(e, kind))


def _error_body(e: MedshardError, *, status: bool = False) -> dict[str, Any]:
    """What an error answer says (with its ``status`` too, for a batch's per-chunk results)."""
    body: dict[str, Any] = {"status": _status_of(e)} if status else {}
    body["error"] = str(e)
    if isinstance(e, ChecksumMismatchError):
        body.update(expected=e.expected, actual=e.actual)
    return body


def _fraction(text: str) -> float | None:
    """A query's share between 0 and 1 (None if absent); 400 otherwise."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise _HTTPError(400, f"threshold must be a number from 0 to 1, not {text!r}")
    return value


async def _read_body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes | None:
    """The whole request body (413 beyond ``limit``), or None if the client disconnected."""
    body = _Body(headers, receive, limit)
    return body.bytes() if await body.fill(None) else None


class _Body:
    """A request body read as far as needed (a batch's manifest before its chunks)."""

    def __init__(self, headers: dict[bytes, bytes], receive: Receive, limit: int) -> None:
        declared = headers.get(b"content-length")
        if declared is not None and int(declared) > limit:
            raise _HTTPError(413, f"body larger than {limit} bytes")
        self._receive = receive
        self._limit = limit
        self._parts: list[bytes] = []
        self.size = 0
        self.complete = False

    async def fill(self, need: int | None) -> bool:
        """Read until ``need`` bytes are in (None: all of it) or the body ends; False if the
        client disconnected. 413 beyond the limit."""
        while not self.complete and (need is None or self.size < need):
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return False
            piece = message.get("body", b"")
            self.size += len(piece)
            if self.size > self._limit:
                raise _HTTPError(413, f"body larger than {self._limit} bytes")
            self._parts.append(piece)
            self.complete = not message.get("more_body", False)
        return True

    def bytes(self) -> bytes:
        """What was read so far."""
        if len(self._parts) != 1:
            self._parts = [b"".join(self._parts)]
        return self._parts[0]


def _start(status: int, content_type: str, length: int) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type.encode()), (b"content-length", b"%d" % length)],
    }


async def _send(
    send: Send,
    status: int,
    body: bytes = b"",
    content_type: str = "application/octet-stream",
    content_length: int | None = None,
) -> None:
    length = len(body) if content_length is None else content_length
    await send(_start(status, content_type, length))
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, payload: object) -> None:
    await _send(send, status, json.dumps(payload).encode(), "application/json")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def run_node(
    name: str,
    site: str,
    port: int,
    data_dir: str | os.PathLike[str],
    secret: str,
    *,
    capacity_bytes: int = 0,
    host: str = "127.0.0.1",
    volume_bytes: int = DEFAULT_VOLUME_BYTES,
    compact_threshold: float = DEFAULT_THRESHOLD,
    compact_bytes_per_s: float = DEFAULT_BYTES_PER_S,
    compact_interval_s: float = DEFAULT_INTERVAL_S,
) -> None:
    """Serve until SIGINT/SIGTERM, then let pending writes finish and close the store."""
    store = VolumeStore(
        Path(data_dir), name=name, capacity_bytes=capacity_bytes, volume_bytes=volume_bytes
    )
    compactor = Compactor(
        store,
        threshold=compact_threshold,
        bytes_per_s=compact_bytes_per_s,
        interval_s=compact_interval_s,
    ).start()
    app = NodeApp(store, name=name, site=site, secret=secret, compactor=compactor)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_keep_alive=75,  # outlive the client's pool expiry so it never reuses a dead one
        timeout_graceful_shutdown=10,
    )
    log.info("node %s (site %s) serving %s on http://%s:%d", name, site, data_dir, host, port)
    # uvicorn re-raises the stop signal to the handler it found once it has shut down; a no-op
    # one lets us return normally and close the store instead of dying by SIGTERM
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        compactor.stop()
        app.shutdown()
        store.close()
        log.info("node %s stopped", name)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="medshard-node", description="Run one medshard storage node.")
    p.add_argument("--name", required=True, help="node name, unique in the cluster")
    p.add_argument("--site", required=True, help="site (hospital, lab) the node is at")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", required=True, help="data directory (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--capacity-gb", type=float, default=0.0, help="GB (10^9) of chunks; 0 = disk")
    p.add_argument("--capacity-bytes", type=int, default=None, help="exact; overrides -gb")
    p.add_argument("--volume-bytes", type=int, default=DEFAULT_VOLUME_BYTES, help="roll-over size")
    p.add_argument(
        "--compact-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"compact a sealed volume once this share is reclaimable ({DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--compact-bytes-per-s",
        type=float,
        default=DEFAULT_BYTES_PER_S,
        help=f"compaction copy rate limit, 0 = unlimited ({DEFAULT_BYTES_PER_S})",
    )
    p.add_argument(
        "--compact-interval-s",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between compaction passes ({DEFAULT_INTERVAL_S:g})",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; the secret comes from the environment so it never shows in ``ps``."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        print(f"error: set {SECRET_ENV} to the cluster's node secret", file=sys.stderr)
        return 2
    capacity = args.capacity_bytes
    if capacity is None:
        capacity = int(args.capacity_gb * 1e9)
    try:
        run_node(
            args.name,
            args.site,
            args.port,
            args.data,
            secret,
            capacity_bytes=capacity,
            host=args.host,
            volume_bytes=args.volume_bytes,
            compact_threshold=args.compact_threshold,
            compact_bytes_per_s=args.compact_bytes_per_s,
            compact_interval_s=args.compact_interval_s,
        )
    except MedshardError as e:
        log.error("node %s cannot start: %s", args.name, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
