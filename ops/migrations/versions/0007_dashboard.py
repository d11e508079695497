"""dashboard: daily roll-ups of the ledger and of API usage

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:00:00

Additive only (new tables), so the previous release of the code keeps working.

- `dashboard_days`: one row per partner, environment and closed UTC day: actions recorded,
  tokens credited to wallets by distributions, tokens taken back by reversals, active users.
- `dashboard_user_days`: one row per user credited or reversed on that day (the source of
  "active users" over any range and of the top earners). The primary key INCLUDEs the figures
  so a range of days is read by an index-only scan.
- `dashboard_rollup_state`: one row, the instant up to which the ledger is rolled up (a
  watermark). What follows it is answered by a bounded live query over the postings; a day is
  recomputed from its midnight and replaces any earlier roll-up of it, so a re-run counts
  nothing twice.
- `dashboard_webhook_hours`: per endpoint and closed UTC hour, the delivery attempts made,
  how many succeeded, and their latencies as an exact histogram (distinct milliseconds and their counts), so
  percentiles over any whole-hour window stay exact. `webhook_attempts.attempted_at` gets an
  index for the hourly fold (attempts are written by the webhook workers, off the submit path).
- `api_usage_days`: requests per partner, environment, UTC day, route class and status,
  counted in Redis by the front and folded here by a worker tick.
- `api_usage_folds`: the id of every fold applied, so a fold retried after its worker died
  between the PostgreSQL commit and the Redis clean-up is not applied twice.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_UP = """
CREATE TABLE dashboard_days (
    partner_id varchar(24) NOT NULL REFERENCES partners (id),
    environment varchar(10) NOT NULL,
    day date NOT NULL,
    actions integer NOT NULL DEFAULT 0,
    tokens_distributed bigint NOT NULL DEFAULT 0,
    tokens_reversed bigint NOT NULL DEFAULT 0,
    active_users integer NOT NULL DEFAULT 0,
    CONSTRAINT pk_dashboard_days PRIMARY KEY (partner_id, environment, day)
        INCLUDE (actions, tokens_distributed, tokens_reversed, active_users),
    CONSTRAINT ck_dashboard_days_environment CHECK (environment IN ('sandbox', 'production'))
);
CREATE TABLE dashboard_user_days (
    partner_id varchar(24) NOT NULL REFERENCES partners (id),
    environment varchar(10) NOT NULL,
    day date NOT NULL,
    partner_user_id varchar(24) NOT NULL,
    tokens bigint NOT NULL DEFAULT 0,
    tokens_reversed bigint NOT NULL DEFAULT 0,
    actions integer NOT NULL DEFAULT 0,
    CONSTRAINT pk_dashboard_user_days PRIMARY KEY (partner_id, environment, day, partner_user_id)
        INCLUDE (tokens, tokens_reversed, actions),
    CONSTRAINT ck_dashboard_user_days_environment CHECK (environment IN ('sandbox', 'production'))
);
CREATE TABLE dashboard_rollup_state (
    id smallint PRIMARY KEY DEFAULT 1,
    closed_until timestamptz,
    days_version bigint NOT NULL DEFAULT 0,
    webhooks_until timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ck_dashboard_rollup_state_one_row CHECK (id = 1)
);
INSERT INTO dashboard_rollup_state (id) VALUES (1);
CREATE TABLE dashboard_webhook_hours (
    partner_id varchar(24) NOT NULL REFERENCES partners (id),
    environment varchar(10) NOT NULL,
    endpoint_id varchar(24) NOT NULL,
    hour timestamptz NOT NULL,
    attempts integer NOT NULL,
    succeeded integer NOT NULL,
    latency_values integer[] NOT NULL,
    latency_counts bigint[] NOT NULL,
    last_status_code integer,
    last_attempt_at timestamptz NOT NULL,
    last_failure_at timestamptz,
    CONSTRAINT pk_dashboard_webhook_hours PRIMARY KEY (partner_id, environment, hour, endpoint_id),
    CONSTRAINT ck_dashboard_webhook_hours_environment CHECK (environment IN ('sandbox', 'production'))
);
CREATE INDEX ix_webhook_attempts_attempted_at ON webhook_attempts (attempted_at);
CREATE TABLE api_usage_days (
    partner_id varchar(24) NOT NULL REFERENCES partners (id),
    environment varchar(10) NOT NULL,
    day date NOT NULL,
    route_class varchar(64) NOT NULL,
    status smallint NOT NULL,
    requests bigint NOT NULL,
    CONSTRAINT pk_api_usage_days PRIMARY KEY (partner_id, environment, day, route_class, status)
        INCLUDE (requests),
    CONSTRAINT ck_api_usage_days_environment CHECK (environment IN ('sandbox', 'production')),
    CONSTRAINT ck_api_usage_days_requests CHECK (requests >= 0)
);
CREATE TABLE api_usage_folds (
    fold_id varchar(64) PRIMARY KEY,
    folded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_api_usage_folds_folded_at ON api_usage_folds (folded_at);
"""


def upgrade() -> None:
    # One statement per call: the asyncpg driver prepares each, and a prepared statement holds one.
    for statement in _UP.split(";\n"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_webhook_attempts_attempted_at")
    for table in (
        "api_usage_folds",
        "api_usage_days",
        "dashboard_rollup_state",
        "dashboard_webhook_hours",
        "dashboard_user_days",
        "dashboard_days",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
