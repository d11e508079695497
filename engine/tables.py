"""The data model: SQLAlchemy Core tables, which are our repository (no ORM, no abstract repos).

Every partner-owned row carries `partner_id` and `environment`, and the ledger's composite
foreign keys make PostgreSQL itself refuse a posting whose account or entry belongs to another
partner or environment. The migrations in `ops/migrations` create exactly these tables plus the
triggers that enforce the ledger's invariants; tests never call `create_all`.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ENVIRONMENTS = ("sandbox", "production")
ACCOUNT_KINDS = (
    "ISSUANCE",  # where allocations come from; its balance is minus everything minted
    "POOL",
    "RESERVE",  # the partner's auto-refill reserve
    "WALLET_AVAILABLE",
    "WALLET_LOCKED",  # credited tokens waiting for their vesting date
    "SINK_EXPIRED",
    "SINK_REDEEMED",
)


def _id(name: str = "id") -> Column:
    return Column(name, String(24), primary_key=True)


def _created() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def _updated() -> Column:
    return Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def _scope(table: str) -> list:
    """partner_id + environment, the pair every partner-owned query filters on."""
    return [
        Column("partner_id", String(24), ForeignKey("partners.id"), nullable=False),
        Column("environment", String(10), nullable=False),
        CheckConstraint("environment IN ('sandbox', 'production')", name="environment"),
    ]


# -- partners and credentials -------------------------------------------------------------------

partners = Table(
    "partners",
    metadata,
    _id(),
    Column("slug", String(64), nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("legal_entity", Text),
    Column("contact_email", Text),
    Column("status", String(20), nullable=False, server_default="PENDING_APPROVAL"),
    Column("tier", String(20), nullable=False, server_default="STANDARD"),
    Column("enabled_features", ARRAY(Text), nullable=False, server_default="{ACTIONS}"),
    Column("integration_model", String(10), nullable=False, server_default="SERVER"),
    Column("ip_allowlist", ARRAY(Text), nullable=False, server_default="{}"),
    Column("action_types", ARRAY(Text), nullable=False, server_default="{}"),
    Column("stakeholder_types", ARRAY(Text), nullable=False, server_default="{}"),
    Column(
        "tip_config",
        JSONB,
        nullable=False,
        server_default=text('\'{"enabled": false, "defaultPercent": 0}\'::jsonb'),
    ),
    Column("rate_limit_override", JSONB),
    _created(),
    _updated(),
    CheckConstraint(
        "status IN ('PENDING_APPROVAL', 'ACTIVE', 'SUSPENDED', 'DEACTIVATED')", name="status"
    ),
    CheckConstraint("tier IN ('STANDARD', 'PROFESSIONAL', 'ENTERPRISE')", name="tier"),
    CheckConstraint("integration_model IN ('SERVER', 'WIDGET', 'BOTH')", name="integration_model"),
)

api_keys = Table(
    "api_keys",
    metadata,
    _id(),
    *_scope("api_keys"),
    Column("name", Text, nullable=False),
    Column("public_key", String(80), nullable=False, unique=True),
    # Keyed hash (HMAC-SHA256 with the server pepper): looked up on every request, so not slow.
    Column("secret_key_hash", LargeBinary, nullable=False, unique=True),
    Column("secret_key_last4", String(4), nullable=False),
    # The HMAC secret must be recoverable to verify signatures: encrypted under SIR_MASTER_KEY.
    Column("hmac_secret_enc", LargeBinary, nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("ip_allowlist", ARRAY(Text)),
    Column("is_active", Boolean, nullable=False, server_default=text("true")),
    Column("revoked_at", DateTime(timezone=True)),
    Column("rotated_from_id", String(24), ForeignKey("api_keys.id")),
    Column("expiry_alerts_sent", ARRAY(SmallInteger), nullable=False, server_default="{}"),
    Column("created_by", Text),
    _created(),
    Index(None, "partner_id", "environment"),
)

portal_users = Table(
    "portal_users",
    metadata,
    _id(),
    Column("email", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("partner_id", String(24), ForeignKey("partners.id")),
    _created(),
    Index("uq_portal_users_lower_email", text("lower(email)"), unique=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target_type", Text, nullable=False),
    Column("target_id", Text),
    Column("before", JSONB),
    Column("after", JSONB),
    _created(),
    Index(None, "created_at"),
)

# -- directory ----------------------------------------------------------------------------------

organizations = Table(
    "organizations",
    metadata,
    _id(),
    Column("slug", String(128), nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("ein", String(20)),
    Column("logo_url", Text),
    Column("status", String(20), nullable=False, server_default="ACTIVE"),
    _created(),
    _updated(),
    CheckConstraint("status IN ('ACTIVE', 'INACTIVE')", name="status"),
)

# -- people the partner rewards -------------------------------------------------------------------

partner_users = Table(
    "partner_users",
    metadata,
    _id(),
    *_scope("partner_users"),
    Column("external_user_id", String(255), nullable=False),
    Column("email", Text),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _created(),
    _updated(),
    UniqueConstraint("partner_id", "environment", "external_user_id"),
    UniqueConstraint("id", "partner_id", "environment", name="uq_partner_users_scoped_id"),
)

# -- token pools and the ledger ---------------------------------------------------------------------

token_pools = Table(
    "token_pools",
    metadata,
    _id(),
    *_scope("token_pools"),
    Column("name", Text, nullable=False),
    Column("is_default", Boolean, nullable=False, server_default=text("false")),
    Column("status", String(12), nullable=False, server_default="ACTIVE"),
    Column("low_balance_threshold", BigInteger, nullable=False, server_default="0"),
    Column("vesting_days", Integer),
    Column("expiration_days", Integer),
    Column("redemption", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column(
        "auto_refill", JSONB, nullable=False, server_default=text("'{\"enabled\": false}'::jsonb")
    ),
    # Set when token_pool.low_balance is recorded, cleared once the balance is back at/above
    # the threshold (migration 0003; a trigger on outbox_events sets it for submit's alerts).
    Column("low_balance_alerted_at", DateTime(timezone=True)),
    _created(),
    _updated(),
    CheckConstraint("status IN ('ACTIVE', 'EXHAUSTED', 'CLOSED')", name="status"),
    CheckConstraint("vesting_days IS NULL OR vesting_days >= 0", name="vesting_days"),
    CheckConstraint("expiration_days IS NULL OR expiration_days > 0", name="expiration_days"),
    CheckConstraint(
        "vesting_days IS NULL OR expiration_days IS NULL OR expiration_days > vesting_days",
        name="expiration_after_vesting",
    ),
    UniqueConstraint("id", "partner_id", "environment", name="uq_token_pools_scoped_id"),
    Index(
        "uq_token_pools_one_default",
        "partner_id",
        "environment",
        unique=True,
        postgresql_where=text("is_default"),
    ),
)

ledger_accounts = Table(
    "ledger_accounts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    *_scope("ledger_accounts"),
    Column("kind", String(20), nullable=False),
    Column("pool_id", String(24)),
    Column("partner_user_id", String(24)),
    Column("organization_id", String(24), ForeignKey("organizations.id")),
    # Cache of the sum of this account's postings, updated in the posting's own transaction.
    Column("balance", BigInteger, nullable=False, server_default="0"),
    _created(),
    CheckConstraint(
        "kind IN ('ISSUANCE', 'POOL', 'RESERVE', 'WALLET_AVAILABLE', 'WALLET_LOCKED', "
        "'SINK_EXPIRED', 'SINK_REDEEMED')",
        name="kind",
    ),
    # Only a wallet's available balance may go negative (a debt left by a reversal); the
    # issuance account is the contra account and only ever goes down.
    CheckConstraint(
        "CASE kind WHEN 'ISSUANCE' THEN balance <= 0 WHEN 'WALLET_AVAILABLE' THEN true "
        "ELSE balance >= 0 END",
        name="balance_sign",
    ),
    CheckConstraint(
        "(kind = 'POOL') = (pool_id IS NOT NULL)"
        " AND (kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED'))"
        " = (partner_user_id IS NOT NULL OR organization_id IS NOT NULL)"
        " AND NOT (partner_user_id IS NOT NULL AND organization_id IS NOT NULL)",
        name="owner",
    ),
    ForeignKeyConstraint(
        ["pool_id", "partner_id", "environment"],
        ["token_pools.id", "token_pools.partner_id", "token_pools.environment"],
        name="fk_ledger_accounts_pool_scoped",
    ),
    ForeignKeyConstraint(
        ["partner_user_id", "partner_id", "environment"],
        ["partner_users.id", "partner_users.partner_id", "partner_users.environment"],
        name="fk_ledger_accounts_user_scoped",
    ),
    UniqueConstraint("id", "partner_id", "environment", name="uq_ledger_accounts_scoped_id"),
    Index(
        "uq_ledger_accounts_singleton",
        "partner_id",
        "environment",
        "kind",
        unique=True,
        postgresql_where=text("kind IN ('ISSUANCE', 'RESERVE', 'SINK_EXPIRED', 'SINK_REDEEMED')"),
    ),
    Index(
        "uq_ledger_accounts_pool",
        "pool_id",
        unique=True,
        postgresql_where=text("pool_id IS NOT NULL"),
    ),
    Index(
        "uq_ledger_accounts_user_wallet",
        "partner_user_id",
        "kind",
        unique=True,
        postgresql_where=text("partner_user_id IS NOT NULL"),
    ),
    Index(
        "uq_ledger_accounts_org_wallet",
        "partner_id",
        "environment",
        "organization_id",
        "kind",
        unique=True,
        postgresql_where=text("organization_id IS NOT NULL"),
    ),
)

JOURNAL_KINDS = (
    "ALLOCATION",
    "RESERVE_FUNDING",
    "DISTRIBUTION",
    "REVERSAL",
    "VESTING",
    "EXPIRATION",
    "REFILL",
    "REDEMPTION",
    "REFUND",
    "CORRECTION",
)

journal_entries = Table(
    "journal_entries",
    metadata,
    _id(),
    *_scope("journal_entries"),
    Column("kind", String(20), nullable=False),
    Column("action_id", String(24)),
    Column("reversal_id", String(24)),
    Column("order_id", String(24)),
    Column("memo", Text),
    _created(),
    CheckConstraint("kind IN (" + ", ".join(f"'{k}'" for k in JOURNAL_KINDS) + ")", name="kind"),
    UniqueConstraint("id", "partner_id", "environment", name="uq_journal_entries_scoped_id"),
    Index(None, "action_id", postgresql_where=text("action_id IS NOT NULL")),
)

# Transaction types as the partner sees them (GET /transactions).
POSTING_TYPES = (
    "CREDIT",
    "DEBIT",
    "REVERSAL",
    "VESTING",
    "EXPIRATION",
    "REFILL",
    "ALLOCATION",
    "REDEMPTION",
    "REFUND",
)

postings = Table(
    "postings",
    metadata,
    _id(),  # the partner-visible transaction id
    *_scope("postings"),
    Column("entry_id", String(24), nullable=False),
    Column("account_id", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("type", String(12), nullable=False),
    _created(),
    CheckConstraint("amount <> 0", name="nonzero"),
    CheckConstraint("type IN (" + ", ".join(f"'{t}'" for t in POSTING_TYPES) + ")", name="type"),
    ForeignKeyConstraint(
        ["entry_id", "partner_id", "environment"],
        ["journal_entries.id", "journal_entries.partner_id", "journal_entries.environment"],
        name="fk_postings_entry_scoped",
    ),
    ForeignKeyConstraint(
        ["account_id", "partner_id", "environment"],
        ["ledger_accounts.id", "ledger_accounts.partner_id", "ledger_accounts.environment"],
        name="fk_postings_account_scoped",
    ),
    Index(None, "entry_id"),
    Index(None, "account_id"),
    Index(None, "partner_id", "environment", "created_at"),
)

lots = Table(
    "lots",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    *_scope("lots"),
    # The wallet account that holds the lot now: WALLET_LOCKED until it vests, then AVAILABLE.
    Column("account_id", BigInteger, nullable=False),
    Column("posting_id", String(24), ForeignKey("postings.id"), nullable=False),
    Column("action_id", String(24)),
    Column("amount", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("vests_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
    _created(),
    # When the vesting sweep moved the lot to the available account (vests_at is kept).
    Column("vested_at", DateTime(timezone=True)),
    CheckConstraint("amount > 0 AND remaining >= 0 AND remaining <= amount", name="remaining"),
    CheckConstraint(
        "expires_at IS NULL OR vests_at IS NULL OR expires_at > vests_at", name="dates"
    ),
    ForeignKeyConstraint(
        ["account_id", "partner_id", "environment"],
        ["ledger_accounts.id", "ledger_accounts.partner_id", "ledger_accounts.environment"],
        name="fk_lots_account_scoped",
    ),
    Index(
        "ix_lots_open_by_account",
        "account_id",
        "expires_at",
        postgresql_where=text("remaining > 0"),
    ),
    Index(
        "ix_lots_vesting",
        "vests_at",
        postgresql_where=text("remaining > 0 AND vests_at IS NOT NULL"),
    ),
    Index(
        "ix_lots_expiring",
        "expires_at",
        postgresql_where=text("remaining > 0 AND expires_at IS NOT NULL"),
    ),
    # Lots still waiting to vest: what the vesting sweep claims (migration 0003).
    Index(
        "ix_lots_vest_due",
        "vests_at",
        postgresql_where=text("remaining > 0 AND vests_at IS NOT NULL AND vested_at IS NULL"),
    ),
)

token_pool_requests = Table(
    "token_pool_requests",
    metadata,
    _id(),
    *_scope("token_pool_requests"),
    Column("pool_id", String(24), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reason", Text),
    Column("status", String(10), nullable=False, server_default="PENDING"),
    Column("decided_by", Text),
    Column("decided_at", DateTime(timezone=True)),
    _created(),
    CheckConstraint("amount > 0", name="amount"),
    CheckConstraint("status IN ('PENDING', 'APPROVED', 'REJECTED')", name="status"),
    ForeignKeyConstraint(
        ["pool_id", "partner_id", "environment"],
        ["token_pools.id", "token_pools.partner_id", "token_pools.environment"],
    ),
)

refill_log = Table(
    "pool_refills",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    *_scope("pool_refills"),
    Column("pool_id", String(24), nullable=False),
    Column("entry_id", String(24), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("refill_day", DateTime(timezone=True), nullable=False),
    _created(),
    Index(None, "pool_id", "refill_day"),
)

# -- campaigns and actions ---------------------------------------------------------------------------

campaigns = Table(
    "campaigns",
    metadata,
    _id(),
    *_scope("campaigns"),
    Column("name", Text, nullable=False),
    Column("status", String(10), nullable=False, server_default="DRAFT"),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("action_types", ARRAY(Text), nullable=False, server_default="{}"),
    Column("multiplier", Numeric(24, 6), nullable=False, server_default="1"),
    Column("base_tokens", BigInteger, nullable=False, server_default="0"),
    Column("tiers", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("splits", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("starts_at", DateTime(timezone=True)),
    Column("ends_at", DateTime(timezone=True)),
    Column("days_of_week", ARRAY(Text)),
    Column("timezone", Text, nullable=False, server_default="UTC"),
    Column("budget_total", BigInteger),
    Column("budget_per_user", BigInteger),
    Column("spent_tokens", BigInteger, nullable=False, server_default="0"),
    Column("pool_id", String(24)),
    _created(),
    _updated(),
    CheckConstraint("status IN ('DRAFT', 'ACTIVE', 'PAUSED', 'ENDED')", name="status"),
    CheckConstraint("spent_tokens >= 0", name="spent_nonnegative"),
    CheckConstraint(
        "budget_total IS NULL OR spent_tokens <= budget_total", name="budget_never_over"
    ),
    ForeignKeyConstraint(
        ["pool_id", "partner_id", "environment"],
        ["token_pools.id", "token_pools.partner_id", "token_pools.environment"],
    ),
    UniqueConstraint("id", "partner_id", "environment", name="uq_campaigns_scoped_id"),
)

campaign_user_spend = Table(
    "campaign_user_spend",
    metadata,
    Column("campaign_id", String(24), ForeignKey("campaigns.id"), primary_key=True),
    Column("partner_user_id", String(24), ForeignKey("partner_users.id"), primary_key=True),
    Column("spent_tokens", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("spent_tokens >= 0", name="spent_nonnegative"),
)

action_batches = Table(
    "action_batches",
    metadata,
    _id(),
    *_scope("action_batches"),
    Column("status", String(12), nullable=False, server_default="PENDING"),
    Column("total", Integer, nullable=False),
    Column("succeeded", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    _created(),
    Column("completed_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('PENDING', 'PROCESSING', 'COMPLETED')", name="status"),
)

action_batch_items = Table(
    "action_batch_items",
    metadata,
    Column("batch_id", String(24), ForeignKey("action_batches.id"), primary_key=True),
    Column("index", Integer, primary_key=True),
    Column("idempotency_key", String(255), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("status", String(12), nullable=False, server_default="PENDING"),
    Column("action_id", String(24)),
    Column("error", JSONB),
    CheckConstraint("status IN ('PENDING', 'COMPLETED', 'FAILED')", name="status"),
)

actions = Table(
    "actions",
    metadata,
    _id(),
    *_scope("actions"),
    Column("idempotency_key", String(255), nullable=False),
    # sha256 of the canonical parsed body: "same body" means equal after parsing.
    Column("request_hash", LargeBinary, nullable=False),
    Column("status", String(20), nullable=False, server_default="COMPLETED"),
    Column("action_type", String(64), nullable=False),
    Column("amount", Numeric(38, 12), nullable=False),
    Column("currency", String(3)),
    Column("campaign_id", String(24)),
    Column("pool_id", String(24)),
    Column("tokens_distributed", BigInteger, nullable=False, server_default="0"),
    Column("tokens_reversed", BigInteger, nullable=False, server_default="0"),
    Column("occurred_at", DateTime(timezone=True)),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("response", JSONB, nullable=False),
    Column("batch_id", String(24), ForeignKey("action_batches.id")),
    _created(),
    CheckConstraint("status IN ('COMPLETED', 'PARTIALLY_REVERSED', 'REVERSED')", name="status"),
    CheckConstraint(
        "tokens_reversed >= 0 AND tokens_reversed <= tokens_distributed", name="reversed_bounds"
    ),
    UniqueConstraint("partner_id", "environment", "idempotency_key"),
    UniqueConstraint("id", "partner_id", "environment", name="uq_actions_scoped_id"),
    Index(None, "partner_id", "environment", "created_at"),
)

reversals = Table(
    "reversals",
    metadata,
    _id(),
    *_scope("reversals"),
    Column("action_id", String(24), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("request_hash", LargeBinary, nullable=False),
    Column("status", String(20), nullable=False),
    Column("amount", Numeric(38, 12)),
    Column("tokens_reversed", BigInteger, nullable=False),
    Column("reason", Text),
    Column("response", JSONB, nullable=False),
    _created(),
    CheckConstraint("status IN ('REVERSED', 'PARTIALLY_REVERSED')", name="status"),
    ForeignKeyConstraint(
        ["action_id", "partner_id", "environment"],
        ["actions.id", "actions.partner_id", "actions.environment"],
    ),
    UniqueConstraint("partner_id", "environment", "idempotency_key"),
)

# -- events and webhooks --------------------------------------------------------------------------

outbox_events = Table(
    "outbox_events",
    metadata,
    Column("id", String(32), primary_key=True),  # evt_<24 hex>
    *_scope("outbox_events"),
    Column("type", String(64), nullable=False),
    Column("payload", JSONB, nullable=False),
    _created(),
    # Set once the relay has fanned the event out to deliveries; NULL rows are the relay's work.
    Column("relayed_at", DateTime(timezone=True)),
    Index("ix_outbox_events_pending", "created_at", postgresql_where=text("relayed_at IS NULL")),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    _id(),
    *_scope("webhook_endpoints"),
    Column("url", Text, nullable=False),
    Column("description", Text),
    Column("event_types", ARRAY(Text), nullable=False, server_default="{}"),
    Column("receive_all_events", Boolean, nullable=False, server_default=text("false")),
    Column("secret_enc", LargeBinary, nullable=False),
    Column("previous_secret_enc", LargeBinary),
    Column("previous_secret_expires_at", DateTime(timezone=True)),
    Column("headers_enc", LargeBinary),
    Column("is_active", Boolean, nullable=False, server_default=text("true")),
    Column("disabled_reason", Text),
    _created(),
    _updated(),
    UniqueConstraint("id", "partner_id", "environment", name="uq_webhook_endpoints_scoped_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    _id(),
    *_scope("webhook_deliveries"),
    Column("event_id", String(32), ForeignKey("outbox_events.id"), nullable=False),
    Column("endpoint_id", String(24), nullable=False),
    Column("status", String(12), nullable=False, server_default="PENDING"),
    Column("attempt_count", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("last_status_code", Integer),
    _created(),
    _updated(),
    # When the pick-up tick handed the delivery to a queue message; cleared as the attempt starts.
    Column("queued_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('PENDING', 'SUCCEEDED', 'FAILED')", name="status"),
    ForeignKeyConstraint(
        ["endpoint_id", "partner_id", "environment"],
        ["webhook_endpoints.id", "webhook_endpoints.partner_id", "webhook_endpoints.environment"],
    ),
    UniqueConstraint("event_id", "endpoint_id"),
    Index(
        "ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'PENDING'")
    ),
    Index(None, "endpoint_id", "created_at"),  # an endpoint's deliveries, newest first
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("delivery_id", String(24), ForeignKey("webhook_deliveries.id"), nullable=False),
    Column("attempted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("status_code", Integer),
    Column("latency_ms", Integer),
    Column("error", Text),
    Column("response_excerpt", Text),  # the first 500 characters the receiver answered
    Index(None, "delivery_id"),
    Index(None, "attempted_at"),  # the dashboard's hourly fold (migration 0007)
)

# -- donations ------------------------------------------------------------------------------------------

donations = Table(
    "donations",
    metadata,
    _id(),  # partnerDonationId
    *_scope("donations"),
    Column("organization_id", String(24), ForeignKey("organizations.id"), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("frequency", String(10), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("donor_email", Text, nullable=False),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("tip_amount_cents", BigInteger),
    Column("referral_code", Text),
    Column("partner_user_external_id", String(255)),
    Column("provider_reference", Text),
    Column("status", String(10), nullable=False, server_default="CREATED"),
    Column("action_id", String(24)),
    Column("completed_at", DateTime(timezone=True)),
    _created(),
    # migration 0006 (engine.donations): who completes it, the tip percent, the DONOR's reward
    Column("checkout", String(16)),
    Column("tip_percent", Numeric(5, 2)),
    Column("reward_tokens", BigInteger),
    Column("reward_error", Text),
    _updated(),
    CheckConstraint(
        "checkout IS NULL OR checkout IN ('every.org', 'stripe', 'test')", name="checkout"
    ),
    Index(None, "partner_id", "environment", "created_at"),
    CheckConstraint("amount_cents > 0", name="amount"),
    CheckConstraint("status IN ('CREATED', 'COMPLETED', 'FAILED')", name="status"),
    CheckConstraint("frequency IN ('once', 'monthly')", name="frequency"),
)

# -- marketplace (migration 0005) ------------------------------------------------------------------

catalog_products = Table(
    "catalog_products",
    metadata,
    _id(),
    Column("sku", String(128), unique=True),  # the operator's own key; CSV import upserts by it
    Column("name", Text, nullable=False),
    Column("category", String(64), nullable=False),
    Column("country", String(2), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("image_url", Text),
    Column("delivery_type", String(16), nullable=False),
    Column("validity", Text),
    # [{"faceValue": "25.00", "tokenPriceMicro": int, "isActive": bool}]
    Column("denominations", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("is_active", Boolean, nullable=False, server_default=text("true")),
    _created(),
    _updated(),
    CheckConstraint("delivery_type IN ('code', 'code_with_pin', 'link')", name="delivery_type"),
    Index("ix_catalog_products_listing", "created_at", "id"),
)

ORDER_STATUSES = (
    "PENDING",
    "PROCESSING",
    "DELIVERED",
    "PARTIALLY_DELIVERED",
    "FAILED",
    "CANCELLED",
)

orders = Table(
    "orders",
    metadata,
    _id(),
    *_scope("orders"),
    Column("reference", String(32), nullable=False, unique=True),
    Column("partner_user_id", String(24), nullable=False),
    Column("external_user_id", String(255), nullable=False),
    Column("product_id", String(24), ForeignKey("catalog_products.id"), nullable=False),
    Column("face_value", Numeric(12, 2), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", BigInteger, nullable=False),  # micro-tokens per voucher
    Column("tokens_debited", BigInteger, nullable=False),
    Column("tokens_refunded", BigInteger, nullable=False, server_default="0"),
    Column("delivered_quantity", Integer, nullable=False, server_default="0"),
    Column("status", String(20), nullable=False),
    Column("vendor", String(32)),
    # When the vendor path looks at the order next (a claim lease while PROCESSING); NULL: done.
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("failure_reason", Text),
    Column("cancelled_by", Text),
    _created(),
    _updated(),
    Column("completed_at", DateTime(timezone=True)),
    CheckConstraint("quantity BETWEEN 1 AND 100", name="quantity"),
    CheckConstraint("unit_price > 0", name="unit_price"),
    CheckConstraint(
        "status IN (" + ", ".join(f"'{s}'" for s in ORDER_STATUSES) + ")", name="status"
    ),
    CheckConstraint(
        "tokens_debited = unit_price * quantity AND tokens_refunded BETWEEN 0 AND tokens_debited "
        "AND delivered_quantity BETWEEN 0 AND quantity",
        name="amounts",
    ),
    UniqueConstraint("id", "partner_id", "environment", name="uq_orders_scoped_id"),
    ForeignKeyConstraint(
        ["partner_user_id", "partner_id", "environment"],
        ["partner_users.id", "partner_users.partner_id", "partner_users.environment"],
        name="fk_orders_user_scoped",
    ),
    Index("ix_orders_listing", "partner_id", "environment", "created_at", "id"),
    Index("ix_orders_due", "next_attempt_at", postgresql_where=text("next_attempt_at IS NOT NULL")),
)

# Idempotency-Key of order creation, kept 24 hours (contract section 10).
order_keys = Table(
    "order_keys",
    metadata,
    Column("partner_id", String(24), ForeignKey("partners.id"), primary_key=True),
    Column("environment", String(10), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("request_hash", LargeBinary, nullable=False),
    Column("order_id", String(24), nullable=False),
    Column("response", JSONB, nullable=False),
    _created(),
)

# Which lots paid for an order, so a refund returns the very same tokens (expiry dates included).
order_lot_takes = Table(
    "order_lot_takes",
    metadata,
    Column("order_id", String(24), ForeignKey("orders.id"), primary_key=True),
    Column("lot_id", BigInteger, ForeignKey("lots.id"), primary_key=True),
    Column("seq", SmallInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="amount"),
)

vouchers = Table(
    "vouchers",
    metadata,
    _id(),
    Column("environment", String(10), nullable=False),
    Column("product_id", String(24), ForeignKey("catalog_products.id"), nullable=False),
    Column("face_value", Numeric(12, 2), nullable=False),
    Column("source", String(10), nullable=False),  # INVENTORY (loaded by operators) or VENDOR
    Column("vendor", String(32)),
    Column("code_hash", LargeBinary, nullable=False),  # keyed hash: a code is loaded once
    Column("code_enc", LargeBinary, nullable=False),
    Column("pin_enc", LargeBinary),
    Column("claim_url_enc", LargeBinary),
    Column("expires_at", DateTime(timezone=True)),
    Column("status", String(10), nullable=False, server_default="AVAILABLE"),
    Column("partner_id", String(24), ForeignKey("partners.id")),
    Column("order_id", String(24), ForeignKey("orders.id")),
    Column("issued_at", DateTime(timezone=True)),
    _created(),
    CheckConstraint("face_value > 0", name="face_value"),
    CheckConstraint("source IN ('INVENTORY', 'VENDOR')", name="source"),
    CheckConstraint("status IN ('AVAILABLE', 'ISSUED')", name="status"),
    CheckConstraint(
        "(status = 'ISSUED') = (order_id IS NOT NULL) AND (order_id IS NULL) = (issued_at IS NULL)",
        name="issued",
    ),
    UniqueConstraint("product_id", "code_hash", name="uq_vouchers_code"),
)

# The built-in sandbox vendor: its settings (one row) and its own records of what it allocated.
sandbox_vendor = Table(
    "sandbox_vendor",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("mode", String(10), nullable=False, server_default="instant"),
    Column("delay_seconds", Integer, nullable=False, server_default="0"),
    Column("drift_next", Integer, nullable=False, server_default="0"),
    _updated(),
)

vendor_orders = Table(
    "vendor_orders",
    metadata,
    Column("vendor", String(32), primary_key=True),
    Column("request_id", String(64), primary_key=True),  # our order id: the vendor dedupes on it
    *_scope("vendor_orders"),
    Column("product_id", String(24), nullable=False),
    Column("face_value", Numeric(12, 2), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("status", String(12), nullable=False),
    Column("ready_at", DateTime(timezone=True), nullable=False),
    Column("failure_reason", Text),
    # What the vendor's books say it allocated (differs from the request when told to drift).
    Column("recorded_face_value", Numeric(12, 2), nullable=False),
    Column("recorded_quantity", Integer, nullable=False),
    _created(),
)

reconciliation_reports = Table(
    "reconciliation_reports",
    metadata,
    Column("partner_id", String(24), ForeignKey("partners.id"), primary_key=True),
    Column("environment", String(10), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("report", JSONB, nullable=False),
    Column("generated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

reconciliation_drifts = Table(
    "reconciliation_drifts",
    metadata,
    _id(),
    *_scope("reconciliation_drifts"),
    Column("day", Date, nullable=False),
    Column("order_id", String(24), nullable=False),
    Column("vendor", String(32), nullable=False),
    Column("product_id", String(24)),
    Column("kind", String(10), nullable=False),  # DRIFTED (records differ) or UNMATCHED
    Column("our_allocation", JSONB),
    Column("vendor_record", JSONB),
    Column("detected_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("resolution", String(10), nullable=False, server_default="pending"),
    Column("resolution_note", Text),
    Column("resolved_by", Text),
    Column("resolved_at", DateTime(timezone=True)),
    UniqueConstraint(
        "partner_id",
        "environment",
        "day",
        "order_id",
        "vendor",
        name="uq_reconciliation_drifts_finding",
    ),
)

# -- dashboard roll-ups (migration 0007; engine.rollups writes them, engine.dashboard reads) -------

dashboard_days = Table(
    "dashboard_days",
    metadata,
    Column("partner_id", String(24), ForeignKey("partners.id"), primary_key=True),
    Column("environment", String(10), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("actions", Integer, nullable=False, server_default="0"),
    Column("tokens_distributed", BigInteger, nullable=False, server_default="0"),
    Column("tokens_reversed", BigInteger, nullable=False, server_default="0"),
    Column("active_users", Integer, nullable=False, server_default="0"),
)

dashboard_user_days = Table(
    "dashboard_user_days",
    metadata,
    Column("partner_id", String(24), ForeignKey("partners.id"), primary_key=True),
    Column("environment", String(10), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("partner_user_id", String(24), primary_key=True),
    Column("tokens", BigInteger, nullable=False, server_default="0"),
    Column("tokens_reversed", BigInteger, nullable=False, server_default="0"),
    Column("actions", Integer, nullable=False, server_default="0"),
)

dashboard_rollup_state = Table(
    "dashboard_rollup_state",
    metadata,
    Column("id", SmallInteger, primary_key=True, server_default="1"),
    Column("closed_until", DateTime(timezone=True)),
    # Bumped whenever a complete day is (re)computed: what readers cache about complete days.
    Column("days_version", BigInteger, nullable=False, server_default="0"),
    Column("webhooks_until", DateTime(timezone=True)),
    _updated(),
)

dashboard_webhook_hours = Table(
    "dashboard_webhook_hours",
    metadata,
    Column("partner_id", String(24), ForeignKey("partners.id"), primary_key=True),
    Column("environment", String(10), primary_key=True),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("endpoint_id", String(24), primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("succeeded", Integer, nullable=False),
    # An exact latency histogram: distinct milliseconds (ascending) and the attempts of each.
    Column("latency_values", ARRAY(Integer), nullable=False),
    Column("latency_counts", ARRAY(BigInteger), nullable=False),
    Column("last_status_code", Integer),
    Column("last_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_failure_at", DateTime(timezone=True)),
)

api_usage_days = Table(
    "api_usage_days",
    metadata,
    Column("partner_id", String(24), ForeignKey("partners.id"), primary_key=True),
    Column("environment", String(10), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("route_class", String(64), primary_key=True),
    Column("status", SmallInteger, primary_key=True),
    Column("requests", BigInteger, nullable=False),
)

api_usage_folds = Table(
    "api_usage_folds",
    metadata,
    Column("fold_id", String(64), primary_key=True),
    Column("folded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
