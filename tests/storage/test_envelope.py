"""The encryption envelope and key providers."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from medshard.errors import ConfigError, CryptoError
from medshard.storage.chunking import iter_chunks
from medshard.storage.envelope import ChunkCipher, new_key, unwrap_data_key, wrap_data_key
from medshard.storage.keys import EnvKeyProvider, LocalKeyFileProvider


def test_chunks_round_trip_and_are_bound_to_object_and_position() -> None:
    key = new_key()
    cipher = ChunkCipher(key, "obj1")
    sealed = [cipher.seal(i, f"chunk {i}".encode()) for i in range(3)]
    assert [cipher.open(i, s) for i, s in enumerate(sealed)] == [b"chunk 0", b"chunk 1", b"chunk 2"]
    with pytest.raises(CryptoError):
        cipher.open(1, sealed[0])  # reordered
    with pytest.raises(CryptoError):
        ChunkCipher(key, "obj2").open(0, sealed[0])  # moved to another object
    tampered = bytearray(sealed[2])
    tampered[3] ^= 1
    with pytest.raises(CryptoError):
        cipher.open(2, bytes(tampered))


def test_data_key_wrapped_by_patient_key_cannot_be_opened_after_shredding() -> None:
    patient_key, data_key = new_key(), new_key()
    wrapped = wrap_data_key(patient_key, data_key, "obj")
    assert unwrap_data_key(patient_key, wrapped, "obj") == data_key
    with pytest.raises(CryptoError):
        unwrap_data_key(new_key(), wrapped, "obj")


def test_local_key_file_is_private_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    LocalKeyFileProvider.create(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    provider = LocalKeyFileProvider(path)
    wrapped = provider.wrap(b"k" * 32, b"patient:1")
    assert provider.unwrap(wrapped, b"patient:1") == b"k" * 32
    with pytest.raises(CryptoError):
        provider.unwrap(wrapped, b"patient:2")
    with pytest.raises(FileExistsError):
        LocalKeyFileProvider.create(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        LocalKeyFileProvider(path)


def test_env_key_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    monkeypatch.setenv("MEDSHARD_MASTER_KEY", base64.b64encode(b"x" * 32).decode())
    provider = EnvKeyProvider()
    assert provider.unwrap(provider.wrap(b"y" * 32, b"c"), b"c") == b"y" * 32
    monkeypatch.setenv("MEDSHARD_MASTER_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(ConfigError):
        EnvKeyProvider()


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096])
def test_chunking_covers_the_stream_exactly(size: int) -> None:
    data = os.urandom(size)
    chunks = list(iter_chunks(io.BytesIO(data), 4096))
    assert b"".join(chunks) == data
    assert all(len(c) == 4096 for c in chunks[:-1])
    assert len(chunks) == max(1, -(-size // 4096))
