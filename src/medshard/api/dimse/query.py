"""C-FIND / C-MOVE / C-GET identifiers to catalog conditions, and catalog rows to C-FIND responses.

The matching rules are PS3.4 C.2.2.2, the same as QIDO-RS, so the conditions are the catalog's
own (:mod:`medshard.catalog.matching`) and the keyword-to-column map is the catalog's
:data:`~medshard.catalog.search.ATTRIBUTES`. What differs from QIDO is the transport: values
arrive as pydicom data elements, multiple values are separated by ``\\`` only, and the query
level comes from *Query/Retrieve Level* checked against the information model (Patient Root or
Study Root).

Decisions worth knowing:

* An empty value or a lone ``*`` is universal matching: the key is returned, not filtered.
* Keys the catalog does not index are returned empty (PS3.4 C.2.2.1.2 lets an SCP skip
  matching on optional keys it does not support); sequences come back as empty sequences.
* Matching is relational: keys of other levels may be given (e.g. ``Modality`` at STUDY level).
  A key the catalog cannot match at the requested level is an error (0xA900), never ignored,
  so a filter is never silently dropped.
* A retrieve (C-MOVE, C-GET) needs at least one unique key (patient ID or a UID); an
  identifier without one would send the whole archive.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medshard.catalog.matching import (
    RANGE_VRS,
    AnyOf,
    Condition,
    SingleValue,
    Wildcard,
    parse_range,
)
from medshard.catalog.search import ATTRIBUTES, DEPTH, Level
from medshard.errors import InvalidInputError

PATIENT_ROOT: Final = "1.2.840.10008.5.1.4.1.2.1"
STUDY_ROOT: Final = "1.2.840.10008.5.1.4.1.2.2"

#: Query/retrieve levels each information model offers (PS3.4 C.6.1, C.6.2).
MODEL_LEVELS: Final[dict[str, tuple[Level, ...]]] = {
    PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
}

#: The unique key of each level (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE_KEY: Final[dict[Level, str]] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

#: Attributes answered from the request or the service, not from the catalog.
_SERVICE_KEYS: Final = frozenset(
    {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}
)

#: Catalog strings are Unicode; answer in UTF-8 so any name round-trips.
RESPONSE_CHARSET: Final = "ISO_IR 192"

_UID: Final = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_NUMERIC_VRS: Final = frozenset({"IS", "US", "UL", "SS", "SL", "DS", "FL", "FD"})


@dataclass
class Query:
    """A parsed identifier.

    Attributes
    ----------
    model : str
        Information model root UID prefix (:data:`PATIENT_ROOT` or :data:`STUDY_ROOT`).
    level : {"PATIENT", "STUDY", "SERIES", "IMAGE"}
        From *Query/Retrieve Level*.
    conditions : dict
        Keyword -> condition for every key with a (non-universal) value the catalog indexes.
    requested : list of (tag, keyword, VR)
        Every public key of the identifier, in order: the response carries each of them.
    """

    model: str
    level: Level
    conditions: dict[str, Condition] = field(default_factory=dict)
    requested: list[tuple[int, str, str]] = field(default_factory=list)

    def catalog_fields(self) -> list[str]:
        """Keywords to ask the catalog for: requested ones it knows plus the unique keys."""
        wanted = dict.fromkeys(k for _t, k, _v in self.requested if k in ATTRIBUTES)
        wanted.update(dict.fromkeys(self.unique_keys()))
        return list(wanted)

    def unique_keys(self) -> list[str]:
        """Unique keys of the query level and the levels above it within the model."""
        levels = MODEL_LEVELS[self.model]
        return [UNIQUE_KEY[lv] for lv in levels if DEPTH[lv] <= DEPTH[self.level]]


def model_of(sop_class_uid: str) -> str:
    """The information model of a Q/R SOP class (FIND, MOVE and GET share the prefix)."""
    for root in MODEL_LEVELS:
        if sop_class_uid.startswith(root + "."):
            return root
    raise InvalidInputError(f"{sop_class_uid} is not a supported query/retrieve model")


def element_text(elem: DataElement) -> str:
    """A data element's value as DICOM text (multiple values joined by ``\\``)."""
    value: Any = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join("" if v is None else str(v) for v in value)
    return str(value)


