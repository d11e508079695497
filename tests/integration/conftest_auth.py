"""Fixtures and helpers for the partner-authentication and rate-limit tests.

A probe application from the real `create_app(settings)` with throwaway routes behind the real
decorators, served by aiohttp's TestServer on 127.0.0.1 and driven through real signed HTTP
requests; partners and keys issued by the real use cases against real PostgreSQL and Redis.
Imported by the test modules (pytest only reads `conftest.py` itself automatically).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.credentials import IssuedKeys, issue_keys
from engine.crypto import SecretBox
from engine.errors import ValidationFailed
from engine.partners import create_partner
from engine.settings import Settings
from engine.signing import sign_request
from engine.tables import api_keys, partners
from http_front.app import create_app
from http_front.auth_partner import EPOCH_KEY, requires_feature, secret_key_required, widget_key
from http_front.principal import principal

PROBE = "/v1/partner/_probe"


async def _whoami(request: web.Request) -> web.Response:
    who = principal(request)
    return web.json_response(
        {
            "partnerId": who.partner_id,
            "environment": who.scope.environment,
            "keyId": who.key_id,
            "keyKind": who.key_kind,
            "partnerStatus": who.partner_status,
            "tier": who.tier,
            "enabledFeatures": list(who.enabled_features),
            "bodyLength": len(await request.read()),
        }
    )


async def _refuse(request: web.Request) -> web.Response:
    raise ValidationFailed({"amount": ["must be greater than 0"]})


def probe_app(settings: Settings) -> web.Application:
    """The real application plus throwaway routes behind the real decorators."""
    app = create_app(settings)
    app.router.add_get(PROBE, secret_key_required(_whoami))
    app.router.add_post(PROBE, secret_key_required(_whoami))
    app.router.add_delete(PROBE, secret_key_required(_whoami))
    app.router.add_post(
        "/v1/partner/_donations", secret_key_required(requires_feature("DONATIONS")(_whoami))
    )
    # the other order of stacking joins the same check
    app.router.add_post(
        "/v1/partner/_donations2", requires_feature("DONATIONS")(secret_key_required(_whoami))
    )
    app.router.add_get("/v1/partner/_widget", widget_key(_whoami))
    app.router.add_post("/v1/partner/_refuse", secret_key_required(_refuse))
    return app


async def start_client(app: web.Application) -> TestClient:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    # The test Redis database was flushed when the session began, so the replay epoch would be
    # "now" and refuse writes signed earlier (the contract's rule after a loss of state). Tests
    # play a Redis that has been up for an hour; the epoch test moves it on purpose.
    redis = aioredis.from_url(settings.redis_url)
    await redis.set(EPOCH_KEY, int(time.time()) - 3600)
    await redis.aclose()
    started = await start_client(probe_app(settings))
    yield started
    await started.close()


@dataclass(frozen=True)
class Credentials:
    partner_id: str
    keys: IssuedKeys


MakeCredentials = Callable[..., Awaitable[Credentials]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_credentials(db: AsyncEngine, box: SecretBox) -> MakeCredentials:
    """Factory: a fresh partner with one key pair. Partner and key state that no use case sets
    yet (status changes, allowlists, overrides, revocation) is written by direct UPDATEs."""

    async def make(
        *,
        environment: str = "sandbox",
        status: str = "ACTIVE",
        tier: str = "STANDARD",
        features: tuple[str, ...] = ("ACTIONS",),
        partner_ip_allowlist: list[str] | None = None,
        rate_limit_override: dict[str, int] | None = None,
        key_ip_allowlist: list[str] | None = None,
        expires_at: datetime | None = None,
        is_active: bool = True,
        revoked: bool = False,
        partner_id: str | None = None,
    ) -> Credentials:
        async with db.begin() as conn:
            if partner_id is None:
                partner = await create_partner(
                    conn,
                    actor="test",
                    name=f"Auth partner {secrets.token_hex(4)}",
                    status=status,
                    tier=tier,
                    enabled_features=features,
                )
                partner_id = partner["id"]
                changes: dict[str, Any] = {}
                if partner_ip_allowlist is not None:
                    changes["ip_allowlist"] = partner_ip_allowlist
                if rate_limit_override is not None:
                    changes["rate_limit_override"] = rate_limit_override
                if changes:
                    await conn.execute(
                        update(partners).where(partners.c.id == partner_id).values(**changes)
                    )
            keys = await issue_keys(
                conn,
                box,
                actor="test",
                partner_id=partner_id,
                environment=environment,  # type: ignore[arg-type]
                name="test key",
                expires_at=expires_at,
                ip_allowlist=key_ip_allowlist,
            )
            if not is_active or revoked:
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.id == keys.id)
                    .values(
                        is_active=is_active,
                        revoked_at=datetime.now().astimezone() if revoked else None,
                    )
                )
        return Credentials(partner_id, keys)

    return make


def signed(
    keys: IssuedKeys,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    form: str = "bare",
) -> dict[str, str]:
    """Headers of a correctly signed request, as a partner's client makes them."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = sign_request(keys.hmac_secret, ts, method, path, body)
    if form == "t=":
        signature = f"t={ts},v1={signature}"
    headers = {"X-Partner-Key": keys.secret_key, "X-Timestamp": ts, "X-Signature": signature}
    if body:
        headers["Content-Type"] = "application/json"
    return headers


def assert_envelope(body: Any, code: str) -> None:
    """The contract's error envelope (section 4), exactly."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"name", "code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["name"], str) and error["name"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
