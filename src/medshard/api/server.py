"""Run the application service: uvicorn serving the FastAPI app, with the DIMSE service beside it.

uvicorn owns the process's SIGTERM/SIGINT handling: on either signal it stops serving HTTP
and runs the app's lifespan shutdown, whose first hook stops the DIMSE service (running
associations get a short grace period, then are aborted) before the archive is closed. The
DIMSE listener is up before the first HTTP request is served, so a passing ``/healthz``
means both doors are open.
"""

from __future__ import annotations

import uvicorn

from medshard.api.app import create_app
from medshard.api.dimse import attach_to_app
from medshard.config import Settings


def run_service(settings: Settings) -> None:
    """Serve HTTP (REST, DICOMweb, metrics) and DIMSE until SIGTERM or SIGINT."""
    app = create_app(settings)
    attach_to_app(app)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning")
