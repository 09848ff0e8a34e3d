"""STOW-RS ingest (PS3.18 10.5): receive every part, store each, answer with their verdicts.

Nothing is stored before the whole request has been parsed (a malformed body leaves no
partial study behind); then each part goes through the one ingest pipeline and gets a verdict
with a PS3.18 Table I.2-2 failure reason, so one bad part never hides the others' outcome.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Final, cast

import anyio

from medshard.api.dicomweb.dicomjson import value_json
from medshard.api.dicomweb.multipart import Part, iter_parts
from medshard.api.errors import PayloadTooLargeError
from medshard.errors import InvalidInputError
from medshard.ingest.dicom import instance_fields, read_header
from medshard.ingest.pipeline import CommitHook, Ingestor, Rejection
from medshard.security.context import require_caller

log = logging.getLogger(__name__)

# PS3.18 Table I.2-2 failure reasons, plus PS3.7's "duplicate SOP instance" for a UID that is
# already stored with other bytes (the archive keeps the first copy); 0x0110 is for our bugs.
OUT_OF_RESOURCES: Final = 0xA700
DATASET_MISMATCH: Final = 0xA900
CANNOT_UNDERSTAND: Final = 0xC000
DUPLICATE_SOP_INSTANCE: Final = 0x0111
PROCESSING_FAILURE: Final = 0x0110


@dataclass(frozen=True)
class StowItem:
    """The verdict on one STOW-RS part; ``failure`` is None when the instance is stored."""

    sop_class_uid: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    failure: int | None = None
    reason: str = ""
    duplicate: bool = False
    #: Said of a stored instance whose stored bytes differ from those sent (zeroed preamble).
    note: str = ""


async def receive_parts(
    chunks: AsyncIterable[bytes],
    boundary: str,
    *,
    max_bytes: int,
    memory_budget: int = 16 * 1024 * 1024,
) -> list[Part]:
    """Receive every part of a STOW-RS body before anything is stored.

    Parts stay in memory until they add up to ``memory_budget``; later parts go to temporary
    files, so a study of any size costs bounded memory. The caller owns (and closes) the parts.

    Raises
    ------
    InvalidInputError
        The body is not well-formed multipart (nothing is stored).
    PayloadTooLargeError
        The body exceeds ``max_bytes``.
    """
    parts: list[Part] = []
    in_memory = 0
    try:
        async for part in iter_parts(_capped(chunks, max_bytes), boundary):
            rollover = getattr(part.body, "rollover", None)
            if in_memory + part.size > memory_budget and rollover is not None:
                rollover()
            else:
                in_memory += part.size
            parts.append(part)
    except BaseException:
        for part in parts:
            part.close()
        raise
    return parts


async def _capped(chunks: AsyncIterable[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(
                f"request body exceeds {max_bytes} bytes; send the study in several requests"
            )
        yield chunk


async def store_parts(
    ingestor: Ingestor, parts: Sequence[Part], study: str | None, *, concurrency: int = 8
) -> list[StowItem]:
    """Ingest received parts, a few at a time in worker threads; verdicts in part order.

    Each stored part is attributed to the caller's site and audited in its own commit.
    """
    limiter = anyio.CapacityLimiter(concurrency)
    caller = require_caller()
    site, hook = caller.gate.store_hook(caller.principal)

    def one(number: int, part: Part) -> StowItem:
        try:
            media = part.media_type if part.content_type else None
        except InvalidInputError as exc:
            return StowItem(failure=CANNOT_UNDERSTAND, reason=f"part {number}: {exc}")
        try:
            body = cast(BinaryIO, part.body)  # a SpooledTemporaryFile opened "w+b"
            item = store_part(
                ingestor, body, media, f"part {number}", study, site_id=site, on_commit=hook
            )
            if item.failure is not None:
                caller.gate.store_refused(caller.principal, item.reason, item.study_uid)
            return item
        except Exception as exc:  # a bug must not hide the verdicts on the other parts
            log.exception("STOW-RS part %d failed unexpectedly", number)
            return StowItem(failure=PROCESSING_FAILURE, reason=f"part {number}: {exc!r}")

    results: list[StowItem] = [StowItem()] * len(parts)

    async def run(i: int, part: Part) -> None:
        results[i] = await anyio.to_thread.run_sync(one, i + 1, part, limiter=limiter)

    async with anyio.create_task_group() as group:
        for i, part in enumerate(parts):
            group.start_soon(run, i, part)
    return results


def store_part(
    ingestor: Ingestor,
    body: BinaryIO,
    media_type: str | None,
    source: str,
    expected_study: str | None = None,
    *,
    site_id: int | None = None,
    on_commit: CommitHook | None = None,
) -> StowItem:
    """Validate one part and ingest it; never raises for bad input, returns a failed item.

    The header is parsed here only to check the study of ``POST /studies/{study}`` before
    anything is written; otherwise the pipeline's own parse is the only one.
    """
    if media_type not in (None, "application/dicom"):
        return StowItem(
            failure=CANNOT_UNDERSTAND, reason=f"{source} is {media_type}, not application/dicom"
        )
    if expected_study is not None:
        try:
            fields = instance_fields(read_header(body, source))
        except InvalidInputError as exc:
            return StowItem(failure=CANNOT_UNDERSTAND, reason=f"{source}: {exc}")
        if fields.study_instance_uid != expected_study:
            return StowItem(
                fields.sop_class_uid,
                fields.sop_instance_uid,
                fields.study_instance_uid,
                fields.series_instance_uid,
                DATASET_MISMATCH,
                f"{source} belongs to study {fields.study_instance_uid}, not {expected_study}",
            )
    outcome = ingestor.ingest_stream(body, source, site_id=site_id, on_commit=on_commit)
    item = StowItem(
        outcome.sop_class_uid,
        outcome.sop_instance_uid,
        outcome.study_instance_uid,
        outcome.series_instance_uid,
    )
    if outcome.status in ("imported", "duplicate"):
        return replace(item, duplicate=outcome.status == "duplicate", note=outcome.note)
    code = {
        Rejection.INVALID: CANNOT_UNDERSTAND,  # not DICOM, or fails validation
        Rejection.CONFLICT: DUPLICATE_SOP_INSTANCE,  # that UID is stored with other bytes: kept
        Rejection.IDENTITY: DATASET_MISMATCH,  # its study belongs to another patient
    }.get(Rejection(outcome.code) if outcome.code else Rejection.STORAGE, OUT_OF_RESOURCES)
    return replace(item, failure=code, reason=f"{source}: {outcome.reason}")


def stow_response(
    items: Sequence[StowItem], base: str, study: str | None
) -> tuple[int, dict[str, Any], list[str]]:
    """HTTP status, Store Instances Response (PS3.18 I.2) and Warning texts for the verdicts.

    200 when every instance is stored (a duplicate of what is stored counts as stored), 202
    when some failed, 409 when none was stored.
    """
    stored = [i for i in items if i.failure is None]
    failed = [i for i in items if i.failure is not None]
    body: dict[str, Any] = {}
    studies = {i.study_uid for i in stored}
    top = study or (studies.pop() if len(studies) == 1 else None)
    if top:
        body["00081190"] = value_json("UR", f"{base}/studies/{top}")
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_reference(i, base) for i in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failure(i) for i in failed]}
    warnings = [i.reason for i in failed]
    warnings += [f"instance {i.sop_uid}: {i.note}" for i in stored if i.note]
    duplicates = sum(1 for i in stored if i.duplicate)
    if duplicates:
        warnings.append(f"{duplicates} instance(s) were already stored with identical bytes")
    status = 200 if not failed else 202 if stored else 409
    return status, body, warnings


def _reference(item: StowItem, base: str) -> dict[str, Any]:
    path = f"/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}"
    return {
        "00081150": value_json("UI", item.sop_class_uid),
        "00081155": value_json("UI", item.sop_uid),
        "00081190": value_json("UR", base + path),
    }


def _failure(item: StowItem) -> dict[str, Any]:
    return {
        "00081150": value_json("UI", item.sop_class_uid),
        "00081155": value_json("UI", item.sop_uid),
        "00081197": value_json("US", item.failure),
    }
