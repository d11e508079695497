"""Issue 3's proofs across real `sir-engine serve` processes: one rate-limit budget shared by
two fronts, and zero-downtime key rotation through the operator API."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from sqlalchemy import text

from engine.credentials import issue_keys
from sir_client import SirClient
from tests.conftest import OPERATOR_TOKEN


async def test_a_burst_across_two_front_processes_gets_exactly_the_limit(
    db, box, make_partner, front
):
    first, second = front(), front()
    partner = await make_partner()
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE partners SET rate_limit_override = CAST(:o AS jsonb) WHERE id = :id"),
            {"o": json.dumps({"perHour": 1000, "perMinute": 10}), "id": partner.partner_id},
        )
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner.partner_id, environment="sandbox", name="k"
        )
    # Given two front processes sharing one Redis, when 30 signed requests (3x the per-minute
    # limit) arrive spread over both,
    clients = [SirClient(base, keys.secret_key, keys.hmac_secret) for base in (first, second)]
    try:
        responses = await asyncio.gather(
            *(clients[i % 2].request_raw("GET", "/v1/partner/users") for i in range(30))
        )
    finally:
        for client in clients:
            await client.close()
    # then exactly the limit succeeds, and the rest are 429 with the retry headers.
    ok = [r for r in responses if r.status == 200]
    limited = [r for r in responses if r.status == 429]
    assert len(ok) == 10 and len(limited) == 20
    assert sorted(int(r.headers["X-RateLimit-Remaining"]) for r in ok) == list(range(10))
    assert {r.headers["X-RateLimit-Limit"] for r in ok} == {"1000"}
    for r in limited:
        assert r.body["error"]["code"] == "RATE_LIMITED"
        assert (
            int(r.headers["Retry-After"]) >= 1
            and r.headers["X-RateLimit-RetryAfter"] == r.headers["Retry-After"]
        )


async def _operator(session, base, method, path, body=None):
    async with session.request(
        method, base + path, json=body, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ) as response:
        return response.status, await response.json()


async def test_key_rotation_has_no_downtime(make_partner, front):
    base = front()
    partner = await make_partner()
    async with aiohttp.ClientSession() as session:
        status, old = await _operator(
            session,
            base,
            "POST",
            f"/api/v1/admin/partners/{partner.partner_id}/keys",
            {"environment": "sandbox", "name": "primary"},
        )
        assert status == 201, old
        status, new = await _operator(
            session,
            base,
            "POST",
            f"/api/v1/admin/partners/{partner.partner_id}/keys/{old['id']}/rotate",
        )
        assert status == 201, new
        async with (
            SirClient(base, old["secretKey"], old["hmacSecret"]) as with_old,
            SirClient(base, new["secretKey"], new["hmacSecret"]) as with_new,
        ):
            # Both pairs work until the old one is revoked...
            assert (await with_old.request_raw("GET", "/v1/partner/users")).status == 200
            assert (await with_new.request_raw("GET", "/v1/partner/users")).status == 200
            status, _ = await _operator(
                session,
                base,
                "DELETE",
                f"/api/v1/admin/partners/{partner.partner_id}/keys/{old['id']}",
            )
            assert status in (200, 204)
            # ...then the old one is refused within the one-second cache bound; the new one works.
            await asyncio.sleep(1.1)
            refused = await with_old.request_raw("GET", "/v1/partner/users")
            assert (refused.status, refused.body["error"]["code"]) == (401, "INVALID_API_KEY")
            assert (await with_new.request_raw("GET", "/v1/partner/users")).status == 200
