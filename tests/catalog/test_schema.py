"""The catalog schema comes from Alembic migrations, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from medshard.catalog.db import Catalog, migrate
from medshard.catalog.models import Base


def test_migrations_create_every_model_table_and_are_idempotent(
    tmp_path: Path, db_url: str
) -> None:
    url = db_url or f"sqlite:///{tmp_path / 'c.db'}"
    migrate(url)
    migrate(url)  # upgrading an up-to-date catalog is a no-op
    engine = sa.create_engine(url)
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    indexed = {c for ix in inspector.get_indexes("studies") for c in ix["column_names"]}
    assert {"patient_pk", "study_date"} <= indexed
    engine.dispose()


def test_sqlite_catalog_runs_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    migrate(url)
    catalog = Catalog(url)
    with catalog.session() as session:
        assert session.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    catalog.dispose()
