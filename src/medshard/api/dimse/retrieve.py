"""C-MOVE / C-GET sub-operations: which instances, over which presentation contexts, which bytes.

The archive promises the bytes it was given. pynetdicom, however, re-encodes every dataset a
C-STORE sub-operation sends, and pydicom's writer drops group-length elements and cannot
re-deflate; so a retrieved instance could differ from the stored one. :class:`StoredInstance`
is the dataset read from the stored file that also keeps the file's encoded data set; the
encoder wrapper installed by :func:`install_passthrough` sends those bytes unchanged whenever
the negotiated transfer syntax is the stored one, and only falls back to encoding otherwise.

Presentation contexts for a C-MOVE sub-association propose each instance's own transfer
syntax (exact contexts) and, per SOP class, uncompressed syntaxes as a fallback; when a peer
accepts no context for a compressed instance's syntax the instance is decompressed for it.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import association as _association
from pynetdicom.presentation import PresentationContext, build_context

from medshard.api.dimse.query import Query
from medshard.catalog.instances import live_object_keys
from medshard.catalog.search import search
from medshard.cluster.archive import Archive
from medshard.errors import InvalidDicomError
from medshard.security.context import require_caller
from medshard.security.policy import audit_results, scope_of

log = logging.getLogger(__name__)

#: A requestor may propose at most 128 presentation contexts (PS3.8 9.3.2.2, odd IDs 1-255).
MAX_CONTEXTS: Final = 128
_UNCOMPRESSED_FALLBACK: Final = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_WORD_SIZE: Final = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


@dataclass(frozen=True)
class Match:
    """One instance a retrieve will send."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    #: The calling AE's site (its service account's): the instance is read from the
    #: replica nearest it.
    near_site: str | None = None


def find_matches(archive: Archive, query: Query, action: str = "retrieve") -> list[Match]:
    """Every stored instance the retrieve identifier selects that the caller may see, in
    catalog order, each to be read near the caller's site; audited per patient."""
    fields = ["SOPInstanceUID", "SOPClassUID", "AvailableTransferSyntaxUID", "StudyInstanceUID"]
    caller = require_caller()
    with archive.catalog.reads() as session:
        rows = search(
            session, "IMAGE", query.conditions, fields=fields, scope=scope_of(caller.principal)
        )
        audit_results(caller, action, rows, detail="DIMSE retrieve")
        keys = live_object_keys(session, [r["_instance_pk"] for r in rows])
    site = caller.gate.site_of(caller.principal)  # cached per gate: no query per retrieve
    return [
        Match(
            sop_instance_uid=str(r["SOPInstanceUID"]),
            sop_class_uid=str(r["SOPClassUID"] or ""),
            transfer_syntax_uid=str(r["AvailableTransferSyntaxUID"] or ""),
            object_key=keys[r["_instance_pk"]],
            near_site=site,
        )
        for r in rows
        if r["_instance_pk"] in keys
    ]


def requested_contexts(matches: Iterable[Match]) -> list[PresentationContext]:
    """Contexts for a C-MOVE sub-association: exact syntaxes first, uncompressed fallbacks after.

    Exact contexts carry one transfer syntax each, so the peer cannot pick another one for
    them; beyond 128 contexts the fallbacks, then the rarest exact pairs, are left out (and
    those instances fail as sub-operations).
    """
    pairs = dict.fromkeys((m.sop_class_uid, m.transfer_syntax_uid) for m in matches)
    exact = [build_context(sop, [ts]) for sop, ts in pairs if sop and ts]
    fallback = [
        build_context(sop, list(_UNCOMPRESSED_FALLBACK))
        for sop in dict.fromkeys(s for s, _ in pairs)
    ]
    contexts = (exact + fallback)[:MAX_CONTEXTS]
    if len(exact) + len(fallback) > MAX_CONTEXTS:
        log.warning(
            "retrieve needs %d presentation contexts; proposing the first %d",
            len(exact) + len(fallback),
            MAX_CONTEXTS,
        )
    return contexts


def data_set_offset(data: bytes) -> int:
    """Where the data set starts in a stored file: after preamble and file meta, if any."""
    pos = 132 if data[128:132] == b"DICM" else 0
    while len(data) >= pos + 8:
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        elif vr.isalpha():
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
        else:  # implicit VR file meta (non-conformant but seen)
            pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
    return pos


