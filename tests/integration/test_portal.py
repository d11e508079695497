"""The partner portal through HTTP: JWT login/refresh/me, login limits, self-service keys."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_network
from typing import Any

import jwt
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from engine.portal import ISSUER, TokenSigner
from engine.tables import api_keys, outbox_events, partners, portal_users
from http_front.app import create_app
from tests.integration.test_admin_api import ADMIN, call


@pytest_asyncio.fixture(loop_scope="session")
async def client(settings) -> AsyncIterator[TestClient]:
    # 127.0.0.1 is a trusted proxy, so X-Forwarded-For names the client: each test logs in from
    # its own addresses and the per-IP login budget of one test never spills into another.
    app = create_app(replace(settings, trusted_proxies=(ip_network("127.0.0.1/32"),)))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


PORTAL = "/v1/partner"
PASSWORD = "correct horse battery staple"


def an_ip() -> str:
    """A fresh client address per test, so the per-IP login budget is the test's own."""
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


async def new_user(client, partner_id: str | None = None) -> str:
    email = f"user-{secrets.token_hex(4)}@example.test"
    body: dict[str, Any] = {"email": email, "password": PASSWORD}
    if partner_id:
        body["partnerId"] = partner_id
    status, answer = await call(client, "POST", f"{ADMIN}/portal-users", body)
    assert status == 201, answer
    return email


