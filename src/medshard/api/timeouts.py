"""Time and size limits for HTTP clients that stop sending or never stop.

uvicorn closes a keep-alive connection that idles *between* requests, but nothing bounds a
client that connects and sends nothing, trickles its headers, sends headers without end, or
stops in the middle of a body: each holds a connection (and, for STOW-RS, a spool) forever,
and a few hundred of them starve the service ("slowloris"). Two guards close that gap, both
timed by the ``http_idle_timeout_s`` setting:

* :func:`guarded_protocol` subclasses uvicorn's httptools protocol: a request's line and
  headers must all arrive within the timeout of the connection opening (or of the request's
  first byte) and total at most :data:`MAX_HEADER_BYTES`; otherwise the client gets 408 or
  431 and the connection is closed.
* :class:`RequestBodyGuard` (ASGI middleware) times each wait of the app for request body
  bytes: after the timeout with nothing received, the client gets 408 (unless a response has
  begun) and the connection is closed; the app sees a disconnect, so STOW-RS stores nothing.
  Only waiting counts, never the app's own work, and never waits after the body is complete
  (Starlette listens for disconnects while streaming long responses). A response that starts
  before a request's body is complete (413 for an endless body, 400 for a malformed one)
  closes the connection, rather than letting uvicorn read and discard the rest forever.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEADER_BYTES", "RequestBodyGuard", "guarded_protocol"]

#: Most bytes of request line plus headers per request (browsers send a few KiB).
MAX_HEADER_BYTES: Final = 64 * 1024


def _raw_response(status: int, reason: str, text: str) -> bytes:
    body = json.dumps({"error": text}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _HeadersTooLarge(Exception):
    """Raised inside a parser callback to stop parsing an oversized header block."""


class _GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a header size limit."""

    header_timeout_s: float = 30.0
    max_header_bytes: int = MAX_HEADER_BYTES

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            text = f"no complete request headers within {self.header_timeout_s:g} s"
            self.transport.write(_raw_response(408, "Request Timeout", text))
            self.transport.close()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._disarm()
            text = f"request line and headers exceed {self.max_header_bytes} bytes"
            self.transport.write(_raw_response(431, "Request Header Fields Too Large", text))
            self.transport.close()
            raise _HeadersTooLarge(text)  # stops the parser; uvicorn sees a parser error


def guarded_protocol(
    header_timeout_s: float, max_header_bytes: int = MAX_HEADER_BYTES
) -> type[asyncio.Protocol]:
    """A uvicorn ``http`` protocol class with these limits (pass it as ``http=``)."""
    return type(
        "GuardedHttpToolsProtocol",
        (_GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes},
    )


class RequestBodyGuard:
    """ASGI middleware: a request body that stops arriving gets 408 and a closed connection,
    and an answer given before the body is complete closes the connection.

    Parameters
    ----------
    app : ASGI application
    timeout_s : float
        Longest wait for the next piece of a request body.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = {
            "started": False,
            "stalled": False,
            "body_done": not _has_body(scope),
        }

        async def guarded_send(message: Message) -> None:
            if state["stalled"]:
                return  # the client already has its 408; the app's late answer goes nowhere
            if message["type"] == "http.response.start":
                state["started"] = True
                if not state["body_done"]:
                    headers = [h for h in message.get("headers", []) if h[0] != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        async def guarded_receive() -> Message:
            if state["stalled"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:
                return await receive()
            with anyio.move_on_after(self.timeout_s):
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    state["body_done"] = True
                return message
            state["stalled"] = True
            if not state["started"]:
                await _send_408(send, self.timeout_s)
            return {"type": "http.disconnect"}

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not state["stalled"]:
                raise  # the app's failure on the made-up disconnect is expected, others not


def _has_body(scope: Scope) -> bool:
    """Whether the request announces a body (a non-zero length, or chunked encoding)."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


async def _send_408(send: Send, timeout_s: float) -> None:
    text = f"the request body stopped arriving: nothing for {timeout_s:g} s"
    body = json.dumps({"error": text}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 408,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
