"""Partners: the approved organisations whose servers call the engine."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.errors import Conflict, InvalidStatusTransition, NotFound, ValidationFailed
from engine.ids import new_id
from engine.outbox import Event, record_events
from engine.pagination import Page, fetch_page
from engine.scope import Scope
from engine.tables import ENVIRONMENTS, partners

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


# -- operator changes ---------------------------------------------------------------------------

INTEGRATION_MODELS = ("SERVER", "WIDGET", "BOTH")
# PENDING_APPROVAL -> ACTIVE <-> SUSPENDED; DEACTIVATED from any status, and final.
_TRANSITIONS = {
    "PENDING_APPROVAL": {"ACTIVE", "DEACTIVATED"},
    "ACTIVE": {"SUSPENDED", "DEACTIVATED"},
    "SUSPENDED": {"ACTIVE", "DEACTIVATED"},
    "DEACTIVATED": set(),
}
_TYPE_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def check_transition(current: str, new: str) -> None:
    """Raise InvalidStatusTransition unless `current -> new` is allowed (same status is a no-op)."""
    if new != current and new not in _TRANSITIONS.get(current, set()):
        raise InvalidStatusTransition(
            f"a partner cannot go from {current} to {new}",
            details={"from": current, "to": new, "allowed": sorted(_TRANSITIONS[current])},
        )


def normalize_cidrs(values: Sequence[str], field: str) -> list[str]:
    """Canonical CIDR strings (a bare IP becomes /32 or /128). Raises ValidationFailed."""
    out: list[str] = []
    bad: list[str] = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_network(str(value).strip(), strict=False)))
        except ValueError:
            bad.append(str(value))
    if bad:
        raise ValidationFailed({field: [f"not an IP address or CIDR: {', '.join(bad)}"]})
    return list(dict.fromkeys(out))


def _type_codes(values: Sequence[str], field: str, problems: dict[str, list[str]]) -> list[str]:
    codes = [str(v).strip().upper() for v in values]
    bad = [c for c in codes if not _TYPE_CODE.match(c)]
    if bad:
        problems[field] = [f"codes are A-Z, 0-9 and _ (1-64), got: {', '.join(bad)}"]
    return list(dict.fromkeys(codes))


def effective_rate_limit(partner: Mapping[str, Any]) -> tuple[int, int]:
    """(per hour, per minute): the operator's override if set, else the tier's limits."""
    override = partner.get("rate_limit_override")
    if override:
        return int(override["perHour"]), int(override["perMinute"])
    return TIERS[partner["tier"]]


def _check_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate operator changes (snake_case column names) and return the column values."""
    problems: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "name":
            if not str(value).strip():
                problems["name"] = ["must not be empty"]
            values[key] = str(value).strip()
        elif key in {"legal_entity", "contact_email"}:
            if key == "contact_email" and value is not None and not _EMAIL.match(value):
                problems["contactEmail"] = ["must be an email address"]
            values[key] = value
        elif key == "status":
            if value not in STATUSES:
                problems["status"] = [f"must be one of {', '.join(STATUSES)}"]
            values[key] = value
        elif key == "tier":
            if value not in TIERS:
                problems["tier"] = [f"must be one of {', '.join(TIERS)}"]
            values[key] = value
        elif key == "integration_model":
            if value not in INTEGRATION_MODELS:
                problems["integrationModel"] = [f"must be one of {', '.join(INTEGRATION_MODELS)}"]
            values[key] = value
        elif key == "enabled_features":
            unknown = [f for f in value if f not in FEATURES]
            if unknown:
                problems["enabledFeatures"] = [f"unknown features: {', '.join(unknown)}"]
            values[key] = list(dict.fromkeys(value))
        elif key == "ip_allowlist":
            try:
                values[key] = normalize_cidrs(value, "ipAllowlist")
            except ValidationFailed as exc:
                problems.update(exc.fields)
        elif key == "action_types":
            values[key] = _type_codes(value, "actionTypes", problems)
        elif key == "stakeholder_types":
            values[key] = _type_codes(value, "stakeholderTypes", problems)
        elif key == "rate_limit_override":
            if value is not None:
                per_hour, per_minute = int(value["perHour"]), int(value["perMinute"])
                if per_hour < 1 or per_minute < 1:
                    problems["rateLimitOverride"] = ["perHour and perMinute must be at least 1"]
                elif per_minute > per_hour:
                    problems["rateLimitOverride.perMinute"] = ["must not exceed perHour"]
                value = {"perHour": per_hour, "perMinute": per_minute}
            values[key] = value
        elif key == "tip_config":
            percent = Decimal(value.get("defaultPercent", 0))
            if not Decimal(0) <= percent <= Decimal(100) or percent != round(percent, 2):
                problems["tipConfig.defaultPercent"] = ["must be 0 to 100, at most 2 decimals"]
            # JSONB goes through the stdlib encoder, which cannot hold a Decimal exactly:
            # the percent is stored as its decimal text and answered as a JSON number.
            values[key] = {
                "enabled": bool(value.get("enabled", False)),
                "defaultPercent": format(percent.normalize(), "f"),
            }
        else:
            raise ValueError(f"{key} is not a partner setting")
    if problems:
        raise ValidationFailed(problems)
    return values


async def update_partner(
    conn: AsyncConnection, *, actor: str, partner_id: str, changes: Mapping[str, Any]
) -> dict[str, Any]:
    """Apply operator changes (keys are column names) to a partner, with audit and events.

    A status change records `partner.status_changed` once in EACH environment's scope: webhooks
    are registered per environment, and a partner integrating in sandbox must hear that it was
    approved as much as its production endpoints do. Raises NotFound, ValidationFailed,
    InvalidStatusTransition.
    """
    values = _check_changes(changes)
    row = (
        (await conn.execute(select(partners).where(partners.c.id == partner_id).with_for_update()))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"partner {partner_id} not found")
    before = dict(row)
    if "status" in values:
        check_transition(before["status"], values["status"])
    changed = {k: v for k, v in values.items() if before.get(k) != v}
    if not changed:
        return before
    after = dict(
        (
            await conn.execute(
                partners.update()
                .where(partners.c.id == partner_id)
                .values(**changed, updated_at=func.now())
                .returning(partners)
            )
        )
        .mappings()
        .one()
    )
    if "status" in changed:
        data = {
            "id": partner_id,
            "slug": after["slug"],
            "previousStatus": before["status"],
            "status": after["status"],
            "changedAt": after["updated_at"],
        }
        for environment in ENVIRONMENTS:
            await record_events(
                conn,
                Scope(partner_id, environment),  # type: ignore[arg-type]
                [Event("partner.status_changed", data)],
            )
    await audit.record(
        conn,
        actor=actor,
        action="partner.status_change" if "status" in changed else "partner.update",
        target_type="partner",
        target_id=partner_id,
        before={k: before[k] for k in changed},
        after={k: after[k] for k in changed},
    )
    return after


async def register_partner(
    conn: AsyncConnection, *, actor: str, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """Create a partner from operator input (column names as keys), settings included.

    The core goes through `create_partner`; the settings it does not take (allowlist, tip
    config, override, integration model) are applied as a second audited change in the same
    transaction. Raises ValidationFailed, Conflict.
    """
    core = {"name", "slug", "status", "tier", "enabled_features", "contact_email", "legal_entity"}
    core |= {"action_types", "stakeholder_types"}
    checked = _check_changes({k: v for k, v in fields.items() if k != "slug" and v is not None})
    created = await create_partner(
        conn,
        actor=actor,
        slug=fields.get("slug"),
        **{k: v for k, v in checked.items() if k in core},
    )
    extra = {k: v for k, v in fields.items() if k not in core and v is not None}
    if not extra:
        return created
    return await update_partner(conn, actor=actor, partner_id=created["id"], changes=extra)


# -- listings -----------------------------------------------------------------------------------


async def list_partners(
    conn: AsyncConnection, page: Page, *, status: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    query = select(partners)
    if status is not None:
        query = query.where(partners.c.status == status)
    return await fetch_page(conn, query, partners.c.created_at, partners.c.id, page)
