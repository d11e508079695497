"""Wire models of the widget endpoints (contract section 8): configuration, the nonprofit
directory as the widget sees it, donation links and their status, provider notifications."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import Field, field_validator

from engine.donations import MAX_CENTS, MIN_CENTS, LinkRequest
from schemas.admin import Environment, Feature
from schemas.base import WireModel
from schemas.responses import RateLimitOut, TipConfigOut

DonationStatus = Literal["CREATED", "COMPLETED", "FAILED"]


class WidgetConfigOut(WireModel):
    id: str
    name: str
    slug: str
    environment: Environment
    enabled_features: list[Feature]
    rate_limit: RateLimitOut = Field(description="The partner's limits (secret-key calls)")
    is_active: bool
    webhook_url: str | None = Field(description="The newest active webhook endpoint's URL")
    tip_config: TipConfigOut


class WidgetOrganizationOut(WireModel):
    id: str
    slug: str
    name: str
    logo_url: str | None
    ein: str | None
    status: Literal["ACTIVE", "INACTIVE"]


class WidgetOrganizationList(WireModel):
    data: list[WidgetOrganizationOut]
    next_cursor: str | None


class CreateDonationLink(WireModel):
    nonprofit_slug: str = Field(min_length=1, max_length=128)
    amount: int = Field(
        ge=MIN_CENTS, le=MAX_CENTS, description="In cents (smallest currency unit), tip excluded"
    )
    currency: str = Field(default="USD", pattern=r"^[A-Za-z]{3}$")
    frequency: Literal["once", "monthly"] = "once"
    provider: Literal["every.org", "stripe"]
    donor_email: str = Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
    first_name: str = Field(min_length=1, max_length=255)
    last_name: str = Field(min_length=1, max_length=255)
    tip_amount: int | None = Field(default=None, ge=0, le=MAX_CENTS, description="In cents")
    tip_percent: Decimal | None = Field(default=None, ge=0, le=100, decimal_places=2)
    referral_code: str | None = Field(default=None, min_length=1, max_length=64)
    partner_user_id: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("first_name", "last_name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    def to_request(self) -> LinkRequest:
        return LinkRequest(
            nonprofit_slug=self.nonprofit_slug,
            amount_cents=self.amount,
            currency=self.currency.upper(),
            frequency=self.frequency,
            provider=self.provider,
            donor_email=self.donor_email,
            first_name=self.first_name,
            last_name=self.last_name,
            tip_amount_cents=self.tip_amount,
            tip_percent=self.tip_percent,
            referral_code=self.referral_code,
            partner_user_id=self.partner_user_id,
        )


class DonationLinkOut(WireModel):
    donation_link: str
    partner_donation_id: str


class DonationStatusOut(WireModel):
    partner_donation_id: str
    status: DonationStatus
    amount: int = Field(description="In cents, tip excluded (what the provider reported)")
    currency: str
    frequency: Literal["once", "monthly"]
    provider: Literal["every.org", "stripe"]
    nonprofit_slug: str
    tip_amount: int
    created_at: datetime
    completed_at: datetime | None
    action_id: str | None
    donor_tokens: Decimal | None = Field(description="Tokens the DONOR received, once COMPLETED")
    reward_error: str | None = Field(
        description="The DONATION action's refusal code when the donation completed unrewarded"
    )


class NotificationAck(WireModel):
    received: bool
    changed: bool = Field(description="false for a duplicate or an event that completes nothing")
    partner_donation_id: str | None
    status: DonationStatus | None
