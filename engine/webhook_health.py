"""Webhook health for the partner dashboard (`GET /dashboard/webhook-health`): delivery
attempts over a window of whole UTC hours, their success rate, exact latency percentiles
(nearest rank) and the failing endpoints, confined to the caller's partner and environment.

Hours that ended are read from `dashboard_webhook_hours` (folded by `engine.rollups.
roll_up_webhooks` with exact latency histograms, so percentiles over any set of hours stay
exact); the hours after its watermark are folded the same way on the fly from the attempts.
"""

# SQL here is composed from this module's constants only, never from request input:
# ruff: noqa: S608

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.dashboard import moment
from engine.errors import ValidationFailed
from engine.rollups import HOUR, hour_floor, webhook_hours_sql
from engine.scope import Scope

HEALTH_DEFAULT = timedelta(hours=25)
HEALTH_MAX = timedelta(days=7)
# Retries of a delivery stop about 24 hours after its event (contract 9): an attempt made in a
# window belongs to a delivery created at most this long before the window opens.
_DELIVERY_LIFETIME = timedelta(days=2)
FAILING_ENDPOINTS_MAX = 20
_SCOPED = "partner_id = :partner_id AND environment = :environment"


def parse_window(
    raw_from: str | None, raw_to: str | None, now: datetime
) -> tuple[datetime, datetime]:
    """The webhook-health window in whole UTC hours: by default the current hour and the 24
    before it; at most 7 days."""
    problems: dict[str, list[str]] = {}
    found: dict[str, datetime | None] = {}
    for name, raw in (("from", raw_from), ("to", raw_to)):
        try:
            found[name] = moment(name, raw)
        except ValidationFailed as exc:
            problems.update(exc.fields)
            found[name] = None
    if problems:
        raise ValidationFailed(problems)
    # Whole UTC hours: `from` back to its hour, `to` up to the next (unless on one); by default
    # the current hour and the 24 before it.
    upper = _hour_ceil(found["to"] or now.astimezone(UTC))
    lower = hour_floor(found["from"]) if found["from"] is not None else upper - HEALTH_DEFAULT
    if upper <= lower:
        raise ValidationFailed({"to": ["must be after from"]})
    if upper - lower > HEALTH_MAX:
        raise ValidationFailed({"to": ["the window is at most 7 days"]})
    return lower, upper


def _hour_ceil(instant: datetime) -> datetime:
    floor = hour_floor(instant)
    return floor if floor == instant else floor + HOUR


