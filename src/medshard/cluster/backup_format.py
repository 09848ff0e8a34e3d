"""The format of a metadata backup: recovery key, sealing, blob names, file bundle. Pure.

A backup is a gzip'd tar of the home's metadata files (catalog snapshot, settings, master
key), sealed with AES-256-GCM under a key derived from the deployment's *recovery key*,
split into parts, plus a sealed *manifest* naming the parts and their hashes. Both go to
storage nodes as named blobs (see :mod:`medshard.node.metablobs`)::

    backup-<id>.part-0000 ...   the sealed bundle, in parts of at most one chunk size
    backup-<id>.manifest        sealed JSON: parts, hashes, sizes, time, what is inside

``<id>`` is the UTC time of the backup (``20250101t120000123456z``), so names sort in time
order and the newest backup is found by listing any node. The manifest is written last on
each node, so a manifest there means its parts were written there first.

Why a separate recovery key rather than the master key: the master key lives in the home,
and a backup is for the day the home is lost. The recovery key is printed once at
``medshard init`` (or the first ``medshard backup``) for the operator to keep off the
machine; it is also kept in the home so the service can seal backups unattended. With it, an
operator holding only node URLs and the node secret can rebuild the home, master key
included (the master key is *inside* the sealed bundle). Nodes only ever see ciphertext.

Every sealed blob starts with a magic and the recovery key's id, so a restore with the
wrong key says so plainly instead of reporting a corrupt backup.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import re
import secrets
import tarfile
from datetime import datetime
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medshard.errors import CryptoError, InvalidInputError

#: Printed form of a recovery key: this prefix, then 32 random bytes in URL-safe base64.
RECOVERY_PREFIX: Final = "msrk_"
FORMAT_VERSION: Final = 1
_MAGIC: Final = b"MSBK1"
_KEY_ID_BYTES: Final = 8
_NONCE_BYTES: Final = 12
_HEAD: Final = len(_MAGIC) + _KEY_ID_BYTES + _NONCE_BYTES
_NAME_RE: Final = re.compile(r"backup-(\d{8}t\d{12}z)\.(manifest|part-\d{4})")
#: Files a bundle may hold, and nothing else (a restore writes exactly these into the home).
BUNDLE_FILES: Final = ("medshard.toml", "master.key", "master.key.new", "catalog.db")


def new_recovery_key() -> str:
    """A fresh recovery key in its printed form."""
    raw = secrets.token_bytes(32)
    return RECOVERY_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_recovery_key(text: str) -> bytes:
    """The 32 raw bytes of a printed recovery key; InvalidInputError if it is not one."""
    value = text.strip()
    if not value.startswith(RECOVERY_PREFIX):
        raise InvalidInputError(
            f"not a medshard recovery key (it starts with {RECOVERY_PREFIX!r}; "
            "find it in the output of `medshard init` or in HOME/recovery.key)"
        )
    body = value[len(RECOVERY_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise InvalidInputError("malformed recovery key: check that it was copied whole")
    return raw


class BackupSeal:
    """Seals and opens backup blobs under a key derived from the recovery key (HKDF-SHA256)."""

    def __init__(self, recovery_key: str) -> None:
        raw = parse_recovery_key(recovery_key)
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"medshard metadata backup",
            info=b"medshard backup v1 aes-256-gcm",
        )
        self._aead = AESGCM(hkdf.derive(raw))
        self.key_id = hashlib.sha256(b"medshard-recovery-key-id" + raw).digest()[:_KEY_ID_BYTES]

    def seal(self, name: str, plaintext: bytes) -> bytes:
        """magic || key id || nonce || AES-GCM(plaintext), bound to the blob's name (AAD)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        head = _MAGIC + self.key_id
        return head + nonce + self._aead.encrypt(nonce, plaintext, head + name.encode())

    def open(self, name: str, blob: bytes) -> bytes:
        """The plaintext; CryptoError for another recovery key, tampering or another name."""
        if len(blob) < _HEAD or not blob.startswith(_MAGIC):
            raise CryptoError(f"{name} is not a medshard backup blob")
        head = blob[: len(_MAGIC) + _KEY_ID_BYTES]
        if head[len(_MAGIC) :] != self.key_id:
            raise CryptoError(
                f"{name} was sealed with another recovery key (key id "
                f"{head[len(_MAGIC) :].hex()}, yours is {self.key_id.hex()})"
            )
        nonce = blob[len(head) : _HEAD]
        try:
            return self._aead.decrypt(nonce, blob[_HEAD:], head + name.encode())
        except InvalidTag as exc:
            raise CryptoError(f"{name} failed authentication: corrupt or tampered") from exc

    def seal_manifest(self, backup_id: str, manifest: dict[str, Any]) -> bytes:
        name = manifest_name(backup_id)
        return self.seal(name, json.dumps(manifest, sort_keys=True).encode())

    def open_manifest(self, backup_id: str, blob: bytes) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self.open(manifest_name(backup_id), blob))
        if manifest.get("format") != FORMAT_VERSION or manifest.get("backup_id") != backup_id:
            raise CryptoError(f"manifest of backup {backup_id} is of an unknown format")
        return manifest


