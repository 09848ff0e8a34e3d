"""Streaming ``multipart/related`` codec for STOW-RS requests and WADO-RS responses.

A STOW-RS request can carry a whole CT study (gigabytes) in one body, so the parser never holds
more than one network chunk plus a delimiter's worth of look-behind: part bodies are delivered
incrementally, and :func:`iter_parts` spools each into a ``SpooledTemporaryFile`` that stays in
memory up to ``spool_max`` bytes and moves to disk beyond that. The writer likewise yields the
caller's chunks as they come, so WADO-RS can stream instances straight from storage.

The grammar is RFC 2046 section 5.1.1 (as used by PS3.18 8.6.1.2): CRLF line endings, an
optional preamble and epilogue, transport padding after a delimiter, at least one body part.
The boundary match is strict: ``CRLF--boundary`` followed by anything other than ``--`` or
optional white space and CRLF is body data, not a delimiter, so payloads that merely *contain*
the boundary's bytes survive.

A body may hold at most ``max_parts`` parts (:data:`DEFAULT_MAX_PARTS`): every part costs a
spool object (and, past the memory budget, an open temporary file) however small it is, so
a body of millions of empty parts would cost gigabytes of memory or every file descriptor;
beyond the limit the body is refused as too large (413). The body's total size is the
caller's to cap (STOW-RS: ``stow_max_request_bytes``).

``parse_content_type`` / ``boundary_of`` read the request's ``Content-Type`` header;
:class:`MultipartParser` is the sans-IO core for callers that want the raw event stream.
"""

from __future__ import annotations

import secrets
import string
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Final

from medshard.api.errors import PayloadTooLargeError
from medshard.errors import InvalidInputError

__all__ = [
    "DEFAULT_MAX_PARTS",
    "DEFAULT_SPOOL_MAX",
    "Body",
    "MultipartParser",
    "Part",
    "PartData",
    "PartEnd",
    "PartHeaders",
    "amultipart_stream",
    "boundary_of",
    "iter_parts",
    "iter_parts_sync",
    "multipart_content_type",
    "multipart_stream",
    "new_boundary",
    "parse_content_type",
]

DEFAULT_SPOOL_MAX: Final = 8 * 1024 * 1024
#: Most parts one body may hold; send bigger studies in several requests.
DEFAULT_MAX_PARTS: Final = 10_000
_CRLF: Final = b"\r\n"
_MAX_PADDING: Final = 256  # transport padding after a delimiter, before its CRLF
# RFC 2046 bchars (the space may not be last); RFC 7230 token characters for header names.
_BCHARS: Final = frozenset(string.ascii_letters + string.digits + "'()+_,-./:=? ")
_TOKEN: Final = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


# --------------------------------------------------------------------------- Content-Type


