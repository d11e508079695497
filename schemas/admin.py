"""Wire models of the operator API (`/api/v1/admin`) and the JSON shapes it answers with.

Request models validate fields and nothing else; the rules (status lifecycle, CIDRs, restriction
consistency) live in engine/. Renderers turn engine rows into the contract's camelCase objects;
token figures stay `Tokens` so the exact encoder writes them as JSON numbers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, PlainValidator, WithJsonSchema

from engine.credentials import IssuedKeys
from engine.money import Tokens
from engine.partners import effective_rate_limit
from schemas.base import WireModel


def _tokens(value: Any) -> Tokens:
    """Exact parse of a JSON number (already a Decimal or int) or decimal string; never float."""
    if isinstance(value, Tokens):
        return value
    return Tokens.parse(value)  # InvalidAmount is a ValueError: pydantic reports its message


TokenAmount = Annotated[
    Tokens,
    PlainValidator(_tokens),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": r"^-?\d+(\.\d{1,6})?$"},
            ],
            "description": "Token amount, at most 6 decimals; a JSON number or decimal string",
        }
    ),
]
Environment = Literal["sandbox", "production"]
PartnerStatus = Literal["PENDING_APPROVAL", "ACTIVE", "SUSPENDED", "DEACTIVATED"]
Tier = Literal["STANDARD", "PROFESSIONAL", "ENTERPRISE"]
Feature = Literal["ACTIONS", "DONATIONS", "MARKETPLACE"]
IntegrationModel = Literal["SERVER", "WIDGET", "BOTH"]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Memo = Annotated[str, Field(max_length=500)]


# -- partners -----------------------------------------------------------------------------------


class RateLimitOverride(WireModel):
    per_hour: Annotated[int, Field(ge=1)]
    per_minute: Annotated[int, Field(ge=1)]


class TipConfig(WireModel):
    enabled: bool = False
    default_percent: Annotated[Decimal, Field(ge=0, le=100, decimal_places=2)] = Decimal(0)


class PartnerCreate(WireModel):
    name: Name
    slug: str | None = None
    legal_entity: str | None = None
    contact_email: str | None = None
    status: PartnerStatus = "PENDING_APPROVAL"
    tier: Tier = "STANDARD"
    enabled_features: list[Feature] = ["ACTIONS"]
    integration_model: IntegrationModel = "SERVER"
    ip_allowlist: list[str] = []
    action_types: list[str] = []
    stakeholder_types: list[str] = []
    tip_config: TipConfig | None = None
    rate_limit_override: RateLimitOverride | None = None

    def columns(self) -> dict[str, Any]:
        """Engine input: column names as keys (they match the snake_case field names)."""
        return _columns(self, self.model_fields_set | {"name", "status", "tier"})


class PartnerPatch(WireModel):
    name: Name | None = None
    legal_entity: str | None = None
    contact_email: str | None = None
    status: PartnerStatus | None = None
    tier: Tier | None = None
    enabled_features: list[Feature] | None = None
    integration_model: IntegrationModel | None = None
    ip_allowlist: list[str] | None = None
    action_types: list[str] | None = None
    stakeholder_types: list[str] | None = None
    tip_config: TipConfig | None = None
    rate_limit_override: RateLimitOverride | None = None

    def columns(self) -> dict[str, Any]:
        """Only the fields the caller sent. `null` clears `rateLimitOverride`, `legalEntity`
        and `contactEmail`; for every other field `null` means "leave unchanged"."""
        nullable = {"rate_limit_override", "legal_entity", "contact_email"}
        sent = {k for k in self.model_fields_set if getattr(self, k) is not None or k in nullable}
        return _columns(self, sent)


def _columns(model: WireModel, names: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(model, name)
        if isinstance(value, WireModel):
            value = value.model_dump(by_alias=True)
        out[name] = value
    return out


def _percent(value: Any) -> Decimal:
    return Decimal(str(value))


def partner_json(row: dict[str, Any]) -> dict[str, Any]:
    tip = dict(row["tip_config"] or {})
    return {
        "id": row["id"],
        "slug": row["slug"],
        "name": row["name"],
        "legalEntity": row["legal_entity"],
        "contactEmail": row["contact_email"],
        "status": row["status"],
        "tier": row["tier"],
        "enabledFeatures": list(row["enabled_features"]),
        "integrationModel": row["integration_model"],
        "ipAllowlist": list(row["ip_allowlist"]),
        "actionTypes": list(row["action_types"]),
        "stakeholderTypes": list(row["stakeholder_types"]),
        "tipConfig": {
            "enabled": bool(tip.get("enabled", False)),
            "defaultPercent": _percent(tip.get("defaultPercent", 0)),
        },
        "rateLimitOverride": row["rate_limit_override"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def partner_info_json(row: dict[str, Any]) -> dict[str, Any]:
    """The short partner shape of the portal (`/keys/partner-info`, login)."""
    per_hour, per_minute = effective_rate_limit(row)
    return {
        "id": row["id"],
        "name": row["name"],
        "slug": row["slug"],
        "status": row["status"],
        "tier": row["tier"],
        "enabledFeatures": list(row["enabled_features"]),
        "rateLimit": {"perHour": per_hour, "perMinute": per_minute},
    }


# -- keys ---------------------------------------------------------------------------------------


class KeyCreate(WireModel):
    environment: Environment
    name: Name
    expires_at: AwareDatetime | None = None
    ip_allowlist: list[str] | None = None


def issued_json(issued: IssuedKeys) -> dict[str, Any]:
    """The one response that carries the secret key and HMAC secret."""
    return {
        "id": issued.id,
        "partnerId": issued.partner_id,
        "name": issued.name,
        "environment": issued.environment,
        "publicKey": issued.public_key,
        "secretKey": issued.secret_key,
        "hmacSecret": issued.hmac_secret,
        "expiresAt": issued.expires_at,
    }


def key_json(row: dict[str, Any]) -> dict[str, Any]:
    """A key as listed: never the secret key nor the HMAC secret, only the last four."""
    return {
        "id": row["id"],
        "partnerId": row["partner_id"],
        "name": row["name"],
        "environment": row["environment"],
        "publicKey": row["public_key"],
        "secretKeyLast4": row["secret_key_last4"],
        "isActive": row["is_active"],
        "ipAllowlist": row["ip_allowlist"],
        "rotatedFromId": row["rotated_from_id"],
        "createdAt": row["created_at"],
        "expiresAt": row["expires_at"],
        "revokedAt": row["revoked_at"],
    }


# -- token pools and reserves -------------------------------------------------------------------


class Redemption(WireModel):
    min_balance: TokenAmount | None = None
    allowed_categories: list[str] | None = None


class Restrictions(WireModel):
    vesting_days: Annotated[int, Field(ge=0)] | None = None
    expiration_days: Annotated[int, Field(gt=0)] | None = None
    redemption: Redemption = Redemption()


class AutoRefill(WireModel):
    enabled: bool = False
    threshold: TokenAmount = Tokens(0)
    amount: TokenAmount = Tokens(0)
    max_per_day: Annotated[int, Field(ge=0)] = 1


class PoolCreate(WireModel):
    environment: Environment
    name: Name
    allocation: TokenAmount = Tokens(0)
    restrictions: Restrictions = Restrictions()
    low_balance_threshold: TokenAmount = Tokens(0)
    auto_refill: AutoRefill = AutoRefill()


class Allocation(WireModel):
    amount: TokenAmount
    memo: Memo | None = None


class ReserveFunding(WireModel):
    environment: Environment
    amount: TokenAmount
    memo: Memo | None = None


def _micro(value: Any) -> Tokens | None:
    return None if value is None else Tokens(int(value))


def pool_json(view: dict[str, Any]) -> dict[str, Any]:
    """Section 7's pool shape, from `engine.pools.pool_view`."""
    redemption = view["redemption"] or {}
    refill = view["auto_refill"] or {}
    return {
        "id": view["id"],
        "environment": view["environment"],
        "name": view["name"],
        "isDefault": view["is_default"],
        "status": view["status"],
        "balance": view["balance"],
        "allocatedTotal": view["allocated_total"],
        "distributedTotal": view["distributed_total"],
        "lowBalanceThreshold": Tokens(int(view["low_balance_threshold"])),
        "restrictions": {
            "vestingDays": view["vesting_days"],
            "expirationDays": view["expiration_days"],
            "redemption": {
                "minBalance": _micro(redemption.get("minBalanceMicro")),
                "allowedCategories": redemption.get("allowedCategories"),
            },
        },
        "autoRefill": {
            "enabled": bool(refill.get("enabled", False)),
            "threshold": _micro(refill.get("thresholdMicro", 0)),
            "amount": _micro(refill.get("amountMicro", 0)),
            "maxPerDay": refill.get("maxPerDay", 0),
        },
        "reserveBalance": view["reserve_balance"],
        "createdAt": view["created_at"],
        "updatedAt": view["updated_at"],
    }


