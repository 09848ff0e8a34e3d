"""Liveness, cluster status and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from medshard.api.auth import CallerDep
from medshard.api.deps import ArchiveDep
from medshard.cluster.status import cluster_status

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/api/status")
async def api_status(archive: ArchiveDep, caller: CallerDep) -> dict[str, Any]:
    """Cluster status: nodes, replication, repair (admins and service accounts)."""
    caller.gate.require_role(caller.principal, {"admin", "service"}, "read cluster status")
    return await run_in_threadpool(cluster_status, archive)


@router.get("/metrics")
def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