def parse_content_type(header: str) -> tuple[str, dict[str, str]]:
    """Split a ``Content-Type`` value into a lower-case media type and its parameters.

    Parameter names are lower-cased (they are case-insensitive); values keep their case and are
    unquoted, honouring backslash escapes, so ``type="application/dicom"`` and ``boundary``
    values containing ``;`` inside quotes come out right.

    Raises
    ------
    InvalidInputError
        Empty header, no ``type/subtype``, or a parameter without ``=``.
    """
    segments: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in header or "":
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == ";" and not quoted:
            segments.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise InvalidInputError(f"Content-Type has an unterminated quoted string: {header!r}")
    segments.append("".join(current))
    mime = segments[0].strip().lower()
    kind, slash, sub = mime.partition("/")
    if not slash or not kind or not sub or any(c.isspace() for c in mime):
        raise InvalidInputError(f"Content-Type must start with type/subtype, got {header!r}")
    params: dict[str, str] = {}
    for seg in segments[1:]:
        if not seg.strip():
            continue
        name, eq, value = seg.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise InvalidInputError(f"malformed Content-Type parameter {seg.strip()!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = _unquote(value[1:-1])
        params[name] = value
    return mime, params


def _unquote(text: str) -> str:
    out: list[str] = []
    chars = iter(text)
    for ch in chars:
        out.append(next(chars, "") if ch == "\\" else ch)
    return "".join(out)


def _check_boundary(boundary: str) -> str:
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise InvalidInputError("a multipart boundary must be 1 to 70 characters long")
    if boundary.endswith(" ") or not set(boundary) <= _BCHARS:
        raise InvalidInputError(
            f"multipart boundary {boundary!r} has characters RFC 2046 does not allow"
        )
    return boundary


def boundary_of(header: str) -> str:
    """Return the boundary of a ``multipart/*`` Content-Type header, validated.

    Raises
    ------
    InvalidInputError
        Not a multipart type, no boundary parameter, or an illegal boundary.
    """
    mime, params = parse_content_type(header)
    if not mime.startswith("multipart/"):
        raise InvalidInputError(f"expected a multipart Content-Type, got {mime!r}")
    if "boundary" not in params:
        raise InvalidInputError("the multipart Content-Type has no boundary parameter")
    return _check_boundary(params["boundary"])


def new_boundary() -> str:
    """Return a fresh random boundary; 128 random bits make a clash with a payload negligible."""
    return f"medshard-{secrets.token_hex(16)}"


def multipart_content_type(boundary: str, part_type: str | None = "application/dicom") -> str:
    """Build the ``multipart/related`` Content-Type a DICOMweb response or request needs."""
    _check_boundary(boundary)
    quoted = boundary if set(boundary) <= _TOKEN else '"' + boundary + '"'
    if part_type is None:
        return f"multipart/related; boundary={quoted}"
    return f'multipart/related; type="{part_type}"; boundary={quoted}'


# --------------------------------------------------------------------------- parser


@dataclass(frozen=True, slots=True)
class PartHeaders:
    """A part begins; header names are lower-cased, repeated headers joined by ``", "``."""

    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """The next slice of the current part's body."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part's body is complete."""


Event = PartHeaders | PartData | PartEnd

_PREAMBLE, _AFTER_DELIM, _HEADERS, _BODY, _EPILOGUE = range(5)


class MultipartParser:
    """Incremental, sans-IO ``multipart`` parser: :meth:`feed` bytes, get events back.

    Memory is bounded by the largest chunk fed plus the header limit: body bytes are handed
    out as soon as they cannot be the start of a delimiter.

    Parameters
    ----------
    boundary : str
        The boundary from the Content-Type header (see :func:`boundary_of`).
    max_header_bytes : int
        Largest header block accepted per part; stops a body without blank line from
        being buffered whole.
    max_parts : int
        Most parts accepted; one more raises :class:`PayloadTooLargeError`.
    """

    def __init__(
        self,
        boundary: str,
        *,
        max_header_bytes: int = 16 * 1024,
        max_parts: int = DEFAULT_MAX_PARTS,
    ) -> None:
        self._delim = b"\r\n--" + _check_boundary(boundary).encode("ascii")
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        # A virtual CRLF lets the first delimiter, which may open the body, match like the rest.
        self._buf = bytearray(_CRLF)
        self._state = _PREAMBLE
        self._in_part = False
        self._parts = 0
        self._closed = False

    @property
    def parts_seen(self) -> int:
        """Number of parts whose headers have been parsed so far."""
        return self._parts

    def feed(self, data: bytes) -> list[Event]:
        """Consume ``data`` and return the events it completes."""
        if self._closed:
            raise InvalidInputError("multipart parser fed after close()")
        if self._state == _EPILOGUE:
            return []  # the epilogue is ignored, whatever its size
        self._buf += data
        events: list[Event] = []
        self._run(events)
        return events

    def close(self) -> list[Event]:
        """Signal end of input; raises if the body stopped before its closing delimiter."""
        self._closed = True
        if self._state == _EPILOGUE:
            return []
        if self._state == _PREAMBLE:
            raise InvalidInputError(
                "multipart body contains no boundary delimiter: "
                "the boundary does not match the body, or the body is not multipart"
            )
        if self._state == _HEADERS:
            raise InvalidInputError("multipart body ends inside a part's headers")
        raise InvalidInputError(
            f"multipart body is truncated: part {self._parts} has no closing delimiter "
            "(expected --boundary-- at the end)"
        )

    # -- internals ---------------------------------------------------------------------

    def _emit_body(self, events: list[Event], end: int) -> None:
        if end > 0:
            if self._state == _BODY:
                events.append(PartData(bytes(self._buf[:end])))
            del self._buf[:end]

    def _run(self, events: list[Event]) -> None:
        buf, delim = self._buf, self._delim
        start = 0
        while True:
            if self._state in (_PREAMBLE, _BODY):
                i = buf.find(delim, start)
                if i < 0:
                    # Keep a tail that could still be the start of a delimiter.
                    self._emit_body(events, len(buf) - (len(delim) - 1))
                    return
                verdict, after = self._delimiter_at(i + len(delim))
                if verdict == "more":
                    self._emit_body(events, i)  # wait for more input, delimiter at 0
                    return
                if verdict == "data":
                    start = i + 1
                    continue
                self._emit_body(events, i)
                if self._state == _BODY:
                    events.append(PartEnd())
                del buf[: after - i]
                start = 0
                if verdict == "close":
                    if self._parts == 0:
                        raise InvalidInputError("multipart body has no parts")
                    self._state = _EPILOGUE
                    buf.clear()
                    return
                self._state = _HEADERS
            elif self._state == _HEADERS:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > self._max_header_bytes:
                        raise InvalidInputError(
                            f"multipart part {self._parts + 1} headers exceed "
                            f"{self._max_header_bytes} bytes or lack the blank line"
                        )
                    return
                # buf[0:2] is the delimiter line's CRLF, so a part without headers
                # ("--b CRLF CRLF body") still yields an (empty) block ending at 0.
                if self._parts >= self._max_parts:
                    raise PayloadTooLargeError(
                        f"multipart body has more than {self._max_parts} parts; "
                        "send them in several requests"
                    )
                headers = _parse_headers(bytes(buf[2:end]), self._parts + 1)
                del buf[: end + 4]
                self._parts += 1
                self._state = _BODY
                events.append(PartHeaders(headers))
                start = 0
            else:
                return

    def _delimiter_at(self, j: int) -> tuple[str, int]:
        """Classify the bytes after a ``CRLF--boundary`` match ending at ``j``.

        Returns ("close" | "open" | "data" | "more", index just past the delimiter line).
        """
        buf = self._buf
        if len(buf) < j + 2:
            return "more", j
        if buf[j : j + 2] == b"--":
            return "close", j + 2
        k = j
        while k < len(buf) and buf[k] in (0x20, 0x09) and k - j <= _MAX_PADDING:
            k += 1
        if k - j > _MAX_PADDING:
            return "data", j
        if len(buf) < k + 2:
            return "more", j
        if buf[k : k + 2] == _CRLF:
            return "open", k  # keep the CRLF: it starts the header block
        return "data", j


def _parse_headers(block: bytes, number: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    lines: list[str] = []
    for raw in block.decode("latin-1").split("\r\n") if block else []:
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += " " + raw.strip()  # obsolete line folding
        else:
            lines.append(raw)
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or not set(name) <= _TOKEN:
            raise InvalidInputError(f"multipart part {number} has a malformed header {line!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


# --------------------------------------------------------------------------- parts


@dataclass(eq=False)
class Part:
    """One received body part: its headers and its body in a (spooled) file.

    The body file is positioned at 0. Whoever consumes the part owns it: call :meth:`close`
    (or use ``with part:``) to free memory or the temporary file promptly; otherwise it is freed
    when garbage-collected.
    """

    headers: dict[str, str]
    body: IO[bytes]
    size: int = 0
    _mime: tuple[str, dict[str, str]] | None = field(default=None, repr=False)

    @property
    def content_type(self) -> str | None:
        """The raw Content-Type header of the part, if any."""
        return self.headers.get("content-type")

    @property
    def media_type(self) -> str:
        """The part's lower-case media type; RFC 2046 defaults a part to text/plain."""
        return self._parsed()[0]

    @property
    def params(self) -> dict[str, str]:
        """Parameters of the part's Content-Type (e.g. ``transfer-syntax``)."""
        return self._parsed()[1]

    def _parsed(self) -> tuple[str, dict[str, str]]:
        if self._mime is None:
            ct = self.content_type
            self._mime = parse_content_type(ct) if ct else ("text/plain", {})
        return self._mime

    def read(self) -> bytes:
        """Return the whole body; meant for small parts (metadata JSON), not for instances."""
        self.body.seek(0)
        data = self.body.read()
        self.body.seek(0)
        return data

    def close(self) -> None:
        """Release the body's memory or temporary file."""
        self.body.close()

    def __enter__(self) -> Part:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Assembler:
    """Turns parser events into :class:`Part` objects with spooled bodies."""

    def __init__(
        self, boundary: str, spool_max: int, max_header_bytes: int, max_parts: int
    ) -> None:
        self.parser = MultipartParser(
            boundary, max_header_bytes=max_header_bytes, max_parts=max_parts
        )
        self.spool_max = spool_max
        self.current: Part | None = None

    def apply(self, events: list[Event]) -> list[Part]:
        done: list[Part] = []
        for ev in events:
            if isinstance(ev, PartHeaders):
                # Ownership passes to the Part (and so to the caller): no context manager.
                body = tempfile.SpooledTemporaryFile(max_size=self.spool_max, mode="w+b")  # noqa: SIM115
                self.current = Part(headers=ev.headers, body=body)
            elif isinstance(ev, PartData):
                assert self.current is not None
                self.current.body.write(ev.data)
                self.current.size += len(ev.data)
            else:
                assert self.current is not None
                self.current.body.seek(0)
                done.append(self.current)
                self.current = None
        return done

    def abort(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


async def iter_parts(
    chunks: AsyncIterable[bytes],
    boundary: str,
    *,
    spool_max: int = DEFAULT_SPOOL_MAX,
    max_header_bytes: int = 16 * 1024,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> AsyncIterator[Part]:
    """Parse a streamed multipart body, yielding each part once its body is complete.

    Parameters
    ----------
    chunks : async iterable of bytes
        The request body as it arrives (e.g. Starlette's ``request.stream()``).
    boundary : str
        From :func:`boundary_of` applied to the request's Content-Type.
    spool_max : int
        Bytes of a part kept in memory before it rolls over to a temporary file.
    max_header_bytes : int
        Limit on one part's header block.
    max_parts : int
        Limit on the number of parts (more raise :class:`PayloadTooLargeError`).

    Yields
    ------
    Part
        Owned by the caller, who should close it.

    Raises
    ------
    InvalidInputError
        Wrong boundary, garbage, malformed headers, no parts or a truncated body. Parts
        yielded before the error are valid, so STOW-RS may store them and report the rest.
    PayloadTooLargeError
        More than ``max_parts`` parts.
    """
    asm = _Assembler(boundary, spool_max, max_header_bytes, max_parts)
    try:
        async for chunk in chunks:
            for part in asm.apply(asm.parser.feed(chunk)):
                yield part
        for part in asm.apply(asm.parser.close()):
            yield part
    finally:
        asm.abort()


def iter_parts_sync(
    chunks: Iterable[bytes],
    boundary: str,
    *,
    spool_max: int = DEFAULT_SPOOL_MAX,
    max_header_bytes: int = 16 * 1024,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> Iterator[Part]:
    """Blocking twin of :func:`iter_parts` for the CLI, files and tests."""
    asm = _Assembler(boundary, spool_max, max_header_bytes, max_parts)
    try:
        for chunk in chunks:
            yield from asm.apply(asm.parser.feed(chunk))
        yield from asm.apply(asm.parser.close())
    finally:
        asm.abort()


# --------------------------------------------------------------------------- writer

#: A part body for the writers: the bytes themselves, or chunks produced lazily.
Body = bytes | bytearray | memoryview | Iterable[bytes]


def _head(headers: Mapping[str, str], boundary: bytes, first: bool) -> bytes:
    lines = [(b"--" if first else b"\r\n--") + boundary]
    for name, value in headers.items():
        if not name or not set(name) <= _TOKEN:
            raise InvalidInputError(f"illegal multipart header name {name!r}")
        if any(c in value for c in "\r\n\0"):
            raise InvalidInputError(f"multipart header {name!r} contains a line break")
        lines.append(f"{name}: {value}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _tail(boundary: bytes, parts: int) -> bytes:
    if parts == 0:
        raise InvalidInputError("a multipart body needs at least one part (RFC 2046)")
    return b"\r\n--" + boundary + b"--\r\n"


def multipart_stream(
    parts: Iterable[tuple[Mapping[str, str], Body]], boundary: str
) -> Iterator[bytes]:
    """Encode parts as a ``multipart`` body, chunk by chunk, without buffering bodies.

    Parameters
    ----------
    parts : iterable of (headers, body)
        ``body`` is bytes or an iterable of byte chunks (e.g. a file read in blocks); each is
        consumed lazily, so a WADO-RS response can stream instances straight from storage.
    boundary : str
        Usually :func:`new_boundary`; the caller vouches that no body contains
        ``CRLF--boundary`` (a random boundary makes that a 2**-128 event).

    Raises
    ------
    InvalidInputError
        Illegal boundary or header, or no parts at all (raised before any byte is yielded).
    """
    b = _check_boundary(boundary).encode("ascii")
    count = 0
    for headers, body in parts:
        yield _head(headers, b, count == 0)
        count += 1
        if isinstance(body, bytes | bytearray | memoryview):
            if body:
                yield bytes(body)
        else:
            for chunk in body:
                if chunk:
                    yield bytes(chunk)
    yield _tail(b, count)


async def amultipart_stream(
    parts: AsyncIterable[tuple[Mapping[str, str], Body | AsyncIterable[bytes]]],
    boundary: str,
) -> AsyncIterator[bytes]:
    """Async twin of :func:`multipart_stream` for bodies read from async storage clients."""
    b = _check_boundary(boundary).encode("ascii")
    count = 0
    async for headers, body in parts:
        yield _head(headers, b, count == 0)
        count += 1
        if isinstance(body, bytes | bytearray | memoryview):
            if body:
                yield bytes(body)
        elif isinstance(body, AsyncIterable):
            async for chunk in body:
                if chunk:
                    yield bytes(chunk)
        else:
            for chunk in body:
                if chunk:
                    yield bytes(chunk)
    yield _tail(b, count)
