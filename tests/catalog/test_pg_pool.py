"""PostgreSQL connections the server drops while they sit in the pool: found by the idle ping
and replaced, so no request sees a dead one (pings are no longer made on every checkout).

The fault is real: the server itself ends the pooled connection's backend
(``pg_terminate_backend``), as a restart or an idle timeout would.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from medshard.catalog import db
from medshard.catalog.db import Catalog
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def catalog(pg_database: str) -> Iterator[Catalog]:
    cat = Catalog(pg_database)
    yield cat
    cat.dispose()


def _backend(catalog: Catalog) -> int:
    with catalog.reads() as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_a_connection_dropped_while_idle_is_pinged_and_replaced(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend(catalog)
    assert _backend(catalog) == first  # the pool hands the same connection back
    _terminate(first)
    monkeypatch.setattr(db, "IDLE_PING_S", 0.0)  # it has now sat idle long enough
    replaced = _backend(catalog)
    assert replaced != first
    with catalog.transaction() as session:  # writes go through the same pool
        assert session.execute(text("SELECT 1")).scalar_one() == 1


def test_without_the_ping_the_first_request_meets_the_dead_connection(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the ping is for: a connection used again within IDLE_PING_S is not pinged."""
    first = _backend(catalog)
    _terminate(first)
    monkeypatch.setattr(db, "IDLE_PING_S", 3600.0)
    with pytest.raises(OperationalError):
        _backend(catalog)
    assert _backend(catalog) != first  # and the pool has replaced it for the next one