# -- top-up requests ------------------------------------------------------------------------------


class Decision(WireModel):
    """Optional body of approve (memo on the allocation) and reject (reason, audited)."""

    memo: Memo | None = None
    reason: Memo | None = None


def request_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "partnerId": row["partner_id"],
        "environment": row["environment"],
        "poolId": row["pool_id"],
        "amount": Tokens(int(row["amount"])),
        "reason": row["reason"],
        "status": row["status"],
        "decidedBy": row["decided_by"],
        "decidedAt": row["decided_at"],
        "createdAt": row["created_at"],
    }


# -- portal users and the audit log ---------------------------------------------------------------


class PortalUserCreate(WireModel):
    email: Annotated[str, Field(min_length=3, max_length=320)]
    password: str
    partner_id: str | None = None


def portal_user_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "email": row["email"],
        "partnerId": row["partner_id"],
        "createdAt": row["created_at"],
    }


def audit_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "actor": row["actor"],
        "action": row["action"],
        "targetType": row["target_type"],
        "targetId": row["target_id"],
        "before": row["before"],
        "after": row["after"],
        "createdAt": row["created_at"],
    }


def page_json(data: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"data": data, "nextCursor": next_cursor}


# -- organizations ------------------------------------------------------------------------------


class OrganizationCreate(WireModel):
    slug: str
    name: str
    ein: str | None = None
    logo_url: str | None = None
    status: Literal["ACTIVE", "INACTIVE"] = "ACTIVE"

    def columns(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "ein": self.ein,
            "logo_url": self.logo_url,
            "status": self.status,
        }


class OrganizationPatch(WireModel):
    name: str | None = None
    ein: str | None = None
    logo_url: str | None = None
    status: Literal["ACTIVE", "INACTIVE"] | None = None

    def columns(self) -> dict[str, Any]:
        names = {"name": "name", "ein": "ein", "logo_url": "logo_url", "status": "status"}
        return {
            column: getattr(self, field)
            for field, column in names.items()
            if field in self.model_fields_set
        }


def organization_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "slug": row["slug"],
        "name": row["name"],
        "ein": row["ein"],
        "logoUrl": row["logo_url"],
        "status": row["status"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }
