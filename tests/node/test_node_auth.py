"""Signed node requests (medshard.storage.node_auth) against a real node process.

The node secret never travels: every request carries an HMAC over method, node, path, time,
nonce and content hash. A real node must refuse, with 401, the old static secret header, a bad
signature, a request signed for another node, a stale or future timestamp and a replay.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medshard.errors import NodeUnavailableError
from medshard.node.launcher import NodeAuth, NodeProcess, free_port, start_node_process
from medshard.storage.node_auth import (
    AUTH_HEADER,
    EMPTY_SHA256,
    AuthError,
    ReplayGuard,
    RequestSigner,
    RequestVerifier,
)
from medshard.storage.node_client import NodeClient

SECRET = "node-auth-test-secret"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    proc = start_node_process("n1", "site-a", free_port(), tmp_path / "n1", SECRET)
    proc.wait_ready()
    yield proc
    proc.stop(timeout=5)


def _chunk(n: int = 1000) -> tuple[str, bytes]:
    data = os.urandom(n)
    return hashlib.sha256(data).hexdigest(), data


def test_a_correctly_signed_request_works(node: NodeProcess) -> None:
    cid, data = _chunk()
    with httpx.Client(base_url=node.url, auth=NodeAuth(SECRET, "n1")) as client:
        assert client.put(f"/chunks/{cid}", content=data).status_code == 201
        assert client.get(f"/chunks/{cid}").content == data
        assert client.get("/health").json()["name"] == "n1"
    with NodeClient("n1", node.url, SECRET) as nc:
        assert nc.get(cid) == data


def test_the_old_static_secret_header_is_refused(node: NodeProcess) -> None:
    with httpx.Client(base_url=node.url) as raw:
        r = raw.get("/health", headers={"X-Medshard-Node-Secret": SECRET})
        assert r.status_code == 401
        assert "Medshard-HMAC-SHA256" in r.json()["error"]
        assert raw.get("/health").status_code == 401


def test_a_bad_signature_is_refused(node: NodeProcess) -> None:
    signer = RequestSigner(SECRET, "n1")
    good = signer.header("GET", "/health")
    forged = good[:-4] + ("0000" if not good.endswith("0000") else "1111")
    with httpx.Client(base_url=node.url) as raw:
        for header in (
            forged,
            RequestSigner("wrong-secret", "n1").header("GET", "/health"),
            RequestSigner(SECRET, "n2").header("GET", "/health"),  # meant for another node
            signer.header("GET", "/chunks"),  # signed for another path
            signer.header("HEAD", "/health"),  # signed for another method
            "Medshard-HMAC-SHA256 t=1,n=2",
            "Medshard-HMAC-SHA256 t=x,n=2,s=3",
            "Bearer abc",
        ):
            r = raw.get("/health", headers={AUTH_HEADER: header})
            assert r.status_code == 401, header


def test_a_body_other_than_the_signed_chunk_is_not_stored(node: NodeProcess) -> None:
    cid, data = _chunk()
    signer = RequestSigner(SECRET, "n1")
    with httpx.Client(base_url=node.url, auth=NodeAuth(SECRET, "n1")) as client:
        header = signer.header("PUT", f"/chunks/{cid}", cid)
        r = client.put(f"/chunks/{cid}", content=data + b"!", headers={AUTH_HEADER: header})
        assert r.status_code == 409  # the signature binds the id, the id binds the body
        assert client.head(f"/chunks/{cid}").status_code == 404


def test_stale_and_future_timestamps_are_refused(node: NodeProcess) -> None:
    signer = RequestSigner(SECRET, "n1")
    with httpx.Client(base_url=node.url) as raw:
        for skew in (-120, +120):
            header = signer.header("GET", "/health", now=time.time() + skew)
            r = raw.get("/health", headers={AUTH_HEADER: header})
            assert r.status_code == 401 and "stale" in r.json()["error"]
        ok = signer.header("GET", "/health", now=time.time() - 30)  # within the window
        assert raw.get("/health", headers={AUTH_HEADER: ok}).status_code == 200


def test_a_replayed_request_is_refused(node: NodeProcess) -> None:
    cid, data = _chunk()
    signer = RequestSigner(SECRET, "n1")
    with httpx.Client(base_url=node.url, auth=NodeAuth(SECRET, "n1")) as client:
        assert client.put(f"/chunks/{cid}", content=data).status_code == 201
    delete = {AUTH_HEADER: signer.header("DELETE", f"/chunks/{cid}")}
    with httpx.Client(base_url=node.url) as raw:
        assert raw.delete(f"/chunks/{cid}", headers=delete).status_code == 204
        again = raw.delete(f"/chunks/{cid}", headers=delete)
        assert again.status_code == 401 and "replayed" in again.json()["error"]
        # a fresh signature is a new request
        fresh = {AUTH_HEADER: signer.header("DELETE", f"/chunks/{cid}")}
        assert raw.delete(f"/chunks/{cid}", headers=fresh).status_code == 404


def test_the_client_signs_every_request_afresh(node: NodeProcess) -> None:
    cid, data = _chunk()
    with NodeClient("n1", node.url, SECRET) as client:
        for _ in range(50):  # the same request many times in one second: new nonce each time
            client.put(cid, data)
            assert client.get(cid) == data
    with NodeClient("n2", node.url, SECRET) as misnamed, pytest.raises(NodeUnavailableError) as e:
        misnamed.get(cid)
    assert "another node than 'n1'" in str(e.value)


# -- units: the verifier and its bounded replay cache ------------------------------------------


def test_verifier_accepts_once_then_refuses_the_replay() -> None:
    signer, verifier = RequestSigner("s", "n"), RequestVerifier("s", "n")
    now = time.time()
    header = signer.header("GET", "/health", now=now)
    verifier.verify("GET", "/health", header, EMPTY_SHA256, now)
    with pytest.raises(AuthError, match="replayed"):
        verifier.verify("GET", "/health", header, EMPTY_SHA256, now + 1)


def test_replay_cache_forgets_what_the_window_already_refuses() -> None:
    guard = ReplayGuard(window_s=60)
    for i in range(100):
        guard.check_and_add(1000, f"n{i}", now=1000)
    assert len(guard) == 100
    guard.check_and_add(1061, "late", now=1061)  # 1000 is now outside the window: pruned
    assert len(guard) == 1
    with pytest.raises(AuthError, match="stale"):
        guard.check_and_add(1000, "n0", now=1061)


def test_replay_cache_is_bounded_and_shrinks_the_window_rather_than_forget() -> None:
    guard = ReplayGuard(window_s=60, max_nonces=10)
    for t in range(1000, 1020):
        guard.check_and_add(t, f"n{t}", now=1020)
        assert len(guard) <= 10
    # the evicted seconds are refused outright: a replay of them cannot slip through
    with pytest.raises(AuthError, match="stale"):
        guard.check_and_add(1005, "n1005", now=1020)
    guard.check_and_add(1020, "new", now=1020)


def test_signing_and_checking_cost_microseconds() -> None:
    signer, verifier = RequestSigner("s", "n"), RequestVerifier("s", "n")
    cid = hashlib.sha256(b"x").hexdigest()
    n = 5000
    start = time.perf_counter()
    for _ in range(n):
        now = time.time()
        verifier.verify(
            "PUT", f"/chunks/{cid}", signer.header("PUT", f"/chunks/{cid}", cid), cid, now
        )
    per_request = (time.perf_counter() - start) / n
    assert per_request < 200e-6, f"{per_request * 1e6:.1f} µs per sign + verify"
