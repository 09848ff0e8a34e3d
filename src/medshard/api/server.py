"""Run the application service: uvicorn serving the FastAPI app."""

from __future__ import annotations

import uvicorn

from medshard.api.app import create_app
from medshard.config import Settings


def run_service(settings: Settings) -> None:
    app = create_app(settings)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning")