class StoredInstance(Dataset):
    """A dataset read from stored bytes that keeps the encoded data set for sending as is."""

    stored_syntax: UID
    encoded: bytes

    @classmethod
    def from_bytes(cls, data: bytes, catalog_syntax: str = "") -> StoredInstance:
        """Parse a stored file; the transfer syntax falls back to the catalog's, then the encoding.

        Raises
        ------
        InvalidDicomError
            The stored bytes do not parse (they did when ingested: a storage fault).
        """
        try:
            parsed = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:  # pydicom raises assorted errors on damaged data
            raise InvalidDicomError(f"stored instance unreadable: {exc}") from exc
        inst = cls(parsed)
        inst.file_meta = FileMetaDataset(parsed.file_meta or FileMetaDataset())
        implicit, little = parsed.original_encoding
        inst.set_original_encoding(implicit, little, parsed.original_character_set)
        syntax = inst.file_meta.get("TransferSyntaxUID") or catalog_syntax
        if not syntax:
            syntax = (
                ImplicitVRLittleEndian
                if implicit
                else ExplicitVRLittleEndian
                if little
                else ExplicitVRBigEndian
            )
        inst.file_meta.TransferSyntaxUID = UID(str(syntax))
        if "SOPClassUID" not in inst or "SOPInstanceUID" not in inst:
            raise InvalidDicomError("stored instance lacks SOP Class or SOP Instance UID")
        inst.stored_syntax = UID(str(syntax))
        inst.encoded = data[data_set_offset(data) :]
        return inst

    def encoded_as(self, implicit: bool, little: bool, deflated: bool) -> bytes | None:
        """The stored data set bytes if they are what the requested encoding would produce."""
        ts = self.stored_syntax
        unchanged = self.file_meta.get("TransferSyntaxUID") == ts
        same = (ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated) == (
            implicit,
            little,
            deflated,
        )
        return self.encoded if unchanged and same else None


def load_instance(archive: Archive, match: Match) -> StoredInstance:
    """Read (from the replicas nearest the caller's site), verify and parse one stored instance."""
    return StoredInstance.from_bytes(
        archive.store.read_all(match.object_key, near_site=match.near_site),
        match.transfer_syntax_uid,
    )


def unreadable(match: Match) -> Dataset:
    """A stand-in for an instance that could not be read.

    pynetdicom counts a sub-operation as failed (and lists its SOP Instance UID in the
    final response) when sending raises; a dataset without file meta makes it raise before
    anything goes on the wire, so the retrieve carries on with the next instance.
    """
    ds = Dataset()
    ds.SOPClassUID = match.sop_class_uid or "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = match.sop_instance_uid
    return ds


def sendable(instance: StoredInstance, accepted: set[tuple[str, str]]) -> Dataset:
    """The instance as it can go over the accepted contexts (our SCU side).

    Unchanged when a context for its own syntax was accepted, or when pynetdicom can convert
    it (between little endian uncompressed syntaxes). Otherwise, when the peer accepted an
    uncompressed little endian context for its SOP class, a compressed instance is
    decompressed and a big endian one turned little endian; failing that it is left to fail
    as a sub-operation.
    """
    sop = str(instance.SOPClassUID)
    ts = instance.stored_syntax
    if (sop, ts) in accepted or (not ts.is_compressed and ts.is_little_endian):
        return instance
    little = [UID(t) for s, t in accepted if s == sop]
    if not any(not t.is_compressed and t.is_little_endian for t in little):
        return instance
    try:
        if ts.is_compressed:
            instance.decompress(generate_instance_uid=False)
        else:
            to_little_endian(instance)
    except Exception as exc:  # codec missing or data damaged: the sub-operation fails
        log.warning("cannot convert %s for the peer: %s", instance.SOPInstanceUID, exc)
    return instance


def to_little_endian(ds: Dataset) -> None:
    """Explicit VR big endian (retired) to little endian, for peers that refuse it.

    Reading converts every element (numbers are decoded by value); the binary VRs stay in
    their big endian byte order and are swapped here per their word size.
    """
    for elem in ds.iterall():
        width = _WORD_SIZE.get(str(elem.VR))
        if width and isinstance(elem.value, bytes) and len(elem.value) % width == 0:
            words = np.frombuffer(elem.value, dtype=f">u{width}")
            elem.value = words.astype(f"<u{width}").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True, ds.original_character_set)


def accepted_for_sending(contexts: Iterable[Any]) -> set[tuple[str, str]]:
    """(abstract syntax, transfer syntax) of accepted contexts where we may act as SCU."""
    return {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in contexts
        if cx.as_scu and cx.transfer_syntax
    }


# --------------------------------------------------------------------------- byte pass-through

_original_encode = _association.encode


def _encode_passthrough(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    if isinstance(ds, StoredInstance):
        raw = ds.encoded_as(is_implicit_vr, is_little_endian, deflated)
        if raw is not None:
            return raw
    return _original_encode(ds, is_implicit_vr, is_little_endian, deflated)


def install_passthrough() -> None:
    """Make pynetdicom send :class:`StoredInstance` bytes unchanged (idempotent).

    pynetdicom's ``Association.send_c_store`` encodes a dataset with the ``encode`` function
    of its module; wrapping it there changes nothing for any other dataset.
    """
    if getattr(_association, "encode", None) is not _encode_passthrough:
        _association.encode = _encode_passthrough  # type: ignore[assignment]


__all__ = [
    "MAX_CONTEXTS",
    "Match",
    "StoredInstance",
    "accepted_for_sending",
    "data_set_offset",
    "find_matches",
    "install_passthrough",
    "load_instance",
    "requested_contexts",
    "sendable",
    "unreadable",
]
