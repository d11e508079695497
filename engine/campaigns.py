"""Campaigns: a partner's distribution rules, when they apply, and their budgets.

This module owns the campaign lifecycle (create, list, read, patch, status transitions and their
`campaign.status_changed` event), the validation of a campaign as a whole, the question "does
this campaign apply to an action of this type at this moment" that the submit path asks, and the
simulation behind `POST /campaigns/:id/simulate`. The arithmetic itself is engine.distribution's.

Storage: `multiplier` is NUMERIC(24, 6); token figures (`base_tokens`, `budget_total`,
`budget_per_user`, `spent_tokens`) are BIGINT micro-tokens; `tiers` and `splits` are JSONB lists
whose decimals are strings (`{"minAmount": "10", "multiplier": "1.5"}`,
`{"stakeholderTypeCode": "DONOR", "percent": "33.5"}`), so they come back exactly as validated.

Status lifecycle (the contract only says a campaign may be created in any status):

    DRAFT  -> ACTIVE | ENDED
    ACTIVE -> PAUSED | ENDED
    PAUSED -> ACTIVE | ENDED
    ENDED  -> (final)

Setting the status a campaign already has is a no-op and records no event. Creating a campaign
records no event, whatever its status: nothing changed status. Only an ACTIVE campaign applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.distribution import (
    Rule,
    Split,
    Stakeholder,
    Tier,
    TooManyTokens,
    distribute,
    validate_splits,
    validate_tiers,
)
from engine.errors import InvalidStatusTransition, NotFound, ValidationFailed
from engine.ids import new_id
from engine.money import Tokens
from engine.outbox import Event, record_events
from engine.pagination import Page, fetch_page
from engine.scope import Scope
from engine.tables import campaign_user_spend, campaigns, partner_users, token_pools

STATUSES: Final = ("DRAFT", "ACTIVE", "PAUSED", "ENDED")
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    "DRAFT": frozenset({"ACTIVE", "ENDED"}),
    "ACTIVE": frozenset({"PAUSED", "ENDED"}),
    "PAUSED": frozenset({"ACTIVE", "ENDED"}),
    "ENDED": frozenset(),
}
DAYS: Final = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")  # index = datetime.weekday()
ORGANIZATION: Final = "ORGANIZATION"  # the stakeholder type named by organizationSlug

MAX_NAME = 200
MAX_TYPE_CODE = 64  # actions.action_type is VARCHAR(64)
INT32 = 2**31 - 1
# NUMERIC(24, 6): 18 integer digits, 6 decimals. A multiplier with more decimals would be rounded
# by PostgreSQL on the way in, so it is refused instead.
MAX_MULTIPLIER = Decimal(10) ** 18


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignSpec:
    """Everything a partner sets on a campaign (spentTokens is the engine's, never the caller's).

    `None` for `starts_at`/`ends_at` means open-ended, for `days_of_week` every day, for the
    budgets no limit, for `pool_id` the partner's default pool at the time of each action.
    """

    name: str
    status: str = "DRAFT"
    priority: int = 0
    action_types: tuple[str, ...] = ()
    multiplier: Decimal = Decimal(1)
    base_tokens: Tokens = Tokens(0)
    tiers: tuple[Tier, ...] = ()
    splits: tuple[Split, ...] = ()
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    days_of_week: tuple[str, ...] | None = None
    timezone: str = "UTC"
    budget_total: Tokens | None = None
    budget_per_user: Tokens | None = None
    pool_id: str | None = None


SPEC_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(CampaignSpec))


# -- reading rows -------------------------------------------------------------------------------


def _decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _tokens(value: Any) -> Tokens | None:
    return None if value is None else Tokens(int(value))


def _tiers_of(row: Mapping[str, Any]) -> tuple[Tier, ...]:
    return tuple(
        Tier(_decimal(t["minAmount"]), _decimal(t["multiplier"])) for t in row["tiers"] or ()
    )


def _splits_of(row: Mapping[str, Any]) -> tuple[Split, ...]:
    return tuple(
        Split(str(s["stakeholderTypeCode"]), _decimal(s["percent"])) for s in row["splits"] or ()
    )


def spec_of(row: Mapping[str, Any]) -> CampaignSpec:
    """The spec a stored campaign row holds (the starting point of a patch)."""
    days = row["days_of_week"]
    return CampaignSpec(
        name=row["name"],
        status=row["status"],
        priority=int(row["priority"]),
        action_types=tuple(row["action_types"] or ()),
        multiplier=_decimal(row["multiplier"]),
        base_tokens=Tokens(int(row["base_tokens"])),
        tiers=_tiers_of(row),
        splits=_splits_of(row),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        days_of_week=None if days is None else tuple(days),
        timezone=row["timezone"],
        budget_total=_tokens(row["budget_total"]),
        budget_per_user=_tokens(row["budget_per_user"]),
        pool_id=row["pool_id"],
    )


def rule_of(campaign: Mapping[str, Any]) -> Rule:
    """The distribution rule of a campaigns row. Raises ValueError if the row is not a valid
    rule (it always is when written through this module)."""
    return Rule(
        splits=_splits_of(campaign),
        multiplier=_decimal(campaign["multiplier"]),
        base_tokens=Tokens(int(campaign["base_tokens"])),
        tiers=_tiers_of(campaign),
    )


def _plain(value: Decimal) -> Decimal:
    """A decimal for the wire: trailing zeros dropped, never exponent notation (2, 1.5, 100)."""
    normalized = value.normalize()
    if normalized == normalized.to_integral_value():
        return normalized.quantize(Decimal(1))
    return normalized


def campaign_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The campaign as the contract shows it (camelCase; Tokens, Decimals and datetimes are
    written exactly by engine.wire). `daysOfWeek: null` means every day; budgets `null` mean
    no limit; `poolId: null` means the partner's default pool."""
    days = row["days_of_week"]
    return {
        "id": row["id"],
        "name": row["name"],
        "status": row["status"],
        "priority": int(row["priority"]),
        "actionTypes": list(row["action_types"] or ()),
        "multiplier": _plain(_decimal(row["multiplier"])),
        "baseTokens": Tokens(int(row["base_tokens"])),
        "tiers": [
            {"minAmount": _plain(t.min_amount), "multiplier": _plain(t.multiplier)}
            for t in _tiers_of(row)
        ],
        "splits": [
            {"stakeholderTypeCode": s.stakeholder_type, "percent": _plain(s.percent)}
            for s in _splits_of(row)
        ],
        "schedule": {
            "startsAt": row["starts_at"],
            "endsAt": row["ends_at"],
            "daysOfWeek": None if days is None else list(days),
            "timezone": row["timezone"],
        },
        "budget": {
            "totalTokens": _tokens(row["budget_total"]),
            "perUserTokens": _tokens(row["budget_per_user"]),
            "spentTokens": Tokens(int(row["spent_tokens"])),
        },
        "poolId": row["pool_id"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


# -- when a campaign applies ----------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: a path-like or malformed key
        return None


def not_applicable_reasons(
    campaign: Mapping[str, Any], *, action_type: str, at: datetime
) -> list[str]:
    """Why a campaign does not apply to an action of `action_type` received at `at` (an aware
    time); an empty list means it applies. Used by `applies` and reported by simulations."""
    if at.tzinfo is None:
        raise ValueError("at must be an aware datetime")
    reasons: list[str] = []
    if campaign["status"] != "ACTIVE":
        reasons.append(f"the campaign is {campaign['status']}, not ACTIVE")
    types = campaign["action_types"] or ()
    if types and action_type not in types:
        reasons.append(f"action type {action_type} is not one of the campaign's actionTypes")
    starts_at, ends_at = campaign["starts_at"], campaign["ends_at"]
    if starts_at is not None and at < starts_at:
        reasons.append("the campaign has not started yet (schedule.startsAt)")
    if ends_at is not None and at >= ends_at:
        reasons.append("the campaign has ended (schedule.endsAt)")
    days = campaign["days_of_week"]
    if days:
        zone = _zone(campaign["timezone"]) or ZoneInfo("UTC")
        today = DAYS[at.astimezone(zone).weekday()]
        if today not in days:
            reasons.append(f"{today} in {campaign['timezone']} is not one of schedule.daysOfWeek")
    return reasons


def applies(campaign: Mapping[str, Any], *, action_type: str, at: datetime) -> bool:
    """Whether a campaigns row applies to an action of `action_type` received at `at`: ACTIVE,
    the type among its actionTypes (none listed = every type), startsAt <= at < endsAt, and the
    day of week of `at` in the campaign's time zone among its daysOfWeek (none = every day)."""
    return not not_applicable_reasons(campaign, action_type=action_type, at=at)


def _scoped(scope: Scope) -> Any:
    return and_(
        campaigns.c.partner_id == scope.partner_id, campaigns.c.environment == scope.environment
    )


async def applicable_campaigns(
    conn: AsyncConnection, scope: Scope, *, action_type: str, at: datetime
) -> list[dict[str, Any]]:
    """The ACTIVE campaigns of `scope` that apply to an action of `action_type` received at `at`,
    by priority (highest first), then age (the older first), then id. Budgets are not checked
    here: the caller takes the first whose remaining budget covers the action."""
    query = (
        select(campaigns)
        .where(
            _scoped(scope),
            campaigns.c.status == "ACTIVE",
            or_(
                func.cardinality(campaigns.c.action_types) == 0,
                campaigns.c.action_types.any(action_type),
            ),
            or_(campaigns.c.starts_at.is_(None), campaigns.c.starts_at <= at),
            or_(campaigns.c.ends_at.is_(None), campaigns.c.ends_at > at),
        )
        .order_by(campaigns.c.priority.desc(), campaigns.c.created_at.asc(), campaigns.c.id.asc())
    )
    rows = [dict(row) for row in (await conn.execute(query)).mappings()]
    # Days of week depend on each campaign's time zone: checked here rather than in SQL.
    return [row for row in rows if applies(row, action_type=action_type, at=at)]


async def get_campaign_row(
    conn: AsyncConnection, scope: Scope, campaign_id: str, *, for_update: bool = False
) -> dict[str, Any]:
    """The campaigns row of `campaign_id` in `scope` (locked with `for_update`).

    Raises NotFound, also for a campaign of another partner or environment."""
    query = select(campaigns).where(_scoped(scope), campaigns.c.id == campaign_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return dict(row)


async def list_campaigns(
    conn: AsyncConnection, scope: Scope, page: Page, *, status: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the scope's campaigns, newest first, and the next cursor.

    Raises ValidationFailed for an unknown status filter."""
    if status is not None and status not in STATUSES:
        raise ValidationFailed({"status": [f"must be one of {', '.join(STATUSES)}"]})
    query = select(campaigns).where(_scoped(scope))
    if status is not None:
        query = query.where(campaigns.c.status == status)
    return await fetch_page(conn, query, campaigns.c.created_at, campaigns.c.id, page)


# -- validation -----------------------------------------------------------------------------------


def _decimal_places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def spec_problems(spec: CampaignSpec, *, spent: Tokens = Tokens(0)) -> dict[str, list[str]]:
    """Every problem of a campaign spec, keyed by wire field path. Never raises.

    `spent` is the campaign's spentTokens (0 for a new one): a budget may not go below it.
    The pool is checked separately (`_pool_problems`): that needs the database.
    """
    problems: dict[str, list[str]] = {}

    def add(path: str, message: str) -> None:
        problems.setdefault(path, []).append(message)

    if not spec.name.strip():
        add("name", "must not be empty")
    elif len(spec.name.strip()) > MAX_NAME:
        add("name", f"must be at most {MAX_NAME} characters")
    if spec.status not in STATUSES:
        add("status", f"must be one of {', '.join(STATUSES)}")
    if not -INT32 - 1 <= spec.priority <= INT32:
        add("priority", "must fit in 32 bits")

    seen_types: set[str] = set()
    for index, code in enumerate(spec.action_types):
        if not code or code != code.strip():
            add(f"actionTypes[{index}]", "must be a non-empty code without surrounding spaces")
        elif len(code) > MAX_TYPE_CODE:
            add(f"actionTypes[{index}]", f"must be at most {MAX_TYPE_CODE} characters")
        elif code in seen_types:
            add(f"actionTypes[{index}]", f"{code} appears more than once")
        seen_types.add(code)

    if spec.multiplier < 0:
        add("multiplier", "must be 0 or more")
    if _decimal_places(spec.multiplier) > 6:
        add("multiplier", "must have at most 6 decimal places")
    if abs(spec.multiplier) >= MAX_MULTIPLIER:
        add("multiplier", "is too large")
    if spec.base_tokens.micro < 0:
        add("baseTokens", "must be 0 or more")
    for message in validate_tiers(spec.tiers):
        add("tiers", message)
    for message in validate_splits(spec.splits):
        add("splits", message)
    for index, split in enumerate(spec.splits):
        if len(split.stakeholder_type) > MAX_TYPE_CODE:
            add(
                f"splits[{index}].stakeholderTypeCode",
                f"must be at most {MAX_TYPE_CODE} characters",
            )

    if _zone(spec.timezone) is None:
        add("schedule.timezone", "must be an IANA time zone name, like Europe/Paris or UTC")
    if spec.days_of_week is not None:
        if not spec.days_of_week:
            add("schedule.daysOfWeek", "must name at least one day (null means every day)")
        for day in spec.days_of_week:
            if day not in DAYS:
                add("schedule.daysOfWeek", f"{day!r} is not one of {', '.join(DAYS)}")
    for name, moment in (("startsAt", spec.starts_at), ("endsAt", spec.ends_at)):
        if moment is not None and moment.tzinfo is None:
            add(f"schedule.{name}", "must carry a UTC offset")
    if (
        spec.starts_at is not None
        and spec.ends_at is not None
        and spec.starts_at.tzinfo is not None
        and spec.ends_at.tzinfo is not None
        and spec.ends_at <= spec.starts_at
    ):
        add("schedule.endsAt", "must be after schedule.startsAt")

    if spec.budget_total is not None:
        if spec.budget_total.micro < 0:
            add("budget.totalTokens", "must be 0 or more")
        elif spec.budget_total < spent:
            add("budget.totalTokens", f"must not be below spentTokens ({spent})")
    if spec.budget_per_user is not None and spec.budget_per_user.micro < 0:
        add("budget.perUserTokens", "must be 0 or more")
    return problems


async def _pool_problems(conn: AsyncConnection, scope: Scope, pool_id: str | None) -> list[str]:
    """A campaign's pool must be a pool of the same partner and environment that is not CLOSED
    (a CLOSED pool is never drawn on, so the campaign could never pay)."""
    if pool_id is None:
        return []
    status = (
        await conn.execute(
            select(token_pools.c.status).where(
                token_pools.c.id == pool_id,
                token_pools.c.partner_id == scope.partner_id,
                token_pools.c.environment == scope.environment,
            )
        )
    ).scalar_one_or_none()
    if status is None:
        return ["must be a token pool of this partner in this environment"]
    if status == "CLOSED":
        return ["the token pool is CLOSED"]
    return []


def _normalized(spec: CampaignSpec) -> CampaignSpec:
    """Canonical form for storage: trimmed name, days deduplicated in week order."""
    days = spec.days_of_week
    if days is not None:
        days = tuple(day for day in DAYS if day in set(days))
    return dataclasses.replace(spec, name=spec.name.strip(), days_of_week=days)


async def _validated(
    conn: AsyncConnection, scope: Scope, spec: CampaignSpec, *, spent: Tokens
) -> CampaignSpec:
    problems = spec_problems(spec, spent=spent)
    pool = await _pool_problems(conn, scope, spec.pool_id)
    if pool:
        problems.setdefault("poolId", []).extend(pool)
    if problems:
        raise ValidationFailed(problems)
    return _normalized(spec)


def _columns(spec: CampaignSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "status": spec.status,
        "priority": spec.priority,
        "action_types": list(spec.action_types),
        "multiplier": spec.multiplier,
        "base_tokens": spec.base_tokens.micro,
        "tiers": [
            {"minAmount": format(t.min_amount, "f"), "multiplier": format(t.multiplier, "f")}
            for t in spec.tiers
        ],
        "splits": [
            {"stakeholderTypeCode": s.stakeholder_type, "percent": format(s.percent, "f")}
            for s in spec.splits
        ],
        "starts_at": spec.starts_at,
        "ends_at": spec.ends_at,
        "days_of_week": None if spec.days_of_week is None else list(spec.days_of_week),
        "timezone": spec.timezone,
        "budget_total": None if spec.budget_total is None else spec.budget_total.micro,
        "budget_per_user": None if spec.budget_per_user is None else spec.budget_per_user.micro,
        "pool_id": spec.pool_id,
    }


# -- commands -------------------------------------------------------------------------------------


async def create_campaign(
    conn: AsyncConnection, scope: Scope, spec: CampaignSpec
) -> dict[str, Any]:
    """Create a campaign in any status (DRAFT unless `spec.status` says otherwise); returns the
    row. Raises ValidationFailed listing every problem (details.fields)."""
    spec = await _validated(conn, scope, spec, spent=Tokens(0))
    row = await conn.execute(
        campaigns.insert()
        .values(
            id=new_id(),
            partner_id=scope.partner_id,
            environment=scope.environment,
            **_columns(spec),
        )
        .returning(campaigns)
    )
    return dict(row.mappings().one())


async def patch_campaign(
    conn: AsyncConnection, scope: Scope, campaign_id: str, changes: Mapping[str, Any]
) -> dict[str, Any]:
    """Apply `changes` (CampaignSpec field names; only the fields the caller sent) and return the
    row. The whole resulting campaign is validated, so a patch can never leave it invalid.

    A status change must follow the lifecycle (module docstring) and records
    `campaign.status_changed` (the campaign plus `previousStatus`) in this transaction.
    Raises NotFound, ValidationFailed, InvalidStatusTransition.
    """
    unknown = set(changes) - SPEC_FIELDS
    if unknown:
        raise TypeError(f"not campaign fields: {sorted(unknown)}")
    # Locked: the submit path moves spent_tokens concurrently, and the budget check must see
    # the figure this update will be compared with.
    current = await get_campaign_row(conn, scope, campaign_id, for_update=True)
    before = spec_of(current)
    after = dataclasses.replace(before, **changes)
    previous_status = before.status
    if after.status != previous_status and after.status in STATUSES:
        if after.status not in TRANSITIONS[previous_status]:
            allowed = sorted(TRANSITIONS[previous_status])
            raise InvalidStatusTransition(
                f"a {previous_status} campaign cannot become {after.status}"
                + (f" (allowed: {', '.join(allowed)})" if allowed else " (ENDED is final)"),
                details={"from": previous_status, "to": after.status, "allowed": allowed},
            )
    after = await _validated(conn, scope, after, spent=Tokens(int(current["spent_tokens"])))
    row = dict(
        (
            await conn.execute(
                campaigns.update()
                .where(_scoped(scope), campaigns.c.id == campaign_id)
                .values(**_columns(after), updated_at=func.now())
                .returning(campaigns)
            )
        )
        .mappings()
        .one()
    )
    if row["status"] != previous_status:
        event = Event(
            "campaign.status_changed", {**campaign_json(row), "previousStatus": previous_status}
        )
        await record_events(conn, scope, [event])
    return row


# -- simulation -----------------------------------------------------------------------------------


async def _user_spend(
    conn: AsyncConnection, scope: Scope, campaign_id: str, external_ids: Sequence[str]
) -> dict[str, Tokens]:
    """What each named user (by externalUserId) has already received from the campaign."""
    if not external_ids:
        return {}
    rows = await conn.execute(
        select(partner_users.c.external_user_id, campaign_user_spend.c.spent_tokens)
        .select_from(
            partner_users.join(
                campaign_user_spend,
                and_(
                    campaign_user_spend.c.partner_user_id == partner_users.c.id,
                    campaign_user_spend.c.campaign_id == campaign_id,
                ),
            )
        )
        .where(
            partner_users.c.partner_id == scope.partner_id,
            partner_users.c.environment == scope.environment,
            partner_users.c.external_user_id.in_(list(set(external_ids))),
        )
    )
    return {external_id: Tokens(int(spent)) for external_id, spent in rows}


async def simulate(
    conn: AsyncConnection,
    scope: Scope,
    campaign_id: str,
    *,
    action_type: str,
    amount: Decimal,
    stakeholders: Sequence[Stakeholder],
    at: datetime,
) -> dict[str, Any]:
    """What an action would receive under this campaign; nothing is written.

    The answer reports, without refusing, whether the campaign applies at `at` (with the
    reasons when it does not) and whether its budgets would cover the action. Users and
    organizations are not looked up beyond their spend: a simulation names anyone.
    `distributions` lists the stakeholders that would be credited (tokens > 0), in request
    order, as the submit answer does. Raises NotFound, ValidationFailed (amount < 0).
    """
    if amount < 0:
        raise ValidationFailed({"amount": ["must be 0 or more"]})
    row = await get_campaign_row(conn, scope, campaign_id)
    try:
        result = distribute(rule_of(row), amount, stakeholders)
    except TooManyTokens as exc:
        raise ValidationFailed({"amount": [str(exc)]}) from None
    distributed = result.tokens_distributed
    reasons = not_applicable_reasons(row, action_type=action_type, at=at)

    spent = Tokens(int(row["spent_tokens"]))
    total = _tokens(row["budget_total"])
    remaining = None if total is None else total - spent
    campaign_covers = remaining is None or distributed <= remaining

    per_user = _tokens(row["budget_per_user"])
    by_user: dict[str, Tokens] = {}
    for share in result.credited:
        if share.stakeholder_type != ORGANIZATION:
            by_user[share.identity] = by_user.get(share.identity, Tokens(0)) + share.tokens
    over_users: list[str] = []
    if per_user is not None:
        already = await _user_spend(conn, scope, campaign_id, list(by_user))
        over_users = [
            user
            for user, tokens in by_user.items()
            if already.get(user, Tokens(0)) + tokens > per_user
        ]
    exceeded = "campaign" if not campaign_covers else ("user" if over_users else None)
    return {
        "campaignId": row["id"],
        "actionType": action_type,
        "amount": _plain(amount),
        "multiplier": _plain(result.multiplier),
        "tokensTotal": result.total,
        "tokensDistributed": distributed,
        "tokensUndistributed": result.undistributed,
        "distributions": [
            {
                "stakeholderTypeCode": share.stakeholder_type,
                (
                    "organizationSlug"
                    if share.stakeholder_type == ORGANIZATION
                    else "partnerUserId"
                ): (share.identity),
                "tokens": share.tokens,
            }
            for share in result.credited
        ],
        "applies": not reasons,
        "notApplicableReasons": reasons,
        "budget": {
            "covered": exceeded is None,
            "exceededScope": exceeded,
            "remainingTokens": remaining,
            "usersOverLimit": over_users,
        },
        "simulatedAt": at,
    }


__all__ = [
    "DAYS",
    "STATUSES",
    "TRANSITIONS",
    "CampaignSpec",
    "applicable_campaigns",
    "applies",
    "campaign_json",
    "create_campaign",
    "get_campaign_row",
    "list_campaigns",
    "not_applicable_reasons",
    "patch_campaign",
    "rule_of",
    "simulate",
    "spec_of",
    "spec_problems",
]
