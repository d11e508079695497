"""Wire models of the partner-user endpoints (contract section 7 "Users").

Requests are validated here (422 VALIDATION_FAILED through `schemas.base.parse`) with the rules
`engine.users` defines, so a rule is written once. Responses are documented here for the OpenAPI
document; token amounts are exact decimals (JSON numbers with at most 6 decimals).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import Field, field_validator

from engine import users as rules
from schemas.base import WireModel


def _raise_first(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


class _UserFields(WireModel):
    """Fields shared by create and update. null or "" clears email and names."""

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    # Merged into what is stored; a key set to null or "" is removed; null clears every key.
    metadata: dict[str, str | None] | None = Field(
        default=None, json_schema_extra={"maxProperties": rules.MAX_METADATA_KEYS}
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value:
            _raise_first(rules.email_problems(value))
        return value

    @field_validator("first_name", "last_name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value:
            _raise_first(rules.name_problems(value))
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: object) -> object:
        # Before pydantic coerces values: a number would otherwise fail with a vaguer message.
        if isinstance(value, dict):
            _raise_first(rules.metadata_problems(value))
        return value


class UpsertUser(_UserFields):
    """`POST /v1/partner/users`: create, or update the fields sent (201 created, 200 updated)."""

    external_user_id: str

    @field_validator("external_user_id")
    @classmethod
    def _external_id(cls, value: str) -> str:
        _raise_first(rules.external_id_problems(value))
        return value


class UpdateUser(_UserFields):
    """`PATCH /v1/partner/users/{externalId}`: only the fields sent change."""


class UserOut(WireModel):
    id: str
    external_user_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime


class UserList(WireModel):
    data: list[UserOut]
    next_cursor: str | None


class VestingOut(WireModel):
    amount: Decimal
    at: datetime


class ExpiringOut(WireModel):
    amount: Decimal
    expires_at: datetime


class BalanceOut(WireModel):
    external_user_id: str
    available: Decimal  # negative: a debt left by a reversal, repaid first by later credits
    locked: Decimal
    total: Decimal
    lifetime_earned: Decimal
    lifetime_redeemed: Decimal  # net of refunds
    lifetime_expired: Decimal
    lifetime_reversed: Decimal
    next_vesting: VestingOut | None
    expiring_soon: list[ExpiringOut]  # open lots expiring within 30 days, by expiry, earliest first


class TransactionOut(WireModel):
    id: str
    type: str
    amount: Decimal  # signed from the wallet's side
    wallet: Literal["AVAILABLE", "LOCKED"]
    pool_id: str | None
    external_user_id: str
    organization_slug: str | None
    action_id: str | None
    order_id: str | None
    created_at: datetime
    vests_at: datetime | None
    expires_at: datetime | None


class TransactionList(WireModel):
    data: list[TransactionOut]
    next_cursor: str | None
