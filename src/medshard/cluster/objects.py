"""The object write and read paths: encrypt, chunk, place, replicate; verify, decrypt, stream.

Write (``write`` then ``record``, both driven by :meth:`Archive.put_object`, the one write
path): a fresh data key per object; the plaintext is read chunk by chunk, each chunk sealed,
content-addressed and PUT to the object's replica set in parallel. A chunk is acknowledged once
``write_quorum`` nodes made it durable; nodes that failed are left for repair (the catalog
records only real copies). A node that answers "full" (507) is marked so in the pool and the
copy goes to the next node placement picks instead, so a full node costs no copy.
``record`` wraps the data key under the patient's key and adds the catalog rows inside the
caller's transaction, after the bytes are durable.

Read (``read``): replicas ordered by health, then nearest to the requesting site when the
caller names one (``near_site``), else by measured latency; every chunk is hash-verified
before it is decrypted. A corrupt or missing copy is marked in the catalog (which queues it
for repair) and the next replica is tried.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from sqlalchemy.orm import Session

from medshard import metrics
from medshard.catalog.db import Catalog
from medshard.catalog.models import Chunk, Replica, StoredObject
from medshard.catalog.replicas import set_replica_state
from medshard.catalog.stored_objects import object_key_of_instance, object_with_replicas
from medshard.catalog.writes import (
    ObjectRow,
    PatientKeyRow,
    insert_object,
    patient_key_row_by_pk,
)
from medshard.cluster.nodes import NodePool
from medshard.cluster.placement import (
    CareAwarePlacement,
    PlacementPolicy,
    chunk_key,
    site_distance,
)
from medshard.config import Settings
from medshard.errors import (
    ChecksumMismatchError,
    InsufficientNodesError,
    MedshardError,
    NodeFullError,
    NoQuorumError,
    NotFoundError,
    StorageError,
)
from medshard.storage.chunking import iter_chunks
from medshard.storage.chunkstore import chunk_id_of
from medshard.storage.envelope import (
    ChunkCipher,
    new_key,
    patient_key_context,
    unwrap_data_key,
)
from medshard.storage.keys import KeyProvider, key_provider_for

log = logging.getLogger(__name__)

#: Chunks of one object fetched at once when it is read (each up to ``chunk_size`` bytes).
READ_AHEAD = 4


def shard_of(patient_id: str, shards: int) -> int:
    """Shard = hash(patient id) mod S, with a hash that is stable across processes."""
    digest = hashlib.sha256(patient_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


@dataclass
class WrittenChunk:
    idx: int
    chunk_id: str
    size: int
    nodes: list[str]


class KeyedPatient(Protocol):
    """A patient row or key row: what unwrapping the patient's key needs."""

    @property
    def patient_id(self) -> str: ...
    @property
    def wrapped_key(self) -> bytes | None: ...
    @property
    def master_key_id(self) -> str: ...


@dataclass
class WrittenObject:
    """What ``write`` made durable, ready for ``record``.

    The data key stays in memory, unwrapped, until ``record``: the patient's key is only
    certain inside the commit (a new patient's row may be created meanwhile by another writer).
    """

    object_key: str
    size: int
    sha256: str
    data_key: bytes = field(repr=False)
    chunk_size: int
    chunks: list[WrittenChunk] = field(default_factory=list)

    @property
    def min_copies(self) -> int:
        return min(len(c.nodes) for c in self.chunks)


