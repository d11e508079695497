"""marketplace: catalog, voucher inventory, orders, the sandbox vendor, reconciliation

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 11:00:00

Additive only (new tables), so the previous release of the code keeps working.

- `catalog_products`: global (operators manage one catalog; partners with MARKETPLACE read it).
  Denominations live on the product as JSONB: `[{"faceValue": "25.00", "tokenPriceMicro": int,
  "isActive": bool}]` (token prices in micro-tokens, never floats).
- `vouchers`: inventory loaded by operators and codes issued by vendors, one table. Codes, PINs
  and claim URLs are encrypted (Fernet under the master key); `code_hash` is a keyed hash so
  the same code is never loaded twice. Allocation is `status AVAILABLE -> ISSUED` under
  `FOR UPDATE SKIP LOCKED`, so a voucher is issued exactly once however many orders race.
  Inventory belongs to one environment: sandbox orders never receive production codes.
- `orders` + `order_keys` (Idempotency-Key, kept 24 h) + `order_lot_takes` (which lots paid for
  the order, so a refund gives the very same tokens back, expiry dates included).
- `vendor_orders` / `sandbox_vendor`: the built-in sandbox vendor's own records and settings
  (what reconciliation compares our allocations with).
- `reconciliation_reports` / `reconciliation_drifts`: the daily job's results.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SCOPE = (
    "partner_id varchar(24) NOT NULL REFERENCES partners(id), "
    "environment varchar(10) NOT NULL CHECK (environment IN ('sandbox', 'production'))"
)

_STATEMENTS = [
    """
    CREATE TABLE catalog_products (
        id varchar(24) PRIMARY KEY,
        sku varchar(128) UNIQUE,
        name text NOT NULL,
        category varchar(64) NOT NULL,
        country varchar(2) NOT NULL,
        currency varchar(3) NOT NULL,
        image_url text,
        delivery_type varchar(16) NOT NULL
            CONSTRAINT ck_catalog_products_delivery_type
            CHECK (delivery_type IN ('code', 'code_with_pin', 'link')),
        validity text,
        denominations jsonb NOT NULL DEFAULT '[]'::jsonb,
        is_active boolean NOT NULL DEFAULT true,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX ix_catalog_products_listing ON catalog_products (created_at, id)",
    f"""
    CREATE TABLE orders (
        id varchar(24) PRIMARY KEY,
        {_SCOPE},
        reference varchar(32) NOT NULL UNIQUE,
        partner_user_id varchar(24) NOT NULL,
        external_user_id varchar(255) NOT NULL,
        product_id varchar(24) NOT NULL REFERENCES catalog_products(id),
        face_value numeric(12, 2) NOT NULL,
        quantity integer NOT NULL CONSTRAINT ck_orders_quantity CHECK (quantity BETWEEN 1 AND 100),
        unit_price bigint NOT NULL CONSTRAINT ck_orders_unit_price CHECK (unit_price > 0),
        tokens_debited bigint NOT NULL,
        tokens_refunded bigint NOT NULL DEFAULT 0,
        delivered_quantity integer NOT NULL DEFAULT 0,
        status varchar(20) NOT NULL CONSTRAINT ck_orders_status CHECK (status IN
            ('PENDING', 'PROCESSING', 'DELIVERED', 'PARTIALLY_DELIVERED', 'FAILED', 'CANCELLED')),
        vendor varchar(32),
        next_attempt_at timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        failure_reason text,
        cancelled_by text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        completed_at timestamptz,
        CONSTRAINT ck_orders_amounts CHECK (tokens_debited = unit_price * quantity
            AND tokens_refunded BETWEEN 0 AND tokens_debited
            AND delivered_quantity BETWEEN 0 AND quantity),
        CONSTRAINT uq_orders_scoped_id UNIQUE (id, partner_id, environment),
        CONSTRAINT fk_orders_user_scoped FOREIGN KEY (partner_user_id, partner_id, environment)
            REFERENCES partner_users (id, partner_id, environment)
    )
    """,
    "CREATE INDEX ix_orders_listing ON orders (partner_id, environment, created_at, id)",
    "CREATE INDEX ix_orders_due ON orders (next_attempt_at) WHERE next_attempt_at IS NOT NULL",
    f"""
    CREATE TABLE order_keys (
        {_SCOPE},
        idempotency_key varchar(255) NOT NULL,
        request_hash bytea NOT NULL,
        order_id varchar(24) NOT NULL,
        response jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (partner_id, environment, idempotency_key)
    )
    """,
    """
    CREATE TABLE order_lot_takes (
        order_id varchar(24) NOT NULL REFERENCES orders(id),
        lot_id bigint NOT NULL REFERENCES lots(id),
        seq smallint NOT NULL,
        amount bigint NOT NULL CONSTRAINT ck_order_lot_takes_amount CHECK (amount > 0),
        PRIMARY KEY (order_id, lot_id)
    )
    """,
    """
    CREATE TABLE vouchers (
        id varchar(24) PRIMARY KEY,
        environment varchar(10) NOT NULL CHECK (environment IN ('sandbox', 'production')),
        product_id varchar(24) NOT NULL REFERENCES catalog_products(id),
        face_value numeric(12, 2) NOT NULL CONSTRAINT ck_vouchers_face_value CHECK (face_value > 0),
        source varchar(10) NOT NULL CONSTRAINT ck_vouchers_source
            CHECK (source IN ('INVENTORY', 'VENDOR')),
        vendor varchar(32),
        code_hash bytea NOT NULL,
        code_enc bytea NOT NULL,
        pin_enc bytea,
        claim_url_enc bytea,
        expires_at timestamptz,
        status varchar(10) NOT NULL DEFAULT 'AVAILABLE'
            CONSTRAINT ck_vouchers_status CHECK (status IN ('AVAILABLE', 'ISSUED')),
        partner_id varchar(24) REFERENCES partners(id),
        order_id varchar(24) REFERENCES orders(id),
        issued_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT ck_vouchers_issued CHECK ((status = 'ISSUED') = (order_id IS NOT NULL)
            AND (order_id IS NULL) = (issued_at IS NULL)),
        CONSTRAINT uq_vouchers_code UNIQUE (product_id, code_hash)
    )
    """,
    "CREATE INDEX ix_vouchers_available ON vouchers (product_id, face_value, environment, "
    "expires_at) WHERE status = 'AVAILABLE'",
    "CREATE INDEX ix_vouchers_order ON vouchers (order_id) WHERE order_id IS NOT NULL",
    "CREATE INDEX ix_vouchers_issued ON vouchers (partner_id, environment, issued_at) "
    "WHERE status = 'ISSUED'",
    """
    CREATE TABLE sandbox_vendor (
        id smallint PRIMARY KEY CONSTRAINT ck_sandbox_vendor_one CHECK (id = 1),
        mode varchar(10) NOT NULL DEFAULT 'instant'
            CONSTRAINT ck_sandbox_vendor_mode CHECK (mode IN ('instant', 'delayed', 'fail')),
        delay_seconds integer NOT NULL DEFAULT 0 CHECK (delay_seconds >= 0),
        drift_next integer NOT NULL DEFAULT 0 CHECK (drift_next >= 0),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "INSERT INTO sandbox_vendor (id) VALUES (1)",
    f"""
    CREATE TABLE vendor_orders (
        vendor varchar(32) NOT NULL,
        request_id varchar(64) NOT NULL,
        {_SCOPE},
        product_id varchar(24) NOT NULL,
        face_value numeric(12, 2) NOT NULL,
        quantity integer NOT NULL,
        status varchar(12) NOT NULL CONSTRAINT ck_vendor_orders_status
            CHECK (status IN ('PENDING', 'FULFILLED', 'FAILED', 'CANCELLED')),
        ready_at timestamptz NOT NULL,
        failure_reason text,
        recorded_face_value numeric(12, 2) NOT NULL,
        recorded_quantity integer NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (vendor, request_id)
    )
    """,
    "CREATE INDEX ix_vendor_orders_scope ON vendor_orders (partner_id, environment, ready_at)",
    f"""
    CREATE TABLE reconciliation_reports (
        {_SCOPE},
        day date NOT NULL,
        report jsonb NOT NULL,
        generated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (partner_id, environment, day)
    )
    """,
    f"""
    CREATE TABLE reconciliation_drifts (
        id varchar(24) PRIMARY KEY,
        {_SCOPE},
        day date NOT NULL,
        order_id varchar(24) NOT NULL,
        vendor varchar(32) NOT NULL,
        product_id varchar(24),
        kind varchar(10) NOT NULL CONSTRAINT ck_reconciliation_drifts_kind
            CHECK (kind IN ('DRIFTED', 'UNMATCHED')),
        our_allocation jsonb,
        vendor_record jsonb,
        detected_at timestamptz NOT NULL DEFAULT now(),
        resolution varchar(10) NOT NULL DEFAULT 'pending'
            CONSTRAINT ck_reconciliation_drifts_resolution
            CHECK (resolution IN ('pending', 'resolved', 'escalated')),
        resolution_note text,
        resolved_by text,
        resolved_at timestamptz,
        CONSTRAINT uq_reconciliation_drifts_finding
            UNIQUE (partner_id, environment, day, order_id, vendor)
    )
    """,
    "CREATE INDEX ix_reconciliation_drifts_open ON reconciliation_drifts (detected_at, id) "
    "WHERE resolution <> 'resolved'",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in (
        "reconciliation_drifts",
        "reconciliation_reports",
        "vendor_orders",
        "sandbox_vendor",
        "vouchers",
        "order_lot_takes",
        "order_keys",
        "orders",
        "catalog_products",
    ):
        op.execute(f"DROP TABLE {table}")
