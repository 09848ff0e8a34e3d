"""VolumeStore on a real directory: durability format, recovery after crashes, limits.

Crashes are simulated the way they look on disk afterwards: a record cut short at the tail,
garbage after the last record, rotten bytes in the middle of a volume.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from medshard.errors import (
    ChecksumMismatchError,
    InvalidInputError,
    NodeUnavailableError,
    NotFoundError,
    StorageError,
)
from medshard.node.volume import HEADER_SIZE, KIND_PUT, VolumeStore, pack_header
from medshard.storage.chunkstore import ChunkStat, ChunkStore


def chunk(n: int = 1000, seed: bytes | None = None) -> tuple[str, bytes]:
    data = (seed or os.urandom(16)) + os.urandom(n)
    return hashlib.sha256(data).hexdigest(), data


def volumes(root: Path) -> list[Path]:
    return sorted(root.glob("vol-*.dat"))


def test_put_get_stat_list_delete(tmp_path: Path) -> None:
    with VolumeStore(tmp_path) as store:
        assert isinstance(store, ChunkStore)
        cid, data = chunk()
        assert store.put(cid, data) is True
        assert store.put(cid, data) is False  # idempotent: already there, nothing appended
        assert store.get(cid) == data
        assert store.exists(cid)
        assert store.stat(cid) == ChunkStat(cid, len(data))
        assert list(store.list_ids()) == [cid]
        assert (store.used_bytes, store.chunk_count) == (len(data), 1)
        assert volumes(tmp_path)[0].stat().st_size == HEADER_SIZE + len(data)

        assert store.delete(cid) is True
        assert store.delete(cid) is False
        assert not store.exists(cid)
        with pytest.raises(NotFoundError):
            store.get(cid)
        with pytest.raises(NotFoundError):
            store.stat(cid)
        assert (store.used_bytes, store.chunk_count) == (0, 0)
        assert store.put(cid, data) is True  # stored again after a delete


def test_hash_mismatch_and_bad_ids_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with VolumeStore(tmp_path) as store:
        cid, data = chunk()
        with pytest.raises(ChecksumMismatchError):
            store.put(cid, data + b"x")
        for bad in ("abc", cid.upper(), "../" + cid[3:], cid + "0"):
            with pytest.raises(InvalidInputError):
                store.put(bad, data)
        assert store.chunk_count == 0
        assert volumes(tmp_path)[0].stat().st_size == 0


def test_reopen_rebuilds_index_with_deletes_and_rollover(tmp_path: Path) -> None:
    items = [chunk(3000) for _ in range(8)]
    with VolumeStore(tmp_path, volume_bytes=10_000) as store:
        for cid, data in items:
            store.put(cid, data)
        store.delete(items[0][0])
        used = store.used_bytes
    assert len(volumes(tmp_path)) >= 3  # rolled over
    with VolumeStore(tmp_path, volume_bytes=10_000) as store:
        assert sorted(store.list_ids()) == sorted(cid for cid, _ in items[1:])
        assert all(store.get(cid) == data for cid, data in items[1:])
        assert store.used_bytes == used
        store.put(*items[0])  # delete then re-put survives a reopen too
    with VolumeStore(tmp_path) as store:
        assert store.get(items[0][0]) == items[0][1]


@pytest.mark.parametrize("tail", ["half_record", "header_only", "garbage"])
def test_torn_tail_after_crash_is_ignored_and_cut(tmp_path: Path, tail: str) -> None:
    a, b, c = chunk(), chunk(), chunk(5000)
    with VolumeStore(tmp_path) as store:
        store.put(*a)
        store.put(*b)
    vol = volumes(tmp_path)[0]
    good_size = vol.stat().st_size
    record = pack_header(KIND_PUT, c[0], c[1]) + c[1]
    torn = {
        "half_record": record[: HEADER_SIZE + 2000],
        "header_only": record[: HEADER_SIZE - 7],
        "garbage": os.urandom(300),
    }[tail]
    with open(vol, "ab") as fh:
        fh.write(torn)

    with VolumeStore(tmp_path) as store:
        assert sorted(store.list_ids()) == sorted([a[0], b[0]])
        assert vol.stat().st_size == good_size  # the torn tail was cut off
        assert store.put(*c) is True
    with VolumeStore(tmp_path) as store:
        assert store.get(c[0]) == c[1] and store.get(a[0]) == a[1]


def test_record_rotten_mid_volume_is_skipped_and_later_records_survive(tmp_path: Path) -> None:
    a, b = chunk(2000), chunk(2000)
    with VolumeStore(tmp_path) as store:
        store.put(*a)
        store.put(*b)
    vol = volumes(tmp_path)[0]
    raw = bytearray(vol.read_bytes())
    raw[HEADER_SIZE + 10] ^= 0xFF  # inside a's data
    vol.write_bytes(bytes(raw))
    with VolumeStore(tmp_path) as store:
        assert list(store.list_ids()) == [b[0]]  # a is known bad: reported absent, to be repaired
        assert store.put(*a) is True
    with VolumeStore(tmp_path) as store:
        assert store.get(a[0]) == a[1] and store.get(b[0]) == b[1]


def test_corruption_on_disk_is_served_as_is_and_a_re_put_repairs_it(tmp_path: Path) -> None:
    with VolumeStore(tmp_path) as store:
        cid, data = chunk(4000)
        store.put(cid, data)
        vol = volumes(tmp_path)[0]
        with open(vol, "r+b") as fh:
            fh.seek(HEADER_SIZE + 100)
            fh.write(bytes(x ^ 0xFF for x in data[100:116]))
        served = store.get(cid)
        assert len(served) == len(data) and hashlib.sha256(served).hexdigest() != cid
        assert store.put(cid, data) is True  # not "already there": the stored copy was rotten
        assert store.get(cid) == data
        assert store.used_bytes == len(data)


def test_capacity_is_enforced_and_nothing_partial_is_left(tmp_path: Path) -> None:
    a, b = chunk(600), chunk(600)
    with VolumeStore(tmp_path, capacity_bytes=1000) as store:
        store.put(*a)
        size = volumes(tmp_path)[0].stat().st_size
        with pytest.raises(NodeUnavailableError, match="capacity"):
            store.put(*b)
        assert volumes(tmp_path)[0].stat().st_size == size
        assert not store.exists(b[0])
        store.delete(a[0])
        assert store.put(*b) is True


def test_disk_full_maps_to_node_unavailable(tmp_path: Path) -> None:
    # /dev/full answers every write with a real ENOSPC from the kernel
    os.symlink("/dev/full", tmp_path / "vol-00000001.dat")
    with VolumeStore(tmp_path, name="n-full") as store:
        cid, data = chunk()
        with pytest.raises(NodeUnavailableError, match="disk full") as err:
            store.put(cid, data)
        assert err.value.node == "n-full"
        assert not store.exists(cid)


def test_failed_write_is_cut_back(tmp_path: Path) -> None:
    """A write that fails half way (file size limit, in a child) leaves no partial record."""
    script = f"""