class ObjectStore:
    """Reads and writes objects over the node pool; keeps catalog rows in step."""

    def __init__(
        self,
        catalog: Catalog,
        pool: NodePool,
        keys: KeyProvider,
        settings: Settings,
        placement: PlacementPolicy | None = None,
    ) -> None:
        self.catalog = catalog
        self.pool = pool
        self.keys = keys
        self.settings = settings
        self.placement = placement or CareAwarePlacement(
            min_reliability=settings.min_reliability, near_slack_ms=settings.near_slack_ms
        )
        self._patient_keys: dict[tuple[str, bytes], bytes] = {}
        self._choosing = threading.Lock()
        path = settings.master_key_path
        self._key_stamp = path.stat().st_mtime_ns if path.exists() else 0

    # -- keys ---------------------------------------------------------------------------
    def patient_key(self, patient: KeyedPatient) -> bytes:
        if patient.wrapped_key is None:
            raise StorageError(
                f"patient {patient.patient_id!r} has been crypto-shredded: data is unreadable"
            )
        cache_key = (patient.patient_id, patient.wrapped_key)
        key = self._patient_keys.get(cache_key)
        if key is None:
            if patient.master_key_id and patient.master_key_id != self.keys.key_id:
                self.reload_master_key()  # rotated by `medshard keys rotate` meanwhile
            key = self.keys.unwrap(patient.wrapped_key, patient_key_context(patient.patient_id))
            if len(self._patient_keys) > 10_000:
                self._patient_keys.clear()
            self._patient_keys[cache_key] = key
        return key

    def new_patient_key(self, patient_id: str) -> tuple[bytes, str]:
        """A fresh wrapped patient key for a new patient row, and the master key's id.

        The key file is checked first, so a process started before a rotation never wraps
        a new patient's key under the retired master key.
        """
        self.reload_master_key()
        return self.keys.wrap(new_key(), patient_key_context(patient_id)), self.keys.key_id

    def reload_master_key(self) -> None:
        """Pick up a rotated master key (cheap when nothing changed: one stat)."""
        path = self.settings.master_key_path
        try:
            stamp = path.stat().st_mtime_ns if path.exists() else 0
        except OSError:
            return
        if stamp != self._key_stamp:
            self._key_stamp = stamp
            self.keys = key_provider_for(path)

    def forget_patient(self, patient_id: str) -> None:
        """Drop a shredded patient's key from memory."""
        for cache_key in [k for k in self._patient_keys if k[0] == patient_id]:
            self._patient_keys.pop(cache_key, None)

    # -- write --------------------------------------------------------------------------
    def write(self, stream: BinaryIO, *, care_sites: Sequence[str] = ()) -> WrittenObject:
        """Encrypt, chunk and replicate a stream; raises NoQuorumError (nothing kept) on failure."""
        object_key = uuid.uuid4().hex
        data_key = new_key()
        cipher = ChunkCipher(data_key, object_key)
        chunk_size = self.settings.chunk_size
        k, quorum = self.settings.replicas, self.settings.write_quorum
        views = self.pool.views()
        sites = self.pool.site_views

        def targets_of(idx: int) -> list[str]:
            """Each chunk its own replica set: a large object is striped over the nodes."""
            key = chunk_key(object_key, idx)
            targets = self.placement.place(key, views, k, care_sites=care_sites, sites=sites)
            if len(targets) < quorum:
                raise NoQuorumError(
                    f"only {len(targets)} live storage node(s) for a write quorum of {quorum}"
                )
            return targets

        def spares_of(idx: int, targets: list[str]) -> Callable[[], str | None]:
            """The next node for chunk ``idx`` when a target turns out full (None: no more)."""
            key = chunk_key(object_key, idx)
            taken = set(targets)
            lock = threading.Lock()

            def spare() -> str | None:
                with lock:  # the chunk's puts run in parallel: never one node twice
                    try:
                        views_now = self.pool.views()  # the full node marked as such
                        names = self.placement.place(
                            key, views_now, 1, exclude=taken, care_sites=care_sites, sites=sites
                        )
                    except InsufficientNodesError:
                        return None
                    taken.update(names)
                    return names[0] if names else None

            return spare

        targets_of(0)  # no node for a quorum: refuse before reading anything
        result = WrittenObject(
            object_key=object_key,
            size=0,
            sha256="",
            data_key=data_key,
            chunk_size=chunk_size,
        )
        digest = hashlib.sha256()
        start = time.perf_counter()
        pending: list[tuple[int, str, int, list[tuple[str, Future[str | None]]]]] = []
        try:
            for idx, plain in enumerate(iter_chunks(stream, chunk_size)):
                digest.update(plain)
                result.size += len(plain)
                sealed = cipher.seal(idx, plain)
                cid = chunk_id_of(sealed)
                targets = targets_of(idx)
                spare = spares_of(idx, targets)
                futures = [
                    (name, self.pool.executor.submit(self._put, name, cid, sealed, spare))
                    for name in targets
                ]
                pending.append((idx, cid, len(sealed), futures))
                while len(pending) > 1:  # at most two chunks in flight per object
                    result.chunks.append(self._settle(*pending[0], quorum))
                    pending.pop(0)  # only once settled: a chunk short of quorum is undone below
            while pending:
                result.chunks.append(self._settle(*pending[0], quorum))
                pending.pop(0)
        except BaseException:
            for idx, cid, size, futures in pending:  # let in-flight PUTs land, then undo them
                landed = [h for _n, fut in futures if not fut.cancel() and (h := fut.result())]
                result.chunks.append(WrittenChunk(idx, cid, size, landed))
            self.discard(result)
            raise
        result.sha256 = digest.hexdigest()
        metrics.STORE_WRITE_SECONDS.observe(time.perf_counter() - start)
        metrics.STORE_WRITE_BYTES.inc(result.size)
        return result

    def _put(
        self,
        node: str,
        chunk_id: str,
        data: bytes,
        spare: Callable[[], str | None] | None = None,
    ) -> str | None:
        """PUT one copy; the node that made it durable, or None. A full node is marked so and
        the copy goes to ``spare()`` instead (and so on while nodes turn out full)."""
        while True:
            handle = self.pool.get(node)
            start = time.perf_counter()
            try:
                handle.client.put(chunk_id, data)
            except NodeFullError as exc:
                self.pool.mark_full(node)
                replacement = spare() if spare is not None else None
                instead = replacement or "no other node"
                log.warning("chunk %s: %s; writing it to %s", chunk_id[:12], exc, instead)
                if replacement is None:
                    return None
                node = replacement
                continue
            except MedshardError as exc:
                self.pool.mark_failed(node)
                log.warning("write of chunk %s to %s failed: %s", chunk_id[:12], node, exc)
                return None
            handle.observe_latency(time.perf_counter() - start)
            return node

    def _settle(
        self,
        idx: int,
        cid: str,
        size: int,
        futures: list[tuple[str, Future[str | None]]],
        quorum: int,
    ) -> WrittenChunk:
        done = [held for _name, fut in futures if (held := fut.result())]
        if len(done) < quorum:
            metrics.QUORUM_FAILURES.inc()
            raise NoQuorumError(
                f"chunk {idx} reached {len(done)} durable copies, below the write quorum "
                f"{quorum}; nothing was acknowledged (check `medshard status`)"
            )
        return WrittenChunk(idx, cid, size, done)

    def discard(self, written: WrittenObject) -> None:
        """Best-effort removal of chunks of a write that will not be committed."""
        for chunk in written.chunks:
            for name in chunk.nodes:
                try:
                    self.pool.get(name).client.delete(chunk.chunk_id)
                except MedshardError:
                    pass  # an orphan chunk costs space only; never data

    def record(
        self,
        session: Session,
        patient: PatientKeyRow,
        wrapped_key: bytes,
        written: WrittenObject,
        *,
        kind: str = "dicom",
        content_type: str = "application/dicom",
    ) -> int:
        """Add the object's catalog rows in the caller's transaction; returns its primary key.

        ``wrapped_key``: the object's data key wrapped under the patient's key
        (:func:`~medshard.storage.envelope.wrap_data_key`), as the journal records it too."""
        row = ObjectRow(
            object_key=written.object_key,
            kind=kind,
            content_type=content_type,
            size=written.size,
            sha256=written.sha256,
            chunk_size=written.chunk_size,
            wrapped_key=wrapped_key,
            chunks=[
                (c.idx, c.chunk_id, c.size, [self.pool.get(n).pk for n in c.nodes])
                for c in written.chunks
            ],
        )
        return insert_object(session, patient, row)

    # -- read ---------------------------------------------------------------------------
    def load(self, object_key: str) -> tuple[StoredObject, bytes]:
        """The object's row (chunks and replicas loaded) and its data key."""
        with self.catalog.reads() as session:
            obj = object_with_replicas(session, object_key)
            if obj is None:
                raise NotFoundError(f"object {object_key} not found")
            patient = patient_key_row_by_pk(session.connection(), obj.patient_pk)
            if patient is None:  # the object's patient row went (erased) since the lookup
                raise NotFoundError(f"object {object_key} not found")
            data_key = unwrap_data_key(self.patient_key(patient), obj.wrapped_key, object_key)
            return obj, data_key

    def load_key_of_instance(self, sop_instance_uid: str) -> str:
        """The object key holding a DICOM instance's bytes."""
        with self.catalog.reads() as session:
            key = object_key_of_instance(session, sop_instance_uid)
        if key is None:
            raise NotFoundError(f"no instance with SOP Instance UID {sop_instance_uid}")
        return key

    def read(self, object_key: str, *, near_site: str | None = None) -> Iterator[bytes]:
        """Stream the plaintext of an object, verifying every chunk and the whole.

        ``near_site``: the requesting caller's site; each chunk is read from the healthy
        replica nearest it (see :meth:`ordered_replicas`).
        """
        obj, data_key = self.load(object_key)
        cipher = ChunkCipher(data_key, object_key)
        digest = hashlib.sha256()
        start = time.perf_counter()
        for idx, sealed in self._fetch_ahead(obj.chunks, near_site):
            plain = cipher.open(idx, sealed)
            digest.update(plain)
            yield plain
        if digest.hexdigest() != obj.sha256:
            raise ChecksumMismatchError(f"object {object_key}", obj.sha256, digest.hexdigest())
        metrics.STORE_READ_SECONDS.observe(time.perf_counter() - start)
        metrics.STORE_READ_BYTES.inc(obj.size)
        metrics.READ_TOTAL.labels(obj.kind).inc()

    def _fetch_ahead(
        self, chunks: Sequence[Chunk], near_site: str | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """Chunks in order, up to ``READ_AHEAD`` fetched at once from their (striped) nodes,
        so one large object reads faster than one node can serve it."""
        if len(chunks) == 1:
            yield chunks[0].idx, self.fetch_verified(chunks[0], near_site)
            return
        pending: deque[tuple[int, Future[bytes]]] = deque()
        upcoming = iter(chunks)
        try:
            for chunk in itertools.islice(upcoming, READ_AHEAD):
                job = self.pool.executor.submit(self.fetch_verified, chunk, near_site)
                pending.append((chunk.idx, job))
            while pending:
                idx, fetched = pending.popleft()
                data = fetched.result()
                following = next(upcoming, None)
                if following is not None:
                    job = self.pool.executor.submit(self.fetch_verified, following, near_site)
                    pending.append((following.idx, job))
                yield idx, data
        finally:
            for _idx, fetched in pending:  # a reader that stops early leaves nothing running
                fetched.cancel()

    def read_all(self, object_key: str, *, near_site: str | None = None) -> bytes:
        return b"".join(self.read(object_key, near_site=near_site))

    def ordered_replicas(self, chunk: Chunk, near_site: str | None = None) -> list[Replica]:
        """Healthy replicas on available nodes first, nearest first, the least busy of the
        equally near leading.

        Nearest to ``near_site`` (a requesting site) by the placement's distance model
        (a node at the site, else coordinates, else map location) when given; otherwise, and
        between replicas equally near the site, nearest to this process by the latency it
        measured, falling back to the RTT its Vivaldi coordinate predicts. Among healthy
        replicas as near as the nearest (by site distance, else by coordinate RTT), the one
        whose node serves fewest of this process's reads goes first: so the chunks of a
        striped object read ahead come from several nodes at once, not all from whichever
        answered fastest before.
        """
        here = self.pool.coordinate
        sites = self.pool.site_views

        def rank(replica: Replica) -> tuple[int, float, float]:
            handle = self.pool.by_pk(replica.node_pk)
            if handle is None:
                return (2, 1e9, 1e9)
            healthy = replica.state == "ok" and handle.available
            if handle.latency_ewma_s:
                measured = handle.latency_ewma_s * 1000.0
            else:
                measured = here.rtt_to(handle.coordinate)
            near = site_distance(near_site, handle.view(), sites) if near_site else measured
            return (0 if healthy else 1, near, measured)

        ranks = {replica.id: rank(replica) for replica in chunk.replicas}
        ordered = sorted(chunk.replicas, key=lambda r: ranks[r.id])
        if len(ordered) < 2 or ranks[ordered[0].id][0] != 0:
            return ordered
        # equally near: by network distance (the site's, else the coordinates' RTT), not by
        # the measured latency, which mixes request sizes and goes stale for unread nodes
        distance = {r.id: self._distance(r, near_site) for r in ordered if ranks[r.id][0] == 0}
        best, slack = min(distance.values()), self.settings.near_slack_ms
        # coordinates predict RTTs of a few ms within tens of percent: within twice the best
        # is as near (a node across the region is 10x further, one at another site 3-5x)
        limit = best + slack if near_site else max(2 * best, best + slack)
        equally_near = [r for r in ordered if distance.get(r.id, limit + 1) <= limit]
        least_busy = min(equally_near, key=self._reads_in_flight)  # the nearest among ties
        ordered.remove(least_busy)
        return [least_busy, *ordered]

    def _distance(self, replica: Replica, near_site: str | None) -> float:
        handle = self.pool.by_pk(replica.node_pk)
        if handle is None:
            return 1e9
        if near_site:
            return site_distance(near_site, handle.view(), self.pool.site_views)
        return self.pool.coordinate.rtt_to(handle.coordinate)

    def _reads_in_flight(self, replica: Replica) -> int:
        handle = self.pool.by_pk(replica.node_pk)
        return handle.reads_in_flight if handle is not None else 0

    def fetch_verified(self, chunk: Chunk, near_site: str | None = None) -> bytes:
        errors: list[str] = []
        with self._choosing:  # choose and count the read at once: concurrent readers see it
            ordered = self.ordered_replicas(chunk, near_site)
            reserved = self.pool.by_pk(ordered[0].node_pk) if ordered else None
            if reserved is not None:
                reserved.reading(+1)
        for replica in ordered:
            handle = self.pool.by_pk(replica.node_pk)
            if handle is None:
                continue
            start = time.perf_counter()
            if handle is reserved:
                reserved = None
            else:
                handle.reading(+1)
            try:
                data = handle.client.get(chunk.chunk_id)
            except MedshardError as exc:
                if isinstance(exc, NotFoundError):
                    self._mark_replica(replica.id, "missing")
                else:
                    self.pool.mark_failed(handle.name)
                errors.append(f"{handle.name}: {exc}")
                continue
            finally:
                handle.reading(-1)
            handle.observe_latency(time.perf_counter() - start)
            actual = chunk_id_of(data)
            if actual != chunk.chunk_id:
                metrics.CORRUPT_REPLICAS.inc()
                log.error(
                    "corrupt replica of chunk %s on node %s (sha256 %s): queued for repair",
                    chunk.chunk_id[:16],
                    handle.name,
                    actual[:16],
                )
                self._mark_replica(replica.id, "corrupt")
                errors.append(f"{handle.name}: corrupt copy")
                continue
            return data
        raise StorageError(
            f"no readable replica of chunk {chunk.idx} ({chunk.chunk_id[:16]}…): "
            + "; ".join(errors or ["no replicas recorded"])
        )

    def _mark_replica(self, replica_pk: int, state: str) -> None:
        with self.catalog.transaction() as session:
            set_replica_state(session, replica_pk, state)
