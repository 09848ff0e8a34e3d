"""Volume compaction: dead-byte accounting, space reclaimed, crash safety, concurrency.

Volumes are kept tiny (a few records each) so that deletes leave sealed volumes behind.
Crashes are real: a child process compacts and dies by ``os._exit`` at a chosen point (mid
copy, before the switch, just after it), and the parent reopens what it left on disk.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from medshard.errors import InvalidInputError, NotFoundError
from medshard.node.compaction import Compactor
from medshard.node.launcher import free_port, start_node_process
from medshard.node.volume import HEADER_SIZE, VolumeStore
from medshard.storage.node_client import NodeClient

RECORD = 1000  # bytes of chunk data; with its header a record is RECORD + HEADER_SIZE
SMALL_VOLUME = 2 * (RECORD + HEADER_SIZE) + 3 * HEADER_SIZE  # two records and a few tombstones
WIDE_VOLUME = 20 * (RECORD + HEADER_SIZE)  # a quarter of the chunks in one compaction's window


def chunk(n: int = RECORD) -> tuple[str, bytes]:
    data = os.urandom(n)
    return hashlib.sha256(data).hexdigest(), data


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("vol-*.dat"))


def assert_holds(store: VolumeStore, live: dict[str, bytes], gone: set[str]) -> None:
    assert sorted(store.list_ids()) == sorted(live)
    for cid, data in live.items():
        assert store.get(cid) == data
    for cid in gone:
        with pytest.raises(NotFoundError):
            store.get(cid)
    assert store.used_bytes == sum(len(d) for d in live.values())


def fill(store: VolumeStore, count: int, size: int = RECORD) -> dict[str, bytes]:
    items = dict(chunk(size) for _ in range(count))
    for cid, data in items.items():
        store.put(cid, data)
    return items


def test_dead_bytes_count_deleted_overwritten_chunks_and_tombstones(tmp_path: Path) -> None:
    with VolumeStore(tmp_path) as store:
        (a, da), (b, db), (c, dc) = chunk(), chunk(2000), chunk(3000)
        for cid, data in ((a, da), (b, db), (c, dc)):
            store.put(cid, data)
        [usage] = store.volume_usage()
        assert (usage.dead_bytes, usage.live_bytes) == (0, 3 * HEADER_SIZE + 6000)
        assert not usage.sealed  # the volume being appended to
        store.delete(a)
        [usage] = store.volume_usage()
        assert usage.dead_bytes == (HEADER_SIZE + len(da)) + HEADER_SIZE  # the PUT + tombstone
        assert usage.reclaimable_bytes == usage.dead_bytes  # no older volume needs the tombstone
        # a rotten copy re-put: the old record turns dead
        vol = tmp_path / "vol-00000001.dat"
        with open(vol, "r+b") as fh:
            fh.seek(vol.read_bytes().index(db[:64]) + 5)
            fh.write(bytes([db[5] ^ 0xFF]))
        assert store.put(b, db) is True
        [usage] = store.volume_usage()
        dead = 2 * HEADER_SIZE + len(da) + HEADER_SIZE + len(db)
        assert usage.dead_bytes == dead
        assert usage.size - usage.live_bytes == dead
    with VolumeStore(tmp_path) as store:  # the scan rebuilds the same accounting
        [usage] = store.volume_usage()
        assert usage.dead_bytes == dead and store.get(b) == db


def test_compaction_reclaims_disk_space_and_every_live_chunk_reads_back(tmp_path: Path) -> None:
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        items = fill(store, 30)
        ids = list(items)
        gone = set(ids[::3]) | set(ids[1::3])  # two thirds deleted, spread over every volume
        for cid in gone:
            store.delete(cid)
        live = {cid: items[cid] for cid in ids if cid not in gone}
        before = disk_bytes(tmp_path)
        sealed = [u for u in store.volume_usage() if u.sealed]
        assert len(sealed) >= 10 and all(u.dead_bytes > 0 for u in sealed[:-1])
        results = Compactor(store, threshold=0.0, bytes_per_s=0).run_pass()
        assert results and sum(r.reclaimed_bytes for r in results) == before - disk_bytes(tmp_path)
        assert disk_bytes(tmp_path) < before - len(gone) * RECORD * 0.9
        assert all(u.reclaimable_bytes == 0 for u in store.volume_usage() if u.sealed)
        assert not list(tmp_path.glob("*.compact"))
        assert_holds(store, live, gone)
        more = fill(store, 3)  # writing goes on after compaction
        live.update(more)
        assert_holds(store, live, gone)
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        assert_holds(store, live, gone)


def test_a_tombstone_stays_while_an_older_volume_holds_a_put_of_its_chunk(tmp_path: Path) -> None:
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        (a, da), (b, db) = chunk(), chunk()
        store.put(a, da)
        store.put(b, db)  # volume 1: PUT a, PUT b
        (c, dc), (d, dd) = chunk(), chunk()
        store.put(c, dc)  # volume 2: PUT c, TOMBSTONE a, PUT d
        store.delete(a)
        store.put(d, dd)
        (e, de) = chunk()
        store.put(e, de)  # volume 3, so volume 2 is sealed
        usage = {u.number: u for u in store.volume_usage()}
        assert usage[2].dead_bytes == HEADER_SIZE and usage[2].reclaimable_bytes == 0
        kept = store.compact(2)
    live = {b: db, c: dc, d: dd, e: de}
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        assert_holds(store, live, {a})  # a's PUT in volume 1 did not come back
        assert kept.tombstones_kept == 1 and kept.records_copied == 2
        store.delete(b)
        assert store.compact(1).after_bytes == 0  # nothing left in it: the file goes
        assert not (tmp_path / "vol-00000001.dat").exists()
        usage = {u.number: u for u in store.volume_usage()}
        assert usage[2].reclaimable_bytes == HEADER_SIZE  # nothing for a's tombstone to hide
        assert store.compact(2).tombstones_kept == 0
        del live[b]
        assert_holds(store, live, {a, b})
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        assert_holds(store, live, {a, b})
        with pytest.raises(InvalidInputError):
            store.compact(store.volume_usage()[-1].number)  # the one being appended to


def test_readers_keep_reading_a_volume_compacted_under_them(tmp_path: Path) -> None:
    with VolumeStore(tmp_path, volume_bytes=3 * 300_000) as store:
        (a, da), (b, db) = chunk(300_000), chunk(300_000)
        store.put(a, da)
        store.put(b, db)
        fill(store, 2, 300_000)  # rolls over: volume 1 sealed
        store.delete(b)
        size, pieces = store.open_stream(a, piece_bytes=100_000)
        first = next(pieces)
        store.compact(1)
        assert len(store._retired) == 1  # the old file stays open for the stream
        assert first + b"".join(pieces) == da and size == len(da)
        assert not store._retired  # closed once the stream ended
        assert store.get(a) == da


def test_a_put_still_in_flight_in_a_just_sealed_volume_is_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUT written to a volume that then rolls over is indexed only once durable: the
    compaction of that volume waits for it rather than take its record for dead."""
    release = threading.Event()
    wait_durable = VolumeStore._wait_durable

    def slow_for_one(store: VolumeStore, seq: int) -> None:
        if threading.current_thread().name == "slow-put":
            release.wait(10)
        wait_durable(store, seq)

    monkeypatch.setattr(VolumeStore, "_wait_durable", slow_for_one)
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        (a, da), (x, dx), (y, dy) = chunk(), chunk(), chunk()
        store.put(a, da)
        put = threading.Thread(target=store.put, args=(x, dx), name="slow-put")
        put.start()  # x's record lands in volume 1, not yet durable nor indexed
        while store.volume_usage()[0].size < 2 * (RECORD + HEADER_SIZE):
            time.sleep(0.001)
        store.delete(a)
        store.put(y, dy)  # rolls over: volume 1 is sealed with x in flight
        results: list[Any] = []
        compaction = threading.Thread(target=lambda: results.append(store.compact(1)))
        compaction.start()
        time.sleep(0.2)
        assert not results  # waiting for x
        release.set()
        put.join()
        compaction.join()
        assert results[0].records_copied == 1
        assert_holds(store, {x: dx, y: dy}, {a})
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        assert_holds(store, {x: dx, y: dy}, {a})


