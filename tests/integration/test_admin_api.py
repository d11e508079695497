"""The operator API through HTTP: the real app factory on a test server, real PostgreSQL."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from ipaddress import ip_network
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, text

from engine.errors import NotFound, ValidationFailed
from engine.money import Tokens
from engine.scope import Scope
from engine.tables import api_keys, outbox_events
from engine.topups import request_topup
from engine.wire import loads
from http_front.app import create_app
from tests.conftest import OPERATOR_TOKEN

ADMIN = "/api/v1/admin"
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest_asyncio.fixture(loop_scope="session")
async def client(settings) -> AsyncIterator[TestClient]:
    # 127.0.0.1 is a trusted proxy here so tests can pose as many clients with X-Forwarded-For.
    app = create_app(replace(settings, trusted_proxies=(ip_network("127.0.0.1/32"),)))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def call(
    client: TestClient, method: str, path: str, body: Any = None, *, headers: Any = AUTH
) -> tuple[int, Any]:
    """One request; the JSON answer parsed with exact decimals, as a partner should."""
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        from engine.wire import dumps

        kwargs["data"] = dumps(body)
        kwargs["headers"] = {**headers, "Content-Type": "application/json"}
    async with client.request(method, path, **kwargs) as response:
        raw = await response.read()
        return response.status, loads(raw) if raw else None


async def new_partner(client: TestClient, **fields: Any) -> dict[str, Any]:
    status, body = await call(
        client,
        "POST",
        f"{ADMIN}/partners",
        {"name": f"Acme {secrets.token_hex(3)}", **fields},
    )
    assert status == 201, body
    return body


# -- operator authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer op_wrong_" + "0" * 40},
        {"Authorization": f"Basic {OPERATOR_TOKEN}"},
        {"Authorization": "Bearer "},
    ],
)
async def test_operator_token_is_required(client, headers):
    status, body = await call(client, "GET", f"{ADMIN}/partners", headers=headers)
    assert status == 401
    assert body["error"]["code"] == "AUTH_REQUIRED"
    status, body = await call(client, "POST", f"{ADMIN}/partners", {"name": "x"}, headers=headers)
    assert status == 401


# -- partners -------------------------------------------------------------------------------------


async def test_create_get_and_list_partners(client):
    created = await new_partner(
        client,
        legalEntity="Acme Inc.",
        contactEmail="ops@acme.test",
        tier="PROFESSIONAL",
        enabledFeatures=["ACTIONS", "DONATIONS"],
        ipAllowlist=["10.0.0.1", "192.168.0.0/24"],
        actionTypes=["purchase"],
        stakeholderTypes=["CUSTOMER"],
        tipConfig={"enabled": True, "defaultPercent": Decimal("12.5")},
    )
    assert re.fullmatch(r"[0-9a-f]{24}", created["id"])
    assert created["status"] == "PENDING_APPROVAL"
    assert created["tier"] == "PROFESSIONAL"
    assert created["ipAllowlist"] == ["10.0.0.1/32", "192.168.0.0/24"]
    assert created["actionTypes"] == ["PURCHASE"]
    assert created["tipConfig"] == {"enabled": True, "defaultPercent": Decimal("12.5")}
    assert created["rateLimitOverride"] is None
    assert created["integrationModel"] == "SERVER"
    assert created["createdAt"].endswith("Z")

    status, fetched = await call(client, "GET", f"{ADMIN}/partners/{created['id']}")
    assert status == 200 and fetched == created

    status, body = await call(client, "GET", f"{ADMIN}/partners/{'0' * 24}")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"


async def test_partner_list_is_cursor_paginated(client):
    made = [await new_partner(client, status="SUSPENDED") for _ in range(3)]
    seen: list[str] = []
    cursor = None
    while True:
        query = "?status=SUSPENDED&limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, body = await call(client, "GET", f"{ADMIN}/partners{query}")
        assert status == 200
        seen += [p["id"] for p in body["data"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
        # A cursor reused under other filters is refused rather than silently skipping rows.
        status, bad = await call(client, "GET", f"{ADMIN}/partners?limit=2&cursor={cursor}")
        assert status == 400 and bad["error"]["code"] == "INVALID_CURSOR"
    assert len(seen) == len(set(seen))
    assert {p["id"] for p in made} <= set(seen)
    status, body = await call(client, "GET", f"{ADMIN}/partners?limit=500")
    assert status == 422 and "limit" in body["error"]["details"]["fields"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x", "tier": "GOLD"}, "tier"),
        ({"name": "x", "ipAllowlist": ["10.0.0.300"]}, "ipAllowlist"),
        ({"name": "x", "enabledFeatures": ["TELEPORT"]}, "enabledFeatures[0]"),
        ({"name": "x", "slug": "Not A Slug"}, "slug"),
        ({"name": "x", "colour": "red"}, "colour"),
        (
            {"name": "x", "rateLimitOverride": {"perHour": 0, "perMinute": 1}},
            "rateLimitOverride.perHour",
        ),
        ({"name": "x", "actionTypes": ["has space"]}, "actionTypes"),
    ],
)
async def test_partner_validation(client, body, field):
    status, answer = await call(client, "POST", f"{ADMIN}/partners", body)
    assert status == 422, answer
    assert answer["error"]["code"] == "VALIDATION_FAILED"
    assert field in answer["error"]["details"]["fields"]


async def test_duplicate_slug_conflicts(client):
    slug = f"acme-{secrets.token_hex(3)}"
    await new_partner(client, slug=slug)
    status, body = await call(client, "POST", f"{ADMIN}/partners", {"name": "x", "slug": slug})
    assert status == 409 and body["error"]["code"] == "SLUG_TAKEN"


async def _events(db, partner_id: str, event_type: str) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(outbox_events).where(
                outbox_events.c.partner_id == partner_id, outbox_events.c.type == event_type
            )
        )
        return [dict(r) for r in rows.mappings()]


async def test_status_lifecycle_and_events(client, db):
    partner = await new_partner(client)
    url = f"{ADMIN}/partners/{partner['id']}"

    # Given a pending partner, suspending it is not a move the lifecycle has
    status, body = await call(client, "PATCH", url, {"status": "SUSPENDED"})
    assert status == 422 and body["error"]["code"] == "INVALID_STATUS_TRANSITION"
    assert await _events(db, partner["id"], "partner.status_changed") == []

    # When it is approved, then one event per environment carries the change
    status, body = await call(client, "PATCH", url, {"status": "ACTIVE"})
    assert status == 200 and body["status"] == "ACTIVE"
    events = await _events(db, partner["id"], "partner.status_changed")
    assert sorted(e["environment"] for e in events) == ["production", "sandbox"]
    assert events[0]["payload"]["previousStatus"] == "PENDING_APPROVAL"
    assert events[0]["payload"]["status"] == "ACTIVE"

    for move in ("SUSPENDED", "ACTIVE", "DEACTIVATED"):
        status, body = await call(client, "PATCH", url, {"status": move})
        assert status == 200 and body["status"] == move
    assert len(await _events(db, partner["id"], "partner.status_changed")) == 8

    # DEACTIVATED is final
    status, body = await call(client, "PATCH", url, {"status": "ACTIVE"})
    assert status == 422 and body["error"]["code"] == "INVALID_STATUS_TRANSITION"

    status, body = await call(
        client, "PATCH", f"{ADMIN}/partners/{'f' * 24}", {"tier": "ENTERPRISE"}
    )
    assert status == 404


async def test_patch_settings(client):
    partner = await new_partner(client)
    url = f"{ADMIN}/partners/{partner['id']}"
    status, body = await call(
        client,
        "PATCH",
        url,
        {
            "tier": "ENTERPRISE",
            "enabledFeatures": ["ACTIONS", "MARKETPLACE"],
            "ipAllowlist": ["2001:db8::1", "10.1.0.0/16"],
            "actionTypes": ["PURCHASE", "SIGNUP"],
            "stakeholderTypes": ["CUSTOMER", "REFERRER"],
            "rateLimitOverride": {"perHour": 50000, "perMinute": 5000},
            "tipConfig": {"enabled": True, "defaultPercent": 15},
        },
    )
    assert status == 200, body
    assert body["tier"] == "ENTERPRISE"
    assert body["enabledFeatures"] == ["ACTIONS", "MARKETPLACE"]
    assert body["ipAllowlist"] == ["2001:db8::1/128", "10.1.0.0/16"]
    assert body["rateLimitOverride"] == {"perHour": 50000, "perMinute": 5000}
    assert body["tipConfig"] == {"enabled": True, "defaultPercent": 15}
    assert body["updatedAt"] >= partner["updatedAt"]

    # null clears the override; absent fields stay as they are
    status, body = await call(client, "PATCH", url, {"rateLimitOverride": None})
    assert status == 200 and body["rateLimitOverride"] is None and body["tier"] == "ENTERPRISE"

    status, body = await call(
        client, "PATCH", url, {"rateLimitOverride": {"perHour": 10, "perMinute": 11}}
    )
    assert status == 422
    assert "rateLimitOverride.perMinute" in body["error"]["details"]["fields"]
    status, body = await call(client, "PATCH", url, {"ipAllowlist": ["nope"]})
    assert status == 422 and "ipAllowlist" in body["error"]["details"]["fields"]
    status, body = await call(client, "PATCH", url, {"tipConfig": {"defaultPercent": 101}})
    assert status == 422 and "tipConfig.defaultPercent" in body["error"]["details"]["fields"]


# -- keys -----------------------------------------------------------------------------------------


async def _key_row(db, key_id: str) -> dict[str, Any]:
    async with db.connect() as conn:
        row = await conn.execute(select(api_keys).where(api_keys.c.id == key_id))
        return dict(row.mappings().one())


async def test_issue_list_rotate_revoke_keys(client, db, box):
    partner = await new_partner(client)
    keys_url = f"{ADMIN}/partners/{partner['id']}/keys"
    expires = (datetime.now(UTC) + timedelta(days=90)).replace(microsecond=0)

    # Issue: secrets shown once, in the contract's formats
    status, issued = await call(
        client,
        "POST",
        keys_url,
        {
            "environment": "sandbox",
            "name": "server",
            "expiresAt": expires.isoformat(),
            "ipAllowlist": ["203.0.113.7"],
        },
    )
    assert status == 201, issued
    assert re.fullmatch(r"pk_test_[0-9a-f]{64}", issued["publicKey"])
    assert re.fullmatch(r"sk_test_[0-9a-f]{64}", issued["secretKey"])
    assert re.fullmatch(r"[0-9a-f]{64}", issued["hmacSecret"])
    assert issued["partnerId"] == partner["id"] and issued["environment"] == "sandbox"
    assert issued["expiresAt"] == expires.isoformat().replace("+00:00", "Z")
    stored = await _key_row(db, issued["id"])
    assert stored["secret_key_hash"] == box.hash_secret_key(issued["secretKey"])
    assert box.decrypt(stored["hmac_secret_enc"]) == issued["hmacSecret"]
    assert stored["ip_allowlist"] == ["203.0.113.7/32"]

    status, live = await call(
        client, "POST", keys_url, {"environment": "production", "name": "live"}
    )
    assert status == 201 and live["secretKey"].startswith("sk_live_")

    # List: never a secret
    status, listed = await call(client, "GET", keys_url)
    assert status == 200 and len(listed["data"]) == 2
    text_of_list = str(listed)
    for secret in (
        issued["secretKey"],
        issued["hmacSecret"],
        live["secretKey"],
        live["hmacSecret"],
    ):
        assert secret not in text_of_list
    first = next(k for k in listed["data"] if k["id"] == issued["id"])
    assert first["secretKeyLast4"] == issued["secretKey"][-4:]
    assert first["isActive"] is True and first["revokedAt"] is None
    status, only_live = await call(client, "GET", f"{keys_url}?environment=production")
    assert [k["id"] for k in only_live["data"]] == [live["id"]]

    # Rotate: a new pair with the same scopes; the old one keeps working until revoked
    status, rotated = await call(client, "POST", f"{keys_url}/{issued['id']}/rotate")
    assert status == 201, rotated
    assert rotated["id"] != issued["id"] and rotated["secretKey"] != issued["secretKey"]
    assert rotated["environment"] == "sandbox" and rotated["expiresAt"] == issued["expiresAt"]
    assert rotated["rotatedFromId"] == issued["id"]
    old, new = await _key_row(db, issued["id"]), await _key_row(db, rotated["id"])
    assert old["is_active"] and old["revoked_at"] is None
    assert new["is_active"] and new["rotated_from_id"] == issued["id"]
    assert new["ip_allowlist"] == old["ip_allowlist"]

    # Revoke: at once, with an event in the key's environment
    status, revoked = await call(client, "DELETE", f"{keys_url}/{issued['id']}")
    assert status == 200 and revoked["isActive"] is False and revoked["revokedAt"]
    old = await _key_row(db, issued["id"])
    assert old["revoked_at"] is not None and old["is_active"] is False
    events = await _events(db, partner["id"], "api_key.revoked")
    assert len(events) == 1 and events[0]["environment"] == "sandbox"
    assert events[0]["payload"]["id"] == issued["id"]
    assert issued["secretKey"] not in str(events[0]["payload"])

    # Revoking again changes nothing; a revoked key cannot be rotated
    status, _ = await call(client, "DELETE", f"{keys_url}/{issued['id']}")
    assert status == 200 and len(await _events(db, partner["id"], "api_key.revoked")) == 1
    status, body = await call(client, "POST", f"{keys_url}/{issued['id']}/rotate")
    assert status == 422 and body["error"]["code"] == "KEY_NOT_USABLE"

    # Another partner's key is not found, never forbidden
    other = await new_partner(client)
    status, body = await call(client, "DELETE", f"{ADMIN}/partners/{other['id']}/keys/{live['id']}")
    assert status == 404
    status, body = await call(client, "GET", f"{ADMIN}/partners/{'0' * 24}/keys")
    assert status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"environment": "staging", "name": "k"}, "environment"),
        ({"environment": "sandbox"}, "name"),
        ({"environment": "sandbox", "name": "k", "expiresAt": "2020-01-01T00:00:00Z"}, "expiresAt"),
        ({"environment": "sandbox", "name": "k", "expiresAt": "2099-01-01T00:00:00"}, "expiresAt"),
        ({"environment": "sandbox", "name": "k", "ipAllowlist": ["x/33"]}, "ipAllowlist"),
    ],
)
async def test_key_validation(client, body, field):
    partner = await new_partner(client)
    status, answer = await call(client, "POST", f"{ADMIN}/partners/{partner['id']}/keys", body)
    assert status == 422, answer
    assert field in answer["error"]["details"]["fields"]


# -- token pools, allocations, reserves -----------------------------------------------------------


async def test_pools_allocations_and_reserves(client):
    partner = await new_partner(client, status="ACTIVE")
    url = f"{ADMIN}/partners/{partner['id']}/token-pools"
    status, pool = await call(
        client,
        "POST",
        url,
        {
            "environment": "sandbox",
            "name": "Main",
            "allocation": "1000.5",
            "restrictions": {
                "vestingDays": 7,
                "expirationDays": 365,
                "redemption": {"minBalance": Decimal("10"), "allowedCategories": ["gift_cards"]},
            },
            "lowBalanceThreshold": 100,
            "autoRefill": {"enabled": True, "threshold": "50", "amount": 500, "maxPerDay": 2},
        },
    )
    assert status == 201, pool
    assert pool["isDefault"] is True and pool["status"] == "ACTIVE"
    assert pool["balance"] == Decimal("1000.5") and pool["allocatedTotal"] == Decimal("1000.5")
    assert pool["distributedTotal"] == 0 and pool["reserveBalance"] == 0
    assert pool["lowBalanceThreshold"] == 100
    assert pool["restrictions"] == {
        "vestingDays": 7,
        "expirationDays": 365,
        "redemption": {"minBalance": 10, "allowedCategories": ["gift_cards"]},
    }
    assert pool["autoRefill"] == {"enabled": True, "threshold": 50, "amount": 500, "maxPerDay": 2}

    # Allocations are exact to the micro-token
    status, body = await call(
        client,
        "POST",
        f"{url}/{pool['id']}/allocations",
        {"amount": Decimal("0.000001"), "memo": "top"},
    )
    assert status == 201, body
    assert body["pool"]["balance"] == Decimal("1000.500001") and body["entryId"]
    status, body = await call(
        client, "POST", f"{url}/{pool['id']}/allocations", {"amount": "123456789012.123456"}
    )
    assert body["pool"]["balance"] == Decimal("123456790012.623457")

    for bad in ("0.0000001", 0, "-1", "abc", True):
        status, body = await call(
            client, "POST", f"{url}/{pool['id']}/allocations", {"amount": bad}
        )
        assert status == 422, (bad, body)
        assert "amount" in body["error"]["details"]["fields"]

    # A second pool is not the default; restrictions must be consistent
    status, second = await call(client, "POST", url, {"environment": "sandbox", "name": "Promo"})
    assert status == 201 and second["isDefault"] is False and second["balance"] == 0
    status, body = await call(
        client,
        "POST",
        url,
        {
            "environment": "sandbox",
            "name": "x",
            "restrictions": {"vestingDays": 30, "expirationDays": 30},
        },
    )
    assert status == 422 and "restrictions.expirationDays" in body["error"]["details"]["fields"]

    # Another partner's pool is not found
    other = await new_partner(client)
    status, body = await call(
        client,
        "POST",
        f"{ADMIN}/partners/{other['id']}/token-pools/{pool['id']}/allocations",
        {"amount": 1},
    )
    assert status == 404

    # Reserves fund the partner's refill reserve per environment
    reserves = f"{ADMIN}/partners/{partner['id']}/reserves"
    status, body = await call(
        client, "POST", reserves, {"environment": "sandbox", "amount": "250.25"}
    )
    assert status == 201 and body["reserveBalance"] == Decimal("250.25")
    status, body = await call(client, "POST", reserves, {"environment": "sandbox", "amount": 1})
    assert body["reserveBalance"] == Decimal("251.25")
    status, body = await call(client, "POST", reserves, {"environment": "production", "amount": 1})
    assert body["reserveBalance"] == 1
    status, body = await call(client, "POST", reserves, {"environment": "sandbox", "amount": 0})
    assert status == 422
    status, body = await call(
        client,
        "POST",
        f"{ADMIN}/partners/{'0' * 24}/reserves",
        {"environment": "sandbox", "amount": 1},
    )
    assert status == 404


# -- top-up requests ------------------------------------------------------------------------------


async def test_request_topup_engine_rules(db, make_partner):
    funded = await make_partner()
    other = await make_partner()
    async with db.begin() as conn:
        row = await request_topup(conn, funded.scope, funded.pool_id, Tokens.parse("5.5"), " more ")
        assert row["status"] == "PENDING" and row["amount"] == 5_500_000 and row["reason"] == "more"
        with pytest.raises(ValidationFailed):
            await request_topup(conn, funded.scope, funded.pool_id, Tokens(0), None)
        with pytest.raises(NotFound):
            await request_topup(conn, other.scope, funded.pool_id, Tokens.parse("1"), None)
        with pytest.raises(NotFound):
            production = Scope(funded.partner_id, "production")
            await request_topup(conn, production, funded.pool_id, Tokens.parse("1"), None)


async def test_approve_and_reject_topups(client, db, make_partner):
    funded = await make_partner(funding="100")
    async with db.begin() as conn:
        first = await request_topup(
            conn, funded.scope, funded.pool_id, Tokens.parse("40"), "launch"
        )
        second = await request_topup(conn, funded.scope, funded.pool_id, Tokens.parse("7"), None)

    status, body = await call(
        client, "GET", f"{ADMIN}/partners/{funded.partner_id}/token-pool-requests"
    )
    # (one transaction, one created_at: the order between them is by id, so compare as sets)
    assert status == 200 and {r["id"] for r in body["data"]} == {second["id"], first["id"]}
    listed = next(r for r in body["data"] if r["id"] == first["id"])
    assert listed["amount"] == 40 and listed["status"] == "PENDING" and listed["reason"] == "launch"

    status, body = await call(client, "POST", f"{ADMIN}/token-pool-requests/{first['id']}/approve")
    assert status == 200, body
    assert body["status"] == "APPROVED" and body["decidedBy"].startswith("operator:")
    async with db.connect() as conn:
        balance = (
            await conn.execute(
                text("SELECT balance FROM ledger_accounts WHERE pool_id = :p"),
                {"p": funded.pool_id},
            )
        ).scalar_one()
    assert balance == 140_000_000

    status, body = await call(client, "POST", f"{ADMIN}/token-pool-requests/{first['id']}/approve")
    assert status == 409 and body["error"]["code"] == "REQUEST_ALREADY_DECIDED"

    status, body = await call(
        client, "POST", f"{ADMIN}/token-pool-requests/{second['id']}/reject", {"reason": "not now"}
    )
    assert status == 200 and body["status"] == "REJECTED"
    status, body = await call(client, "POST", f"{ADMIN}/token-pool-requests/{second['id']}/approve")
    assert status == 409

    status, body = await call(
        client, "GET", f"{ADMIN}/partners/{funded.partner_id}/token-pool-requests?status=PENDING"
    )
    assert body["data"] == []
    status, body = await call(client, "POST", f"{ADMIN}/token-pool-requests/{'0' * 24}/reject")
    assert status == 404


# -- portal users and the audit log ---------------------------------------------------------------


async def test_create_portal_users(client):
    partner = await new_partner(client)
    email = f"Owner-{secrets.token_hex(3)}@Acme.test"
    status, user = await call(
        client,
        "POST",
        f"{ADMIN}/portal-users",
        {"email": email, "password": "correct horse battery", "partnerId": partner["id"]},
    )
    assert status == 201, user
    assert user["email"] == email.lower() and user["partnerId"] == partner["id"]
    assert "password" not in str(user).lower()

    status, body = await call(
        client,
        "POST",
        f"{ADMIN}/portal-users",
        {"email": email.upper(), "password": "another password"},
    )
    assert status == 409 and body["error"]["code"] == "EMAIL_TAKEN"
    status, body = await call(
        client, "POST", f"{ADMIN}/portal-users", {"email": "not-an-email", "password": "short"}
    )
    assert status == 422
    assert set(body["error"]["details"]["fields"]) == {"email", "password"}
    status, body = await call(
        client,
        "POST",
        f"{ADMIN}/portal-users",
        {"email": "x@y.test", "password": "long enough pw", "partnerId": "0" * 24},
    )
    assert status == 422 and "partnerId" in body["error"]["details"]["fields"]


async def test_audit_log_has_before_after_and_no_secrets(client, db):
    partner = await new_partner(client)
    pid = partner["id"]
    await call(
        client, "PATCH", f"{ADMIN}/partners/{pid}", {"status": "ACTIVE", "tier": "ENTERPRISE"}
    )
    _, issued = await call(
        client, "POST", f"{ADMIN}/partners/{pid}/keys", {"environment": "sandbox", "name": "a"}
    )
    _, rotated = await call(client, "POST", f"{ADMIN}/partners/{pid}/keys/{issued['id']}/rotate")
    await call(client, "DELETE", f"{ADMIN}/partners/{pid}/keys/{issued['id']}")
    password = f"pw-{secrets.token_hex(12)}"
    await call(
        client,
        "POST",
        f"{ADMIN}/portal-users",
        {"email": f"a-{secrets.token_hex(3)}@x.test", "password": password, "partnerId": pid},
    )

    status, log = await call(client, "GET", f"{ADMIN}/audit-log?targetId={pid}")
    assert status == 200
    change = next(e for e in log["data"] if e["action"] == "partner.status_change")
    assert change["before"] == {"status": "PENDING_APPROVAL", "tier": "STANDARD"}
    assert change["after"] == {"status": "ACTIVE", "tier": "ENTERPRISE"}
    assert change["actor"].startswith("operator:") and OPERATOR_TOKEN not in str(log)
    assert log["data"][-1]["action"] == "partner.create"  # newest first

    status, revokes = await call(
        client, "GET", f"{ADMIN}/audit-log?action=api_key.revoke&targetId={issued['id']}"
    )
    assert [e["after"]["isActive"] for e in revokes["data"]] == [False]

    # Page through the whole log: cursor pagination with integer ids works too
    status, page = await call(client, "GET", f"{ADMIN}/audit-log?limit=3")
    assert len(page["data"]) == 3 and page["nextCursor"]
    status, page2 = await call(
        client, "GET", f"{ADMIN}/audit-log?limit=3&cursor={page['nextCursor']}"
    )
    assert status == 200 and not {e["id"] for e in page["data"]} & {e["id"] for e in page2["data"]}

    # No secret ever lands in the audit table, in any row
    async with db.connect() as conn:
        everything = (
            await conn.execute(
                text("SELECT coalesce(string_agg(a::text, ' '), '') FROM audit_log a")
            )
        ).scalar_one()
    for secret in (
        issued["secretKey"],
        issued["hmacSecret"],
        rotated["secretKey"],
        rotated["hmacSecret"],
        password,
        OPERATOR_TOKEN,
    ):
        assert secret not in everything


async def test_real_server_serves_the_operator_api_and_portal(front):
    """`sir-engine serve` (a real process) wires both route sets."""
    import aiohttp

    base = front()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}{ADMIN}/partners", json={"name": "Served partner"}, headers=AUTH
        ) as response:
            assert response.status == 201
            partner = await response.json()
        async with session.get(f"{base}{ADMIN}/partners/{partner['id']}") as response:
            assert response.status == 401
        async with session.get(f"{base}/v1/partner/auth/me") as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "AUTH_REQUIRED"


async def test_rotated_key_works_alongside_the_old_until_it_is_revoked(client):
    """Through the real partner authentication: both pairs sign valid calls until revoke."""
    from engine.signing import sign_request

    partner = await new_partner(client, status="ACTIVE")
    keys_url = f"{ADMIN}/partners/{partner['id']}/keys"
    _, old = await call(client, "POST", keys_url, {"environment": "sandbox", "name": "a"})
    _, new = await call(client, "POST", f"{keys_url}/{old['id']}/rotate")

    async def list_users(issued: dict[str, Any]) -> tuple[int, Any]:
        path = "/v1/partner/users?limit=1"
        timestamp = str(int(datetime.now(UTC).timestamp()))
        signature = sign_request(issued["hmacSecret"], timestamp, "GET", path, b"")
        headers = {
            "X-Partner-Key": issued["secretKey"],
            "X-Timestamp": timestamp,
            "X-Signature": signature,
        }
        return await call(client, "GET", path, headers=headers)

    assert (await list_users(old))[0] == 200
    assert (await list_users(new))[0] == 200
    status, _ = await call(client, "DELETE", f"{keys_url}/{old['id']}")
    assert status == 200
    status, body = await list_users(old)
    assert status == 401 and body["error"]["code"] == "INVALID_API_KEY"
    assert (await list_users(new))[0] == 200
