"""Group commit: many callers, one transaction, and a failing item never strands the others."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medshard.catalog.db import Catalog, migrate
from medshard.catalog.models import Site


def test_concurrent_callers_commit_and_duplicates_fail_alone(tmp_path: Path, db_url: str) -> None:
    url = db_url or f"sqlite:///{tmp_path / 'c.db'}"
    migrate(url)
    catalog = Catalog(url)
    names = [f"site{i % 40}" for i in range(120)]  # every name three times: unique violations
    outcomes: list[str] = []
    lock = threading.Lock()

    def add(name: str) -> None:
        def work(session: Session) -> str:
            session.add(Site(name=name))
            return name

        try:
            catalog.commit_grouped(work)
            result = "ok"
        except IntegrityError:
            result = "dup"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=add, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a caller was left waiting"
    assert outcomes.count("ok") == 40 and outcomes.count("dup") == 80
    with catalog.session() as session:
        assert session.scalar(sa.select(sa.func.count(Site.id))) == 40
    catalog.dispose()


def test_an_error_in_work_reaches_only_its_caller(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    migrate(url)
    catalog = Catalog(url)

    def boom(_session: Session) -> None:
        raise ValueError("bad item")

    with pytest.raises(ValueError, match="bad item"):
        catalog.commit_grouped(boom)
    assert catalog.commit_grouped(lambda s: (s.add(Site(name="x")), 7)[1]) == 7
    catalog.dispose()
