"""The nonprofit directory: organizations that ORGANIZATION stakeholders, organization lookup
and donation links name by slug. It is shared by every partner (not partner-owned); what an
organization earns is held per partner and environment in its wallet accounts."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.errors import Conflict, NotFound, ValidationFailed
from engine.ids import new_id
from engine.pagination import Page, fetch_page
from engine.tables import organizations

STATUSES = ("ACTIVE", "INACTIVE")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,126}[a-z0-9])?$")
_EIN = re.compile(r"^\d{2}-?\d{7}$")  # US Employer Identification Number, e.g. 53-0196605


def problems(fields: dict[str, Any], *, creating: bool) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if creating or "slug" in fields:
        if not _SLUG.match(str(fields.get("slug") or "")):
            found["slug"] = ["must be lowercase letters, digits and dashes (1-128)"]
    if creating or "name" in fields:
        if not str(fields.get("name") or "").strip():
            found["name"] = ["must not be empty"]
    if fields.get("ein") and not _EIN.match(str(fields["ein"])):
        found["ein"] = ["must be an EIN such as 53-0196605"]
    if fields.get("logo_url") and not str(fields["logo_url"]).startswith("https://"):
        found["logoUrl"] = ["must be an https:// URL"]
    if "status" in fields and fields["status"] not in STATUSES:
        found["status"] = [f"must be one of {', '.join(STATUSES)}"]
    return found


async def create_organization(
    conn: AsyncConnection, *, actor: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """Add an organization. Raises ValidationFailed, or Conflict (SLUG_TAKEN)."""
    found = problems(fields, creating=True)
    if found:
        raise ValidationFailed(found)
    values = {"id": new_id(), "status": "ACTIVE", **fields, "name": fields["name"].strip()}
    try:
        async with conn.begin_nested():
            row = (
                (
                    await conn.execute(
                        organizations.insert().values(**values).returning(organizations)
                    )
                )
                .mappings()
                .one()
            )
    except IntegrityError:
        raise Conflict(
            f"slug {fields['slug']!r} is taken", code="SLUG_TAKEN", details={"slug": fields["slug"]}
        ) from None
    await audit.record(
        conn,
        actor=actor,
        action="organization.create",
        target_type="organization",
        target_id=row["id"],
        after=dict(row),
    )
    return dict(row)


async def get_organization(conn: AsyncConnection, slug: str) -> dict[str, Any]:
    row = (
        (await conn.execute(select(organizations).where(organizations.c.slug == slug)))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"organization {slug} not found")
    return dict(row)


async def update_organization(
    conn: AsyncConnection, *, actor: str, slug: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Change name, EIN, logo or status (the slug is the directory's key and stays)."""
    found = problems(changes, creating=False)
    if found:
        raise ValidationFailed(found)
    before = await get_organization(conn, slug)
    if not changes:
        return before
    row = (
        (
            await conn.execute(
                update(organizations)
                .where(organizations.c.slug == slug)
                .values(**changes, updated_at=func.now())
                .returning(organizations)
            )
        )
        .mappings()
        .one()
    )
    await audit.record(
        conn,
        actor=actor,
        action="organization.update",
        target_type="organization",
        target_id=row["id"],
        before=before,
        after=dict(row),
    )
    return dict(row)


async def list_organizations(
    conn: AsyncConnection, page: Page, *, q: str | None = None, status: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; `q` matches name or slug, case-insensitively."""
    query = select(organizations)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(organizations.c.name.ilike(pattern), organizations.c.slug.ilike(pattern))
        )
    if status:
        query = query.where(organizations.c.status == status)
    return await fetch_page(conn, query, organizations.c.created_at, organizations.c.id, page)
