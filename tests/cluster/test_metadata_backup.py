"""Metadata durability: the service's home is deleted, `medshard restore` brings it all back.

Real node processes: import the sample DICOM, take a backup (encrypted named blobs on the
nodes), delete the home, restore a new one from the node URLs, the node secret and the
recovery key, and read every instance back byte-identical. A wrong recovery key, nodes
without backups and an occupied home are refused with clear errors; reconciliation and
scrubbing (which delete what the catalog does not name) leave the backups alone; the service
takes backups on its own; only the newest ``backup_keep`` are kept.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshard.cli import app
from medshard.cluster.archive import Archive
from medshard.cluster.backup_format import (
    BackupSeal,
    new_recovery_key,
    pack_files,
    parse_blob_name,
    parse_recovery_key,
    unpack_files,
)
from medshard.cluster.metadata_restore import parse_node_spec, restore_home
from medshard.cluster.reconcile import Reconciler
from medshard.cluster.scrub import Scrubber
from medshard.demo import sample_dicom_dir
from medshard.errors import ConfigError, CryptoError, InvalidInputError, NotFoundError, StorageError
from medshard.node.launcher import free_port
from medshard.node.metablobs import MetaBlobStore
from medshard.storage.node_client import NodeClient
from tests.conftest import Deployment, make_deployment, start_service


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _backups_on(dep: Deployment) -> dict[str, set[str]]:
    """node name -> names of the backup blobs it holds."""
    held: dict[str, set[str]] = {}
    for node in dep.nodes:
        with NodeClient(node.name, node.url, dep.settings.node_secret) as client:
            names = {str(b["name"]) for b in client.list_meta()}
        held[node.name] = {n for n in names if parse_blob_name(n)}
    return held


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    deployment = make_deployment(tmp_path)
    try:
        yield deployment
    finally:
        for proc in deployment.nodes:
            proc.stop()


# -- units -------------------------------------------------------------------------------------


def test_seal_opens_only_with_its_key_and_name() -> None:
    key = new_recovery_key()
    assert len(parse_recovery_key(key)) == 32
    seal = BackupSeal(key)
    blob = seal.seal("backup-x.manifest", b"catalog")
    assert seal.open("backup-x.manifest", blob) == b"catalog"
    with pytest.raises(CryptoError, match="another recovery key"):
        BackupSeal(new_recovery_key()).open("backup-x.manifest", blob)
    with pytest.raises(CryptoError, match="failed authentication"):
        seal.open("backup-y.manifest", blob)  # a blob renamed on a node
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CryptoError):
        seal.open("backup-x.manifest", tampered)
    for bad in ("", "msrk_short", "hunter2"):
        with pytest.raises(InvalidInputError):
            parse_recovery_key(bad)


def test_bundle_holds_only_metadata_files() -> None:
    files = {"catalog.db": b"db", "master.key": b"key\n", "medshard.toml": b"x = 1\n"}
    assert unpack_files(pack_files(files)) == files
    with pytest.raises(InvalidInputError):
        pack_files({"../etc/passwd": b""})


def test_meta_blob_store(tmp_path: Path) -> None:
    store = MetaBlobStore(tmp_path)
    assert store.put("backup-1.manifest", b"one") is True
    assert store.put("backup-1.manifest", b"two") is False
    assert store.get("backup-1.manifest") == b"two"
    assert store.list() == [{"name": "backup-1.manifest", "size": 3}]
    for bad in ("../x", "a/b", ".hidden", "UPPER"):
        with pytest.raises(InvalidInputError):
            store.put(bad, b"")
    assert store.delete("backup-1.manifest") is True
    assert store.delete("backup-1.manifest") is False
    with pytest.raises(NotFoundError):
        store.get("backup-1.manifest")


def test_restore_refuses_clearly_without_nodes_or_secret(tmp_path: Path) -> None:
    key = new_recovery_key()
    dead = [("node0", f"http://127.0.0.1:{free_port()}")]
    with pytest.raises(StorageError, match="no storage node answered"):
        restore_home(tmp_path / "a", dead, "secret", key)
    with pytest.raises(ConfigError, match="node secret"):
        restore_home(tmp_path / "b", dead, "", key)
    with pytest.raises(InvalidInputError, match="NAME=http"):
        parse_node_spec("http://127.0.0.1:7401")
    assert not (tmp_path / "a").exists()


# -- real nodes --------------------------------------------------------------------------------


def test_home_deleted_restore_brings_back_every_object(dep: Deployment, tmp_path: Path) -> None:
    runner = CliRunner()
    key = (dep.home / "recovery.key").read_text().strip()  # the operator's copy

    nothing = dep.restore(tmp_path / "too-early", key)
    assert nothing.exit_code != 0
    assert "no metadata backup" in nothing.output

    imported = dep.cli_json("import", str(sample_dicom_dir()))
    items = [i for i in imported["imported"] if i.get("sop_instance_uid")]
    assert len(items) >= 3
    originals = {i["sop_instance_uid"]: _sha(Path(i["path"])) for i in items}

    report = dep.cli_json("backup")
    assert report["copies"] == 3 and report["objects"] >= len(originals)
    status = dep.cli_json("status")["backup"]
    assert status["last_backup_id"] == report["backup_id"] and status["copies"] == 3

    shutil.rmtree(dep.home)  # the metadata service's disk is gone

    wrong = dep.restore(tmp_path / "wrong", new_recovery_key())
    assert wrong.exit_code != 0
    assert "recovery key" in wrong.output
    assert not (tmp_path / "wrong" / "medshard.toml").exists()

    home = tmp_path / "restored"
    result = dep.restore(home, key)
    assert result.exit_code == 0, result.output
    restored = json.loads(result.stdout)
    assert restored["backup_id"] == report["backup_id"]
    assert {"catalog.db", "master.key", "medshard.toml"} <= set(restored["files"])

    again = dep.restore(home, key)  # never over an existing home
    assert again.exit_code != 0 and "already holds" in again.output

    out = tmp_path / "out"
    env = {"MEDSHARD_TOKEN": dep.token}  # tokens live in the catalog: restored with it
    for sop, digest in originals.items():
        target = out / f"{sop}.dcm"
        got = runner.invoke(
            app, ["get", "--sop", sop, "-o", str(target), "--home", str(home)], env=env
        )
        assert got.exit_code == 0, got.output
        assert _sha(target) == digest, sop

    # Reconciliation deletes what the catalog does not name, at once with no grace; scrubbing
    # verifies every copy. Neither may touch the backups, and every object stays readable.
    before = _backups_on(dep)
    assert sum(bool(names) for names in before.values()) == 3
    with Archive.open(home) as archive:
        archive.settings.orphan_grace_s = 0.0
        reconciler = Reconciler(archive)
        for _ in range(2):
            for handle in archive.pool.nodes.values():
                reconciler.run(handle)
        assert Scrubber(archive).step(60.0) == 0
    assert _backups_on(dep) == before
    for sop, digest in originals.items():
        target = out / "after" / f"{sop}.dcm"
        got = runner.invoke(
            app, ["get", "--sop", sop, "-o", str(target), "--home", str(home)], env=env
        )
        assert got.exit_code == 0, got.output
        assert _sha(target) == digest, sop


def test_only_the_newest_backups_are_kept(dep: Deployment) -> None:
    ids = [dep.cli_json("backup")["backup_id"] for _ in range(4)]
    manifests = {
        parse_blob_name(name)[0]  # type: ignore[index]
        for names in _backups_on(dep).values()
        for name in names
        if name.endswith(".manifest")
    }
    assert manifests == set(ids[-3:])


def test_the_service_backs_up_on_its_own(dep: Deployment) -> None:
    svc = start_service(dep, heartbeat_interval_s=0.3, backup_interval_s=600.0)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if dep.cli_json("status")["backup"]["last_backup_id"]:
                break
            time.sleep(0.5)
        status = dep.cli_json("status")["backup"]
        assert status["last_backup_id"], status
        assert status["copies"] == 3 and status["last_error"] is None
        assert sum(bool(names) for names in _backups_on(dep).values()) == 3
    finally:
        svc.process.stop()