def new_backup_id(moment: datetime) -> str:
    """The id of a backup taken at ``moment`` (UTC): sorts in time order."""
    return moment.strftime("%Y%m%dt%H%M%S%fz")  # lowercase: node blob names are


def manifest_name(backup_id: str) -> str:
    return f"backup-{backup_id}.manifest"


def part_name(backup_id: str, index: int) -> str:
    return f"backup-{backup_id}.part-{index:04d}"


def parse_blob_name(name: str) -> tuple[str, str] | None:
    """(backup id, "manifest" or "part-NNNN") for a backup blob's name, else None."""
    match = _NAME_RE.fullmatch(name)
    return (match.group(1), match.group(2)) if match else None


_AUDIT_RE = re.compile(r"audit-(\d{12})-(\d{12})")


def audit_shipment_name(first_seq: int, last_seq: int) -> str:
    """The named blob of shipped audit events ``first_seq`` to ``last_seq``: sorts by seq."""
    return f"audit-{first_seq:012d}-{last_seq:012d}"


def parse_audit_shipment_name(name: str) -> tuple[int, int] | None:
    """(first seq, last seq) of an audit shipment's name, else None."""
    match = _AUDIT_RE.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


_JOURNAL_RE: Final = re.compile(r"journal-(\d{8}t\d{12}z)-([0-9a-f]{8})-(\d{8,})")


def journal_name(stamp: str, writer: str, seq: int) -> str:
    """The named blob of an object journal group (:mod:`medshard.cluster.journal`)."""
    return f"journal-{stamp}-{writer}-{seq:08d}"


def parse_journal_name(name: str) -> tuple[str, str, int] | None:
    """(time stamp, writer, seq) of a journal blob's name, else None."""
    match = _JOURNAL_RE.fullmatch(name)
    return (match.group(1), match.group(2), int(match.group(3))) if match else None


def split(data: bytes, part_bytes: int) -> list[bytes]:
    """``data`` in pieces of at most ``part_bytes`` (one empty piece for empty data)."""
    return [data[i : i + part_bytes] for i in range(0, len(data), part_bytes)] or [b""]


def pack_files(files: dict[str, bytes]) -> bytes:
    """A gzip'd tar of ``files`` (names from :data:`BUNDLE_FILES`), deterministic in order."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name in sorted(files):
            if name not in BUNDLE_FILES:
                raise InvalidInputError(f"{name} does not belong in a metadata backup")
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def unpack_files(bundle: bytes) -> dict[str, bytes]:
    """The files of a bundle; refuses anything but regular files named in BUNDLE_FILES."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bundle)), mode="r") as tar:
            for member in tar.getmembers():
                if member.name not in BUNDLE_FILES or not member.isfile():
                    raise CryptoError(f"backup bundle holds an unexpected entry {member.name!r}")
                handle = tar.extractfile(member)
                files[member.name] = handle.read() if handle is not None else b""
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise CryptoError(f"backup bundle is unreadable: {exc}") from exc
    return files
