"""Donations made through the widget (contract section 8): creating a donation and its link,
reading its status, and completing it when its provider says it was paid.

Completion is one transaction: the donation row is locked, and unless it is COMPLETED already
(a duplicate notice: nothing changes) the DONATION action is applied through the engine's one
distribution path (`engine.submit.apply_actions`, idempotency key `donation:<id>`), the row is
marked COMPLETED and `donation.completed` is recorded in the outbox. The money has moved when a
provider says so, so a refused action (say the pool is empty) does not undo the donation: it
is COMPLETED with `rewardError` set to the refusal's code, for the partner to see.

The DONOR (contract 8): the partner user named by `partnerUserId` when a secret-key call set
it, or when a publishable-key call named an existing user with the donor's email; otherwise the
user keyed `email:<donorEmail>` (lower-cased). It is decided when the link is made, so what a
browser sends cannot later steer the reward to someone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine import payment_providers as providers
from engine.action_request import ORGANIZATION, ActionRequest, StakeholderRequest
from engine.errors import (
    InvalidNotification,
    NotFound,
    ProviderNotConfigured,
    ServiceUnavailable,
    UnknownActionType,
    UnknownOrganization,
    UnknownStakeholderType,
    ValidationFailed,
)
from engine.ids import new_id
from engine.money import Tokens
from engine.outbox import Event, record_events
from engine.scope import Scope
from engine.settings import Settings
from engine.submit import STATEMENT_DEADLINE, Applied, Refused, Replayed, apply_actions
from engine.tables import donations, organizations, partner_users, partners

DONATION = "DONATION"
DONOR = "DONOR"
MIN_CENTS = 50  # Stripe's smallest USD charge
MAX_CENTS = 99_999_999  # Stripe Checkout's largest amount ($999,999.99)
KeyKind = Literal["secret", "publishable"]


@dataclass(frozen=True, slots=True)
class LinkRequest:
    nonprofit_slug: str
    amount_cents: int
    currency: str
    frequency: str
    provider: str
    donor_email: str
    first_name: str
    last_name: str
    tip_amount_cents: int | None = None
    tip_percent: Decimal | None = None
    referral_code: str | None = None
    partner_user_id: str | None = None


@dataclass(frozen=True, slots=True)
class CreatedLink:
    donation_link: str
    partner_donation_id: str


# -- creating ---------------------------------------------------------------------------------------


def _tip(request: LinkRequest, tip_config: dict[str, Any]) -> tuple[int, Decimal | None]:
    """(tip cents, tip percent). Tips need the partner's tipConfig.enabled; with neither field
    sent, its defaultPercent applies. The tip never counts toward the reward."""
    sent = request.tip_amount_cents is not None or request.tip_percent is not None
    if not tip_config.get("enabled"):
        if sent and (request.tip_amount_cents or request.tip_percent):
            field = "tipAmount" if request.tip_amount_cents is not None else "tipPercent"
            raise ValidationFailed({field: ["tips are not enabled for this partner"]})
        return 0, None
    if request.tip_amount_cents is not None and request.tip_percent is not None:
        raise ValidationFailed({"tipPercent": ["send tipAmount or tipPercent, not both"]})
    if request.tip_amount_cents is not None:
        return request.tip_amount_cents, None
    percent = request.tip_percent
    if percent is None:
        percent = Decimal(str(tip_config.get("defaultPercent") or 0))
    cents = (Decimal(request.amount_cents) * percent / 100).to_integral_value(ROUND_DOWN)
    return int(cents), percent


async def _donor(conn: AsyncConnection, scope: Scope, request: LinkRequest, kind: KeyKind) -> str:
    email = request.donor_email.strip().lower()
    if request.partner_user_id:
        if kind == "secret":
            return request.partner_user_id
        # A browser may name a user only if that user really has the donor's email.
        found = await conn.execute(
            select(partner_users.c.email).where(
                partner_users.c.partner_id == scope.partner_id,
                partner_users.c.environment == scope.environment,
                partner_users.c.external_user_id == request.partner_user_id,
            )
        )
        row = found.first()
        if row is not None and row.email and row.email.strip().lower() == email:
            return request.partner_user_id
    return f"email:{email}"


async def create_donation(
    conn: AsyncConnection,
    scope: Scope,
    settings: Settings,
    request: LinkRequest,
    *,
    kind: KeyKind,
) -> dict[str, Any]:
    """Check and record a CREATED donation in the caller's transaction; returns its row.

    Raises UnknownOrganization (unknown or INACTIVE slug), UnknownActionType /
    UnknownStakeholderType (the partner has not registered DONATION, DONOR or ORGANIZATION:
    refused now rather than after the donor has paid), ValidationFailed, ProviderNotConfigured.
    """
    org = (
        (
            await conn.execute(
                select(organizations).where(organizations.c.slug == request.nonprofit_slug)
            )
        )
        .mappings()
        .first()
    )
    if org is None or org["status"] != "ACTIVE":
        raise UnknownOrganization(
            f"unknown organization {request.nonprofit_slug!r}",
            details={"nonprofitSlug": request.nonprofit_slug},
        )
    partner = (
        (await conn.execute(select(partners).where(partners.c.id == scope.partner_id)))
        .mappings()
        .one()
    )
    if DONATION not in partner["action_types"]:
        raise UnknownActionType(
            "register the DONATION action type to take donations", details={"actionType": DONATION}
        )
    for code in (DONOR, ORGANIZATION):
        if code not in partner["stakeholder_types"]:
            raise UnknownStakeholderType(
                f"register the {code} stakeholder type to take donations",
                details={"stakeholderTypeCode": code},
            )
    if request.provider == "every.org" and request.currency != "USD":
        raise ValidationFailed({"currency": ["every.org donate links take USD only"]})
    checkout = request.provider
    if request.provider == "stripe" and not settings.stripe_secret_key:
        if scope.environment == "production":
            raise ProviderNotConfigured(
                "stripe is not configured for production donations here",
                details={"provider": "stripe"},
            )
        checkout = "test"
    tip_cents, tip_percent = _tip(request, dict(partner["tip_config"] or {}))
    row = {
        "id": new_id(),
        "partner_id": scope.partner_id,
        "environment": scope.environment,
        "organization_id": org["id"],
        "amount_cents": request.amount_cents,
        "currency": request.currency,
        "frequency": request.frequency,
        "provider": request.provider,
        "checkout": checkout,
        "donor_email": request.donor_email.strip(),
        "first_name": request.first_name.strip(),
        "last_name": request.last_name.strip(),
        "tip_amount_cents": tip_cents,
        "tip_percent": tip_percent,
        "referral_code": request.referral_code,
        "partner_user_external_id": await _donor(conn, scope, request, kind),
    }
    await conn.execute(donations.insert().values(**row))
    return {**row, "organization": dict(org)}


async def link_for(settings: Settings, donation: dict[str, Any], base_url: str) -> str:
    """The URL the donor opens. For a Stripe Checkout Session this calls Stripe (outside any
    database transaction) and may raise ProviderUnavailable."""
    org = donation["organization"]
    if donation["checkout"] == "every.org":
        return providers.every_org_link(
            settings,
            sandbox=donation["environment"] == "sandbox",
            # Every.org names a nonprofit by its own slug or by EIN; our slugs are ours, so
            # the EIN (digits only) when the directory has one.
            slug=(org["ein"] or "").replace("-", "") or org["slug"],
            amount_cents=donation["amount_cents"],
            frequency=donation["frequency"],
            donation_id=donation["id"],
            email=donation["donor_email"],
            first_name=donation["first_name"],
            last_name=donation["last_name"],
        )
    if donation["checkout"] == "test":
        return providers.test_checkout_link(settings, base_url, donation["id"])
    status_page = f"{(settings.public_url or base_url).rstrip('/')}/v1/checkout/done"
    session = await providers.stripe_checkout_session(
        settings,
        donation_id=donation["id"],
        amount_cents=donation["amount_cents"],
        tip_cents=donation["tip_amount_cents"] or 0,
        currency=donation["currency"],
        frequency=donation["frequency"],
        nonprofit_name=org["name"],
        email=donation["donor_email"],
        success_url=f"{status_page}?partnerDonationId={donation['id']}",
        cancel_url=f"{status_page}?partnerDonationId={donation['id']}&cancelled=1",
    )
    donation["provider_reference"] = session.id
    return session.url


async def create_link(
    db: AsyncEngine,
    scope: Scope,
    settings: Settings,
    request: LinkRequest,
    *,
    kind: KeyKind,
    base_url: str,
) -> CreatedLink:
    """`POST /donations/create-link`: record the donation, then make its link. If the provider
    fails, the donation is marked FAILED and ProviderUnavailable is raised."""
    async with db.begin() as conn:
        donation = await create_donation(conn, scope, settings, request, kind=kind)
    try:
        link = await link_for(settings, donation, base_url)
    except Exception:
        async with db.begin() as conn:
            await conn.execute(
                update(donations)
                .where(donations.c.id == donation["id"])
                .values(status="FAILED", updated_at=func.now())
            )
        raise
    if donation.get("provider_reference"):
        async with db.begin() as conn:
            await conn.execute(
                update(donations)
                .where(donations.c.id == donation["id"])
                .values(provider_reference=donation["provider_reference"], updated_at=func.now())
            )
    return CreatedLink(donation_link=link, partner_donation_id=donation["id"])


# -- reading ------------------------------------------------------------------------------------------


def status_view(row: Any) -> dict[str, Any]:
    """The wire body of `GET /donations/status/{id}` (and `donation.completed`'s data)."""
    reward = row["reward_tokens"]
    return {
        "partnerDonationId": row["id"],
        "status": row["status"],
        "amount": row["amount_cents"],
        "currency": row["currency"],
        "frequency": row["frequency"],
        "provider": row["provider"],
        "nonprofitSlug": row["slug"],
        "tipAmount": row["tip_amount_cents"] or 0,
        "createdAt": row["created_at"],
        "completedAt": row["completed_at"],
        "actionId": row["action_id"],
        "donorTokens": None if reward is None else Tokens(reward),
        "rewardError": row["reward_error"],
    }


def _with_slug() -> Any:
    return select(donations, organizations.c.slug).join(
        organizations, organizations.c.id == donations.c.organization_id
    )


async def get_status(conn: AsyncConnection, scope: Scope, donation_id: str) -> dict[str, Any]:
    """The donation in `scope`. Raises NotFound (also for another partner's or environment's)."""
    row = (
        (
            await conn.execute(
                _with_slug().where(
                    donations.c.id == donation_id,
                    donations.c.partner_id == scope.partner_id,
                    donations.c.environment == scope.environment,
                )
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"donation {donation_id} not found")
    return status_view(row)


async def checkout_view(conn: AsyncConnection, donation_id: str) -> dict[str, Any]:
    """What the hosted test checkout page shows. Raises NotFound."""
    row = (
        (
            await conn.execute(
                select(donations, organizations.c.slug, organizations.c.name.label("org_name"))
                .join(organizations, organizations.c.id == donations.c.organization_id)
                .where(donations.c.id == donation_id)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"donation {donation_id} not found")
    return dict(row)


# -- completing ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Completion:
    status: dict[str, Any]
    changed: bool  # False for a duplicate notice


def _action(row: Any, amount_cents: int) -> ActionRequest:
    return ActionRequest(
        idempotency_key=f"donation:{row['id']}",
        action_type=DONATION,
        amount=Decimal(amount_cents) / 100,
        currency=row["currency"],
        stakeholders=(
            StakeholderRequest(
                DONOR,
                partner_user_id=row["partner_user_external_id"],
                email=row["donor_email"],
                first_name=row["first_name"] or None,
                last_name=row["last_name"] or None,
            ),
            StakeholderRequest(ORGANIZATION, organization_slug=row["slug"]),
        ),
        metadata={"partnerDonationId": row["id"], "provider": row["provider"]},
    )


def _donor_tokens(response: dict[str, Any]) -> int:
    total = Tokens(0)
    for item in response.get("distributions", []):
        if item.get("stakeholderTypeCode") == DONOR:
            total = total + Tokens.parse(str(item["tokens"]))
    return total.micro


async def complete_donation(
    db: AsyncEngine, notice: providers.Notice, *, now: datetime | None = None
) -> Completion:
    """Apply a verified completion notice (see the module docstring). Raises NotFound,
    InvalidNotification (another checkout's donation, another currency), ServiceUnavailable
    (nothing changed; the provider retries)."""
    now = now or datetime.now(UTC)
    try:
        async with db.begin() as conn:
            row = (
                (
                    await conn.execute(
                        _with_slug()
                        .where(donations.c.id == notice.partner_donation_id)
                        .with_for_update(of=donations)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"donation {notice.partner_donation_id} not found")
            if row["checkout"] != notice.provider:
                raise InvalidNotification(
                    f"this donation is completed by {row['checkout']}, not {notice.provider}",
                    details={"expected": row["checkout"]},
                )
            if row["status"] == "COMPLETED":
                return Completion(status_view(row), changed=False)
            if notice.currency and notice.currency != row["currency"]:
                raise InvalidNotification(
                    "the notification's currency is not the donation's",
                    details={"currency": notice.currency, "expected": row["currency"]},
                )
            scope = Scope(row["partner_id"], row["environment"])
            amount = notice.amount_cents or row["amount_cents"]
            (outcome,) = await apply_actions(
                conn, scope, [_action(row, amount)], now=now, deadline=STATEMENT_DEADLINE
            )
            action_id, tokens, error = None, None, None
            if isinstance(outcome, Applied):
                action_id, tokens = outcome.response["actionId"], _donor_tokens(outcome.response)
            elif isinstance(outcome, Replayed):
                action_id, tokens = outcome.original["actionId"], _donor_tokens(outcome.original)
            elif isinstance(outcome, Refused):
                error = outcome.error.code
            done = (
                (
                    await conn.execute(
                        update(donations)
                        .where(donations.c.id == row["id"])
                        .values(
                            status="COMPLETED",
                            completed_at=now,
                            amount_cents=amount,
                            action_id=action_id,
                            reward_tokens=tokens,
                            reward_error=error,
                            provider_reference=notice.reference or row["provider_reference"],
                            updated_at=now,
                        )
                        .returning(donations)
                    )
                )
                .mappings()
                .one()
            )
            view = status_view({**done, "slug": row["slug"]})
            await record_events(
                conn,
                scope,
                [
                    Event(
                        "donation.completed",
                        {
                            **view,
                            "referralCode": done["referral_code"],
                            "donorExternalUserId": done["partner_user_external_id"],
                        },
                    )
                ],
            )
            return Completion(view, changed=True)
    except DBAPIError as exc:
        if "QueryCanceled" in type(exc.orig).__name__ or "statement timeout" in str(exc.orig):
            raise ServiceUnavailable(
                "The engine could not finish in time; nothing was applied"
            ) from None
        raise
