"""The storage node's on-disk engine: append-only volume files with group commit.

Why this layout
---------------
A typical chunk is one encrypted DICOM instance of 100-500 KB, and every acknowledged write must
be durable. One file per chunk costs one ``fsync`` per chunk, and the per-file fsync rate, not
bandwidth, then caps ingest. Here every chunk is appended as a record to the current *volume
file* (Haystack / SeaweedFS style) and one ``fdatasync`` covers every record written since the
previous one (group commit): many concurrent writers are acknowledged at near sequential disk
bandwidth. On the benchmark that chose this design (8 writers x 300 KB) it sustained about 3x
the chunks/s of one-file-per-chunk with batched fsyncs. :meth:`VolumeStore.put_many` appends a
whole batch of chunks (one request from the service) and waits for one fdatasync for them all.

Records (:mod:`medshard.node.volume_records`: header with crcs, then data) go back to back
in ``vol-NNNNNNNN.dat``. The index ``chunk id -> (volume, offset, length)`` lives in memory
and is rebuilt on open by scanning the volumes in order, so the last record for an id wins
(a TOMBSTONE record is a delete). A crash can leave a torn record behind the last fdatasync;
no such record was ever acknowledged, and the scan skips it (bad header or data crc) and
truncates trailing garbage. Records are only visible to readers once durable, so a half
chunk is never served.

Reads are not verified here: readers hash what they get (the id *is* the hash), which also
catches bit rot that happened after the write. A PUT of an id already present does re-check the
stored copy, so re-sending a chunk repairs a rotten replica.

Deletes and overwrites leave dead records behind; compaction
(:mod:`medshard.node.volume_compaction`) rewrites a sealed volume without them.

``used_bytes`` counts live chunk bytes; :meth:`VolumeStore.volume_usage` reports dead bytes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import mmap
import os
import re
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from medshard.errors import (
    ChecksumMismatchError,
    MedshardError,
    NodeUnavailableError,
    NotFoundError,
    StorageError,
)
from medshard.node.volume_compaction import (
    COMPACT_SUFFIX,
    CompactingVolumes,
    CompactionResult,
    VolumeUsage,
)
from medshard.node.volume_records import (
    HEADER_SIZE,
    KIND_PUT,
    KIND_TOMBSTONE,
    MAGIC,
    MAX_CHUNK_BYTES,
    Bytes,
    Loc,
    RecordHeader,
    Volume,
    check_chunk_id,
    check_put,
    pack_header,
    parse_header,
)
from medshard.storage.chunkstore import ChunkStat

__all__ = [
    "DEFAULT_VOLUME_BYTES",
    "HEADER_SIZE",
    "KIND_PUT",
    "MAX_CHUNK_BYTES",
    "CompactionResult",
    "VolumeStore",
    "VolumeUsage",
    "check_chunk_id",
    "pack_header",
]

log = logging.getLogger(__name__)

DEFAULT_VOLUME_BYTES = 1 << 30
_VOLUME_RE = re.compile(r"vol-(\d{8})\.dat")
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


class VolumeStore(CompactingVolumes):
    """A :class:`~medshard.storage.chunkstore.ChunkStore` on local disk, safe across threads.

    Parameters
    ----------
    root
        Data directory; created if missing. Only one process may open it at a time (flock).
    name
        Node name, used in errors so the write path can tell which replica failed.
    capacity_bytes
        Most live chunk bytes to accept; 0 means limited only by the disk.
    volume_bytes
        Roll over to a new volume file once the current one would grow past this.

    Raises
    ------
    NodeUnavailableError
        From writes, when capacity would be exceeded or the disk is full (maps to HTTP 507).
    StorageError
        On other I/O failures; after a failed fdatasync the store refuses further writes, because
        the kernel may have dropped the dirty pages (restart the node to rescan).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        name: str = "local",
        capacity_bytes: int = 0,
        volume_bytes: int = DEFAULT_VOLUME_BYTES,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.capacity_bytes = capacity_bytes
        self._volume_bytes = volume_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise StorageError(f"{self.root} is in use by another node process") from None
        self._dir_fd = os.open(self.root, os.O_RDONLY)
        self._lock = threading.Lock()  # index, volumes, append offset, byte counts
        self._busy_ids = threading.Condition(self._lock)  # ids with a put/delete in flight
        self._in_flight: set[str] = set()
        self._index: dict[str, Loc] = {}
        self._volumes: list[Volume] = []
        self._retired: list[Volume] = []  # compacted away, fd kept open for pinned readers
        self._compacting = threading.Lock()  # one compaction at a time
        self._used = 0
        self._reserved = 0
        self._closed = False
        # group commit state, guarded by _sync_cv (never held together with _lock)
        self._sync_cv = threading.Condition()
        self._written_seq = 0  # guarded by _lock: last record fully written to the page cache
        self._synced_seq = 0
        self._syncing = False
        self._sync_failure: str | None = None
        self._dirty: set[int] = set()  # guarded by _lock: volume fds written since last sync
        self._dir_dirty = False
        self._load()

    # -- the ChunkStore protocol ---------------------------------------------------------------

    def put(self, chunk_id: str, data: bytes) -> bool:
        """Store ``data`` durably; return False if an intact copy was already there.

        A rotten stored copy does not count as there: the fresh one is appended and wins.
        """
        (outcome,) = self.put_many([(chunk_id, data)])
        if isinstance(outcome, MedshardError):
            raise outcome
        return outcome

    def put_many(self, items: Sequence[tuple[str, Bytes]]) -> list[bool | MedshardError]:
        """Store several chunks durably with one group commit: :meth:`put` for each, in order.

        Every record is appended, then one fdatasync covers them all (and whatever other
        writers appended meanwhile). One outcome per item, as :meth:`put` would return or
        raise it: True stored, False an intact copy was already there, or the error that
        kept this chunk out (malformed id, hash mismatch, capacity or disk full, I/O), so one
        bad chunk does not fail the others. An id given twice is stored once.
        """
        outcomes: list[bool | MedshardError] = [False] * len(items)
        first: dict[str, int] = {}  # id -> the item that stores it
        for i, (chunk_id, data) in enumerate(items):
            try:
                check_put(chunk_id, data)
            except MedshardError as e:
                outcomes[i] = e
                continue
            first.setdefault(chunk_id, i)
        olds = self._claim(list(first))
        try:
            fresh = []
            for (chunk_id, i), old in zip(first.items(), olds, strict=True):
                if old is None or not self._intact(chunk_id):
                    fresh.append(i)
            errors = self._append_durably(KIND_PUT, [items[i] for i in fresh])
            for i, error in zip(fresh, errors, strict=True):
                outcomes[i] = error or True
        finally:
            self._release(list(first))
        for i, (chunk_id, _data) in enumerate(items):
            j = first.get(chunk_id, i)
            if j != i and not isinstance(outcomes[i], MedshardError):  # a duplicate
                outcomes[i] = outcomes[j] if isinstance(outcomes[j], MedshardError) else False
        return outcomes

    def get(self, chunk_id: str) -> bytes:
        """The stored bytes, unverified (the caller hashes them)."""
        loc = self._pin(chunk_id)
        try:
            return self._pread(loc.volume, loc.offset, loc.length)
        finally:
            self._unpin(loc.volume)

    def delete(self, chunk_id: str) -> bool:
        """Append a durable tombstone; return False if the chunk was not there."""
        check_chunk_id(chunk_id)
        (old,) = self._claim([chunk_id])
        try:
            if old is None:
                return False
            (error,) = self._append_durably(KIND_TOMBSTONE, [(chunk_id, b"")])
            if error is not None:
                raise error
            return True
        finally:
            self._release([chunk_id])

    def exists(self, chunk_id: str) -> bool:
        with self._lock:
            return chunk_id in self._index

    def stat(self, chunk_id: str) -> ChunkStat:
        return ChunkStat(chunk_id, self._locate(chunk_id).length)

    def list_ids(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._index))

    # -- beyond the protocol -------------------------------------------------------------------

    def open_stream(self, chunk_id: str, piece_bytes: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        """Size and a lazy reader of a chunk, for streaming large chunks without holding them.

        The location is fixed now; a concurrent delete does not disturb the stream because
        records are never overwritten in place, and a concurrent compaction keeps the volume's
        file open until the stream is exhausted or closed (so do one or the other).
        """
        loc = self._pin(chunk_id)

        def pieces() -> Iterator[bytes]:
            try:
                for start in range(0, loc.length, piece_bytes):
                    n = min(piece_bytes, loc.length - start)
                    yield self._pread(loc.volume, loc.offset + start, n)
            finally:
                self._unpin(loc.volume)

        return loc.length, pieces()

    def verify(self, chunk_id: str) -> None:
        """Re-hash the stored copy (scrubbing): ChecksumMismatchError if the bytes rotted.

        The id *is* the SHA-256 of the bytes, so the node can check its own copy and only a
        verdict crosses the network, not the chunk.
        """
        _size, pieces = self.open_stream(chunk_id)
        digest = hashlib.sha256()
        for piece in pieces:
            digest.update(piece)
        if digest.hexdigest() != chunk_id:
            raise ChecksumMismatchError(f"chunk {chunk_id} on disk", chunk_id, digest.hexdigest())

    @property
    def used_bytes(self) -> int:
        """Live chunk bytes (what capacity is measured against)."""
        with self._lock:
            return self._used

    @property
    def chunk_count(self) -> int:
        with self._lock:
            return len(self._index)

    def close(self) -> None:
        """Flush what is pending and release the files and the directory lock."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fds = [v.fd for v in [*self._volumes, *self._retired]]
        for fd in fds:
            try:  # every acknowledged record is already durable; this is only tidiness
                os.fdatasync(fd)
            except OSError as e:
                log.warning("node %s: fdatasync on close failed: %s", self.name, e)
            os.close(fd)
        os.close(self._dir_fd)
        os.close(self._lock_fd)  # also drops the flock

    def __enter__(self) -> VolumeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def _claim(self, chunk_ids: list[str]) -> list[Loc | None]:
        """Serialise puts/deletes of one id, so a duplicate PUT never answers before durability.

        All of ``chunk_ids`` are taken at once, never one while waiting for another, so two
        batches sharing ids cannot deadlock.
        """
        with self._busy_ids:
            while not self._in_flight.isdisjoint(chunk_ids):
                self._busy_ids.wait()
            self._in_flight.update(chunk_ids)
            return [self._index.get(chunk_id) for chunk_id in chunk_ids]

    def _release(self, chunk_ids: list[str]) -> None:
        with self._busy_ids:
            self._in_flight.difference_update(chunk_ids)
            self._busy_ids.notify_all()

    def _intact(self, chunk_id: str) -> bool:
        """Whether the stored copy of a claimed id still hashes to it (a re-PUT repairs rot)."""
        try:
            if hashlib.sha256(self.get(chunk_id)).hexdigest() == chunk_id:
                return True
        except StorageError as e:
            log.warning("chunk %s unreadable on disk (%s); storing the fresh copy", chunk_id, e)
            return False
        log.warning("chunk %s was corrupt on disk; storing the fresh copy", chunk_id)
        return False

    def _append_durably(
        self, kind: int, records: Sequence[tuple[str, Bytes]]
    ) -> list[MedshardError | None]:
        """Append ``records`` (claimed ids), then wait for one fdatasync covering them all.

        Per record: None once it is durable (a PUT then indexed), or the error that kept it
        out (capacity, disk full, I/O). Only a failed fdatasync fails them all.
        """
        errors: list[MedshardError | None] = [None] * len(records)
        written: list[tuple[str, Volume, int, int]] = []  # id, volume, data offset, size
        with self._lock:
            for i, (chunk_id, data) in enumerate(records):
                try:
                    vol, offset = self._append(kind, chunk_id, data)
                except MedshardError as e:
                    errors[i] = e
                    continue
                written.append((chunk_id, vol, offset, len(data)))
            seq = self._written_seq
        if not written:
            return errors
        try:
            self._wait_durable(seq)
        except BaseException as e:
            if kind == KIND_PUT:
                with self._lock:
                    self._settle(written, durable=False)
            if not isinstance(e, MedshardError):
                raise
            return [error or e for error in errors]
        if kind == KIND_PUT:
            with self._lock:
                self._settle(written, durable=True)
        return errors

    def _append(self, kind: int, chunk_id: str, data: Bytes) -> tuple[Volume, int]:
        """Write one record (the caller holds the lock); its volume and data offset."""
        header = pack_header(kind, chunk_id, data)
        size = len(data)
        self._check_writable()
        over = self._used + self._reserved + size > self.capacity_bytes
        if kind == KIND_PUT and self.capacity_bytes and over:
            raise NodeUnavailableError(
                self.name, f"capacity of {self.capacity_bytes} bytes would be exceeded"
            )
        vol = self._writable_volume(len(header) + size)
        start = vol.size
        self._write_all(vol, [header, data], start)
        vol.size = start + len(header) + size
        self._dirty.add(vol.fd)
        self._written_seq += 1
        if kind == KIND_TOMBSTONE:  # hide at once; the tombstone's durability follows
            self._unindex(chunk_id)
            vol.tombstones.add(chunk_id)
        else:
            self._reserved += size
            vol.pending += 1  # keeps compaction off vol until the record is indexed
        return vol, start + len(header)

    def _settle(self, written: list[tuple[str, Volume, int, int]], *, durable: bool) -> None:
        """Release the reservations of written PUT records and, once durable, index them
        (the caller holds the lock)."""
        for chunk_id, vol, offset, size in written:
            self._reserved -= size
            vol.pending -= 1
            if durable:
                self._unindex(chunk_id)
                self._index_put(chunk_id, vol, offset, size)

    def _index_put(self, chunk_id: str, vol: Volume, data_offset: int, size: int) -> None:
        """Point the index at a PUT record (the caller holds the lock, or is the scan)."""
        self._index[chunk_id] = Loc(vol, data_offset, size)
        self._used += size
        vol.live += HEADER_SIZE + size

    def _unindex(self, chunk_id: str) -> None:
        """Drop an id from the index; its record turns dead (the caller holds the lock)."""
        old = self._index.pop(chunk_id, None)
        if old is not None:
            self._used -= old.length
            old.volume.live -= HEADER_SIZE + old.length
            old.volume.dead_puts.add(chunk_id)

    def _write_all(self, vol: Volume, parts: list[Bytes], offset: int) -> None:
        """Write every byte or none: a failed write is cut back off the volume."""
        buffers = [memoryview(p) for p in parts if p]
        pos = offset
        try:
            while buffers:
                n = os.pwritev(vol.fd, buffers, pos)
                pos += n
                while buffers and n >= len(buffers[0]):
                    n -= len(buffers[0])
                    buffers.pop(0)
                if buffers and n:
                    buffers[0] = buffers[0][n:]
        except OSError as e:
            try:
                os.ftruncate(vol.fd, offset)
            except OSError:
                log.exception("could not cut a failed write off %s", vol.path)
            if e.errno in _OUT_OF_SPACE:
                raise NodeUnavailableError(self.name, "disk full") from e
            raise StorageError(f"write to {vol.path} failed: {e}") from e

    def _writable_volume(self, need: int) -> Volume:
        vol = self._volumes[-1]
        if vol.size and vol.size + need > self._volume_bytes:
            vol = self._open_volume(vol.number + 1)
            self._volumes.append(vol)
            self._dir_dirty = True  # the new file's name must be durable with its first record
        return vol

    def _check_writable(self) -> None:
        if self._closed:
            raise StorageError(f"volume store {self.root} is closed")
        if self._sync_failure:
            raise StorageError(f"node {self.name} stopped writing: {self._sync_failure}")

    # -- group commit --------------------------------------------------------------------------

    def _wait_durable(self, seq: int) -> None:
        """Return once an fdatasync that began after record ``seq`` was written has finished.

        The first waiter to find no sync running becomes the leader and syncs every dirty
        volume for everyone written so far; the others wait for it or for the next round.
        """
        while True:
            with self._sync_cv:
                while True:
                    if self._sync_failure:
                        raise StorageError(f"fdatasync failed: {self._sync_failure}")
                    if self._synced_seq >= seq:
                        return
                    if not self._syncing:
                        self._syncing = True
                        break
                    self._sync_cv.wait()
            self._sync_round()

    def _sync_round(self) -> None:
        with self._lock:
            target = self._written_seq
            fds, self._dirty = self._dirty, set()
            dir_dirty, self._dir_dirty = self._dir_dirty, False
        failure = None
        try:
            for fd in fds:
                os.fdatasync(fd)
            if dir_dirty:
                os.fsync(self._dir_fd)
        except OSError as e:
            failure = str(e)
            log.error("fdatasync failed on node %s: %s; refusing further writes", self.name, e)
        with self._sync_cv:
            self._syncing = False
            if failure:
                self._sync_failure = failure
            else:
                self._synced_seq = max(self._synced_seq, target)
            self._sync_cv.notify_all()

    # -- reading -------------------------------------------------------------------------------

    def _locate(self, chunk_id: str, *, pin: bool = False) -> Loc:
        with self._lock:
            if self._closed:  # its fd numbers may already belong to other files
                raise StorageError(f"volume store {self.root} is closed")
            loc = self._index.get(chunk_id)
            if loc is not None and pin:
                loc.volume.pins += 1
        if loc is None:
            raise NotFoundError(f"chunk {chunk_id} not found on node {self.name}")
        return loc

    def _pin(self, chunk_id: str) -> Loc:
        """Locate a chunk and keep its volume's fd open until :meth:`_unpin` (a compaction
        may retire the volume meanwhile; its fd number must not be reused under the read)."""
        return self._locate(chunk_id, pin=True)

    def _unpin(self, vol: Volume) -> None:
        with self._lock:
            vol.pins -= 1
            if vol.retired and not vol.pins and not self._closed:
                self._retired.remove(vol)
                os.close(vol.fd)

    def _pread(self, vol: Volume, offset: int, length: int) -> bytes:
        data = os.pread(vol.fd, length, offset)
        if len(data) != length:
            raise StorageError(f"{vol.path} is shorter than its index says (truncated?)")
        return data

    # -- opening: rebuild the index ------------------------------------------------------------

    def _open_volume(self, number: int) -> Volume:
        path = self.root / f"vol-{number:08d}.dat"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        return Volume(number, path, fd, os.fstat(fd).st_size)

    def _load(self) -> None:
        for stray in self.root.glob(f"vol-*{COMPACT_SUFFIX}"):  # a compaction cut short
            log.warning("%s: removing an unfinished compaction", stray)
            stray.unlink()
        numbers = sorted(
            int(m.group(1)) for p in self.root.iterdir() if (m := _VOLUME_RE.fullmatch(p.name))
        )
        for i, number in enumerate(numbers):
            vol = self._open_volume(number)
            self._volumes.append(vol)
            # only the last two volumes can hold unsynced records (a roll-over does not sync
            # the old volume first), so only they need their data crcs checked
            self._scan(vol, verify_data=i >= len(numbers) - 2)
        if not self._volumes:
            self._volumes.append(self._open_volume(1))
            os.fsync(self._dir_fd)
        log.info(
            "node %s: %d chunks, %d bytes in %d volume(s) under %s",
            self.name,
            len(self._index),
            self._used,
            len(self._volumes),
            self.root,
        )

    def _scan(self, vol: Volume, *, verify_data: bool) -> None:
        """Apply every intact record of ``vol`` to the index; cut trailing garbage off."""
        if vol.size == 0:
            return
        with mmap.mmap(vol.fd, 0, access=mmap.ACCESS_READ) as mm:
            pos, good_end, skipped = 0, 0, 0
            while pos + HEADER_SIZE <= vol.size:
                hdr = parse_header(mm[pos : pos + HEADER_SIZE])
                end = pos + HEADER_SIZE + (hdr.length if hdr else 0)
                if hdr is None or end > vol.size:
                    skipped += 1
                    pos = self._resync(mm, pos + 1, vol.size)
                    continue
                if verify_data and zlib.crc32(mm[pos + HEADER_SIZE : end]) != hdr.data_crc:
                    skipped += 1
                    pos = end
                    continue
                self._apply(hdr, vol, pos + HEADER_SIZE)
                pos = good_end = end
        if skipped:
            log.warning("%s: skipped %d torn or corrupt record(s)", vol.path, skipped)
        if good_end < vol.size:
            log.warning("%s: truncating %d bytes of torn tail", vol.path, vol.size - good_end)
            os.ftruncate(vol.fd, good_end)
            os.fsync(vol.fd)
            vol.size = good_end

    @staticmethod
    def _resync(mm: mmap.mmap, start: int, size: int) -> int:
        """Offset of the next intact header after a damaged region, or ``size`` if none."""
        pos = mm.find(MAGIC, start)
        while pos != -1:
            hdr = parse_header(mm[pos : pos + HEADER_SIZE])
            if hdr is not None and pos + HEADER_SIZE + hdr.length <= size:
                return pos
            pos = mm.find(MAGIC, pos + 1)
        return size

    def _apply(self, hdr: RecordHeader, vol: Volume, data_offset: int) -> None:
        self._unindex(hdr.chunk_id)
        if hdr.kind == KIND_PUT:
            self._index_put(hdr.chunk_id, vol, data_offset, hdr.length)
        else:
            vol.tombstones.add(hdr.chunk_id)
