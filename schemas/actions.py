"""Wire models of the action endpoints (contract section 7, "Actions")."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from engine.action_request import ORGANIZATION, ActionRequest, StakeholderRequest
from engine.money import InvalidAmount, to_decimal
from engine.reversals import ReversalRequest
from schemas.base import WireModel

_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
MAX_STAKEHOLDERS = 100
MAX_METADATA_KEYS = 50


def _exact_decimal(value: Any) -> Decimal:
    try:
        return to_decimal(value)
    except InvalidAmount as exc:
        raise ValueError(str(exc)) from None


ExactDecimal = Annotated[Decimal, BeforeValidator(_exact_decimal)]


class StakeholderIn(WireModel):
    stakeholder_type_code: str = Field(description="A registered stakeholder type, e.g. CUSTOMER")
    partner_user_id: str | None = Field(default=None, min_length=1, max_length=255)
    organization_slug: str | None = Field(default=None, min_length=1, max_length=128)
    user_email: str | None = Field(default=None, max_length=254)
    user_first_name: str | None = Field(default=None, max_length=200)
    user_last_name: str | None = Field(default=None, max_length=200)

    @field_validator("stakeholder_type_code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not _CODE.match(value):
            raise ValueError("must be an upper-case code (A-Z, 0-9, _), at most 64 characters")
        return value

    @model_validator(mode="after")
    def _identity(self) -> StakeholderIn:
        if self.stakeholder_type_code == ORGANIZATION:
            if not self.organization_slug:
                raise ValueError("an ORGANIZATION stakeholder names organizationSlug")
            if self.partner_user_id:
                raise ValueError(
                    "an ORGANIZATION stakeholder names organizationSlug, not partnerUserId"
                )
        elif not self.partner_user_id:
            raise ValueError("a stakeholder other than ORGANIZATION names partnerUserId")
        return self


class SubmitAction(WireModel):
    """`POST /v1/partner/actions/submit`."""

    idempotency_key: str = Field(min_length=1, max_length=255)
    action_type: str
    amount: ExactDecimal = Field(
        description="In currency units; a JSON number or decimal string, parsed exactly"
    )
    currency: str | None = None
    campaign_id: str | None = None
    stakeholders: list[StakeholderIn] = Field(min_length=1, max_length=MAX_STAKEHOLDERS)
    auto_create_users: bool = True
    occurred_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("action_type")
    @classmethod
    def _type(cls, value: str) -> str:
        if not _CODE.match(value):
            raise ValueError("must be an upper-case code (A-Z, 0-9, _), at most 64 characters")
        return value

    @field_validator("amount")
    @classmethod
    def _positive(cls, value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError("must be greater than 0")
        if value >= Decimal(10) ** 15:
            raise ValueError("must be less than 10^15")
        if -value.as_tuple().exponent > 12:  # type: ignore[operator]
            raise ValueError("must have at most 12 decimal places")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is not None and not _CURRENCY.match(value):
            raise ValueError("must be a three-letter ISO 4217 code in capitals, e.g. USD")
        return value

    @field_validator("campaign_id")
    @classmethod
    def _campaign(cls, value: str | None) -> str | None:
        if value is not None and not _OBJECT_ID.match(value):
            raise ValueError("must be a campaign id (24 hex characters)")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must be an RFC 3339 time with an offset (e.g. 2026-11-20T10:00:00Z)")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"must have at most {MAX_METADATA_KEYS} keys")
        return value

    def to_request(self) -> ActionRequest:
        return ActionRequest(
            idempotency_key=self.idempotency_key,
            action_type=self.action_type,
            amount=self.amount,
            currency=self.currency,
            campaign_id=self.campaign_id,
            auto_create_users=self.auto_create_users,
            occurred_at=self.occurred_at,
            metadata=dict(self.metadata),
            stakeholders=tuple(
                StakeholderRequest(
                    stakeholder_type=s.stakeholder_type_code,
                    partner_user_id=s.partner_user_id,
                    organization_slug=s.organization_slug,
                    email=s.user_email,
                    first_name=s.user_first_name,
                    last_name=s.user_last_name,
                )
                for s in self.stakeholders
            ),
        )


class ReverseAction(WireModel):
    """`POST /v1/partner/actions/:actionId/reverse`."""

    idempotency_key: str = Field(min_length=1, max_length=255)
    reason: str | None = Field(default=None, max_length=500)
    amount: ExactDecimal | None = Field(
        default=None,
        description="In the action's currency units; omit to reverse everything not yet reversed",
    )

    @field_validator("amount")
    @classmethod
    def _positive(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value <= 0:
            raise ValueError("must be greater than 0")
        return value

    def to_request(self) -> ReversalRequest:
        return ReversalRequest(
            idempotency_key=self.idempotency_key, reason=self.reason, amount=self.amount
        )


class BatchSubmit(WireModel):
    """`POST /v1/partner/actions/batch`, for the OpenAPI document: the handler validates the
    envelope itself and each item as a submit body, so one bad item does not refuse the rest."""

    actions: list[SubmitAction] = Field(
        min_length=1,
        max_length=1000,
        description="1 to 1,000 submit bodies; each is validated on its own, and an invalid "
        "item is rejected by index (in `rejected`) while the others are accepted",
    )
