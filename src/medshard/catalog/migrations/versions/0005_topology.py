"""topology: regions, site kind/location/region, node weight, admin state and coordinates

New table plus columns with server defaults, so existing catalogs upgrade without touching a
row: every existing site is a hospital in no region, every node active with a weight derived
from its capacity and a coordinate Vivaldi knows nothing about yet.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 02:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "regions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "coordinates",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("h", sa.Float(), nullable=False),
        sa.Column("error", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="hospital")
        )
        batch_op.add_column(sa.Column("region_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("latitude", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("longitude", sa.Float(), nullable=True))
        batch_op.create_foreign_key("fk_sites_region", "regions", ["region_id"], ["id"])
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("coord_error", sa.Float(), nullable=False, server_default="1.0")
        )
        batch_op.add_column(sa.Column("rtt_ms", sa.Float(), nullable=False, server_default="0.0"))
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="0.0"))
        batch_op.add_column(
            sa.Column("admin_state", sa.String(length=16), nullable=False, server_default="active")
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("admin_state")
        batch_op.drop_column("weight")
        batch_op.drop_column("rtt_ms")
        batch_op.drop_column("coord_error")
    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.drop_constraint("fk_sites_region", type_="foreignkey")
        batch_op.drop_column("longitude")
        batch_op.drop_column("latitude")
        batch_op.drop_column("region_id")
        batch_op.drop_column("kind")
    op.drop_table("coordinates")
    op.drop_table("regions")
