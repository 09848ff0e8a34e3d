"""REST for the topology (admin only): sites and storage nodes.

Thin: each route checks its input's shape, the caller's role through the gate, and calls
:mod:`medshard.cluster.topology`; every change is audited in its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from medshard.api.auth import Caller, CallerDep
from medshard.cluster import topology

router = APIRouter(prefix="/api", tags=["topology"])


class NewSite(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    kind: str = Field(default="hospital", max_length=16)
    region: str | None = Field(default=None, max_length=64)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


class NewNode(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    url: str = Field(min_length=8, max_length=256)
    site: str = Field(min_length=1, max_length=64)
    capacity_bytes: int = Field(default=0, ge=0)
    weight: float = Field(default=0.0, ge=0, le=1e6)


class Weight(BaseModel):
    weight: float = Field(ge=0, le=1e6)


def _admin(caller: Caller, action: str) -> None:
    caller.gate.require_role(caller.principal, {"admin"}, action)


def _change(caller: Caller, action: str, detail: str, change: Callable[[Session], Any]) -> Any:
    gate = caller.gate
    _admin(caller, action)
    with gate.catalog.transaction() as session:
        result = change(session)
        gate.audit.append(session, gate.event(caller.principal, action, detail=detail))
    return result


@router.get("/sites")
def list_sites(caller: CallerDep) -> list[dict[str, Any]]:
    """Every site with kind, region, location and node count (admin only)."""
    _admin(caller, "list sites")
    with caller.gate.catalog.session() as session:
        return topology.list_sites(session)


@router.post("/sites", status_code=201)
def add_site(body: NewSite, caller: CallerDep) -> dict[str, str]:
    """Add a site or change its kind, region or location (admin only)."""
    _change(
        caller,
        "site-add",
        f"{body.name} {body.kind}",
        lambda s: topology.add_site(
            s,
            body.name,
            kind=body.kind,
            region=body.region,
            latitude=body.latitude,
            longitude=body.longitude,
        ),
    )
    return {"name": body.name, "kind": body.kind}


@router.get("/nodes")
def list_nodes(caller: CallerDep) -> list[dict[str, Any]]:
    """Every node with state, weight, reliability, copies and coordinates (admin only)."""
    _admin(caller, "list nodes")
    with caller.gate.catalog.session() as session:
        return topology.list_nodes(session)


@router.post("/nodes", status_code=201)
def add_node(body: NewNode, caller: CallerDep) -> dict[str, str]:
    """Register a running node (admin only)."""
    _change(
        caller,
        "node-add",
        f"{body.name} {body.site} {body.url}",
        lambda s: topology.add_node(
            s,
            body.name,
            url=body.url,
            site=body.site,
            capacity_bytes=body.capacity_bytes,
            weight=body.weight,
        ),
    )
    return {"name": body.name, "site": body.site}


@router.put("/nodes/{name}/weight")
def set_weight(name: str, body: Weight, caller: CallerDep) -> dict[str, object]:
    """Re-weight a node (admin only); 0 derives the weight from its capacity."""
    _change(
        caller,
        "node-weight",
        f"{name} {body.weight}",
        lambda s: topology.set_weight(s, name, body.weight),
    )
    return {"name": name, "weight": body.weight}


@router.post("/nodes/{name}/drain")
def drain(name: str, caller: CallerDep) -> dict[str, str]:
    """Start moving every copy off a node (admin only); the monitor does the moving."""
    _change(caller, "node-drain", name, lambda s: topology.drain(s, name))
    return {"name": name, "admin_state": "draining"}


@router.post("/nodes/{name}/undrain")
def undrain(name: str, caller: CallerDep) -> dict[str, str]:
    """Let a node take new copies again (admin only)."""
    _change(caller, "node-undrain", name, lambda s: topology.undrain(s, name))
    return {"name": name, "admin_state": "active"}


@router.delete("/nodes/{name}")
def remove(name: str, caller: CallerDep, force: bool = Query(default=False)) -> dict[str, object]:
    """Remove a drained node, or with ``force`` a dead one (admin only)."""
    forgotten = _change(
        caller,
        "node-remove",
        f"{name} force={force}",
        lambda s: topology.remove(s, name, force=force),
    )
    return {"name": name, "removed": True, "copies_forgotten": forgotten}
