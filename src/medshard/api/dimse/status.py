"""DIMSE status codes for medshard's errors, in one table (like pynetdicom's ``status.py``).

A DIMSE peer decides what to do next from the status alone: ``0xA7xx`` (out of resources) means
"try again later", ``0xA900``/``0xCxxx`` mean "this will never work", ``0x0124`` means "not
allowed". So every :class:`~medshard.errors.MedshardError` that reaches a DIMSE handler is mapped
here, once, per service; the handlers never pick a failure code themselves. The human-readable
reason travels in *Error Comment* (LO, at most 64 characters).

The ingest pipeline reports a rejected C-STORE as an ``IngestOutcome`` rather than an exception;
:func:`rejection_error` turns it back into the error class it stands for.
"""

from __future__ import annotations

from typing import Final, Literal

from pydicom.dataset import Dataset

from medshard.errors import (
    AccessDeniedError,
    IdentityConflictError,
    InvalidDicomError,
    InvalidInputError,
    MedshardError,
    StorageError,
)
from medshard.ingest.pipeline import IngestOutcome, Rejection

Service = Literal["C-STORE", "C-FIND", "C-MOVE", "C-GET"]

SUCCESS: Final = 0x0000
PENDING: Final = 0xFF00
CANCEL: Final = 0xFE00

#: Error class -> status per service, most specific class first (PS3.4 B.2.3, C.4.1.1.4,
#: C.4.2.1.5, C.4.3.1.4; PS3.7 C.5 for the general "Refused: Not Authorized").
ERROR_STATUS: Final[list[tuple[type[MedshardError], dict[Service, int]]]] = [
    (
        AccessDeniedError,
        {"C-STORE": 0x0124, "C-FIND": 0x0124, "C-MOVE": 0x0124, "C-GET": 0x0124},
    ),
    # Not parseable as DICOM, or lacking the UIDs an archive needs: "cannot understand".
    (
        InvalidDicomError,
        {"C-STORE": 0xC000, "C-FIND": 0xA900, "C-MOVE": 0xA900, "C-GET": 0xA900},
    ),
    # Parsed, but refused (conflicting instance, bad query value): "does not match SOP class".
    (
        InvalidInputError,
        {"C-STORE": 0xA900, "C-FIND": 0xA900, "C-MOVE": 0xA900, "C-GET": 0xA900},
    ),
    # Nodes down, no write quorum, catalog unavailable: transient, the peer should retry.
    (
        StorageError,
        {"C-STORE": 0xA700, "C-FIND": 0xA700, "C-MOVE": 0xA701, "C-GET": 0xA701},
    ),
]

#: Anything else: "cannot understand" / "unable to process".
DEFAULT_STATUS: Final[dict[Service, int]] = {
    "C-STORE": 0xC001,
    "C-FIND": 0xC001,
    "C-MOVE": 0xC001,
    "C-GET": 0xC001,
}

_COMMENT_LIMIT: Final = 64  # Error Comment is LO


def status_code(exc: BaseException, service: Service) -> int:
    """The DIMSE status a service answers for ``exc``."""
    for cls, codes in ERROR_STATUS:
        if isinstance(exc, cls):
            return codes[service]
    return DEFAULT_STATUS[service]


def failure(exc: BaseException, service: Service) -> Dataset:
    """A status dataset (Status + Error Comment) that pynetdicom sends as the response.

    The comment is cut to 64 characters and to plain ASCII, since it is sent without a
    Specific Character Set; the full message goes to the service log.
    """
    status = Dataset()
    status.Status = status_code(exc, service)
    text = " ".join(str(exc).split()) or type(exc).__name__
    status.ErrorComment = text.encode("ascii", "replace").decode()[:_COMMENT_LIMIT]
    return status


def rejection_error(outcome: IngestOutcome) -> MedshardError:
    """The error a ``rejected`` ingest outcome stands for, so it maps through the one table.

    The pipeline fills the instance's UIDs only once the header parsed and validated, so an
    outcome without them is unusable DICOM; a different instance under an already stored
    SOP Instance UID is refused input; any other rejection came from the storage layer.
    """
    reason = outcome.reason or "rejected"
    if outcome.code == Rejection.INVALID or not outcome.sop_instance_uid:
        return InvalidDicomError(reason)
    if outcome.code == Rejection.CONFLICT:  # the UID would eat the 64 characters
        return InvalidInputError("SOP Instance UID already stored with different bytes")
    if outcome.code == Rejection.IDENTITY:
        return IdentityConflictError("study or series belongs to another patient or study")
    return StorageError(reason)
