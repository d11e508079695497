"""webhook attempts keep a response excerpt; deliveries listed per endpoint; pick-up claims

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 08:00:00

Additive only (nullable columns and an index), so the previous release of the code keeps working
against the migrated schema.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_attempts", sa.Column("response_excerpt", sa.Text(), nullable=True))
    # Set when the pick-up tick hands a due delivery to a queue message, cleared when that
    # attempt starts: lets the message's attempt run while a second pick-up skips the row.
    op.add_column(
        "webhook_deliveries",
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_id_created_at",
        "webhook_deliveries",
        ["endpoint_id", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_endpoint_id_created_at", table_name="webhook_deliveries")
    op.drop_column("webhook_deliveries", "queued_at")
    op.drop_column("webhook_attempts", "response_excerpt")
