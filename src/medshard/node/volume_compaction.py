"""Compaction of a node's volume files: the space deletes and overwrites leave behind.

Deletes and overwrites leave dead records behind. Each volume keeps count of its live bytes
(``size - live`` is dead: overwritten and deleted chunks, tombstones, torn records), and
:meth:`VolumeStore.compact` rewrites a *sealed* volume (never the one being appended to) with
only what must stay: the live PUT records, and the tombstones that still shadow a PUT of the
same id in an older volume (a tombstone can go once no older volume holds such a PUT). The new
file is written beside the old one as ``vol-NNNNNNNN.compact``, fsync'd, then renamed over it,
so the volume keeps its number and hence its place in the scan order: a record copied while
its chunk is deleted or re-put is shadowed by the newer record exactly as before, and no lock
on the chunk is needed. A crash before the rename leaves the old volume (and a stray
``.compact`` file, removed at the next open); after it, the new one; either scans to the same
live chunks. The index entries switch to the new file under the store lock; readers pin the
volume they read from, so the old file descriptor is closed (and the space freed) only once
the last of them is done. :mod:`medshard.node.compaction` decides when, and limits the rate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medshard.errors import InvalidInputError, StorageError
from medshard.node.volume_records import (
    HEADER_SIZE,
    KIND_PUT,
    KIND_TOMBSTONE,
    Bytes,
    Loc,
    Volume,
    pack_header,
    parse_header,
)

log = logging.getLogger(__name__)

#: A volume being rewritten; not a volume until renamed over it.
COMPACT_SUFFIX = ".compact"


@dataclass(frozen=True)
class VolumeUsage:
    """Space accounting of one volume file, for compaction and ``/health``."""

    number: int
    size: int
    #: Bytes (headers included) of live PUT records.
    live_bytes: int
    #: ``size - live_bytes``: overwritten and deleted chunks, tombstones, torn records.
    dead_bytes: int
    #: What compaction would free: dead bytes less the tombstones that must stay.
    reclaimable_bytes: int
    #: False only for the volume being appended to, which is never compacted.
    sealed: bool

    @property
    def reclaimable_fraction(self) -> float:
        return self.reclaimable_bytes / self.size if self.size else 0.0


@dataclass(frozen=True)
class CompactionResult:
    """What :meth:`VolumeStore.compact` did to one volume."""

    number: int
    before_bytes: int
    after_bytes: int
    records_copied: int
    tombstones_kept: int

    @property
    def reclaimed_bytes(self) -> int:
        return self.before_bytes - self.after_bytes

    @property
    def copied_bytes(self) -> int:
        return self.after_bytes


def _by_offset(item: tuple[str, Loc]) -> int:
    return item[1].offset


class CompactingVolumes:
    """:class:`~medshard.node.volume.VolumeStore`'s compaction, apart so that each reads in
    one sitting; it works on the store's index and volumes under the store's lock."""

    if TYPE_CHECKING:  # what the store provides
        name: str
        root: Path
        _lock: threading.Lock
        _compacting: threading.Lock
        _index: dict[str, Loc]
        _volumes: list[Volume]
        _retired: list[Volume]
        _dirty: set[int]
        _dir_fd: int
        _written_seq: int

        def _check_writable(self) -> None: ...
        def _wait_durable(self, seq: int) -> None: ...
        def _pread(self, vol: Volume, offset: int, length: int) -> bytes: ...
        def _write_all(self, vol: Volume, parts: list[Bytes], offset: int) -> None: ...

    def volume_usage(self) -> list[VolumeUsage]:
        """Live, dead and reclaimable bytes of every volume, oldest first."""
        with self._lock:
            snap = [
                (v.number, v.size, v.live, tuple(v.tombstones), tuple(v.dead_puts))
                for v in self._volumes
            ]
        index = self._index  # membership tests only: atomic without the lock
        older_puts: set[str] = set()  # ids with a dead PUT in a volume seen so far
        usage = []
        for i, (number, size, live, tombstones, dead_puts) in enumerate(snap):
            kept = sum(1 for t in tombstones if t in older_puts and t not in index)
            dead = size - live
            reclaimable = max(0, dead - kept * HEADER_SIZE)
            usage.append(VolumeUsage(number, size, live, dead, reclaimable, i < len(snap) - 1))
            older_puts.update(dead_puts)
        return usage

    def compact(
        self, number: int, *, throttle: Callable[[int], None] | None = None
    ) -> CompactionResult:
        """Rewrite sealed volume ``number`` with only its live records and needed tombstones.

        Parameters
        ----------
        number
            The volume (``vol-NNNNNNNN.dat``); the one being appended to is refused.
        throttle
            Called with the size of each record before it is copied: sleep there to limit
            the rate, or raise to abandon the compaction (nothing changes then).

        Raises
        ------
        InvalidInputError
            No such sealed volume.
        StorageError
            On I/O failures; the old volume stays as it was, the partial copy is removed.
        """
        with self._compacting:
            old, keep, tombstones = self._compaction_plan(number)
            new = Volume(number, old.path.with_suffix(COMPACT_SUFFIX), -1, 0)
            copied: list[tuple[str, Loc, int]] = []
            try:
                if keep or tombstones:
                    new.fd = os.open(new.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                    copied = self._copy_records(old, new, keep, tombstones, throttle)
                    os.fsync(new.fd)
                    if hasattr(os, "posix_fadvise"):  # durable: leave the page cache to clients
                        os.posix_fadvise(new.fd, 0, 0, os.POSIX_FADV_DONTNEED)
                with self._lock:
                    self._switch(old, new, copied, tombstones)
            except BaseException:
                if not old.retired and new.fd >= 0:  # the old volume stays; the copy goes
                    os.close(new.fd)
                    new.path.unlink(missing_ok=True)
                raise
            try:
                os.fsync(self._dir_fd)  # the rename (or unlink) itself
            except OSError as e:  # either file scans to the same chunks; only tidiness
                log.warning("node %s: fsync of %s failed: %s", self.name, self.root, e)
        log.info(
            "node %s: compacted %s from %d to %d bytes (%d records, %d tombstones kept)",
            self.name,
            old.path.name,
            old.size,
            new.size,
            len(copied),
            len(tombstones),
        )
        return CompactionResult(number, old.size, new.size, len(copied), len(tombstones))

    def _compaction_plan(self, number: int) -> tuple[Volume, list[tuple[str, Loc]], list[str]]:
        """The sealed volume, its live records in file order, and the tombstones to keep.

        Every record this plan drops is dead because of a record written before it; those
        are made durable here, so the dropped ones can never come back after a crash.
        """
        while True:
            with self._lock:
                self._check_writable()
                sealed = self._volumes[:-1]
                old = next((v for v in sealed if v.number == number), None)
                if old is None:
                    raise InvalidInputError(f"node {self.name} has no sealed volume {number}")
                if not old.pending:  # sealed: no new PUT can land in it any more
                    items = list(self._index.items())
                    older = [v.dead_puts for v in sealed if v.number < number]
                    shadowed = set().union(*older) if old.tombstones and older else set()
                    tombstones = sorted(
                        t for t in old.tombstones if t in shadowed and t not in self._index
                    )
                    seq = self._written_seq
                    break
            time.sleep(0.001)  # a PUT written just before the roll-over is finishing
        keep = sorted(((i, loc) for i, loc in items if loc.volume is old), key=_by_offset)
        self._wait_durable(seq)
        return old, keep, tombstones

    def _copy_records(
        self,
        old: Volume,
        new: Volume,
        keep: list[tuple[str, Loc]],
        tombstones: list[str],
        throttle: Callable[[int], None] | None,
    ) -> list[tuple[str, Loc, int]]:
        """Append the kept records to ``new``; returns (id, old location, new data offset)."""
        copied = []
        for chunk_id, loc in keep:
            record = self._pread(old, loc.offset - HEADER_SIZE, HEADER_SIZE + loc.length)
            hdr = parse_header(record[:HEADER_SIZE])
            if hdr is None or hdr.kind != KIND_PUT or hdr.chunk_id != chunk_id:
                raise StorageError(f"{old.path}: no record of {chunk_id} where the index says")
            if throttle is not None:
                throttle(len(record))
            self._write_all(new, [record], new.size)
            copied.append((chunk_id, loc, new.size + HEADER_SIZE))
            new.size += len(record)
        for chunk_id in tombstones:
            self._write_all(new, [pack_header(KIND_TOMBSTONE, chunk_id, b"")], new.size)
            new.size += HEADER_SIZE
        return copied

    def _switch(
        self,
        old: Volume,
        new: Volume,
        copied: list[tuple[str, Loc, int]],
        tombstones: list[str],
    ) -> None:
        """Put ``new`` in place of ``old``, on disk and in the index (the caller holds the lock).

        A chunk deleted or re-put during the copy keeps its newer location; its copied
        record is dead in the new volume, as the old one would have been.
        """
        self._check_writable()
        at = self._volumes.index(old)
        if new.fd < 0:  # nothing to keep: the volume goes
            os.unlink(old.path)
            del self._volumes[at]
        else:
            os.replace(new.path, old.path)
            new.path = old.path
            for chunk_id, loc, offset in copied:
                if self._index.get(chunk_id) is loc:
                    self._index[chunk_id] = Loc(new, offset, loc.length)
                    new.live += HEADER_SIZE + loc.length
                else:
                    new.dead_puts.add(chunk_id)
            new.tombstones.update(tombstones)
            self._volumes[at] = new
        old.retired = True
        self._dirty.discard(old.fd)
        if old.pins:
            self._retired.append(old)
            return
        try:
            os.close(old.fd)
        except OSError as e:  # the switch is done; a close error changes nothing
            log.warning("node %s: closing %s failed: %s", self.name, old.path, e)
