"""API usage counts: how the front names them in Redis, and their fold into PostgreSQL.

The front counts every answered request whose partner it has identified (a valid signature, or
a known publishable key: refusals such as 429 count too) in process memory, and adds the counts
to one Redis hash, `PENDING_KEY`, about once a second (`http_front.usage`). A field is
`partner_id|environment|YYYY-MM-DD|route class|status`, the day being the UTC day the request
was answered.

The fold (`workers.dashboard_actors.fold_api_usage`), safe against a worker dying anywhere:
  1. atomically, unless a previous fold left `FOLDING_KEY` behind, rename `PENDING_KEY` to
     `FOLDING_KEY` and tag it with a fresh fold id (new counts go to a new pending hash);
  2. read `FOLDING_KEY`; in ONE PostgreSQL transaction record the fold id in `api_usage_folds`
     and, only if it was not there, add the counts to `api_usage_days` (`apply_fold`);
  3. delete `FOLDING_KEY` if it still carries that fold id.
Dying before 2 commits leaves the hash for the next fold; dying after leaves a hash whose id is
already recorded, so the next fold only deletes it. A Redis restart loses the counts not yet
folded (at most a tick's worth): usage is telemetry, the ledger is not in Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

PENDING_KEY = "sir:usage:pending"
FOLDING_KEY = "sir:usage:folding"
FOLD_ID_FIELD = "#fold"  # never a count field: those contain '|'
SEPARATOR = "|"
FOLD_IDS_KEPT = timedelta(days=7)


def field(partner_id: str, environment: str, day: str, route_class: str, status: int) -> str:
    return SEPARATOR.join((partner_id, environment, day, route_class, str(status)))


def parse_counts(raw: Mapping[str, str]) -> dict[tuple[str, str, date, str, int], int]:
    """Count fields of a folding hash, keyed; the fold id and malformed fields are skipped."""
    counts: dict[tuple[str, str, date, str, int], int] = {}
    for name, value in raw.items():
        parts = name.split(SEPARATOR)
        if len(parts) != 5 or parts[1] not in ("sandbox", "production"):
            continue
        try:
            key = (parts[0], parts[1], date.fromisoformat(parts[2]), parts[3][:64], int(parts[4]))
            amount = int(value)
        except ValueError:
            continue
        if amount > 0:
            counts[key] = counts.get(key, 0) + amount
    return counts


_UPSERT = """
INSERT INTO api_usage_days (partner_id, environment, day, route_class, status, requests)
SELECT c.partner_id, c.environment, c.day, c.route_class, c.status, c.requests
FROM unnest(CAST(:partner_ids AS varchar[]), CAST(:environments AS varchar[]),
            CAST(:days AS date[]), CAST(:classes AS varchar[]), CAST(:statuses AS smallint[]),
            CAST(:requests AS bigint[]))
     AS c(partner_id, environment, day, route_class, status, requests)
JOIN partners p ON p.id = c.partner_id
ON CONFLICT (partner_id, environment, day, route_class, status)
DO UPDATE SET requests = api_usage_days.requests + EXCLUDED.requests
"""


async def apply_fold(
    conn: AsyncConnection,
    fold_id: str,
    counts: Mapping[tuple[str, str, date, str, int], int],
    now: datetime,
) -> bool:
    """Add `counts` to `api_usage_days` unless fold `fold_id` was applied already; True when
    applied now. Call in the transaction that must hold both (the caller commits)."""
    claimed = (
        await conn.execute(
            text(
                "INSERT INTO api_usage_folds (fold_id) VALUES (:id) "
                "ON CONFLICT (fold_id) DO NOTHING RETURNING fold_id"
            ),
            {"id": fold_id},
        )
    ).scalar_one_or_none()
    if claimed is None:
        return False
    if counts:
        keys = sorted(counts)  # a stable order: concurrent folds lock rows in the same order
        await conn.execute(
            text(_UPSERT),
            {
                "partner_ids": [k[0] for k in keys],
                "environments": [k[1] for k in keys],
                "days": [k[2] for k in keys],
                "classes": [k[3] for k in keys],
                "statuses": [k[4] for k in keys],
                "requests": [counts[k] for k in keys],
            },
        )
    await conn.execute(
        text("DELETE FROM api_usage_folds WHERE folded_at < :before"),
        {"before": now - FOLD_IDS_KEPT},
    )
    return True


__all__ = ["FOLDING_KEY", "PENDING_KEY", "apply_fold", "field", "parse_counts"]