def condition_of(keyword: str, vr: str, raw: str) -> Condition | None:
    """One matching value as a catalog condition; ``None`` means universal matching.

    Raises
    ------
    InvalidInputError
        A malformed date/time range or UID, or wildcards where the VR forbids them.
    """
    value = raw.strip()
    if value in ("", "*"):
        return None
    if vr in RANGE_VRS:
        return parse_range(keyword, vr, value)
    items = [v.strip() for v in value.split("\\")]
    if vr == "UI":
        bad = [v for v in items if len(v) > 64 or not _UID.fullmatch(v)]
        if bad:
            raise InvalidInputError(f"{keyword}: {bad[0]!r} is not a valid UID")
        return AnyOf(tuple(dict.fromkeys(items))) if len(items) > 1 else SingleValue(items[0])
    wild = "*" in value or "?" in value
    if vr in _NUMERIC_VRS:
        if wild:
            raise InvalidInputError(f"{keyword}: wildcards are not allowed for {vr} values")
        return SingleValue(value)
    if vr == "CS" and len(items) > 1:
        if wild:
            raise InvalidInputError(f"{keyword}: wildcards cannot be combined with a list")
        return AnyOf(tuple(dict.fromkeys(items)))
    ignore_case = vr == "PN"
    return Wildcard(value, ignore_case) if wild else SingleValue(value, ignore_case)


def _response_vr(elem: DataElement) -> str:
    """The VR to answer a key with: the dictionary's when the request's is UN or ambiguous."""
    vr = str(elem.VR)
    if vr == "UN" or " or " in vr:
        try:
            vr = dictionary_VR(elem.tag)
        except KeyError:
            return vr
    return vr.split(" or ")[0]


def parse_identifier(identifier: Dataset, sop_class_uid: str) -> Query:
    """Turn a request identifier into a :class:`Query`.

    Raises
    ------
    InvalidInputError
        Unknown model, missing or wrong *Query/Retrieve Level* for the model, bad values.
    """
    model = model_of(sop_class_uid)
    level_text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level_text not in MODEL_LEVELS[model]:
        allowed = ", ".join(MODEL_LEVELS[model])
        raise InvalidInputError(
            f"QueryRetrieveLevel {level_text or '(missing)'} is not one of {allowed}"
        )
    level: Level = level_text  # type: ignore[assignment]
    query = Query(model=model, level=level)
    for elem in identifier:
        if elem.tag.is_private or elem.tag.group in (0x0000, 0x0002):
            continue
        keyword = elem.keyword
        if not keyword:
            continue
        vr = _response_vr(elem)
        query.requested.append((int(elem.tag), keyword, vr))
        if keyword in _SERVICE_KEYS or keyword not in ATTRIBUTES or vr == "SQ":
            continue
        cond = condition_of(keyword, ATTRIBUTES[keyword].vr, element_text(elem))
        if cond is not None:
            query.conditions[keyword] = cond
    return query


def retrieve_query(identifier: Dataset, sop_class_uid: str) -> Query:
    """Parse a C-MOVE/C-GET identifier; it must name at least one unique key."""
    query = parse_identifier(identifier, sop_class_uid)
    if not any(key in query.conditions for key in UNIQUE_KEY.values()):
        raise InvalidInputError(
            "a retrieve needs a value for a unique key (PatientID, StudyInstanceUID, "
            "SeriesInstanceUID or SOPInstanceUID)"
        )
    return query


def _dicom_value(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple):
        items = [_dicom_value(vr, v) for v in value if v not in (None, "")]
        return items or None
    if vr in ("US", "UL", "SS", "SL"):
        return int(value)
    return str(value)


def response_identifier(query: Query, row: Mapping[str, Any], *, retrieve_ae_title: str) -> Dataset:
    """One C-FIND pending response: every requested key, filled from the catalog row."""
    ds = Dataset()
    ds.SpecificCharacterSet = RESPONSE_CHARSET
    for tag, keyword, vr in query.requested:
        if keyword in _SERVICE_KEYS:
            continue
        if vr == "SQ":
            ds.add_new(tag, vr, Sequence())
        else:
            ds.add_new(tag, vr, _dicom_value(vr, row.get(keyword)))
    for keyword in query.unique_keys():
        if keyword in row and keyword not in ds:
            tag_vr = dictionary_VR(keyword)
            ds.add_new(keyword, tag_vr, _dicom_value(tag_vr, row[keyword]))
    ds.QueryRetrieveLevel = query.level
    ds.RetrieveAETitle = retrieve_ae_title
    if any(k == "InstanceAvailability" for _t, k, _v in query.requested):
        ds.InstanceAvailability = "ONLINE"
    return ds


__all__ = [
    "MODEL_LEVELS",
    "PATIENT_ROOT",
    "RESPONSE_CHARSET",
    "STUDY_ROOT",
    "UNIQUE_KEY",
    "Query",
    "condition_of",
    "element_text",
    "model_of",
    "parse_identifier",
    "response_identifier",
    "retrieve_query",
]
