"""Per-request authentication between the service and storage nodes: HMAC-SHA256 signatures.

The node secret (``Settings.node_secret``) never travels. Both sides derive a 32-byte signing
key from it once, with HKDF-SHA256 (:func:`derive_key`), and every request carries one header::

    Authorization: Medshard-HMAC-SHA256 t=<unix seconds>,n=<nonce: 32 hex>,s=<signature: 64 hex>

where the signature is HMAC-SHA256 under that key of the newline-joined *string to sign*::

    medshard-node-v1
    <method>            PUT, POST, GET, HEAD, DELETE
    <node name>         the node the request is meant for, as registered in the catalog
    <target>            path, plus ``?query`` if any, exactly as sent
    <t>
    <n>
    <content hash>      SHA-256 (hex) of the body

For ``PUT /chunks/{id}`` the content hash *is* the chunk id: the node refuses (409) a body that
does not hash to it, so signing the path binds the body and neither side hashes it twice. A
batch of chunks (``POST /chunks``, :mod:`medshard.storage.chunk_batch`) signs the SHA-256 of
its manifest, the ids and lengths of its chunks, for the same reason. ``PUT /meta/{name}``
signs the SHA-256 of its body, declared in a header. Every other request has no body and
signs the hash of the empty string.

A node (:class:`RequestVerifier`) answers 401 unless the signature matches (constant-time
comparison), ``t`` is within :data:`WINDOW_S` of its clock, and the nonce was not seen in that
window (:class:`ReplayGuard`). So a captured request cannot be replayed later, nor now to the
same node, nor to another node (the name is signed), and a request cannot be altered in flight.
What is *not* covered: responses are not signed and nothing is encrypted (chunks are
ciphertext already and readers verify them by hash; run nodes on a private network or a VPN).

This module is pure (no HTTP): :mod:`medshard.storage.node_client` signs with it and
:mod:`medshard.node.server` verifies with it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medshard.errors import InvalidInputError
from medshard.storage.chunk_batch import (
    BATCH_PATH,
    manifest_count,
    manifest_sha256,
    manifest_size,
)

#: The header carrying the signature, and its scheme.
AUTH_HEADER: Final = "Authorization"
SCHEME: Final = "Medshard-HMAC-SHA256"
#: The header carrying the SHA-256 of a named metadata blob's body (``PUT /meta/{name}``):
#: signed like a chunk id, and the node checks the body against it.
CONTENT_SHA256_HEADER: Final = "X-Medshard-Content-SHA256"
#: Seconds a signed request stays valid either side of the node's clock (clock skew allowance).
WINDOW_S: Final = 60
#: Nonces a node remembers at most; beyond it the window shrinks (see :class:`ReplayGuard`).
MAX_NONCES: Final = 1 << 18
#: SHA-256 of the empty body, the content hash of every request but a chunk PUT.
EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()

_VERSION: Final = "medshard-node-v1"
_HKDF_SALT: Final = b"medshard node auth"
_HKDF_INFO: Final = b"medshard node request signing v1"
_PREFIX: Final = SCHEME + " "


class AuthError(Exception):
    """A request's signature is missing, malformed, wrong, stale or replayed (HTTP 401)."""


