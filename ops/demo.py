"""The demo partner `sir-engine dev` creates on first run: sandbox keys and a funded pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from engine import catalog
from engine.credentials import issue_keys
from engine.crypto import SecretBox
from engine.money import Tokens
from engine.organization_import import upsert_organizations
from engine.partners import create_partner
from engine.pools import allocate, create_pool
from engine.scope import Scope
from engine.tables import partners
from ops.organizations_import import SEED_CSV, read_rows
from schemas.marketplace import catalog_rows

# A small demo catalog (generic products; the sandbox vendor fulfils orders for them).
CATALOG_CSV = Path(__file__).resolve().parent / "seed" / "catalog.csv"

DEMO_SLUG = "demo-partner"
DEMO_POOL_FUNDING = Tokens.parse("1000000")


async def demo_exists(db: AsyncEngine) -> bool:
    async with db.connect() as conn:
        found = await conn.execute(select(partners.c.id).where(partners.c.slug == DEMO_SLUG))
        return found.first() is not None


async def bootstrap_demo(db: AsyncEngine, box: SecretBox) -> dict[str, Any]:
    """Create the demo partner, sandbox keys and a pool funded with 1,000,000 tokens, in one
    transaction. Returns what to show the developer (secrets included: shown once)."""
    async with db.begin() as conn:
        partner = await create_partner(
            conn,
            actor="sir-engine dev",
            name="Demo Partner",
            slug=DEMO_SLUG,
            status="ACTIVE",
            enabled_features=("ACTIONS", "DONATIONS", "MARKETPLACE"),
            action_types=("PURCHASE", "DONATION", "VOLUNTEER", "REFERRAL"),
            stakeholder_types=("CUSTOMER", "DONOR", "ORGANIZATION", "REFERRER", "VOLUNTEER"),
        )
        scope = Scope(partner["id"], "sandbox")
        keys = await issue_keys(
            conn,
            box,
            actor="sir-engine dev",
            partner_id=partner["id"],
            environment="sandbox",
            name="demo sandbox key",
        )
        pool = await create_pool(conn, scope, actor="sir-engine dev", name="Demo pool")
        # The seed directory (ops/seed/organizations.csv): real, well-known US nonprofits.
        await upsert_organizations(conn, read_rows(SEED_CSV), actor="sir-engine dev")
        imported = await catalog.import_products(
            conn,
            actor="sir-engine dev",
            rows=catalog_rows(CATALOG_CSV.read_text()),
            result=catalog.ImportResult(),
        )
        if imported.rejected:  # the shipped file is valid; a broken edit must not pass silently
            raise ValueError(f"ops/seed/catalog.csv: {imported.rejected}")
        await allocate(
            conn,
            scope,
            actor="sir-engine dev",
            pool_id=pool["id"],
            amount=DEMO_POOL_FUNDING,
            memo="demo funding",
        )
    return {
        "partnerId": partner["id"],
        "environment": "sandbox",
        "publishableKey": keys.public_key,
        "secretKey": keys.secret_key,
        "hmacSecret": keys.hmac_secret,
        "poolId": pool["id"],
        "poolBalance": DEMO_POOL_FUNDING.format(),
    }
