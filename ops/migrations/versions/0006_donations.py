"""donations: what the widget's donation links and the providers' notifications need

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 11:00:00

Additive only (nullable columns and an index), so the previous release keeps working.

- `checkout`: who completes the donation: `every.org`, `stripe` (a real Checkout Session) or
  `test` (the front's hosted test checkout, sandbox only). A notification from another
  provider does not complete it.
- `tip_percent`: the tip percent the donor chose (the cents are in `tip_amount_cents`).
- `reward_tokens`: micro-tokens the DONOR received from the DONATION action, for the widget.
- `reward_error`: the stable code when the DONATION action was refused (the donation is still
  COMPLETED: the money moved; the partner sees why there was no reward).
- `updated_at`, and an index for the partner's newest-first listing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("donations", sa.Column("checkout", sa.String(length=16), nullable=True))
    op.add_column("donations", sa.Column("tip_percent", sa.Numeric(5, 2), nullable=True))
    op.add_column("donations", sa.Column("reward_tokens", sa.BigInteger(), nullable=True))
    op.add_column("donations", sa.Column("reward_error", sa.Text(), nullable=True))
    op.add_column(
        "donations",
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.create_check_constraint(
        op.f("ck_donations_checkout"),
        "donations",
        "checkout IS NULL OR checkout IN ('every.org', 'stripe', 'test')",
    )
    op.create_index(
        op.f("ix_donations_partner_id_environment_created_at"),
        "donations",
        ["partner_id", "environment", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_donations_partner_id_environment_created_at"), table_name="donations")
    op.drop_constraint(op.f("ck_donations_checkout"), "donations", type_="check")
    for column in ("updated_at", "reward_error", "reward_tokens", "tip_percent", "checkout"):
        op.drop_column("donations", column)
