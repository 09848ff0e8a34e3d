"""The FastAPI application: routers joined once, errors mapped once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from medshard import __version__
from medshard.api import web
from medshard.api.auth import authenticate
from medshard.api.dicomweb import (
    routes_qido,
    routes_rendered,
    routes_stow,
    routes_wado,
    routes_wado_uri,
)
from medshard.api.errors import install_error_handlers
from medshard.api.fhir import routes as fhir_routes
from medshard.api.routes import access, auth, findings, status
from medshard.api.routes import records as records_routes
from medshard.api.routes import series as series_routes
from medshard.api.routes import topology as topology_routes
from medshard.cluster.archive import Archive
from medshard.cluster.monitor import HealthMonitor
from medshard.config import Settings
from medshard.security.audit_shipping import AuditShipper
from medshard.security.gate import Gate


def create_app(settings: Settings, *, monitor: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        archive = Archive(settings)
        app.state.archive = archive
        app.state.gate = Gate(archive)
        watcher = HealthMonitor(archive).start() if monitor else None
        # the audit log leaves this disk within seconds (security/audit_shipping.py)
        shipper = AuditShipper(archive).start() if monitor else None
        for hook in app.state.startup_hooks:
            hook(app)
        try:
            yield
        finally:
            for hook in app.state.shutdown_hooks:
                hook(app)
            if watcher is not None:
                watcher.stop()
            app.state.gate.close()  # flushes the audit writer: the shipper's last wake sends it
            if shipper is not None:
                shipper.stop()
            archive.close()

    # Every route passes the authentication dependency (public paths are listed in
    # medshard.api.auth.PUBLIC); patient data is then reached only through the gate.
    app = FastAPI(
        title="medshard",
        version=__version__,
        lifespan=lifespan,
        dependencies=[Depends(authenticate)],
    )
    app.state.settings = settings
    app.state.startup_hooks = []
    app.state.shutdown_hooks = []
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["*"],
        )
    install_error_handlers(app)
    findings.install(app)
    app.include_router(auth.router)
    app.include_router(access.router)
    app.include_router(status.router)
    app.include_router(findings.router)
    app.include_router(routes_stow.router)
    app.include_router(routes_qido.router)
    app.include_router(routes_wado.router)
    app.include_router(routes_rendered.router)
    app.include_router(routes_wado_uri.router)
    app.include_router(records_routes.router)
    app.include_router(series_routes.router)
    app.include_router(topology_routes.router)
    app.include_router(fhir_routes.router)
    web.install(app)
    return app