def derive_key(secret: str) -> bytes:
    """The signing key for ``secret`` (HKDF-SHA256, 32 bytes); derive once, sign many times."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return hkdf.derive(secret.encode())


def content_hash(method: str, target: str, body: bytes | None) -> str:
    """The content hash a request signs: the chunk id for a chunk PUT, the manifest's SHA-256
    for a batch, else SHA-256 of the body."""
    if method == "PUT" and target.startswith("/chunks/"):
        return target[len("/chunks/") :].partition("?")[0]
    if method == "POST" and target == BATCH_PATH and body and len(body) >= 4:
        return manifest_sha256(body[: manifest_size(manifest_count(body))])
    return hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256


def _signature(
    key: bytes, method: str, node: str, target: str, t: str, nonce: str, content: str
) -> str:
    message = "\n".join((_VERSION, method, node, target, t, nonce, content)).encode()
    return hmac.digest(key, message, "sha256").hex()


class RequestSigner:
    """Signs requests to one node.

    Parameters
    ----------
    secret
        The cluster's node secret; only the key derived from it is kept.
    node
        Name of the node the requests go to (signed, so they are valid at that node only).

    Examples
    --------
    >>> signer = RequestSigner("s3cret", "node0")
    >>> signer.header("GET", "/health").startswith("Medshard-HMAC-SHA256 t=")
    True
    """

    def __init__(self, secret: str, node: str) -> None:
        self._key = derive_key(secret)
        self.node = node

    def header(
        self,
        method: str,
        target: str,
        content_sha256: str = EMPTY_SHA256,
        *,
        now: float | None = None,
        nonce: str | None = None,
    ) -> str:
        """The ``Authorization`` value for one request; never reuse it for another.

        ``now`` and ``nonce`` exist for tests (stale and replayed requests).
        """
        t = str(int(time.time() if now is None else now))
        n = os.urandom(16).hex() if nonce is None else nonce
        s = _signature(self._key, method, self.node, target, t, n, content_sha256)
        return f"{_PREFIX}t={t},n={n},s={s}"


class ReplayGuard:
    """Nonces seen within the window, bucketed by the second they were signed at.

    Memory is bounded: past ``max_nonces`` the oldest second is dropped and every timestamp up
    to it is refused from then on, so overload shortens the window instead of reopening it to
    replays. Not thread-safe: a node calls it from its event loop only.
    """

    def __init__(self, window_s: int = WINDOW_S, max_nonces: int = MAX_NONCES) -> None:
        self.window_s = window_s
        self.max_nonces = max_nonces
        self._buckets: dict[int, set[str]] = {}
        self._size = 0
        self._floor = -1  # timestamps <= floor are refused
        self._pruned_at = -1

    def __len__(self) -> int:
        return self._size

    def check_and_add(self, t: int, nonce: str, now: int) -> None:
        """Record ``nonce`` signed at ``t``.

        Raises
        ------
        AuthError
            ``t`` is outside the window or evicted under load, or the nonce was already used.
        """
        if abs(now - t) > self.window_s or t <= self._floor:
            raise AuthError(f"stale timestamp {t} (node clock {now}, window ±{self.window_s}s)")
        if now != self._pruned_at:
            self._prune(now)
        bucket = self._buckets.get(t)
        if bucket is None:
            bucket = self._buckets[t] = set()
        elif nonce in bucket:
            raise AuthError("replayed request (nonce already used)")
        bucket.add(nonce)
        self._size += 1
        while self._size > self.max_nonces:
            oldest = min(self._buckets)
            self._size -= len(self._buckets.pop(oldest))
            self._floor = max(self._floor, oldest)

    def _prune(self, now: int) -> None:
        self._pruned_at = now
        for t in [t for t in self._buckets if t < now - self.window_s]:
            self._size -= len(self._buckets.pop(t))


class RequestVerifier:
    """Checks signed requests at a node named ``node`` (see the module docstring).

    Raises
    ------
    InvalidInputError
        The secret is empty: set ``node_secret`` in medshard.toml (``medshard init`` makes one).
    """

    def __init__(
        self, secret: str, node: str, *, window_s: int = WINDOW_S, max_nonces: int = MAX_NONCES
    ) -> None:
        if not secret:
            raise InvalidInputError("the node secret must not be empty (node_secret)")
        self._key = derive_key(secret)
        self.node = node
        self.replays = ReplayGuard(window_s, max_nonces)

    def verify(
        self, method: str, target: str, header: str | None, content_sha256: str, now: float
    ) -> None:
        """Accept the request or raise :class:`AuthError` saying why not."""
        if not header or not header.startswith(_PREFIX):
            raise AuthError(
                f"missing {AUTH_HEADER}: {SCHEME} signature (the service signs every request "
                "with a key derived from node_secret; a bare secret header is not accepted)"
            )
        try:
            ft, fn, fs = header[len(_PREFIX) :].split(",")
            if ft[:2] != "t=" or fn[:2] != "n=" or fs[:2] != "s=":
                raise ValueError(header)
            t, nonce, given = ft[2:], fn[2:], fs[2:]
            t_int = int(t)
        except ValueError:
            raise AuthError(f"malformed {AUTH_HEADER} header") from None
        expected = _signature(self._key, method, self.node, target, t, nonce, content_sha256)
        if not given.isascii() or not hmac.compare_digest(expected, given):
            raise AuthError(
                f"bad signature: wrong node secret, or the request was meant for another node "
                f"than {self.node!r}, or altered in flight"
            )
        self.replays.check_and_add(t_int, nonce, int(now))