# The scope's attempts in [:lo, :hi): deliveries found per endpoint through (endpoint_id,
# created_at), bounded below by the retry lifetime; attempts by delivery_id.
_SCOPE_ATTEMPTS = """
SELECT w.partner_id, w.environment, d.endpoint_id, t.id, t.attempted_at, t.status_code,
       t.latency_ms
FROM webhook_endpoints w
JOIN webhook_deliveries d ON d.endpoint_id = w.id AND d.created_at >= :oldest
JOIN webhook_attempts t ON t.delivery_id = d.id
WHERE w.partner_id = :partner_id AND w.environment = :environment
  AND t.attempted_at >= :lo AND t.attempted_at < :hi
"""
# One statement: the folded hours [:w_lo, :lo) and the live ones [:lo, :hi) (folded the same way
# on the fly), their latency histograms summed and read at the nearest ranks, and per endpoint
# of the scope (failing or disabled ones only) the attempts, failures and last attempt. One row
# per such endpoint, or one row with a NULL endpoint; the percentiles on every row.
_HEALTH = f"""
WITH hours AS MATERIALIZED (
  SELECT endpoint_id, attempts, succeeded, latency_values, latency_counts, last_status_code,
         last_attempt_at, last_failure_at
  FROM dashboard_webhook_hours WHERE {_SCOPED} AND hour >= :w_lo AND hour < :lo
  UNION ALL
  SELECT endpoint_id, attempts, succeeded, latency_values, latency_counts, last_status_code,
         last_attempt_at, last_failure_at
  FROM ({webhook_hours_sql(_SCOPE_ATTEMPTS)}) AS live
),
hist AS (
  SELECT v, sum(c) AS c FROM hours, unnest(latency_values, latency_counts) AS u(v, c) GROUP BY v
),
cum AS (SELECT v, sum(c) OVER (ORDER BY v) AS running, sum(c) OVER () AS total FROM hist),
pct AS (
  SELECT min(v) FILTER (WHERE running >= ceil(0.5 * total)) AS p50,
         min(v) FILTER (WHERE running >= ceil(0.95 * total)) AS p95,
         min(v) FILTER (WHERE running >= ceil(0.99 * total)) AS p99,
         (SELECT COALESCE(sum(attempts), 0) FROM hours) AS attempts,
         (SELECT COALESCE(sum(succeeded), 0) FROM hours) AS succeeded
  FROM cum
),
per AS (
  SELECT endpoint_id, sum(attempts) AS attempts, sum(attempts - succeeded) AS failures,
         max(last_failure_at) AS last_failure_at,
         (array_agg(last_status_code ORDER BY last_attempt_at DESC))[1] AS last_status_code
  FROM hours GROUP BY endpoint_id
),
failing AS (
  SELECT w.id, w.url, w.is_active, w.disabled_reason,
         COALESCE(per.attempts, 0) AS endpoint_attempts, COALESCE(per.failures, 0) AS failures,
         per.last_failure_at, per.last_status_code
  FROM webhook_endpoints w LEFT JOIN per ON per.endpoint_id = w.id
  WHERE w.partner_id = :partner_id AND w.environment = :environment
    AND (per.failures > 0 OR NOT w.is_active)
  ORDER BY COALESCE(per.failures, 0) DESC, w.id
  LIMIT :max
)
SELECT pct.*, failing.* FROM pct LEFT JOIN failing ON true
ORDER BY failing.failures DESC NULLS LAST, failing.id
"""
_PENDING = f"""
SELECT count(*) FROM webhook_deliveries
WHERE {_SCOPED} AND status = 'PENDING'
"""


async def webhook_health(
    conn: AsyncConnection, scope: Scope, lower: datetime, upper: datetime
) -> dict[str, Any]:
    """Delivery attempts in the whole hours [lower, upper): success rate, exact latency
    percentiles, failing endpoints. Hours folded by the roll-up come from it; later ones live."""
    until = (
        await conn.execute(text("SELECT webhooks_until FROM dashboard_rollup_state"))
    ).scalar_one_or_none()
    split = lower if until is None else min(max(until, lower), upper)
    params = {
        **scope.params,
        "w_lo": lower,
        "lo": split,
        "hi": upper,
        "oldest": split - _DELIVERY_LIFETIME,
        "max": FAILING_ENDPOINTS_MAX,
    }
    rows = (await conn.execute(text(_HEALTH), params)).mappings().all()
    head = rows[0]
    pending = (await conn.execute(text(_PENDING), scope.params)).scalar_one()
    attempts, succeeded = int(head["attempts"]), int(head["succeeded"])
    return {
        "from": lower,
        "to": upper,
        "attempts": attempts,
        "succeeded": succeeded,
        "failed": attempts - succeeded,
        "successRate": round(Decimal(succeeded) / attempts, 4).normalize() if attempts else None,
        "latencyMs": {
            name: None if head[name] is None else int(head[name]) for name in ("p50", "p95", "p99")
        },
        "pendingDeliveries": int(pending),
        "failingEndpoints": [
            {
                "endpointId": row["id"],
                "url": row["url"],
                "isActive": row["is_active"],
                "disabledReason": row["disabled_reason"],
                "attempts": int(row["endpoint_attempts"]),
                "failures": int(row["failures"]),
                "lastStatusCode": row["last_status_code"],
                "lastFailureAt": row["last_failure_at"],
            }
            for row in rows
            if row["id"] is not None
        ],
    }


__all__ = ["parse_window", "webhook_health"]
