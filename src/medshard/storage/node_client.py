"""HTTP client of one storage node: the production :class:`ChunkStore`.

The write and read paths fan out over many nodes from a thread pool, so one pooled
``httpx.Client`` per node is shared by all threads (httpx clients are thread-safe) and keeps
connections alive between chunks. Every failure that means "this replica is not usable now"
becomes :class:`NodeUnavailableError`, so callers can simply move on to the next replica.

Protocol: see :mod:`medshard.node.server`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from medshard.errors import (
    ChecksumMismatchError,
    InvalidInputError,
    NodeUnavailableError,
    NotFoundError,
)
from medshard.storage.chunkstore import ChunkStat

#: Must equal :data:`medshard.node.server.SECRET_HEADER` (the storage layer does not import
#: the daemon, to keep uvicorn out of clients).
SECRET_HEADER = "X-Medshard-Node-Secret"

# Safe to retry once: every request of the protocol is idempotent (PUT of a content address
# included), and a pooled connection the node closed or lost in a restart fails exactly so.
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class NodeClient:
    """A storage node reached over HTTP.

    Parameters
    ----------
    name
        Node name, carried in errors so the caller knows which replica failed.
    url
        Base URL, e.g. ``http://127.0.0.1:7401``.
    secret
        Shared node secret sent with every request.
    timeout
        Seconds for connect, each read and each write; a slow node counts as unavailable.
    max_connections
        Pool size; match it to how many threads may talk to this node at once.
    """

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        timeout: float = 10.0,
        *,
        max_connections: int = 32,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={SECRET_HEADER: secret},
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,  # below the node's 75 s, so the node never closes first
            ),
        )

    def __repr__(self) -> str:
        return f"NodeClient({self.name!r}, {self.url!r})"

    # -- ChunkStore ----------------------------------------------------------------------------

    def put(self, chunk_id: str, data: bytes) -> bool:
        """Returns only once the node has the chunk durable; False if it already had it."""
        r = self._request(
            "PUT",
            f"/chunks/{chunk_id}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return r.status_code == 201

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

    def health(self) -> dict[str, Any]:
        """The node's ``/health`` document (name, site, capacity, usage, load, uptime)."""
        doc: dict[str, Any] = self._request("GET", "/health").json()
        return doc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            try:
                r = self._client.request(method, path, **kwargs)
            except _RETRYABLE:
                r = self._client.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise NodeUnavailableError(self.name, f"{type(e).__name__}: {e}") from e
        if r.status_code < 300:
            return r
        self._raise_for(r, path)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for(self, r: httpx.Response, path: str) -> None:
        message = _error_text(r)
        if r.status_code == 404:
            raise NotFoundError(f"{path} not found on node {self.name}")
        if r.status_code == 409:
            body = _json_or_empty(r)
            raise ChecksumMismatchError(
                f"node {self.name} refused {path}",
                str(body.get("expected", "")),
                str(body.get("actual", "")),
            )
        if r.status_code in (400, 413):
            raise InvalidInputError(f"node {self.name} refused {path}: {message}")
        if r.status_code == 401:
            raise NodeUnavailableError(self.name, f"rejected the node secret: {message}")
        raise NodeUnavailableError(self.name, f"HTTP {r.status_code} on {path}: {message}")


def _json_or_empty(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(r: httpx.Response) -> str:
    return str(_json_or_empty(r).get("error") or r.text[:200] or r.reason_phrase)
