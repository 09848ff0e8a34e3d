"""Run the application service: uvicorn serving the FastAPI app, with the DIMSE service beside it.

uvicorn owns the process's SIGTERM/SIGINT handling: on either signal it stops serving HTTP
and runs the app's lifespan shutdown, whose first hook stops the DIMSE service (running
associations get a short grace period, then are aborted) before the archive is closed. The
DIMSE listener is up before the first HTTP request is served, so a passing ``/healthz``
means both doors are open. Clients that stop sending (or never stop sending headers) are cut
off after ``http_idle_timeout_s`` with 408 (or 431), see :mod:`medshard.api.timeouts`.
"""

from __future__ import annotations

import gc

import uvicorn

from medshard.api.app import create_app
from medshard.api.dimse.scp import attach_to_app
from medshard.api.timeouts import RequestBodyGuard, guarded_protocol
from medshard.config import Settings
from medshard.security.tls import resolve as resolve_tls_path


def run_service(settings: Settings) -> None:
    """Serve HTTP (REST, DICOMweb, metrics) and DIMSE until SIGTERM or SIGINT."""
    app = create_app(settings)
    attach_to_app(app)
    # what start-up made lives as long as the process: out of the collector's full passes,
    # which had paused searches by ~60 ms every few hundred requests
    gc.freeze()
    uvicorn.run(
        RequestBodyGuard(app, settings.http_idle_timeout_s),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        http=guarded_protocol(settings.http_idle_timeout_s),
        # HTTPS when the settings name a certificate and key (None, None: plain HTTP)
        ssl_certfile=resolve_tls_path(settings.home, settings.tls_cert),
        ssl_keyfile=resolve_tls_path(settings.home, settings.tls_key),
    )
