"""The DIMSE service (pynetdicom SCP): C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET.

Hospital modalities and PACS speak DIMSE, not HTTP; this is their door into the archive. It
runs beside the HTTP API in ``medshard serve`` (:func:`attach_to_app`) or alone in
``medshard dimse`` (:func:`serve_forever`), over the same archive.

* AE title, bind address and port come from the settings (``dimse_ae_title``, ``api_host``,
  ``dimse_port``; port 0 picks a free one). Calling AEs are checked against
  ``dimse_allowed_aes`` when it is not empty; C-MOVE destinations are ``dimse_destinations``.
* TCP_NODELAY is set on the listening socket, on every accepted socket and on every socket
  opened for C-MOVE: a DIMSE response is one small write, and Nagle's algorithm would hold
  it back until the peer's delayed ACK (~40 ms per C-STORE).
* :meth:`DimseServer.start` returns at once (pynetdicom's ``start_server(block=False)``);
  :meth:`DimseServer.stop` stops accepting, lets requests being handled finish (a grace
  period), then aborts every association, so SIGTERM leaves nothing behind.
"""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any, Final

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationSocket, ThreadedAssociationServer

from medshard.api.dimse_handlers import (
    VERIFICATION,
    handle_echo,
    handle_find,
    handle_get,
    handle_move,
    handle_rejected,
    handle_store,
)
from medshard.api.dimse_query import PATIENT_ROOT, STUDY_ROOT
from medshard.api.dimse_retrieve import install_passthrough
from medshard.cluster.archive import Archive
from medshard.config import Settings
from medshard.errors import ConfigError
from medshard.ingest.pipeline import Ingestor

log = logging.getLogger(__name__)

UNCOMPRESSED_SYNTAXES: Final = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
#: Compressed syntaxes the archive's codecs (pylibjpeg, openjpeg, rle) decode.
LOSSLESS_SYNTAXES: Final = [
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    RLELossless,
]
LOSSY_SYNTAXES: Final = [
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
    HTJ2K,
]
#: Syntaxes accepted for storage, in the order pynetdicom prefers them when a peer proposes
#: several in one context (the acceptor's order decides): explicit VR little endian first,
#: the most widely readable; lossless compression before the other uncompressed syntaxes; lossy
#: syntaxes last, so a peer is never invited to compress lossily what it holds uncompressed.
STORAGE_SYNTAXES: Final = [
    ExplicitVRLittleEndian,
    *LOSSLESS_SYNTAXES,
    *UNCOMPRESSED_SYNTAXES[1:],
    *LOSSY_SYNTAXES,
]

#: Patient Root and Study Root Q/R, each FIND (.1), MOVE (.2) and GET (.3) (PS3.4 C.6).
QUERY_RETRIEVE_CLASSES: Final = [
    f"{root}.{service}" for root in (PATIENT_ROOT, STUDY_ROOT) for service in (1, 2, 3)
]

#: Largest P-DATA PDU we accept; bigger PDUs mean fewer round trips through pynetdicom's loop.
MAX_PDU: Final = 262_144
#: Concurrent associations before new ones are rejected (local limit exceeded).
MAX_ASSOCIATIONS: Final = 32
#: Seconds that running associations get to finish when the service stops.
STOP_GRACE_S: Final = 5.0


def _no_delay(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (e.g. a socketpair in tests): nothing to tune
            pass


class _NoDelayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on listening and accepted sockets."""

    def server_bind(self) -> None:
        super().server_bind()
        _no_delay(self.socket)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        _no_delay(client)
        return client, address


class _NoDelayAE(AE):
    """An AE whose servers and outgoing (C-MOVE) sockets use TCP_NODELAY."""

    def make_server(  # type: ignore[override]
        self,
        address: tuple[str, int] | tuple[str, int, int, int],
        ae_title: str | None = None,
        contexts: Any = None,
        ssl_context: Any = None,
        evt_handlers: Any = None,
        server_class: Any = None,
        **kwargs: Any,
    ) -> Any:
        if server_class is None or server_class is ThreadedAssociationServer:
            server_class = _NoDelayServer
        return super().make_server(
            address,
            ae_title=ae_title,
            contexts=contexts,
            ssl_context=ssl_context,
            evt_handlers=evt_handlers,
            server_class=server_class,
            **kwargs,
        )

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        _no_delay(sock.socket)
        return sock


class _Activity:
    """Counts requests being handled, so shutdown waits for work, not for idle peers."""

    def __init__(self) -> None:
        self._busy = 0
        self._changed = threading.Condition()

    @contextmanager
    def _running(self) -> Iterator[None]:
        with self._changed:
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()

    def track(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a handler (plain or generator) so its run counts as activity."""
        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def generator(*args: Any) -> Iterator[Any]:
                with self._running():
                    yield from handler(*args)

            return generator

        @functools.wraps(handler)
        def call(*args: Any) -> Any:
            with self._running():
                return handler(*args)

        return call

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being handled; False if ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._busy == 0, timeout)


