"""Partners: the approved organisations whose servers call the engine."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.errors import Conflict, NotFound, ValidationFailed
from engine.ids import new_id
from engine.tables import partners

TIERS = {"STANDARD": (1000, 100), "PROFESSIONAL": (5000, 500), "ENTERPRISE": (20000, 2000)}
STATUSES = ("PENDING_APPROVAL", "ACTIVE", "SUSPENDED", "DEACTIVATED")
FEATURES = ("ACTIONS", "DONATIONS", "MARKETPLACE")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:64].strip("-") or "partner"


async def create_partner(
    conn: AsyncConnection,
    *,
    actor: str,
    name: str,
    slug: str | None = None,
    status: str = "PENDING_APPROVAL",
    tier: str = "STANDARD",
    enabled_features: Sequence[str] = ("ACTIONS",),
    action_types: Sequence[str] = (),
    stakeholder_types: Sequence[str] = (),
    contact_email: str | None = None,
    legal_entity: str | None = None,
) -> dict[str, Any]:
    """Create a partner. Raises ValidationFailed, or Conflict when the slug is taken."""
    slug = slug or slugify(name)
    problems: dict[str, list[str]] = {}
    if not name.strip():
        problems["name"] = ["must not be empty"]
    if not _SLUG.match(slug):
        problems["slug"] = ["must be lowercase letters, digits and dashes (1-64)"]
    if status not in STATUSES:
        problems["status"] = [f"must be one of {', '.join(STATUSES)}"]
    if tier not in TIERS:
        problems["tier"] = [f"must be one of {', '.join(TIERS)}"]
    unknown = [f for f in enabled_features if f not in FEATURES]
    if unknown:
        problems["enabledFeatures"] = [f"unknown features: {', '.join(unknown)}"]
    if problems:
        raise ValidationFailed(problems)
    taken = await conn.execute(select(partners.c.id).where(partners.c.slug == slug))
    if taken.first() is not None:
        raise Conflict(f"slug {slug!r} is taken", code="SLUG_TAKEN", details={"slug": slug})
    values = {
        "id": new_id(),
        "slug": slug,
        "name": name.strip(),
        "status": status,
        "tier": tier,
        "enabled_features": list(dict.fromkeys(enabled_features)),
        "action_types": [t.upper() for t in action_types],
        "stakeholder_types": [t.upper() for t in stakeholder_types],
        "contact_email": contact_email,
        "legal_entity": legal_entity,
    }
    row = (
        (await conn.execute(partners.insert().values(**values).returning(partners)))
        .mappings()
        .one()
    )
    await audit.record(
        conn,
        actor=actor,
        action="partner.create",
        target_type="partner",
        target_id=row["id"],
        after=dict(row),
    )
    return dict(row)


async def get_partner(conn: AsyncConnection, partner_id: str) -> dict[str, Any]:
    row = (
        (await conn.execute(select(partners).where(partners.c.id == partner_id))).mappings().first()
    )
    if row is None:
        raise NotFound(f"partner {partner_id} not found")
    return dict(row)
