"""Bulk upsert into the nonprofit directory, keyed by slug (what `sir-engine admin
organizations import` and the dev demo's seed use).

Idempotent: a row equal to what is stored changes nothing (not even `updated_at`), so running
an import twice reports everything unchanged the second time. Rows are validated with the same
rules as the operator API (`engine.organizations.problems`) before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, literal_column, or_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.ids import new_id
from engine.organizations import problems
from engine.tables import organizations


@dataclass
class ImportCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def row_problems(row: Mapping[str, Any]) -> dict[str, list[str]]:
    """The problems of one directory row (slug, name, ein, logo_url, status)."""
    fields = {k: v for k, v in row.items() if v not in (None, "")}
    fields.setdefault("slug", "")
    fields.setdefault("name", "")
    return problems(fields, creating=True)


async def upsert_organizations(
    conn: AsyncConnection, rows: Iterable[Mapping[str, Any]], *, actor: str
) -> ImportCounts:
    """Insert new slugs, update changed ones, leave equal ones alone, in the caller's
    transaction. Rows must be valid (`row_problems`). Audited once per call, with the counts."""
    counts = ImportCounts()
    batch = [
        {
            "id": new_id(),
            "slug": row["slug"],
            "name": str(row["name"]).strip(),
            "ein": row.get("ein") or None,
            "logo_url": row.get("logo_url") or None,
            "status": row.get("status") or "ACTIVE",
        }
        for row in rows
    ]
    if not batch:
        return counts
    statement = pg_insert(organizations).values(batch)
    excluded = statement.excluded
    upsert = statement.on_conflict_do_update(
        index_elements=[organizations.c.slug],
        set_={
            "name": excluded.name,
            "ein": excluded.ein,
            "logo_url": excluded.logo_url,
            "status": excluded.status,
            "updated_at": func.now(),
        },
        # only rows that really change: a re-import leaves the directory untouched
        where=or_(
            organizations.c.name.is_distinct_from(excluded.name),
            organizations.c.ein.is_distinct_from(excluded.ein),
            organizations.c.logo_url.is_distinct_from(excluded.logo_url),
            organizations.c.status.is_distinct_from(excluded.status),
        ),
    ).returning(
        organizations.c.slug,
        # xmax is 0 on a freshly inserted row version, set on an updated one
        literal_column("(organizations.xmax = 0)").label("inserted"),
    )
    written = (await conn.execute(upsert)).all()
    counts.inserted = sum(1 for r in written if r.inserted)
    counts.updated = len(written) - counts.inserted
    counts.unchanged = len(batch) - len(written)
    if written:
        await audit.record(
            conn,
            actor=actor,
            action="organization.import",
            target_type="organization",
            target_id=None,
            after={
                "inserted": counts.inserted,
                "updated": counts.updated,
                "slugs": [r.slug for r in written][:100],
            },
        )
    return counts
