"""The hospital world of the security tests, for the patient record: on SQLite and PostgreSQL.

PAT-A's study came from st-marys (test-pacs), PAT-B's from city-general (pacs-b); doc-a works
at st-marys (PAT-A's care team), doc-b at city-general (not PAT-A's); pat-a is PAT-A.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import _reset_pg
from tests.security.conftest import World, build_world


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def rworld(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    url = ""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_database")
        _reset_pg(url)
    w = build_world(tmp_path_factory.mktemp("records"), db_url=url)
    yield w
    w.svc.process.stop()
    for node in w.dep.nodes:
        node.stop()


def call(world: World, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request to the world's service as ``who`` (a name in ``world.tokens``)."""
    headers = dict(kw.pop("headers", {}))
    if who:
        headers["Authorization"] = f"Bearer {world.tokens[who]}"
    return httpx.request(method, f"{world.svc.url}{path}", headers=headers, timeout=60, **kw)
