"""An action as the engine receives it, after wire validation, and its canonical fingerprint.

"Same body" for idempotency means equal after parsing: key order, white space and number
spelling (49.99, "49.990") do not matter; any other difference does. The fingerprint is a
sha256 over a canonical rendering of the parsed request, defaults applied.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from engine.wire import utc_iso

ORGANIZATION = "ORGANIZATION"


@dataclass(frozen=True, slots=True)
class StakeholderRequest:
    stakeholder_type: str
    partner_user_id: str | None = None
    organization_slug: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None

    @property
    def identity(self) -> str:
        return (
            self.organization_slug
            if self.stakeholder_type == ORGANIZATION
            else self.partner_user_id
        ) or ""


@dataclass(frozen=True, slots=True)
class ActionRequest:
    idempotency_key: str
    action_type: str
    amount: Decimal
    stakeholders: tuple[StakeholderRequest, ...]
    currency: str | None = None
    campaign_id: str | None = None
    auto_create_users: bool = True
    occurred_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self)


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        normalized = value.normalize()
        return {"$n": format(normalized, "f")}  # 49.99 == 49.990; never a float
    if isinstance(value, datetime):
        return {"$t": utc_iso(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return {"$n": str(value)}  # 50 == 50.0
    return value


def to_wire(request: ActionRequest) -> dict[str, Any]:
    """The parsed action under its wire field names (amount a Decimal, occurredAt a datetime).

    The one rendering both the idempotency fingerprint and stored batch items use; stored as
    JSON through `engine.wire`, it keeps the amount exact.
    """
    return {
        "idempotencyKey": request.idempotency_key,
        "actionType": request.action_type,
        "amount": request.amount,
        "currency": request.currency,
        "campaignId": request.campaign_id,
        "autoCreateUsers": request.auto_create_users,
        "occurredAt": request.occurred_at,
        "metadata": request.metadata,
        "stakeholders": [
            {
                "stakeholderTypeCode": s.stakeholder_type,
                "partnerUserId": s.partner_user_id,
                "organizationSlug": s.organization_slug,
                "userEmail": s.email,
                "userFirstName": s.first_name,
                "userLastName": s.last_name,
            }
            for s in request.stakeholders
        ],
    }


def fingerprint(request: ActionRequest) -> bytes:
    text = json.dumps(
        _canonical(to_wire(request)), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode()).digest()
