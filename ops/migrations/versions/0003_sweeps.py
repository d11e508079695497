"""sweeps: low-balance alert state on pools, a vested mark and due-index on lots

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 09:00:00

Additive only (nullable columns, an index, a trigger that sets one of the new columns), so the
previous release of the code keeps working against the migrated schema.

- `token_pools.low_balance_alerted_at`: set when `token_pool.low_balance` is recorded for the
  pool, cleared by the sweep once the balance is back at/above the threshold: one alert per
  crossing, whoever notices the crossing first.
- `lots.vested_at`: set when the vesting sweep moves a lot to the available account. `vests_at`
  is kept (partners see it on their transactions), so without this mark the existing partial
  index `ix_lots_vesting` keeps every vested-but-unspent lot and each sweep would walk all of
  them; `ix_lots_vest_due` holds only lots still waiting to vest.
- Trigger `outbox_low_balance_alerted`: `engine.submit` records `token_pool.low_balance` when an
  action takes a pool across its threshold but does not know about the column; the trigger
  marks the pool in the same transaction, so the sweep never alerts a crossing twice. It can go
  once the submit path sets the column itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_MARK_ALERTED = """
CREATE FUNCTION sir_mark_low_balance_alerted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE token_pools SET low_balance_alerted_at = NEW.created_at
     WHERE id = NEW.payload->>'poolId' AND partner_id = NEW.partner_id
       AND environment = NEW.environment AND low_balance_alerted_at IS NULL;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.add_column(
        "token_pools",
        sa.Column("low_balance_alerted_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column("lots", sa.Column("vested_at", sa.DateTime(timezone=True), nullable=True))
    # Lots credited straight to an available account carry no vests_at (engine.ledger.open_lots);
    # mark any that somehow do, so the due-index holds locked lots only.
    op.execute(
        "UPDATE lots SET vested_at = lots.created_at FROM ledger_accounts a "
        "WHERE a.id = lots.account_id AND lots.vests_at IS NOT NULL "
        "AND a.kind = 'WALLET_AVAILABLE'"
    )
    op.create_index(
        "ix_lots_vest_due",
        "lots",
        ["vests_at"],
        postgresql_where=sa.text("remaining > 0 AND vests_at IS NOT NULL AND vested_at IS NULL"),
    )
    op.execute(_MARK_ALERTED)
    # The WHEN clause runs in C before any PL/pgSQL: other event types cost next to nothing.
    op.execute(
        "CREATE TRIGGER outbox_low_balance_alerted AFTER INSERT ON outbox_events "
        "FOR EACH ROW WHEN (NEW.type = 'token_pool.low_balance') "
        "EXECUTE FUNCTION sir_mark_low_balance_alerted()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_low_balance_alerted ON outbox_events")
    op.execute("DROP FUNCTION IF EXISTS sir_mark_low_balance_alerted()")
    op.drop_index("ix_lots_vest_due", table_name="lots")
    op.drop_column("lots", "vested_at")
    op.drop_column("token_pools", "low_balance_alerted_at")
