"""A partner ready to take donations (DONATIONS feature, DONATION/DONOR/ORGANIZATION types, a
funded sandbox pool, a key pair), made by the real use cases; and partner-signed headers."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.credentials import issue_keys
from engine.crypto import SecretBox
from engine.money import Tokens
from engine.partners import create_partner
from engine.pools import allocate, create_pool
from engine.scope import Scope
from engine.signing import sign_request
from engine.tables import partners
from engine.wire import dumps


@dataclass
class DonationPartner:
    id: str
    pk: str
    sk: str
    hmac: str


async def make_donation_partner(
    db: AsyncEngine,
    box: SecretBox,
    *,
    features: tuple[str, ...] = ("ACTIONS", "DONATIONS"),
    tips: dict[str, Any] | None = None,
    environment: str = "sandbox",
) -> DonationPartner:
    async with db.begin() as conn:
        partner = await create_partner(
            conn,
            actor="test",
            name=f"Donations {secrets.token_hex(3)}",
            status="ACTIVE",
            enabled_features=features,
            action_types=("DONATION",),
            stakeholder_types=("DONOR", "ORGANIZATION"),
        )
        if tips is not None:
            await conn.execute(
                update(partners).where(partners.c.id == partner["id"]).values(tip_config=tips)
            )
        scope = Scope(partner["id"], environment)  # type: ignore[arg-type]
        pool = await create_pool(conn, scope, actor="test", name="main")
        await allocate(conn, scope, actor="test", pool_id=pool["id"], amount=Tokens.parse("1000"))
        keys = await issue_keys(
            conn,
            box,
            actor="test",
            partner_id=partner["id"],
            environment=environment,  # type: ignore[arg-type]
            name="k",
        )
    return DonationPartner(partner["id"], keys.public_key, keys.secret_key, keys.hmac_secret)


def signed(partner: DonationPartner, method: str, path: str, body: Any = None) -> dict[str, str]:
    """Headers of a secret-key call signed now (contract 3.1)."""
    ts = str(int(time.time()))
    data = dumps(body).encode() if body is not None else b""
    return {
        "X-Partner-Key": partner.sk,
        "X-Timestamp": ts,
        "X-Signature": sign_request(partner.hmac, ts, method, path, data),
        **({"Content-Type": "application/json"} if body is not None else {}),
    }