async def login(client, email: str, password: str = PASSWORD, ip: str | None = None):
    return await call(
        client,
        "POST",
        f"{PORTAL}/auth/login",
        {"email": email, "password": password},
        headers={"X-Forwarded-For": ip or an_ip()},
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def session(client) -> tuple[str, dict[str, str]]:
    email = await new_user(client)
    status, body = await login(client, email)
    assert status == 200, body
    return email, bearer(body["accessToken"])


# -- login, refresh, me -----------------------------------------------------------------------------


async def test_login_refresh_and_me(client):
    email = await new_user(client)
    status, body = await login(client, email.upper())  # emails are case-insensitive
    assert status == 200, body
    assert body["expiresIn"] == 900 and body["tokenType"] == "Bearer"
    assert body["partner"] is None and body["publishableKey"] is None
    assert jwt.get_unverified_header(body["accessToken"])["alg"] == "HS256"

    status, me = await call(client, "GET", f"{PORTAL}/auth/me", headers=bearer(body["accessToken"]))
    assert status == 200 and me["email"] == email and me["partner"] is None

    status, renewed = await call(
        client, "POST", f"{PORTAL}/auth/refresh", {"refreshToken": body["refreshToken"]}, headers={}
    )
    assert status == 200, renewed
    assert renewed["accessToken"] != body["accessToken"]
    assert renewed["refreshToken"] != body["refreshToken"]
    status, me = await call(
        client, "GET", f"{PORTAL}/auth/me", headers=bearer(renewed["accessToken"])
    )
    assert status == 200 and me["email"] == email


async def test_wrong_credentials(client):
    email = await new_user(client)
    status, body = await login(client, email, "wrong password!")
    assert status == 401 and body["error"]["code"] == "INVALID_CREDENTIALS"
    status, unknown = await login(client, f"nobody-{secrets.token_hex(3)}@example.test")
    assert status == 401 and unknown["error"] == body["error"]  # never says which was wrong
    status, body = await call(client, "POST", f"{PORTAL}/auth/login", {"email": email}, headers={})
    assert status == 422 and "password" in body["error"]["details"]["fields"]


def _forge(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part(header)}.{part(claims)}."


async def test_forged_and_misused_tokens_are_refused(client, settings):
    email = await new_user(client)
    _, good = await login(client, email)
    user_id = jwt.decode(good["accessToken"], options={"verify_signature": False})["sub"]
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": user_id, "typ": "access", "iat": now, "exp": now + 600}
    me = f"{PORTAL}/auth/me"

    # alg=none, unsigned
    status, body = await call(
        client, "GET", me, headers=bearer(_forge(claims, {"alg": "none", "typ": "JWT"}))
    )
    assert status == 401 and body["error"]["code"] == "INVALID_TOKEN"
    # signed with another key
    other = jwt.encode(claims, "k" * 32, algorithm="HS256")
    status, body = await call(client, "GET", me, headers=bearer(other))
    assert status == 401 and body["error"]["code"] == "INVALID_TOKEN"
    # a refresh token used as an access token, and the reverse
    status, body = await call(client, "GET", me, headers=bearer(good["refreshToken"]))
    assert status == 401 and body["error"]["code"] == "INVALID_TOKEN"
    status, body = await call(
        client, "POST", f"{PORTAL}/auth/refresh", {"refreshToken": good["accessToken"]}, headers={}
    )
    assert status == 401 and body["error"]["code"] == "INVALID_TOKEN"
    # expired, though correctly signed
    signer = TokenSigner.from_master_key(settings.master_key)
    expired = jwt.encode({**claims, "exp": now - 5}, signer.key, algorithm="HS256")
    status, body = await call(client, "GET", me, headers=bearer(expired))
    assert status == 401 and body["error"]["code"] == "TOKEN_EXPIRED"
    # garbage and no header at all
    status, body = await call(client, "GET", me, headers=bearer("not.a.jwt"))
    assert status == 401 and body["error"]["code"] == "INVALID_TOKEN"
    status, body = await call(client, "GET", me, headers={})
    assert status == 401 and body["error"]["code"] == "AUTH_REQUIRED"
    status, body = await call(client, "GET", f"{PORTAL}/keys", headers={})
    assert status == 401 and body["error"]["code"] == "AUTH_REQUIRED"


async def test_login_is_limited_per_email(client):
    email = await new_user(client)
    for _ in range(5):
        status, _ = await login(client, email, "wrong password!")  # a new IP each time
        assert status == 401
    async with client.post(
        f"{PORTAL}/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"X-Forwarded-For": an_ip()},
    ) as response:
        body = await response.json()
        assert response.status == 429, body
        assert body["error"]["code"] == "RATE_LIMITED"
        # (a sliding window still weighs the previous minute, so the wait may pass 60 s)
        assert 0 < int(response.headers["Retry-After"]) <= 120


async def test_login_is_limited_per_client_ip(client):
    ip = an_ip()
    emails = [await new_user(client) for _ in range(6)]
    answers = [(await login(client, e, ip=ip))[0] for e in emails]
    assert answers == [200] * 5 + [429]
    # another address is not affected
    status, _ = await login(client, emails[-1])
    assert status == 200


# -- self-service keys --------------------------------------------------------------------------


async def test_first_key_creates_pending_partner_and_production_waits_for_approval(client, db):
    email, auth = await session(client)
    keys = f"{PORTAL}/keys"

    status, listed = await call(client, "GET", keys, headers=auth)
    assert status == 200 and listed == {"data": [], "nextCursor": None}
    status, body = await call(client, "GET", f"{keys}/partner-info", headers=auth)
    assert status == 404

    # No partner yet: production is refused and nothing is created
    status, body = await call(
        client,
        "POST",
        keys,
        {"name": "live", "environment": "production", "keyType": "secret"},
        headers=auth,
    )
    assert status == 403 and body["error"]["code"] == "PARTNER_NOT_APPROVED"
    async with db.connect() as conn:
        user = (
            (await conn.execute(select(portal_users).where(portal_users.c.email == email)))
            .mappings()
            .one()
        )
    assert user["partner_id"] is None

    # The first sandbox key registers a PENDING_APPROVAL partner linked to the user
    status, issued = await call(
        client,
        "POST",
        keys,
        {"name": "dev", "environment": "sandbox", "keyType": "secret"},
        headers=auth,
    )
    assert status == 201, issued
    assert issued["secretKey"].startswith("sk_test_") and issued["publicKey"].startswith("pk_test_")
    assert len(issued["hmacSecret"]) == 64
    async with db.connect() as conn:
        user = (
            (await conn.execute(select(portal_users).where(portal_users.c.email == email)))
            .mappings()
            .one()
        )
        partner = (
            (await conn.execute(select(partners).where(partners.c.id == user["partner_id"])))
            .mappings()
            .one()
        )
    assert partner["status"] == "PENDING_APPROVAL" and partner["contact_email"] == email
    assert issued["partnerId"] == partner["id"]

    status, info = await call(client, "GET", f"{keys}/partner-info", headers=auth)
    assert status == 200
    assert info == {
        "id": partner["id"],
        "name": partner["name"],
        "slug": partner["slug"],
        "status": "PENDING_APPROVAL",
        "tier": "STANDARD",
        "enabledFeatures": ["ACTIONS"],
        "rateLimit": {"perHour": 1000, "perMinute": 100},
    }

    # Production keys wait for an operator's approval
    status, body = await call(
        client, "POST", keys, {"name": "live", "environment": "production"}, headers=auth
    )
    assert status == 403 and body["error"]["code"] == "PARTNER_NOT_APPROVED"
    status, _ = await call(
        client, "PATCH", f"{ADMIN}/partners/{partner['id']}", {"status": "ACTIVE"}
    )
    assert status == 200
    status, live = await call(
        client, "POST", keys, {"name": "live", "environment": "production"}, headers=auth
    )
    assert status == 201 and live["secretKey"].startswith("sk_live_")
    assert live["partnerId"] == partner["id"]

    # A second sandbox key does not create another partner
    status, again = await call(
        client, "POST", keys, {"name": "dev2", "environment": "sandbox"}, headers=auth
    )
    assert status == 201 and again["partnerId"] == partner["id"]

    # Login now names the partner and its live publishable key
    status, body = await login(client, email)
    assert body["partner"]["status"] == "ACTIVE" and body["publishableKey"] == live["publicKey"]

    # A suspended partner gets no new keys
    await call(client, "PATCH", f"{ADMIN}/partners/{partner['id']}", {"status": "SUSPENDED"})
    status, body = await call(
        client, "POST", keys, {"name": "x", "environment": "sandbox"}, headers=auth
    )
    assert status == 403 and body["error"]["code"] == "PARTNER_NOT_ACTIVE"

    status, body = await call(
        client,
        "POST",
        keys,
        {"name": "x", "environment": "sandbox", "keyType": "publishable"},
        headers=auth,
    )
    assert status == 422 and "keyType" in body["error"]["details"]["fields"]


async def test_concurrent_first_keys_create_one_partner(client, db):
    email, auth = await session(client)
    results = await asyncio.gather(
        *(
            call(
                client,
                "POST",
                f"{PORTAL}/keys",
                {"name": f"k{i}", "environment": "sandbox"},
                headers=auth,
            )
            for i in range(4)
        )
    )
    assert [status for status, _ in results] == [201] * 4
    assert len({body["partnerId"] for _, body in results}) == 1


async def test_manage_own_keys(client, db):
    _, auth = await session(client)
    keys = f"{PORTAL}/keys"
    _, first = await call(
        client, "POST", keys, {"name": "first", "environment": "sandbox"}, headers=auth
    )
    _, second = await call(
        client, "POST", keys, {"name": "second", "environment": "sandbox"}, headers=auth
    )

    status, listed = await call(client, "GET", keys, headers=auth)
    assert status == 200 and {k["id"] for k in listed["data"]} == {first["id"], second["id"]}
    for secret in (first["secretKey"], first["hmacSecret"], second["secretKey"]):
        assert secret not in str(listed)

    status, one = await call(client, "GET", f"{keys}/{first['id']}", headers=auth)
    assert (
        status == 200
        and one["name"] == "first"
        and one["secretKeyLast4"] == first["secretKey"][-4:]
    )

    status, patched = await call(
        client,
        "PATCH",
        f"{keys}/{first['id']}",
        {"name": "renamed", "isActive": False, "expiresAt": "2099-01-01T00:00:00+02:00"},
        headers=auth,
    )
    assert status == 200, patched
    assert patched["name"] == "renamed" and patched["isActive"] is False
    assert patched["expiresAt"] == "2098-12-31T22:00:00Z"
    status, patched = await call(
        client,
        "PATCH",
        f"{keys}/{first['id']}",
        {"isActive": True, "expiresAt": None},
        headers=auth,
    )
    assert patched["isActive"] is True and patched["expiresAt"] is None
    status, body = await call(
        client,
        "PATCH",
        f"{keys}/{first['id']}",
        {"expiresAt": "2001-01-01T00:00:00Z"},
        headers=auth,
    )
    assert status == 422 and "expiresAt" in body["error"]["details"]["fields"]

    # DELETE revokes at once, with the event
    status, revoked = await call(client, "DELETE", f"{keys}/{first['id']}", headers=auth)
    assert status == 200 and revoked["revokedAt"] and revoked["isActive"] is False
    async with db.connect() as conn:
        row = (
            (await conn.execute(select(api_keys).where(api_keys.c.id == first["id"])))
            .mappings()
            .one()
        )
        events = (
            (
                await conn.execute(
                    select(outbox_events.c.payload).where(outbox_events.c.type == "api_key.revoked")
                )
            )
            .scalars()
            .all()
        )
    assert row["revoked_at"] is not None and row["is_active"] is False
    assert any(e["id"] == first["id"] for e in events)
    status, body = await call(
        client, "PATCH", f"{keys}/{first['id']}", {"isActive": True}, headers=auth
    )
    assert status == 422 and body["error"]["code"] == "KEY_NOT_USABLE"

    # Another user's key is not found, whatever the method
    _, stranger = await session(client)
    await call(client, "POST", keys, {"name": "theirs", "environment": "sandbox"}, headers=stranger)
    for method in ("GET", "PATCH", "DELETE"):
        status, body = await call(
            client,
            method,
            f"{keys}/{second['id']}",
            {"name": "x"} if method == "PATCH" else None,
            headers=stranger,
        )
        assert status == 404, (method, body)
    status, body = await call(client, "GET", f"{keys}/{second['id']}", headers=auth)
    assert status == 200 and body["isActive"] is True