import hashlib, os, resource, signal
from medshard.node.volume import VolumeStore
from medshard.errors import StorageError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = VolumeStore({str(tmp_path)!r})
small = b"s" * 1000
store.put(hashlib.sha256(small).hexdigest(), small)
size = os.path.getsize({str(tmp_path / "vol-00000001.dat")!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 5000, resource.RLIM_INFINITY))
big = b"b" * 20000
try:
    store.put(hashlib.sha256(big).hexdigest(), big)
except StorageError as e:
    print("refused:", e)
assert os.path.getsize({str(tmp_path / "vol-00000001.dat")!r}) == size
assert store.chunk_count == 1
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "refused" in out.stdout and "ok" in out.stdout
    with VolumeStore(tmp_path) as store:
        assert store.chunk_count == 1


def test_concurrent_puts_group_commit_and_duplicates(tmp_path: Path) -> None:
    items = [chunk(20_000) for _ in range(64)]
    dup = chunk(20_000)
    results: list[bool] = []
    lock = threading.Lock()

    with VolumeStore(tmp_path) as store:

        def writer(part: list[tuple[str, bytes]]) -> None:
            for cid, data in part:
                store.put(cid, data)
            created = store.put(*dup)
            with lock:
                results.append(created)

        threads = [threading.Thread(target=writer, args=(items[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(True) == 1  # the same id from 8 writers is stored exactly once
        assert store.chunk_count == 65
    expected = sum(HEADER_SIZE + len(d) for _, d in [*items, dup])
    assert sum(p.stat().st_size for p in volumes(tmp_path)) == expected
    with VolumeStore(tmp_path) as store:
        assert all(store.get(cid) == data for cid, data in items)


def test_one_process_per_data_dir(tmp_path: Path) -> None:
    with VolumeStore(tmp_path), pytest.raises(StorageError, match="in use"):
        VolumeStore(tmp_path)
    VolumeStore(tmp_path).close()  # released on close


def test_open_stream_yields_pieces(tmp_path: Path) -> None:
    with VolumeStore(tmp_path) as store:
        cid, data = chunk(2_500_000)
        store.put(cid, data)
        size, pieces = store.open_stream(cid, piece_bytes=1 << 20)
        parts = list(pieces)
        assert size == len(data) and len(parts) == 3 and b"".join(parts) == data
