"""The DIMSE service (pynetdicom SCP): C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET.

Hospital modalities and PACS speak DIMSE, not HTTP; this is their door into the archive. It
runs beside the HTTP API in ``medshard serve`` (:func:`attach_to_app`) or alone in
``medshard dimse`` (:func:`serve_forever`), over the same archive.

* AE title, bind address and port come from the settings (``dimse_ae_title``, ``api_host``,
  ``dimse_port``; port 0 picks a free one). Calling AEs must be allowed in the catalog
  (``medshard dicom allow AE --user SERVICE_ACCOUNT``), each acting as a site's service
  account, so C-STORE, C-FIND, C-MOVE and C-GET get the same authorization and audit as
  HTTP; an unknown AE is rejected at association. C-MOVE destinations are
  ``dimse_destinations`` only.
* DICOM TLS (PS3.15 B.1): with ``dimse_tls_port`` set, a second listener on that port speaks
  TLS (``dimse_tls_cert`` / ``dimse_tls_key``; with ``dimse_tls_ca``, peers must present a
  client certificate it signed), with the same handlers. The handshake runs in the
  association's thread with a timeout, so a silent peer cannot stall the accept loop.
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
import ssl
import threading
import time
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

from medshard.api.dimse.handlers import (
    VERIFICATION,
    handle_echo,
    handle_find,
    handle_get,
    handle_move,
    handle_rejected,
    handle_store,
)
from medshard.api.dimse.query import PATIENT_ROOT, STUDY_ROOT
from medshard.api.dimse.retrieve import install_passthrough
from medshard.api.ingestors import analysed_ingestor
from medshard.cluster.archive import Archive
from medshard.config import Settings
from medshard.errors import ConfigError
from medshard.ingest.pipeline import Ingestor
from medshard.security.gate import Gate
from medshard.security.tls import check_pair, resolve, server_context

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
#: Stand-in allow-list entry while no peer is allowed: pynetdicom treats an empty list as
#: "accept anyone", and this title is never a real peer's.
NO_PEER: Final = "NO-PEER-ALLOWED"
#: How often (at most) a new connection reloads the allow-list from the catalog.
PEER_REFRESH_S: Final = 2.0
#: Seconds a peer of the DICOM TLS listener gets to complete its handshake.
TLS_HANDSHAKE_S: Final = 10.0


def _no_delay(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (e.g. a socketpair in tests): nothing to tune
            pass


class _ReadOnlyContexts(list):  # type: ignore[type-arg]
    """The server's presentation contexts, handed to each association without a deep copy.

    pynetdicom deep-copies the acceptor's contexts for every association: with every storage
    SOP class in both roles that is ~200 ms of CPU per association, under the GIL, which made
    four parallel associations slower than one. Negotiation only reads the acceptor's
    contexts (``negotiate_as_acceptor`` builds new result contexts), so sharing is safe.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class _NoDelayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on listening and accepted sockets, and
    presentation contexts shared by its associations (see :class:`_ReadOnlyContexts`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = _ReadOnlyContexts(self.contexts)

    def server_bind(self) -> None:
        super().server_bind()
        _no_delay(self.socket)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        _no_delay(client)
        return client, address


class _TlsServer(_NoDelayServer):
    """The threaded server for DICOM TLS: the handshake runs in the association's thread,
    bounded by :data:`TLS_HANDSHAKE_S`, not in the accept loop as pynetdicom's does."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        _no_delay(client)
        client.settimeout(TLS_HANDSHAKE_S)
        tls = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return tls, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
            request.settimeout(None)  # as pynetdicom expects an accepted socket
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            log.info("DICOM TLS handshake with %s failed: %s", client_address, exc)
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


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
            server_class = _NoDelayServer if ssl_context is None else _TlsServer
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
    ae.require_calling_aet = [NO_PEER]  # DimseServer loads the real allow-list
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
        gate: Gate | None = None,
    ) -> None:
        settings = archive.settings
        self.archive = archive
        self.host = host or settings.api_host
        self.port = settings.dimse_port if port is None else port
        self.ae_title = settings.dimse_ae_title
        self.ingestor = ingestor or analysed_ingestor(archive)
        self.gate = gate or Gate(archive)
        self._own_gate = gate is None
        self.ae = build_ae(settings)
        self.refresh_peers()
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None
        #: Port of the DICOM TLS listener once started (``dimse_tls_port``; 0: none).
        self.tls_port = settings.dimse_tls_port
        self._activity = _Activity()
        self._peers_loaded = time.monotonic()

    def handlers(self) -> list[Any]:
        """Event handlers with their explicit dependencies."""
        settings = self.archive.settings
        destinations: dict[str, Sequence[Any]] = {
            str(k).strip(): v for k, v in settings.dimse_destinations.items()
        }
        track = self._activity.track
        gate = self.gate
        return [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, track(handle_store), [self.ingestor, gate]),
            (evt.EVT_C_FIND, track(handle_find), [self.archive, self.ae_title, gate]),
            (evt.EVT_C_MOVE, track(handle_move), [self.archive, destinations, MAX_PDU, gate]),
            (evt.EVT_C_GET, track(handle_get), [self.archive, gate]),
            (evt.EVT_REJECTED, handle_rejected),
        ]

    def refresh_peers(self) -> None:
        """Load the allow-list of calling AEs from the catalog (``medshard dicom allow``).

        With no peer allowed, every association is rejected: unknown AEs never get in.
        """
        allowed = self.gate.allowed_aes()
        self.ae.require_calling_aet = allowed or [NO_PEER]

    def _on_connection(self, event: evt.Event) -> None:
        """Before a new peer's association request is read, take in allow-list changes."""
        now = time.monotonic()
        if now - self._peers_loaded > PEER_REFRESH_S:
            self._peers_loaded = now
            try:
                self.refresh_peers()
            except Exception:  # keep the last list; the catalog may be briefly busy
                log.exception("could not reload the DICOM peer allow-list")

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
        if self.tls_port:
            try:
                self._start_tls()
            except BaseException:
                self.stop(0)
                raise
        return self

    def _start_tls(self) -> None:
        """The DICOM TLS listener on ``dimse_tls_port``, with the same handlers."""
        settings = self.archive.settings
        home = settings.home
        pair = check_pair(
            resolve(home, settings.dimse_tls_cert),
            resolve(home, settings.dimse_tls_key),
            "DICOM TLS (dimse_tls_cert, dimse_tls_key)",
        )
        if pair is None:
            raise ConfigError("dimse_tls_port is set: set dimse_tls_cert and dimse_tls_key too")
        try:
            context = server_context(pair, resolve(home, settings.dimse_tls_ca))
        except ssl.SSLError as exc:
            raise ConfigError(f"DICOM TLS: dimse_tls_ca is not usable: {exc}") from exc
        try:
            server = self.ae.start_server(
                (self.host, self.tls_port),
                block=False,
                evt_handlers=self.handlers(),
                ssl_context=context,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for DICOM TLS on {self.host}:{self.tls_port}: {exc}"
            ) from exc
        assert server is not None
        self._tls_server = server
        self.tls_port = int(server.server_address[1])
        log.info("DICOM TLS %s listening on %s:%d", self.ae_title, self.host, self.tls_port)

    @property
    def running(self) -> bool:
        return self._server is not None

    def active_associations(self) -> list[Association]:
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        return [assoc for s in servers for assoc in s.active_associations]

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop accepting, let running requests finish (up to ``grace_s``), abort associations.

        An association that is merely open (a peer keeping it for later) is aborted at once;
        one in the middle of a C-STORE or a retrieve gets the grace period, so an instance
        being ingested is either committed or not, never cut off half-way.
        """
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        self._server = self._tls_server = None
        if not servers:
            return
        for server in servers:
            server.shutdown()
        if not self._activity.wait_idle(grace_s):
            log.warning("DIMSE requests still running after %.0f s; aborting them", grace_s)
        running = [assoc for server in servers for assoc in server.active_associations]
        for assoc in running:
            log.warning("aborting DIMSE association with %s at shutdown", assoc.requestor.ae_title)
            assoc.abort()
        for assoc in running:
            assoc.join(timeout=2.0)
        if self._own_gate:
            self.gate.close()
        log.info("DIMSE %s stopped", self.ae_title)


def attach_to_app(app: Any) -> None:
    """Run the DIMSE service for the lifetime of the FastAPI app (its lifespan hooks).

    It starts after the archive is opened and before HTTP is served, and stops before the
    archive is closed, so no C-STORE runs against a closed archive.
    """

    def start(app: Any) -> None:
        app.state.dimse = DimseServer(app.state.archive, gate=app.state.gate).start()

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