CRASH_SCRIPT = """
import os, sys
from medshard.node.compaction import Compactor
from medshard.node.volume import VolumeStore

root, volume_bytes, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = VolumeStore(root, volume_bytes=volume_bytes)
real_replace, real_unlink, copied = os.replace, os.unlink, [0]

def switched(*args):
    if mode == "before_switch":
        os._exit(9)
    real_replace(*args)
    if mode == "after_switch":
        os._exit(9)

def unlinked(path, *args, **kw):
    real_unlink(path, *args, **kw)
    if mode == "after_unlink" and str(path).endswith(".dat"):
        os._exit(9)

class Torn(Compactor):
    def _throttle(self, n):
        copied[0] += 1
        if mode == "torn_copy" and copied[0] == 2:  # a record copied, the next one half
            [partial] = [p for p in os.listdir(root) if p.endswith(".compact")]
            with open(os.path.join(root, partial), "ab") as fh:
                fh.write(os.urandom(n // 2))
            os._exit(9)

os.replace, os.unlink = switched, unlinked
Torn(store, threshold=0.0, bytes_per_s=0).run_pass()
print("no crash")
"""


@pytest.mark.parametrize("mode", ["torn_copy", "before_switch", "after_switch", "after_unlink"])
def test_a_crash_mid_compaction_loses_and_revives_nothing(tmp_path: Path, mode: str) -> None:
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        items = fill(store, 12)
        ids = list(items)
        gone = {ids[0], ids[1]} if mode == "after_unlink" else set(ids[1::2])
        gone.add(ids[2])  # a PUT in volume 2 ...
        store.put(*chunk())
        for cid in gone:  # ... tombstoned in a later volume
            store.delete(cid)
        fill(store, 2)  # every tombstone in a sealed volume
        live = {cid: store.get(cid) for cid in store.list_ids()}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(CRASH_SCRIPT),
            str(tmp_path),
            str(SMALL_VOLUME),
            mode,
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 9, out.stdout + out.stderr
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        assert not list(tmp_path.glob("*.compact"))  # a torn copy is removed at open
        assert_holds(store, live, gone)
        Compactor(store, threshold=0.0, bytes_per_s=0).run_pass()  # and compaction goes on
        assert_holds(store, live, gone)
    with VolumeStore(tmp_path, volume_bytes=SMALL_VOLUME) as store:
        assert_holds(store, live, gone)


