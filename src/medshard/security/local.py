"""Callers of the command line: a token holder, or the host operator.

CLI commands that read or store patient data (``import``, ``get``, ``export``) act for a
bearer token (``--token`` or ``MEDSHARD_TOKEN``), exactly like an HTTP client: the same
authorization, the same audit. Administrative commands (users, tokens, keys, erasure,
audit) are run by whoever holds the deployment's home, which already means holding the
master key; they act as the host operator, an admin-role principal named after the OS user
and host, audited like any admin, and like any admin without access to clinical data.
"""

from __future__ import annotations

import getpass
import socket
from functools import partial

from medshard.cluster.archive import Archive
from medshard.errors import AuthenticationError
from medshard.ingest.pipeline import CommitHook
from medshard.security.context import Caller
from medshard.security.gate import Gate
from medshard.security.principal import Principal

TOKEN_ENV = "MEDSHARD_TOKEN"


def where() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def operator(gate: Gate) -> Caller:
    """The host operator (admin role) for administrative commands."""
    principal = Principal(
        user_pk=None, username=f"operator:{where()[4:]}", role="admin", source=where(), via="cli"
    )
    return gate.caller(principal)


def token_caller(gate: Gate, token: str | None) -> Caller:
    """The caller a CLI token stands for.

    Raises
    ------
    AuthenticationError
        No token given, or the token is not valid.
    """
    if not token:
        raise AuthenticationError(
            f"this command reads or stores patient data: pass --token or set {TOKEN_ENV} "
            "(a service account's API token, or an access token from POST /api/auth/token)"
        )
    return gate.caller(gate.authenticate(token, where()))


def _store_access(token: str, archive: Archive) -> tuple[int | None, CommitHook]:
    gate = Gate(archive)
    caller = token_caller(gate, token)
    return gate.store_hook(caller.principal)


def store_access_for(token: str) -> partial[tuple[int | None, CommitHook]]:
    """A picklable ``archive -> (site, commit hook)`` for importer processes."""
    return partial(_store_access, token)
