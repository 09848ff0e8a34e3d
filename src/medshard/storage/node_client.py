"""HTTP client of one storage node: the production :class:`ChunkStore`.

The write and read paths fan out over many nodes from a thread pool, so each client keeps a
pool of keep-alive connections shared by all threads. It speaks HTTP/1.1 with the standard
library's ``http.client``: ingest makes k requests per instance, and a profile showed a
general-purpose client (httpx) costing a third of the importer's CPU; this path costs a
fraction of that. Every failure that means "this replica is not usable now" becomes
:class:`NodeUnavailableError`, so callers can simply move on to the next replica.

Concurrent :meth:`NodeClient.put` calls travel together: while a request to the node is in
flight, further puts queue up and go in the next ``POST /chunks`` batch (:mod:`.put_batcher`,
framing in :mod:`.chunk_batch`), so a node spends its per-request CPU once per batch rather
than once per chunk copy; a put finding the node idle goes at once as a plain PUT.

Protocol: see :mod:`medshard.node.server`. Every request is signed (:mod:`.node_auth`): the
node secret itself is never sent.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from medshard.errors import (
    ChecksumMismatchError,
    InvalidInputError,
    MedshardError,
    NodeFullError,
    NodeUnavailableError,
    NotFoundError,
)
from medshard.storage.chunk_batch import BATCH_PATH, encode_manifest, manifest_sha256
from medshard.storage.chunkstore import ChunkStat
from medshard.storage.node_auth import (
    AUTH_HEADER,
    CONTENT_SHA256_HEADER,
    EMPTY_SHA256,
    RequestSigner,
)
from medshard.storage.put_batcher import MAX_BATCH_BYTES, MAX_BATCH_CHUNKS, Outcome, PutBatcher

# Safe to retry once: every request of the protocol is idempotent (PUT of a content address
# included), and a pooled connection the node closed or lost in a restart fails exactly so.
_RETRYABLE = (ConnectionError, http.client.HTTPException, BrokenPipeError)
_CHUNK_ID = re.compile(r"[0-9a-f]{64}")
#: Answers to a batch meaning "send these chunks one by one": a node without the batch
#: endpoint (an older version answers 401, as it signs no body for it, or 404/405).
_NO_BATCHES = (401, 404, 405)


@dataclass
class Response:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    @property
    def reason_phrase(self) -> str:
        return http.client.responses.get(self.status_code, "")

    def json(self) -> Any:
        return json.loads(self.content)


class _Connection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NodeClient:
    """A storage node reached over HTTP.

    Parameters
    ----------
    name
        Node name as the node itself was started with: requests are signed for it, and errors
        carry it so the caller knows which replica failed.
    url
        Base URL, e.g. ``http://127.0.0.1:7401``.
    secret
        The cluster's node secret; requests are signed with a key derived from it.
    timeout
        Seconds for connect, each read and each write; a slow node counts as unavailable.
    max_connections
        Pool size; match it to how many threads may talk to this node at once.
    batch_puts
        Coalesce concurrent :meth:`put` calls into batch requests (see the module docstring);
        False sends one PUT per chunk. ``batch_max_bytes`` and ``batch_max_chunks`` cap a
        batch, ``batch_in_flight`` is how many batches may be in flight at once.
    """

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        timeout: float = 10.0,
        *,
        max_connections: int = 32,
        batch_puts: bool = True,
        batch_max_bytes: int = MAX_BATCH_BYTES,
        batch_max_chunks: int = MAX_BATCH_CHUNKS,
        batch_in_flight: int = 1,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise InvalidInputError(f"node {name}: unsupported URL {url!r} (http://host:port)")
        self._host, self._port = parts.hostname, parts.port or 80
        self._signer = RequestSigner(secret, name)
        self._timeout = timeout
        self._max_idle = max_connections
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self.batcher: PutBatcher | None = None
        if batch_puts:
            self.batcher = PutBatcher(
                self._put_batch,
                max_bytes=batch_max_bytes,
                max_chunks=batch_max_chunks,
                max_in_flight=batch_in_flight,
            )

    def __repr__(self) -> str:
        return f"NodeClient({self.name!r}, {self.url!r})"

    # -- ChunkStore ----------------------------------------------------------------------------

    def put(self, chunk_id: str, data: bytes) -> bool:
        """Returns only once the node has the chunk durable; False if it already had it.

        Concurrent puts share batch requests; each still returns or raises for its own chunk
        (NodeFullError, ChecksumMismatchError, NodeUnavailableError...) as a lone PUT would.
        """
        if self.batcher is not None and _CHUNK_ID.fullmatch(chunk_id):
            return self.batcher.put(chunk_id, data)
        return self._put_one(chunk_id, data)

    def _put_one(self, chunk_id: str, data: bytes) -> bool:
        r = self._request("PUT", f"/chunks/{chunk_id}", data, content_sha256=chunk_id)
        return r.status_code == 201

    def _put_batch(self, items: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """Send chunks in one ``POST /chunks`` (one alone as a plain PUT); one outcome each."""
        if len(items) == 1:
            return [_outcome(self._put_one, cid, data) for cid, data in items]
        manifest = encode_manifest([(cid, len(data)) for cid, data in items])
        try:
            r = self._call(
                "POST",
                BATCH_PATH,
                [manifest, *(data for _cid, data in items)],
                content_sha256=manifest_sha256(manifest),
            )
        except NodeUnavailableError as e:  # one error each: callers raise them in parallel
            return [NodeUnavailableError(self.name, e.reason) for _ in items]
        if r.status_code in _NO_BATCHES:
            return [_outcome(self._put_one, cid, data) for cid, data in items]
        if r.status_code != 200:
            return [self._error_for(r, BATCH_PATH) for _ in items]
        results = _json_or_empty(r).get("results")
        if not isinstance(results, list) or len(results) != len(items):
            reason = f"malformed answer to a batch of {len(items)} chunks"
            return [NodeUnavailableError(self.name, reason) for _ in items]
        outcomes: list[Outcome] = []
        for (cid, _data), result in zip(items, results, strict=True):
            status = int(result.get("status", 0)) if isinstance(result, dict) else 0
            if status in (200, 201):
                outcomes.append(status == 201)
            else:
                body = result if isinstance(result, dict) else {}
                outcomes.append(self._error_for(Response(status), f"/chunks/{cid}", body))
        return outcomes

    def get(self, chunk_id: str) -> bytes:
        """The bytes as the node has them; the caller verifies the hash."""
        return self._request("GET", f"/chunks/{chunk_id}").content

    def delete(self, chunk_id: str) -> bool:
        try:
            self._request("DELETE", f"/chunks/{chunk_id}")
        except NotFoundError:
            return False
        return True

    def exists(self, chunk_id: str) -> bool:
        try:
            self.stat(chunk_id)
        except NotFoundError:
            return False
        return True

    def stat(self, chunk_id: str) -> ChunkStat:
        r = self._request("HEAD", f"/chunks/{chunk_id}")
        return ChunkStat(chunk_id, int(r.headers["content-length"]))

    def list_ids(self) -> Iterator[str]:
        ids: list[str] = self._request("GET", "/chunks").json()["chunks"]
        return iter(ids)

    # -- beyond the protocol -------------------------------------------------------------------

    def rtt_to(self, peer: str, url: str) -> float:
        """The RTT in ms this node measures to another node (for network coordinates)."""
        query = urlencode({"peer": peer, "url": url})
        return float(self._request("GET", f"/rtt?{query}").json()["rtt_ms"])

    def compact(self, threshold: float | None = None) -> dict[str, Any]:
        """Ask the node to compact its sealed volumes now, in the background, every one whose
        reclaimable share is at least ``threshold`` (default: the node's own setting).
        Returns the node's compaction progress (as in ``health()["compaction"]``)."""
        query = "" if threshold is None else "?" + urlencode({"threshold": threshold})
        path = f"/compact{query}"
        stats: dict[str, Any] = self._request("POST", path).json()
        return stats

    def verify(self, chunk_id: str) -> None:
        """Ask the node to re-hash its copy (scrubbing); ChecksumMismatchError if it rotted,
        NotFoundError if the node no longer holds it."""
        self._request("GET", f"/chunks/{chunk_id}/verify")

    # -- named metadata blobs (backups; see medshard.node.metablobs) ---------------------------

    def put_meta(self, name: str, data: bytes) -> bool:
        """Store a named blob durably (replacing one of that name); True if it was new."""
        digest = hashlib.sha256(data).hexdigest()
        r = self._request(
            "PUT",
            f"/meta/{name}",
            data,
            content_sha256=digest,
            headers={CONTENT_SHA256_HEADER: digest},
        )
        return r.status_code == 201

    def get_meta(self, name: str) -> bytes:
        """A named blob's bytes; NotFoundError if the node has none of that name."""
        return self._request("GET", f"/meta/{name}").content

    def delete_meta(self, name: str) -> bool:
        try:
            self._request("DELETE", f"/meta/{name}")
        except NotFoundError:
            return False
        return True

    def list_meta(self) -> list[dict[str, Any]]:
        """Every named blob on the node as ``{"name", "size"}``."""
        blobs: list[dict[str, Any]] = self._request("GET", "/meta").json()["blobs"]
        return blobs

    def health(self) -> dict[str, Any]:
        """The node's ``/health`` document (name, site, capacity, usage, load, uptime)."""
        doc: dict[str, Any] = self._request("GET", "/health").json()
        return doc

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_sha256: str = EMPTY_SHA256,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send one signed request; ``content_sha256`` is the body's hash (a chunk's id)."""
        r = self._call(method, path, body, content_sha256=content_sha256, headers=headers)
        if r.status_code < 300:
            return r
        raise self._error_for(r, path)

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | list[bytes] | None = None,
        *,
        content_sha256: str = EMPTY_SHA256,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """One signed request, whatever its status; NodeUnavailableError if none came back.
        A list body is sent piece by piece (a batch's chunks are not copied into one)."""
        try:
            try:
                r = self._send(method, path, body, content_sha256, fresh=False, extra=headers)
            except _RETRYABLE:  # signed afresh: the node may have seen the first nonce
                r = self._send(method, path, body, content_sha256, fresh=True, extra=headers)
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out
            raise NodeUnavailableError(self.name, f"{type(e).__name__}: {e}") from e
        return r

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | list[bytes] | None,
        content_sha256: str,
        *,
        fresh: bool,
        extra: dict[str, str] | None = None,
    ) -> Response:
        conn = None if fresh else self._checkout()
        if conn is None:
            conn = _Connection(self._host, self._port, timeout=self._timeout)
        headers = {**(extra or {}), AUTH_HEADER: self._signer.header(method, path, content_sha256)}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        if isinstance(body, list):
            headers["Content-Length"] = str(sum(len(piece) for piece in body))
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            content = resp.read()
        except BaseException:
            conn.close()
            raise
        response = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, content)
        if resp.will_close:
            conn.close()
        else:
            self._checkin(conn)
        return response

    def _checkout(self) -> _Connection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _checkin(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _error_for(
        self, r: Response, path: str, body: dict[str, Any] | None = None
    ) -> MedshardError:
        """The error an answer means; ``body`` is its JSON (parsed from ``r`` if not given)."""
        if body is None:
            body = _json_or_empty(r)
        message = str(body.get("error") or r.text[:200] or r.reason_phrase)
        if r.status_code == 404:
            return NotFoundError(f"{path} not found on node {self.name}")
        if r.status_code == 409:
            return ChecksumMismatchError(
                f"node {self.name} refused {path}",
                str(body.get("expected", "")),
                str(body.get("actual", "")),
            )
        if r.status_code in (400, 413):
            return InvalidInputError(f"node {self.name} refused {path}: {message}")
        if r.status_code == 401:
            return NodeUnavailableError(self.name, f"refused our signature: {message}")
        if r.status_code == 507:
            return NodeFullError(self.name, f"HTTP 507 (out of space) on {path}: {message}")
        return NodeUnavailableError(self.name, f"HTTP {r.status_code} on {path}: {message}")


def _outcome(put: Callable[[str, bytes], bool], chunk_id: str, data: bytes) -> Outcome:
    """What ``put`` returned or raised, as a batch outcome."""
    try:
        return put(chunk_id, data)
    except MedshardError as e:
        return e


def _json_or_empty(r: Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
