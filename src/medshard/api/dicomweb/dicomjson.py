"""DICOM JSON model (PS3.18 Annex F) for QIDO-RS results, WADO-RS metadata and STOW-RS input.

pydicom already encodes single elements correctly (PN components, AT as hex, IS/DS numbers,
InlineBinary); what it cannot do is tell a bulk data URI maker *where* in the dataset an element
sits, because its handler receives only the element. WADO-RS needs that path to serve
``.../bulkdata/{path}`` later, so this module walks sequences itself and hands the maker a
path such as ``"7FE00010"`` or ``"00540016/0/00181072"`` (tag / 0-based item index / tag).
:func:`resolve_bulkdata_path` is its inverse, so the route that serves bulk data resolves
exactly what the metadata advertised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.valuerep import VR

from medshard.errors import InvalidInputError, NotFoundError

__all__ = [
    "BULK_VRS",
    "PIXEL_DATA_TAGS",
    "dataset_to_json",
    "json_to_dataset",
    "resolve_bulkdata_path",
    "value_json",
]

#: VRs whose values are opaque bytes and may be replaced by a BulkDataURI (PS3.18 F.2.7).
BULK_VRS: Final = frozenset(
    {VR.OB, VR.OD, VR.OF, VR.OL, VR.OV, VR.OW, VR.UN, VR.OB_OW, VR.US_OW, VR.US_SS_OW}
)
#: Pixel Data, Float Pixel Data, Double Float Pixel Data: always bulk when a maker is given.
PIXEL_DATA_TAGS: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

BulkDataUriMaker = Callable[[str], str]
BulkDataLoader = Callable[[str, str, str], Any]


def _element_json(
    elem: DataElement,
    path: str,
    bulkdata_uri: BulkDataUriMaker | None,
    bulk_threshold: int,
) -> dict[str, Any]:
    if elem.VR == VR.SQ:
        items = [
            _dataset_json(item, f"{path}/{i}/", bulkdata_uri, bulk_threshold)
            for i, item in enumerate(elem.value or [])
        ]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if bulkdata_uri is not None and elem.VR in BULK_VRS and not elem.is_empty:
        value = elem.value
        size = len(value) if isinstance(value, bytes | bytearray) else 0
        if elem.tag in PIXEL_DATA_TAGS or size > bulk_threshold:
            return {"vr": _plain_vr(elem), "BulkDataURI": bulkdata_uri(path)}
    # Inline everything else through pydicom (no handler: it never makes a URI itself).
    out = elem.to_json_dict(None, 0)
    out["vr"] = _plain_vr(elem)
    return out


def _plain_vr(elem: DataElement) -> str:
    """Resolve a VR pydicom left ambiguous (no context to decide): JSON needs a real one."""
    vr = str(elem.VR)
    if " or " not in vr:
        return vr
    if isinstance(elem.value, bytes | bytearray):
        return "OW"
    value = elem.value
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    return "SS" if any(isinstance(v, int) and v < 0 for v in values) else "US"


def _dataset_json(
    ds: Dataset,
    prefix: str,
    bulkdata_uri: BulkDataUriMaker | None,
    bulk_threshold: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):  # tags, not elements: a broken value must not stop iteration
        if tag.element == 0:  # group lengths have no place in the JSON model (PS3.18 F.2.1)
            continue
        key = f"{int(tag):08X}"
        try:
            elem = ds[tag]  # also resolves ambiguous VRs (US or SS, OB or OW)
            out[key] = _element_json(elem, prefix + key, bulkdata_uri, bulk_threshold)
        except InvalidInputError:
            raise
        except Exception as exc:  # pydicom raises many types for one broken value
            raise InvalidInputError(
                f"element ({key[:4]},{key[4:]}) cannot be encoded as DICOM JSON: {exc}"
            ) from exc
    return out


def dataset_to_json(
    ds: Dataset,
    *,
    bulkdata_uri: BulkDataUriMaker | None = None,
    bulk_threshold: int = 1024,
) -> dict[str, Any]:
    """Encode a dataset as a DICOM JSON object (PS3.18 F.2).

    Parameters
    ----------
    ds : pydicom.Dataset
        The dataset; file meta (group 0002) is not part of the model and is not emitted.
    bulkdata_uri : callable, optional
        Given a bulk element's path (``"7FE00010"``, ``"00540016/0/00181072"``) returns its
        URL. Without it every binary value is inlined as base64, as QIDO-RS and metadata
        without a bulk data endpoint require.
    bulk_threshold : int
        Binary values longer than this many bytes become BulkDataURIs when a maker is given;
        pixel data always does, so metadata responses never carry images.

    Returns
    -------
    dict
        JSON-serialisable mapping, keys are 8-digit upper-case hex tags.

    Raises
    ------
    InvalidInputError
        An element's value cannot be represented (e.g. a corrupt value).
    """
    if bulk_threshold < 0:
        raise InvalidInputError(f"bulk_threshold must be >= 0, got {bulk_threshold}")
    return _dataset_json(ds, "", bulkdata_uri, bulk_threshold)


def value_json(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON element from a VR and plain value(s), for responses built by hand
    (QIDO-RS results, STOW-RS verdicts); empty values carry no "Value" (PS3.18 F.2.5)."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        values = [{"Alphabetic": str(v)} for v in values]
    return {"vr": vr, "Value": values}


def _no_bulk_data(tag: str, vr: str, uri: str) -> None:
    return None


def json_to_dataset(
    obj: dict[str, Any] | str | bytes,
    *,
    bulkdata_loader: BulkDataLoader | None = None,
) -> Dataset:
    """Decode a DICOM JSON object into a dataset (e.g. the metadata part of a STOW-RS request).

    Parameters
    ----------
    obj : dict, str or bytes
        One DICOM JSON object (not the list that wraps several).
    bulkdata_loader : callable, optional
        ``loader(tag, vr, uri) -> value`` fetching a BulkDataURI's bytes (for STOW-RS: the
        matching ``Content-Location`` part). Without it such elements are left empty.

    Raises
    ------
    InvalidInputError
        Not valid JSON, not an object, or an element pydicom cannot decode.
    """
    if isinstance(obj, str | bytes):
        try:
            obj = json.loads(obj)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"DICOM JSON is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidInputError(f"a DICOM JSON dataset must be an object, got {type(obj).__name__}")
    _validate(obj, "")
    try:
        # Without a loader, leave bulk elements empty quietly (pydicom would warn per element).
        return Dataset.from_json(obj, bulkdata_loader or _no_bulk_data)
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"invalid DICOM JSON: {exc}") from exc


_JSON_VRS: Final = frozenset(v.value for v in VR if " or " not in v.value)


def _validate(obj: dict[str, Any], where: str) -> None:
    """Check keys and VRs, which pydicom passes through unchecked, before decoding."""
    for key, elem in obj.items():
        at = f"{where}{key}"
        if len(key) != 8 or any(c not in "0123456789abcdefABCDEF" for c in key):
            raise InvalidInputError(f"DICOM JSON key {at!r} is not an 8-digit hex tag")
        if not isinstance(elem, dict) or elem.get("vr") not in _JSON_VRS:
            raise InvalidInputError(f'DICOM JSON element {at} lacks a valid "vr"')
        if elem["vr"] == "SQ":
            items = elem.get("Value", [])
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise InvalidInputError(f"DICOM JSON sequence {at} must hold a list of objects")
            for n, item in enumerate(items):
                _validate(item, f"{at}/{n}/")


def resolve_bulkdata_path(ds: Dataset, path: str) -> DataElement:
    """Return the element a bulk data path from :func:`dataset_to_json` points at.

    Raises
    ------
    InvalidInputError
        Malformed path (not tag/index/tag...).
    NotFoundError
        No such element or item in this dataset.
    """
    steps = [s for s in path.strip("/").split("/")]
    if not steps or len(steps) % 2 != 1:
        raise InvalidInputError(f"bulk data path {path!r} must be tag[/item/tag]...")
    current = ds
    for i in range(0, len(steps), 2):
        try:
            tag = int(steps[i], 16)
        except ValueError as exc:
            raise InvalidInputError(f"bulk data path {path!r}: {steps[i]!r} is no tag") from exc
        if len(steps[i]) != 8 or tag not in current:
            raise NotFoundError(f"bulk data path {path!r}: no element {steps[i]}")
        elem = current[tag]
        if i + 1 == len(steps):
            return elem
        if elem.VR != VR.SQ or not steps[i + 1].isdigit():
            raise InvalidInputError(f"bulk data path {path!r}: {steps[i]} is not a sequence")
        index = int(steps[i + 1])
        if index >= len(elem.value):
            raise NotFoundError(f"bulk data path {path!r}: sequence item {index} does not exist")
        current = elem.value[index]
    raise NotFoundError(f"bulk data path {path!r} does not name an element")  # pragma: no cover