def build_ae(settings: Settings) -> AE:
    """The application entity: contexts, roles, allow-list and limits from the settings.

    pynetdicom's standard log handlers format every PDU and DIMSE message even when nothing
    is logged (a sixth of its per-C-STORE cost here); they are bound only when the
    ``pynetdicom`` logger would show INFO (e.g. ``MEDSHARD_LOG=INFO``).
    """
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        _config.LOG_HANDLER_LEVEL = "none"
    ae = _NoDelayAE(ae_title=settings.dimse_ae_title)
    ae.maximum_pdu_size = MAX_PDU
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.require_calling_aet = [a.strip() for a in settings.dimse_allowed_aes if a.strip()]
    ae.add_supported_context(VERIFICATION)
    for sop_class in QUERY_RETRIEVE_CLASSES:
        ae.add_supported_context(sop_class, UNCOMPRESSED_SYNTAXES)
    # Both roles: peers store to us (SCU->SCP) and, for C-GET, we store back to them.
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(
            str(cx.abstract_syntax), STORAGE_SYNTAXES, scu_role=True, scp_role=True
        )
    return ae


class DimseServer:
    """The DIMSE service over one archive; a handle that starts and stops it.

    Parameters
    ----------
    archive : Archive
        Open archive (its settings give AE title, port, allow-list, destinations).
    host, port : str, int, optional
        Override ``settings.api_host`` / ``settings.dimse_port`` (port 0: any free port).
    ingestor : Ingestor, optional
        Shared ingestor (e.g. one with analysis hooks); a plain one by default.
    """

    def __init__(
        self,
        archive: Archive,
        *,
        host: str | None = None,
        port: int | None = None,
        ingestor: Ingestor | None = None,
    ) -> None:
        settings = archive.settings
        self.archive = archive
        self.host = host or settings.api_host
        self.port = settings.dimse_port if port is None else port
        self.ae_title = settings.dimse_ae_title
        self.ingestor = ingestor or Ingestor(archive)
        self.ae = build_ae(settings)
        self._server: ThreadedAssociationServer | None = None
        self._activity = _Activity()

    def handlers(self) -> list[Any]:
        """Event handlers with their explicit dependencies."""
        settings = self.archive.settings
        destinations: dict[str, Sequence[Any]] = {
            str(k).strip(): v for k, v in settings.dimse_destinations.items()
        }
        track = self._activity.track
        return [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, track(handle_store), [self.ingestor]),
            (evt.EVT_C_FIND, track(handle_find), [self.archive, self.ae_title]),
            (evt.EVT_C_MOVE, track(handle_move), [self.archive, destinations, MAX_PDU]),
            (evt.EVT_C_GET, track(handle_get), [self.archive]),
            (evt.EVT_REJECTED, handle_rejected),
        ]

    def start(self) -> DimseServer:
        """Listen in a background thread and return at once.

        Raises
        ------
        ConfigError
            The address cannot be bound (port in use, bad host).
        """
        install_passthrough()
        try:
            server = self.ae.start_server(
                (self.host, self.port), block=False, evt_handlers=self.handlers()
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for DIMSE on {self.host}:{self.port}: {exc} "
                "(is another service on that port? pass --dimse-port)"
            ) from exc
        assert server is not None
        self._server = server
        self.port = int(server.server_address[1])
        log.info("DIMSE %s listening on %s:%d", self.ae_title, self.host, self.port)
        return self

    @property
    def running(self) -> bool:
        return self._server is not None

    def active_associations(self) -> list[Association]:
        return list(self._server.active_associations) if self._server else []

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop accepting, let running requests finish (up to ``grace_s``), abort associations.

        An association that is merely open (a peer keeping it for later) is aborted at once;
        one in the middle of a C-STORE or a retrieve gets the grace period, so an instance
        being ingested is either committed or not, never cut off half-way.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if not self._activity.wait_idle(grace_s):
            log.warning("DIMSE requests still running after %.0f s; aborting them", grace_s)
        for assoc in server.active_associations:
            log.warning("aborting DIMSE association with %s at shutdown", assoc.requestor.ae_title)
            assoc.abort()
        for assoc in server.active_associations:
            assoc.join(timeout=2.0)
        log.info("DIMSE %s stopped", self.ae_title)


def attach_to_app(app: Any) -> None:
    """Run the DIMSE service for the lifetime of the FastAPI app (its lifespan hooks).

    It starts after the archive is opened and before HTTP is served, and stops before the
    archive is closed, so no C-STORE runs against a closed archive.
    """

    def start(app: Any) -> None:
        app.state.dimse = DimseServer(app.state.archive).start()

    def stop(app: Any) -> None:
        dimse: DimseServer | None = getattr(app.state, "dimse", None)
        if dimse is not None:
            dimse.stop()

    app.state.startup_hooks.append(start)
    app.state.shutdown_hooks.insert(0, stop)


def serve_forever(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[DimseServer], None] | None = None,
) -> None:
    """Run only the DIMSE service until SIGTERM or SIGINT (``medshard dimse``).

    ``on_ready`` is called once the port is open (the CLI prints where it listens).
    """
    from medshard.cluster.monitor import HealthMonitor

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Archive(settings) as archive:
            monitor = HealthMonitor(archive).start()
            server = DimseServer(archive, host=host, port=port).start()
            try:
                if on_ready is not None:
                    on_ready(server)
                stop.wait()
            finally:
                server.stop()
                monitor.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
