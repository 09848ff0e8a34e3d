"""The caller of the work in progress, carried with it (``contextvars``).

Every entry point sets it once, after authentication: the HTTP app's dependency, each DIMSE
handler, each CLI data command. Data-access functions that return patient data call
:func:`require_caller` and fail closed (401) when nobody is set, so a new route, handler or
command that forgets to authenticate cannot read anything. Context variables follow work
into worker threads started with ``anyio.to_thread`` and ``contextvars.copy_context``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medshard.errors import AuthenticationError

if TYPE_CHECKING:
    from medshard.security.gate import Gate
    from medshard.security.principal import Principal


@dataclass(frozen=True)
class Caller:
    """Who is calling, and the gate that decides and records what they may do."""

    principal: Principal
    gate: Gate


_CURRENT: ContextVar[Caller | None] = ContextVar("medshard_caller", default=None)


def set_caller(caller: Caller) -> None:
    """Set the caller for the rest of this context (an HTTP request's task)."""
    _CURRENT.set(caller)


@contextmanager
def acting_as(caller: Caller) -> Iterator[Caller]:
    """Run a block as ``caller`` (DIMSE handlers, CLI commands, workers)."""
    token = _CURRENT.set(caller)
    try:
        yield caller
    finally:
        _CURRENT.reset(token)


def current_caller() -> Caller | None:
    return _CURRENT.get()


def require_caller() -> Caller:
    """The authenticated caller, or 401: patient data is never read anonymously."""
    caller = _CURRENT.get()
    if caller is None:
        raise AuthenticationError("authentication required")
    return caller