def test_puts_deletes_and_reads_during_compaction_stay_correct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers own disjoint ids, so each knows exactly what must be there at the end."""
    stop = threading.Event()
    errors: list[BaseException] = []
    owned: list[dict[str, bytes]] = []
    deleted: list[set[str]] = []
    passes = [0]
    raced = [0]  # records copied while their chunk was deleted or put again
    switch = VolumeStore._switch

    def counting_switch(store: VolumeStore, old: Any, new: Any, copied: Any, *rest: Any) -> None:
        raced[0] += sum(store._index.get(cid) is not loc for cid, loc, _ in copied)
        switch(store, old, new, copied, *rest)

    monkeypatch.setattr(VolumeStore, "_switch", counting_switch)
    with VolumeStore(tmp_path, volume_bytes=WIDE_VOLUME) as store:
        for _ in range(4):
            owned.append(fill(store, 20))
            deleted.append(set())

        def compact() -> None:
            compactor = Compactor(store, threshold=0.0, bytes_per_s=20_000)  # slow: wide windows
            while not stop.is_set():
                compactor.run_pass()
                passes[0] += 1
                time.sleep(0.005)

        def work(seed: int) -> None:
            rng = random.Random(seed)
            mine, dead = owned[seed], deleted[seed]
            try:
                for _ in range(300):
                    time.sleep(0.003)  # spread the work over many compactions
                    roll = rng.random()
                    if roll < 0.3 and mine:
                        cid = rng.choice(sorted(mine))
                        assert store.delete(cid)
                        dead.add(cid)
                        data = mine.pop(cid)
                        if rng.random() < 0.3:  # deleted, then put back
                            assert store.put(cid, data) is True
                            mine[cid] = data
                            dead.discard(cid)
                    elif roll < 0.5:
                        cid, data = chunk()
                        store.put(cid, data)
                        mine[cid] = data
                    elif mine:
                        cid = rng.choice(sorted(mine))
                        assert store.get(cid) == mine[cid]
            except BaseException as e:
                errors.append(e)

        compactor = threading.Thread(target=compact)
        compactor.start()
        workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        time.sleep(0.2)
        stop.set()
        compactor.join()
        assert not errors, errors
        assert passes[0] >= 1 and raced[0] > 0  # the races this test is about did happen
        live = {cid: data for mine in owned for cid, data in mine.items()}
        gone = set().union(*deleted)
        assert_holds(store, live, gone)
        Compactor(store, threshold=0.0, bytes_per_s=0).run_pass()
        assert_holds(store, live, gone)
    with VolumeStore(tmp_path, volume_bytes=WIDE_VOLUME) as store:
        assert_holds(store, live, gone)


def test_background_compactor_runs_on_schedule_and_respects_the_rate(tmp_path: Path) -> None:
    volume_bytes = 2 * (100_000 + HEADER_SIZE) + 3 * HEADER_SIZE
    with VolumeStore(tmp_path, volume_bytes=volume_bytes) as store:
        items = fill(store, 10, 100_000)  # five volumes of two chunks
        ids = list(items)
        for cid in ids[0:10:2]:
            store.delete(cid)  # half of each: at the threshold
        compactor = Compactor(store, threshold=0.5, bytes_per_s=200_000, interval_s=0.05)
        pending = compactor.stats()["pending_volumes"]
        assert pending >= 3
        start = time.monotonic()
        compactor.start()
        try:
            deadline = time.monotonic() + 30
            while compactor.stats()["pending_volumes"] or compactor.volumes_compacted < pending:
                assert time.monotonic() < deadline, compactor.stats()
                time.sleep(0.02)
        finally:
            compactor.stop()
        elapsed = time.monotonic() - start
        stats = compactor.stats()
        assert stats["volumes_compacted"] >= pending and stats["bytes_reclaimed"] > 0
        # a second of burst, then 200 KB/s: copying must have taken its time
        assert elapsed >= (stats["bytes_copied"] - 200_000) / 200_000 * 0.9
        for cid in ids[1:10:2]:
            assert store.get(cid) == items[cid]


def wait_for_pass(client: NodeClient, passes: int, timeout: float = 30.0) -> dict[str, Any]:
    """The node's health once a compaction pass after the ``passes``-th has finished."""
    deadline = time.monotonic() + timeout
    while True:
        health = client.health()
        if health["compaction"]["passes"] > passes and not health["compaction"]["running"]:
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def test_a_node_process_compacts_on_request_and_reports_it(tmp_path: Path) -> None:
    secret = "test-node-secret"
    node = start_node_process(
        "n1", "site-a", free_port(), tmp_path / "n1", secret, volume_bytes=64 * 1024
    )
    try:
        node.wait_ready()
        with NodeClient("n1", node.url, secret) as client:
            items = dict(chunk(20_000) for _ in range(30))
            for cid, data in items.items():
                client.put(cid, data)
            ids = list(items)
            gone = set(ids[::3]) | set(ids[1::3])
            for cid in gone:
                client.delete(cid)
            health = client.health()
            assert health["dead_bytes"] >= len(gone) * 20_000
            assert health["reclaimable_bytes"] > 0 and health["compaction"]["pending_volumes"] > 0
            before = disk_bytes(node.data_dir)
            with pytest.raises(InvalidInputError):
                client.compact(threshold=2.0)
            started = client.compact()
            health = wait_for_pass(client, started["passes"])
            after = disk_bytes(node.data_dir)
            done = health["compaction"]
            assert done["volumes_compacted"] > 0 and done["pending_volumes"] == 0
            assert done["bytes_reclaimed"] == before - after > len(gone) * 20_000 * 0.8
            assert health["reclaimable_bytes"] < 64 * 1024  # what is left is in the open volume
            live = {cid: items[cid] for cid in ids if cid not in gone}
            assert all(client.get(cid) == data for cid, data in live.items())
            assert not any(client.exists(cid) for cid in gone)
        node.restart().wait_ready()
        with NodeClient("n1", node.url, secret) as client:
            assert sorted(client.list_ids()) == sorted(live)
            assert all(client.get(cid) == data for cid, data in live.items())
    finally:
        node.stop()
