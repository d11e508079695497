"""Wire models of the campaign endpoints: create, patch and simulate bodies.

They check shapes and exactness only (numbers parsed exactly, never through float); the rules of
a campaign (splits adding up to 100, schedule, budgets, pool, lifecycle) are engine.campaigns',
which reports them with the same field paths. The answers are `engine.campaigns.campaign_json`
and the simulation dict.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import AwareDatetime, Field, PlainValidator, WithJsonSchema

from engine.campaigns import ORGANIZATION, CampaignSpec
from engine.distribution import Split, Stakeholder, Tier
from engine.errors import ValidationFailed
from engine.money import Tokens, to_decimal
from schemas.admin import TokenAmount
from schemas.base import WireModel

ExactDecimal = Annotated[
    Decimal,
    PlainValidator(to_decimal),  # InvalidAmount is a ValueError: pydantic reports its message
    WithJsonSchema({"type": ["number", "string"], "pattern": r"^-?\d+(\.\d+)?$"}),
]
Code = Annotated[str, Field(min_length=1, max_length=64)]
MAX_LIST = 100


class TierIn(WireModel):
    min_amount: ExactDecimal
    multiplier: ExactDecimal


class SplitIn(WireModel):
    stakeholder_type_code: Code
    percent: ExactDecimal


class ScheduleIn(WireModel):
    """`null` (or absent) `startsAt`/`endsAt` means open-ended; `daysOfWeek` null: every day."""

    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    days_of_week: Annotated[list[str], Field(max_length=7 * 2)] | None = None
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"


class BudgetIn(WireModel):
    """`null` (or absent) means no limit. `spentTokens` is the engine's and cannot be sent."""

    total_tokens: TokenAmount | None = None
    per_user_tokens: TokenAmount | None = None


class CampaignCreate(WireModel):
    name: Annotated[str, Field(max_length=1000)]
    status: str = "DRAFT"
    priority: int = 0
    action_types: Annotated[list[Code], Field(max_length=MAX_LIST)] = []
    multiplier: ExactDecimal = Decimal(1)
    base_tokens: TokenAmount = Tokens(0)
    tiers: Annotated[list[TierIn], Field(max_length=MAX_LIST)] = []
    splits: Annotated[list[SplitIn], Field(max_length=MAX_LIST)]
    schedule: ScheduleIn = ScheduleIn()
    budget: BudgetIn = BudgetIn()
    pool_id: Annotated[str, Field(max_length=64)] | None = None

    def to_spec(self) -> CampaignSpec:
        return CampaignSpec(
            name=self.name,
            status=self.status,
            priority=self.priority,
            action_types=tuple(self.action_types),
            multiplier=self.multiplier,
            base_tokens=self.base_tokens,
            tiers=_tiers(self.tiers),
            splits=_splits(self.splits),
            starts_at=self.schedule.starts_at,
            ends_at=self.schedule.ends_at,
            days_of_week=_days(self.schedule.days_of_week),
            timezone=self.schedule.timezone,
            budget_total=self.budget.total_tokens,
            budget_per_user=self.budget.per_user_tokens,
            pool_id=self.pool_id,
        )


class SchedulePatch(WireModel):
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    days_of_week: Annotated[list[str], Field(max_length=7 * 2)] | None = None
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"


class BudgetPatch(WireModel):
    total_tokens: TokenAmount | None = None
    per_user_tokens: TokenAmount | None = None


class CampaignPatch(WireModel):
    """Only the fields sent change; inside `schedule` and `budget` too (a merge). `null` clears
    a nullable field (dates, days, budgets, poolId) and is refused for the others."""

    name: Annotated[str, Field(max_length=1000)] = ""
    status: str = ""
    priority: int = 0
    action_types: Annotated[list[Code], Field(max_length=MAX_LIST)] = []
    multiplier: ExactDecimal = Decimal(1)
    base_tokens: TokenAmount = Tokens(0)
    tiers: Annotated[list[TierIn], Field(max_length=MAX_LIST)] = []
    splits: Annotated[list[SplitIn], Field(max_length=MAX_LIST)] = []
    schedule: SchedulePatch = SchedulePatch()
    budget: BudgetPatch = BudgetPatch()
    pool_id: Annotated[str, Field(max_length=64)] | None = None

    def to_changes(self) -> dict[str, Any]:
        """CampaignSpec field names → new values, for the fields the caller sent."""
        sent = self.model_fields_set
        changes: dict[str, Any] = {}
        for name in ("name", "status", "priority", "multiplier", "base_tokens", "pool_id"):
            if name in sent:
                changes[name] = getattr(self, name)
        if "action_types" in sent:
            changes["action_types"] = tuple(self.action_types)
        if "tiers" in sent:
            changes["tiers"] = _tiers(self.tiers)
        if "splits" in sent:
            changes["splits"] = _splits(self.splits)
        schedule_sent = self.schedule.model_fields_set if "schedule" in sent else set()
        for name in ("starts_at", "ends_at", "timezone"):
            if name in schedule_sent:
                changes[name] = getattr(self.schedule, name)
        if "days_of_week" in schedule_sent:
            changes["days_of_week"] = _days(self.schedule.days_of_week)
        budget_sent = self.budget.model_fields_set if "budget" in sent else set()
        if "total_tokens" in budget_sent:
            changes["budget_total"] = self.budget.total_tokens
        if "per_user_tokens" in budget_sent:
            changes["budget_per_user"] = self.budget.per_user_tokens
        return changes


class StakeholderIn(WireModel):
    """As in a submit body; the user-creation fields are accepted and ignored (a simulation
    creates nobody), so a partner can simulate with the body it would submit."""

    stakeholder_type_code: Code
    partner_user_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    organization_slug: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    user_email: str | None = None
    user_first_name: str | None = None
    user_last_name: str | None = None


class SimulateRequest(WireModel):
    action_type: Code
    amount: ExactDecimal
    stakeholders: Annotated[list[StakeholderIn], Field(max_length=1000)] = []

    def to_stakeholders(self) -> list[Stakeholder]:
        """The distribution's stakeholders. Raises ValidationFailed when an ORGANIZATION lacks
        organizationSlug or another type lacks partnerUserId."""
        problems: dict[str, list[str]] = {}
        found: list[Stakeholder] = []
        for index, holder in enumerate(self.stakeholders):
            if holder.stakeholder_type_code == ORGANIZATION:
                identity, field = holder.organization_slug, "organizationSlug"
            else:
                identity, field = holder.partner_user_id, "partnerUserId"
            if identity is None:
                problems[f"stakeholders[{index}].{field}"] = [
                    f"is required for a {holder.stakeholder_type_code} stakeholder"
                ]
                continue
            found.append(Stakeholder(holder.stakeholder_type_code, identity))
        if self.amount < 0:
            problems["amount"] = ["must be 0 or more"]
        if problems:
            raise ValidationFailed(problems)
        return found


def _tiers(tiers: list[TierIn]) -> tuple[Tier, ...]:
    return tuple(Tier(t.min_amount, t.multiplier) for t in tiers)


def _splits(splits: list[SplitIn]) -> tuple[Split, ...]:
    return tuple(Split(s.stakeholder_type_code, s.percent) for s in splits)


def _days(days: list[str] | None) -> tuple[str, ...] | None:
    return None if days is None else tuple(days)
