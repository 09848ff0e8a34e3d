"""Named metadata blobs on a storage node: where the service keeps its encrypted backups.

Chunks are content-addressed and owned by the catalog: the reconciler deletes any chunk the
catalog does not name (an orphan), and the scrubber walks the catalog's replicas. A backup
of the catalog cannot be named *by* the catalog it backs up, and a restore that starts from
an empty disk must find it knowing nothing but the node URLs. So backups live beside the
chunks in a separate, named namespace (``DATA/meta/NAME``, one file per blob) that
reconciliation, scrubbing, drain and repair never look at, and that ``GET /meta`` lists.

Blobs are small (a manifest, or a part of at most one chunk size) and few (a handful of
backups are kept), so a plain file each, written to a temporary name, fsync'd, renamed and
the directory fsync'd, is simple and durable. The node never sees plaintext: the service
encrypts every blob before it is sent (see :mod:`medshard.cluster.metadata_backup`).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from medshard.errors import InvalidInputError, NotFoundError

#: Largest blob a node accepts (bytes): the service splits a backup into parts below this.
MAX_BLOB_BYTES = 64 * 1024 * 1024
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def check_blob_name(name: str) -> None:
    """Refuse names that could escape the directory or collide with temporary files."""
    if not (isinstance(name, str) and _NAME_RE.fullmatch(name)) or ".." in name:
        raise InvalidInputError(
            f"malformed blob name {name!r}: lowercase letters, digits, '.', '_', '-' (max 128)"
        )


class MetaBlobStore:
    """Named blobs in ``ROOT/meta``; every write is durable before it returns."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root) / "meta"
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes) -> bool:
        """Store (or replace) ``name``; True if it did not exist before."""
        check_blob_name(name)
        if len(data) > MAX_BLOB_BYTES:
            raise InvalidInputError(f"blob of {len(data)} bytes exceeds {MAX_BLOB_BYTES}")
        path = self.root / name
        created = not path.exists()
        tmp = self.root / f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_dir()
        return created

    def get(self, name: str) -> bytes:
        check_blob_name(name)
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no metadata blob {name}") from None

    def delete(self, name: str) -> bool:
        check_blob_name(name)
        try:
            (self.root / name).unlink()
        except FileNotFoundError:
            return False
        self._sync_dir()
        return True

    def list(self) -> list[dict[str, int | str]]:
        """Every blob as ``{"name", "size"}``, sorted by name."""
        blobs: list[dict[str, int | str]] = []
        for path in sorted(self.root.iterdir()):
            if _NAME_RE.fullmatch(path.name) and path.is_file():
                blobs.append({"name": path.name, "size": path.stat().st_size})
        return blobs

    def _sync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
