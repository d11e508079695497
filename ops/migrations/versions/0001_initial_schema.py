"""initial schema: every table of the data model, and the ledger's database-level invariants

Revision ID: 0001
Revises:
Create Date: 2026-11-23 05:55:51.922050
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


LEDGER_FUNCTIONS = [
    """
CREATE FUNCTION sir_postings_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT p.entry_id, sum(p.amount) AS total INTO bad
      FROM postings p
     WHERE p.entry_id IN (SELECT DISTINCT entry_id FROM new_postings)
     GROUP BY p.entry_id
    HAVING sum(p.amount) <> 0 OR count(*) < 2
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance (sum %)', bad.entry_id, bad.total
              USING ERRCODE = 'check_violation', CONSTRAINT = 'postings_balanced';
    END IF;
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION sir_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: post a correcting entry instead', TG_TABLE_NAME
          USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_append_only';
END $$
""",
]


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target_type", sa.Text(), nullable=False),
        sa.Column("target_id", sa.Text(), nullable=True),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_created_at"), "audit_log", ["created_at"], unique=False)
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("slug", sa.String(length=128), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("ein", sa.String(length=20), nullable=True),
        sa.Column("logo_url", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=20), server_default="ACTIVE", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('ACTIVE', 'INACTIVE')", name=op.f("ck_organizations_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("slug", name=op.f("uq_organizations_slug")),
    )
    op.create_table(
        "partners",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("legal_entity", sa.Text(), nullable=True),
        sa.Column("contact_email", sa.Text(), nullable=True),
        sa.Column(
            "status", sa.String(length=20), server_default="PENDING_APPROVAL", nullable=False
        ),
        sa.Column("tier", sa.String(length=20), server_default="STANDARD", nullable=False),
        sa.Column(
            "enabled_features", sa.ARRAY(sa.Text()), server_default="{ACTIONS}", nullable=False
        ),
        sa.Column(
            "integration_model", sa.String(length=10), server_default="SERVER", nullable=False
        ),
        sa.Column("ip_allowlist", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("action_types", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("stakeholder_types", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column(
            "tip_config",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text('\'{"enabled": false, "defaultPercent": 0}\'::jsonb'),
            nullable=False,
        ),
        sa.Column("rate_limit_override", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "integration_model IN ('SERVER', 'WIDGET', 'BOTH')",
            name=op.f("ck_partners_integration_model"),
        ),
        sa.CheckConstraint(
            "status IN ('PENDING_APPROVAL', 'ACTIVE', 'SUSPENDED', 'DEACTIVATED')",
            name=op.f("ck_partners_status"),
        ),
        sa.CheckConstraint(
            "tier IN ('STANDARD', 'PROFESSIONAL', 'ENTERPRISE')", name=op.f("ck_partners_tier")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partners")),
        sa.UniqueConstraint("slug", name=op.f("uq_partners_slug")),
    )
    op.create_table(
        "action_batches",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=12), server_default="PENDING", nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_action_batches_environment")
        ),
        sa.CheckConstraint(
            "status IN ('PENDING', 'PROCESSING', 'COMPLETED')",
            name=op.f("ck_action_batches_status"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_action_batches_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_action_batches")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("public_key", sa.String(length=80), nullable=False),
        sa.Column("secret_key_hash", sa.LargeBinary(), nullable=False),
        sa.Column("secret_key_last4", sa.String(length=4), nullable=False),
        sa.Column("hmac_secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ip_allowlist", sa.ARRAY(sa.Text()), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rotated_from_id", sa.String(length=24), nullable=True),
        sa.Column(
            "expiry_alerts_sent", sa.ARRAY(sa.SmallInteger()), server_default="{}", nullable=False
        ),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_api_keys_environment")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_api_keys_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["rotated_from_id"], ["api_keys.id"], name=op.f("fk_api_keys_rotated_from_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("public_key", name=op.f("uq_api_keys_public_key")),
        sa.UniqueConstraint("secret_key_hash", name=op.f("uq_api_keys_secret_key_hash")),
    )
    op.create_index(
        op.f("ix_api_keys_partner_id_environment"),
        "api_keys",
        ["partner_id", "environment"],
        unique=False,
    )
    op.create_table(
        "donations",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("organization_id", sa.String(length=24), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("frequency", sa.String(length=10), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("donor_email", sa.Text(), nullable=False),
        sa.Column("first_name", sa.Text(), nullable=True),
        sa.Column("last_name", sa.Text(), nullable=True),
        sa.Column("tip_amount_cents", sa.BigInteger(), nullable=True),
        sa.Column("referral_code", sa.Text(), nullable=True),
        sa.Column("partner_user_external_id", sa.String(length=255), nullable=True),
        sa.Column("provider_reference", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=10), server_default="CREATED", nullable=False),
        sa.Column("action_id", sa.String(length=24), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_donations_environment")
        ),
        sa.CheckConstraint("frequency IN ('once', 'monthly')", name=op.f("ck_donations_frequency")),
        sa.CheckConstraint(
            "status IN ('CREATED', 'COMPLETED', 'FAILED')", name=op.f("ck_donations_status")
        ),
        sa.CheckConstraint("amount_cents > 0", name=op.f("ck_donations_amount")),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_donations_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_donations_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_donations")),
    )
    op.create_table(
        "journal_entries",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("action_id", sa.String(length=24), nullable=True),
        sa.Column("reversal_id", sa.String(length=24), nullable=True),
        sa.Column("order_id", sa.String(length=24), nullable=True),
        sa.Column("memo", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_journal_entries_environment")
        ),
        sa.CheckConstraint(
            "kind IN ('ALLOCATION', 'RESERVE_FUNDING', 'DISTRIBUTION', 'REVERSAL', 'VESTING', 'EXPIRATION', 'REFILL', 'REDEMPTION', 'REFUND', 'CORRECTION')",
            name=op.f("ck_journal_entries_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_journal_entries_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_entries")),
        sa.UniqueConstraint("id", "partner_id", "environment", name="uq_journal_entries_scoped_id"),
    )
    op.create_index(
        op.f("ix_journal_entries_action_id"),
        "journal_entries",
        ["action_id"],
        unique=False,
        postgresql_where=sa.text("action_id IS NOT NULL"),
    )
    op.create_table(
        "outbox_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("relayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_outbox_events_environment")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_outbox_events_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
    )
    op.create_index(
        "ix_outbox_events_pending",
        "outbox_events",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("relayed_at IS NULL"),
    )
    op.create_table(
        "partner_users",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("external_user_id", sa.String(length=255), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("first_name", sa.Text(), nullable=True),
        sa.Column("last_name", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_partner_users_environment")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_partner_users_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_users")),
        sa.UniqueConstraint("id", "partner_id", "environment", name="uq_partner_users_scoped_id"),
        sa.UniqueConstraint(
            "partner_id",
            "environment",
            "external_user_id",
            name=op.f("uq_partner_users_partner_id_environment_external_user_id"),
        ),
    )
    op.create_table(
        "pool_refills",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("pool_id", sa.String(length=24), nullable=False),
        sa.Column("entry_id", sa.String(length=24), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("refill_day", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_pool_refills_environment")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_pool_refills_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_refills")),
    )
    op.create_index(
        op.f("ix_pool_refills_pool_id_refill_day"),
        "pool_refills",
        ["pool_id", "refill_day"],
        unique=False,
    )
    op.create_table(
        "portal_users",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_portal_users_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_users")),
    )
    op.create_index(
        "uq_portal_users_lower_email",
        "portal_users",
        [sa.literal_column("lower(email)")],
        unique=True,
    )
    op.create_table(
        "token_pools",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("is_default", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("status", sa.String(length=12), server_default="ACTIVE", nullable=False),
        sa.Column("low_balance_threshold", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("vesting_days", sa.Integer(), nullable=True),
        sa.Column("expiration_days", sa.Integer(), nullable=True),
        sa.Column(
            "redemption",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "auto_refill",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{\"enabled\": false}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_token_pools_environment")
        ),
        sa.CheckConstraint(
            "status IN ('ACTIVE', 'EXHAUSTED', 'CLOSED')", name=op.f("ck_token_pools_status")
        ),
        sa.CheckConstraint(
            "expiration_days IS NULL OR expiration_days > 0",
            name=op.f("ck_token_pools_expiration_days"),
        ),
        sa.CheckConstraint(
            "vesting_days IS NULL OR expiration_days IS NULL OR expiration_days > vesting_days",
            name=op.f("ck_token_pools_expiration_after_vesting"),
        ),
        sa.CheckConstraint(
            "vesting_days IS NULL OR vesting_days >= 0", name=op.f("ck_token_pools_vesting_days")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_token_pools_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_pools")),
        sa.UniqueConstraint("id", "partner_id", "environment", name="uq_token_pools_scoped_id"),
    )
    op.create_index(
        "uq_token_pools_one_default",
        "token_pools",
        ["partner_id", "environment"],
        unique=True,
        postgresql_where=sa.text("is_default"),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("event_types", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column(
            "receive_all_events", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("previous_secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("headers_enc", sa.LargeBinary(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')",
            name=op.f("ck_webhook_endpoints_environment"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_webhook_endpoints_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
        sa.UniqueConstraint(
            "id", "partner_id", "environment", name="uq_webhook_endpoints_scoped_id"
        ),
    )
    op.create_table(
        "action_batch_items",
        sa.Column("batch_id", sa.String(length=24), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=12), server_default="PENDING", nullable=False),
        sa.Column("action_id", sa.String(length=24), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint(
            "status IN ('PENDING', 'COMPLETED', 'FAILED')",
            name=op.f("ck_action_batch_items_status"),
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["action_batches.id"],
            name=op.f("fk_action_batch_items_batch_id_action_batches"),
        ),
        sa.PrimaryKeyConstraint("batch_id", "index", name=op.f("pk_action_batch_items")),
    )
    op.create_table(
        "actions",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="COMPLETED", nullable=False),
        sa.Column("action_type", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.Numeric(precision=38, scale=12), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("campaign_id", sa.String(length=24), nullable=True),
        sa.Column("pool_id", sa.String(length=24), nullable=True),
        sa.Column("tokens_distributed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("tokens_reversed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("batch_id", sa.String(length=24), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_actions_environment")
        ),
        sa.CheckConstraint(
            "status IN ('COMPLETED', 'PARTIALLY_REVERSED', 'REVERSED')",
            name=op.f("ck_actions_status"),
        ),
        sa.CheckConstraint(
            "tokens_reversed >= 0 AND tokens_reversed <= tokens_distributed",
            name=op.f("ck_actions_reversed_bounds"),
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["action_batches.id"], name=op.f("fk_actions_batch_id_action_batches")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_actions_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_actions")),
        sa.UniqueConstraint("id", "partner_id", "environment", name="uq_actions_scoped_id"),
        sa.UniqueConstraint(
            "partner_id",
            "environment",
            "idempotency_key",
            name=op.f("uq_actions_partner_id_environment_idempotency_key"),
        ),
    )
    op.create_index(
        op.f("ix_actions_partner_id_environment_created_at"),
        "actions",
        ["partner_id", "environment", "created_at"],
        unique=False,
    )
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), server_default="DRAFT", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("action_types", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column(
            "multiplier", sa.Numeric(precision=24, scale=6), server_default="1", nullable=False
        ),
        sa.Column("base_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "tiers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "splits",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("days_of_week", sa.ARRAY(sa.Text()), nullable=True),
        sa.Column("timezone", sa.Text(), server_default="UTC", nullable=False),
        sa.Column("budget_total", sa.BigInteger(), nullable=True),
        sa.Column("budget_per_user", sa.BigInteger(), nullable=True),
        sa.Column("spent_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("pool_id", sa.String(length=24), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_campaigns_environment")
        ),
        sa.CheckConstraint(
            "status IN ('DRAFT', 'ACTIVE', 'PAUSED', 'ENDED')", name=op.f("ck_campaigns_status")
        ),
        sa.CheckConstraint(
            "budget_total IS NULL OR spent_tokens <= budget_total",
            name=op.f("ck_campaigns_budget_never_over"),
        ),
        sa.CheckConstraint("spent_tokens >= 0", name=op.f("ck_campaigns_spent_nonnegative")),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_campaigns_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["pool_id", "partner_id", "environment"],
            ["token_pools.id", "token_pools.partner_id", "token_pools.environment"],
            name=op.f("fk_campaigns_pool_id_partner_id_environment_token_pools"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
        sa.UniqueConstraint("id", "partner_id", "environment", name="uq_campaigns_scoped_id"),
    )
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("pool_id", sa.String(length=24), nullable=True),
        sa.Column("partner_user_id", sa.String(length=24), nullable=True),
        sa.Column("organization_id", sa.String(length=24), nullable=True),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(kind = 'POOL') = (pool_id IS NOT NULL) AND (kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED')) = (partner_user_id IS NOT NULL OR organization_id IS NOT NULL) AND NOT (partner_user_id IS NOT NULL AND organization_id IS NOT NULL)",
            name=op.f("ck_ledger_accounts_owner"),
        ),
        sa.CheckConstraint(
            "CASE kind WHEN 'ISSUANCE' THEN balance <= 0 WHEN 'WALLET_AVAILABLE' THEN true ELSE balance >= 0 END",
            name=op.f("ck_ledger_accounts_balance_sign"),
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_ledger_accounts_environment")
        ),
        sa.CheckConstraint(
            "kind IN ('ISSUANCE', 'POOL', 'RESERVE', 'WALLET_AVAILABLE', 'WALLET_LOCKED', 'SINK_EXPIRED', 'SINK_REDEEMED')",
            name=op.f("ck_ledger_accounts_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_ledger_accounts_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_ledger_accounts_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["partner_user_id", "partner_id", "environment"],
            ["partner_users.id", "partner_users.partner_id", "partner_users.environment"],
            name="fk_ledger_accounts_user_scoped",
        ),
        sa.ForeignKeyConstraint(
            ["pool_id", "partner_id", "environment"],
            ["token_pools.id", "token_pools.partner_id", "token_pools.environment"],
            name="fk_ledger_accounts_pool_scoped",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        sa.UniqueConstraint("id", "partner_id", "environment", name="uq_ledger_accounts_scoped_id"),
    )
    op.create_index(
        "uq_ledger_accounts_org_wallet",
        "ledger_accounts",
        ["partner_id", "environment", "organization_id", "kind"],
        unique=True,
        postgresql_where=sa.text("organization_id IS NOT NULL"),
    )
    op.create_index(
        "uq_ledger_accounts_pool",
        "ledger_accounts",
        ["pool_id"],
        unique=True,
        postgresql_where=sa.text("pool_id IS NOT NULL"),
    )
    op.create_index(
        "uq_ledger_accounts_singleton",
        "ledger_accounts",
        ["partner_id", "environment", "kind"],
        unique=True,
        postgresql_where=sa.text(
            "kind IN ('ISSUANCE', 'RESERVE', 'SINK_EXPIRED', 'SINK_REDEEMED')"
        ),
    )
    op.create_index(
        "uq_ledger_accounts_user_wallet",
        "ledger_accounts",
        ["partner_user_id", "kind"],
        unique=True,
        postgresql_where=sa.text("partner_user_id IS NOT NULL"),
    )
    op.create_table(
        "token_pool_requests",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("pool_id", sa.String(length=24), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=10), server_default="PENDING", nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')",
            name=op.f("ck_token_pool_requests_environment"),
        ),
        sa.CheckConstraint(
            "status IN ('PENDING', 'APPROVED', 'REJECTED')",
            name=op.f("ck_token_pool_requests_status"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_token_pool_requests_amount")),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_token_pool_requests_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["pool_id", "partner_id", "environment"],
            ["token_pools.id", "token_pools.partner_id", "token_pools.environment"],
            name=op.f("fk_token_pool_requests_pool_id_partner_id_environment_token_pools"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_pool_requests")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("endpoint_id", sa.String(length=24), nullable=False),
        sa.Column("status", sa.String(length=12), server_default="PENDING", nullable=False),
        sa.Column("attempt_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')",
            name=op.f("ck_webhook_deliveries_environment"),
        ),
        sa.CheckConstraint(
            "status IN ('PENDING', 'SUCCEEDED', 'FAILED')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id", "partner_id", "environment"],
            [
                "webhook_endpoints.id",
                "webhook_endpoints.partner_id",
                "webhook_endpoints.environment",
            ],
            name=op.f("fk_webhook_deliveries_endpoint_id_partner_id_environment_webhook_endpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbox_events.id"],
            name=op.f("fk_webhook_deliveries_event_id_outbox_events"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_webhook_deliveries_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "event_id", "endpoint_id", name=op.f("uq_webhook_deliveries_event_id_endpoint_id")
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_table(
        "campaign_user_spend",
        sa.Column("campaign_id", sa.String(length=24), nullable=False),
        sa.Column("partner_user_id", sa.String(length=24), nullable=False),
        sa.Column("spent_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "spent_tokens >= 0", name=op.f("ck_campaign_user_spend_spent_nonnegative")
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_user_spend_campaign_id_campaigns"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_user_id"],
            ["partner_users.id"],
            name=op.f("fk_campaign_user_spend_partner_user_id_partner_users"),
        ),
        sa.PrimaryKeyConstraint(
            "campaign_id", "partner_user_id", name=op.f("pk_campaign_user_spend")
        ),
    )
    op.create_table(
        "postings",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("entry_id", sa.String(length=24), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=12), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_postings_environment")
        ),
        sa.CheckConstraint(
            "type IN ('CREDIT', 'DEBIT', 'REVERSAL', 'VESTING', 'EXPIRATION', 'REFILL', 'ALLOCATION', 'REDEMPTION', 'REFUND')",
            name=op.f("ck_postings_type"),
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_postings_nonzero")),
        sa.ForeignKeyConstraint(
            ["account_id", "partner_id", "environment"],
            ["ledger_accounts.id", "ledger_accounts.partner_id", "ledger_accounts.environment"],
            name="fk_postings_account_scoped",
        ),
        sa.ForeignKeyConstraint(
            ["entry_id", "partner_id", "environment"],
            ["journal_entries.id", "journal_entries.partner_id", "journal_entries.environment"],
            name="fk_postings_entry_scoped",
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_postings_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postings")),
    )
    op.create_index(op.f("ix_postings_account_id"), "postings", ["account_id"], unique=False)
    op.create_index(op.f("ix_postings_entry_id"), "postings", ["entry_id"], unique=False)
    op.create_index(
        op.f("ix_postings_partner_id_environment_created_at"),
        "postings",
        ["partner_id", "environment", "created_at"],
        unique=False,
    )
    op.create_table(
        "reversals",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("action_id", sa.String(length=24), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("amount", sa.Numeric(precision=38, scale=12), nullable=True),
        sa.Column("tokens_reversed", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_reversals_environment")
        ),
        sa.CheckConstraint(
            "status IN ('REVERSED', 'PARTIALLY_REVERSED')", name=op.f("ck_reversals_status")
        ),
        sa.ForeignKeyConstraint(
            ["action_id", "partner_id", "environment"],
            ["actions.id", "actions.partner_id", "actions.environment"],
            name=op.f("fk_reversals_action_id_partner_id_environment_actions"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_reversals_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reversals")),
        sa.UniqueConstraint(
            "partner_id",
            "environment",
            "idempotency_key",
            name=op.f("uq_reversals_partner_id_environment_idempotency_key"),
        ),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("delivery_id", sa.String(length=24), nullable=False),
        sa.Column(
            "attempted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index(
        op.f("ix_webhook_attempts_delivery_id"), "webhook_attempts", ["delivery_id"], unique=False
    )
    op.create_table(
        "lots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("partner_id", sa.String(length=24), nullable=False),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("posting_id", sa.String(length=24), nullable=False),
        sa.Column("action_id", sa.String(length=24), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("vests_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "environment IN ('sandbox', 'production')", name=op.f("ck_lots_environment")
        ),
        sa.CheckConstraint(
            "amount > 0 AND remaining >= 0 AND remaining <= amount", name=op.f("ck_lots_remaining")
        ),
        sa.CheckConstraint(
            "expires_at IS NULL OR vests_at IS NULL OR expires_at > vests_at",
            name=op.f("ck_lots_dates"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id", "partner_id", "environment"],
            ["ledger_accounts.id", "ledger_accounts.partner_id", "ledger_accounts.environment"],
            name="fk_lots_account_scoped",
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_lots_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["posting_id"], ["postings.id"], name=op.f("fk_lots_posting_id_postings")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lots")),
    )
    op.create_index(
        "ix_lots_expiring",
        "lots",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("remaining > 0 AND expires_at IS NOT NULL"),
    )
    op.create_index(
        "ix_lots_open_by_account",
        "lots",
        ["account_id", "expires_at"],
        unique=False,
        postgresql_where=sa.text("remaining > 0"),
    )
    op.create_index(
        "ix_lots_vesting",
        "lots",
        ["vests_at"],
        unique=False,
        postgresql_where=sa.text("remaining > 0 AND vests_at IS NOT NULL"),
    )
    # ### end Alembic commands ###

    # ### ledger invariants, enforced by PostgreSQL itself (hordak's habit) ###
    # An entry's postings are written by one INSERT statement; at the end of that statement
    # every entry it touched must sum to exactly zero. A statement-level trigger over the
    # transition table checks each entry once, however many postings the batch wrote.
    for function in LEDGER_FUNCTIONS:
        op.execute(function)
    op.execute(
        "CREATE TRIGGER postings_balanced AFTER INSERT ON postings "
        "REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT "
        "EXECUTE FUNCTION sir_postings_balanced()"
    )
    # The ledger is append-only: corrections are new entries, never edits.
    for table in ("postings", "journal_entries"):
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION sir_ledger_append_only()"
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS postings_balanced ON postings")
    op.execute("DROP TRIGGER IF EXISTS postings_append_only ON postings")
    op.execute("DROP TRIGGER IF EXISTS journal_entries_append_only ON journal_entries")
    op.execute("DROP FUNCTION IF EXISTS sir_postings_balanced()")
    op.execute("DROP FUNCTION IF EXISTS sir_ledger_append_only()")
    op.drop_index(
        "ix_lots_vesting",
        table_name="lots",
        postgresql_where=sa.text("remaining > 0 AND vests_at IS NOT NULL"),
    )
    op.drop_index(
        "ix_lots_open_by_account", table_name="lots", postgresql_where=sa.text("remaining > 0")
    )
    op.drop_index(
        "ix_lots_expiring",
        table_name="lots",
        postgresql_where=sa.text("remaining > 0 AND expires_at IS NOT NULL"),
    )
    op.drop_table("lots")
    op.drop_index(op.f("ix_webhook_attempts_delivery_id"), table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_table("reversals")
    op.drop_index(op.f("ix_postings_partner_id_environment_created_at"), table_name="postings")
    op.drop_index(op.f("ix_postings_entry_id"), table_name="postings")
    op.drop_index(op.f("ix_postings_account_id"), table_name="postings")
    op.drop_table("postings")
    op.drop_table("campaign_user_spend")
    op.drop_index(
        "ix_webhook_deliveries_due",
        table_name="webhook_deliveries",
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.drop_table("webhook_deliveries")
    op.drop_table("token_pool_requests")
    op.drop_index(
        "uq_ledger_accounts_user_wallet",
        table_name="ledger_accounts",
        postgresql_where=sa.text("partner_user_id IS NOT NULL"),
    )
    op.drop_index(
        "uq_ledger_accounts_singleton",
        table_name="ledger_accounts",
        postgresql_where=sa.text(
            "kind IN ('ISSUANCE', 'RESERVE', 'SINK_EXPIRED', 'SINK_REDEEMED')"
        ),
    )
    op.drop_index(
        "uq_ledger_accounts_pool",
        table_name="ledger_accounts",
        postgresql_where=sa.text("pool_id IS NOT NULL"),
    )
    op.drop_index(
        "uq_ledger_accounts_org_wallet",
        table_name="ledger_accounts",
        postgresql_where=sa.text("organization_id IS NOT NULL"),
    )
    op.drop_table("ledger_accounts")
    op.drop_table("campaigns")
    op.drop_index(op.f("ix_actions_partner_id_environment_created_at"), table_name="actions")
    op.drop_table("actions")
    op.drop_table("action_batch_items")
    op.drop_table("webhook_endpoints")
    op.drop_index(
        "uq_token_pools_one_default",
        table_name="token_pools",
        postgresql_where=sa.text("is_default"),
    )
    op.drop_table("token_pools")
    op.drop_index("uq_portal_users_lower_email", table_name="portal_users")
    op.drop_table("portal_users")
    op.drop_index(op.f("ix_pool_refills_pool_id_refill_day"), table_name="pool_refills")
    op.drop_table("pool_refills")
    op.drop_table("partner_users")
    op.drop_index(
        "ix_outbox_events_pending",
        table_name="outbox_events",
        postgresql_where=sa.text("relayed_at IS NULL"),
    )
    op.drop_table("outbox_events")
    op.drop_index(
        op.f("ix_journal_entries_action_id"),
        table_name="journal_entries",
        postgresql_where=sa.text("action_id IS NOT NULL"),
    )
    op.drop_table("journal_entries")
    op.drop_table("donations")
    op.drop_index(op.f("ix_api_keys_partner_id_environment"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("action_batches")
    op.drop_table("partners")
    op.drop_table("organizations")
    op.drop_index(op.f("ix_audit_log_created_at"), table_name="audit_log")
    op.drop_table("audit_log")
    # ### end Alembic commands ###
