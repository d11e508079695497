"""What a widget needs to know about its partner (`GET /v1/partner/config`, contract 8): name,
features, rate limit, tip settings and where the partner's webhooks go, read in the key's scope.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.partners import effective_rate_limit, get_partner
from engine.scope import Scope
from engine.tables import webhook_endpoints


async def widget_config(conn: AsyncConnection, scope: Scope) -> dict[str, Any]:
    """The partner's widget configuration. `webhookUrl` is the URL of the partner's newest
    active webhook endpoint in this environment (null when it has none)."""
    partner = await get_partner(conn, scope.partner_id)
    per_hour, per_minute = effective_rate_limit(partner)
    webhook = (
        await conn.execute(
            select(webhook_endpoints.c.url)
            .where(
                webhook_endpoints.c.partner_id == scope.partner_id,
                webhook_endpoints.c.environment == scope.environment,
                webhook_endpoints.c.is_active.is_(True),
            )
            .order_by(webhook_endpoints.c.created_at.desc(), webhook_endpoints.c.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    tips = dict(partner["tip_config"] or {})
    return {
        "id": partner["id"],
        "name": partner["name"],
        "slug": partner["slug"],
        "environment": scope.environment,
        "enabledFeatures": list(partner["enabled_features"]),
        "rateLimit": {"perHour": per_hour, "perMinute": per_minute},
        "isActive": partner["status"] == "ACTIVE",
        "webhookUrl": webhook,
        "tipConfig": {
            "enabled": bool(tips.get("enabled", False)),
            "defaultPercent": Decimal(str(tips.get("defaultPercent", 0))),
        },
    }
