"""The one exception hierarchy of medshard.

Every error the system raises on purpose derives from :class:`MedshardError`, so the API and the
DIMSE service each map them to protocol statuses in one place::

    MedshardError
    ├── ConfigError              the home, config file or a setting is missing or wrong
    ├── NotFoundError            no such patient / study / series / instance / object / node
    ├── AuthenticationError      no valid credentials (missing, expired, revoked, locked out)
    ├── AccessDeniedError        authenticated but not allowed (per-patient authorization)
    ├── InvalidInputError        the caller sent something we will not store
    │   ├── InvalidDicomError    not DICOM, or DICOM missing what an archive needs
    │   ├── IdentityConflictError   a study or series UID that belongs to another patient
    │   ├── UnsupportedContentError   recognised, but a kind of file we do not accept
    │   └── VersionConflictError   an update that does not name the version it replaces
    ├── StorageError             bytes could not be written or read
    │   ├── NodeUnavailableError one storage node did not answer, or refused
    │   │   └── NodeFullError    one storage node is out of space (HTTP 507)
    │   ├── ChecksumMismatchError   bytes did not hash to what was asked for (corruption)
    │   ├── NoQuorumError        fewer than the write quorum acknowledged a durable write
    │   └── InsufficientNodesError  not enough live nodes to place or repair k replicas
    ├── CryptoError              a key could not be unwrapped or a ciphertext failed to verify
    └── AnalysisError            a model could not be loaded or an image could not be analysed

Messages say what happened and, where there is one, what to do next.
"""

from __future__ import annotations


class MedshardError(Exception):
    """Root of every error medshard raises on purpose."""


class ConfigError(MedshardError):
    """The deployment's home, configuration or a setting is missing or invalid."""


class NotFoundError(MedshardError):
    """The thing asked for does not exist (or is not visible to the caller)."""


class AuthenticationError(MedshardError):
    """No valid credentials: missing, wrong, expired or revoked token, or a locked account."""


class AccessDeniedError(MedshardError):
    """The caller is authenticated but not allowed to do this."""


class InvalidInputError(MedshardError):
    """The input will not be stored; nothing was written."""


class InvalidDicomError(InvalidInputError):
    """Not a DICOM file, or a DICOM file missing what an archive needs (e.g. SOP Instance UID)."""


class IdentityConflictError(InvalidInputError):
    """The instance names a study (or series) the archive holds for another patient (or
    study): filing it there would put one person's images in another's record."""


class UnsupportedContentError(InvalidInputError):
    """A recognised kind of file that this archive does not accept."""


class VersionConflictError(InvalidInputError):
    """An update of a versioned record (a document) that does not name the current version
    as the one it replaces: refused so that nobody silently overwrites someone else's edit."""

    def __init__(self, message: str, current: int | None = None) -> None:
        super().__init__(message)
        self.current = current


class StorageError(MedshardError):
    """Bytes could not be written to or read from the storage layer."""


class NodeUnavailableError(StorageError):
    """A storage node did not answer, refused the request, or is out of space."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"storage node {node!r} unavailable: {reason}")
        self.node = node
        self.reason = reason


class NodeFullError(NodeUnavailableError):
    """A storage node refused a write for want of space (its disk or configured capacity is
    full): the node is up and keeps serving reads; place the copy elsewhere."""


class ChecksumMismatchError(StorageError):
    """Bytes read or received did not hash to the expected content address."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: expected sha256 {expected[:16]}…, got {actual[:16]}…")
        self.expected = expected
        self.actual = actual


class NoQuorumError(StorageError):
    """Fewer nodes than the write quorum made a chunk durable; the write was not acknowledged."""


class InsufficientNodesError(StorageError):
    """Too few live nodes to place or restore the configured number of replicas."""


class CryptoError(MedshardError):
    """A key could not be unwrapped, or a ciphertext failed authentication."""


class AnalysisError(MedshardError):
    """A model could not be loaded, or an image could not be analysed."""
