"""Action submit over real HTTP: a `sir-engine serve` process, real keys, real signatures."""

from __future__ import annotations

import time
from decimal import Decimal

import aiohttp
import pytest

from engine.credentials import issue_keys
from engine.money import Tokens
from engine.pools import pool_balance
from engine.signing import sign_request
from engine.wire import loads
from sir_client import SirApiError, SirClient

T = Tokens.parse


async def _keys(db, box, partner_id, environment="sandbox"):
    async with db.begin() as conn:
        return await issue_keys(
            conn, box, actor="test", partner_id=partner_id, environment=environment, name="e2e"
        )


async def _raw_post(
    base: str, keys, path: str, body: bytes, content_type: str = "application/json"
):
    """Sign and send exact bytes (number spelling and key order are the point)."""
    timestamp = str(int(time.time()))
    headers = {
        "X-Partner-Key": keys.secret_key,
        "X-Timestamp": timestamp,
        "X-Signature": sign_request(keys.hmac_secret, timestamp, "POST", path, body),
        "Content-Type": content_type,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + path, data=body, headers=headers) as response,
    ):
        return response.status, dict(response.headers), loads(await response.read())


async def test_submit_replay_and_read_back(db, box, make_partner, front):
    base = front()
    partner = await make_partner(funding="500")
    keys = await _keys(db, box, partner.partner_id)
    path = "/v1/partner/actions/submit"
    body = (
        b'{"idempotencyKey":"purchase_98765","actionType":"PURCHASE","amount":49.99,"currency":"USD",'
        b'"stakeholders":[{"stakeholderTypeCode":"CUSTOMER","partnerUserId":"user_42"}]}'
    )
    status, headers, first = await _raw_post(base, keys, path, body)
    assert status == 200, first
    assert first["tokensDistributed"] == Decimal("49.99") and first["status"] == "COMPLETED"
    assert first["distributions"][0]["partnerUserId"] == "user_42"
    assert "X-RateLimit-Remaining" in headers

    # Same body after parsing: other key order, other number spelling -> 409 with the original.
    again = (
        b'{"stakeholders":[{"partnerUserId":"user_42","stakeholderTypeCode":"CUSTOMER"}],'
        b'"currency":"USD","amount":"49.990","actionType":"PURCHASE","idempotencyKey":"purchase_98765"}'
    )
    status, headers, replay = await _raw_post(base, keys, path, again)
    assert status == 409 and replay["error"]["code"] == "IDEMPOTENT"
    assert headers.get("Idempotent-Replayed") == "true"
    assert replay["error"]["details"]["original"]["actionId"] == first["actionId"]

    changed = body.replace(b"49.99", b"50")
    status, _, reused = await _raw_post(base, keys, path, changed)
    assert status == 422 and reused["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"

    async with SirClient(base, keys.secret_key, keys.hmac_secret) as sir:
        fetched = await sir.request("GET", f"/v1/partner/actions/{first['actionId']}")
        assert (
            fetched["actionId"] == first["actionId"]
            and fetched["amount"] == T("49.99").to_decimal()
        )
        listed = await sir.request("GET", "/v1/partner/actions", params={"limit": 10})
        assert [a["actionId"] for a in listed["data"]] == [first["actionId"]]
        balance = await sir.get_balance("user_42")
        assert balance["available"] == T("49.99").to_decimal()

    # The production key sees nothing of sandbox: 404, not 403.
    live = await _keys(db, box, partner.partner_id, "production")
    async with SirClient(base, live.secret_key, live.hmac_secret) as sir:
        with pytest.raises(SirApiError) as caught:
            await sir.request("GET", f"/v1/partner/actions/{first['actionId']}")
        assert (caught.value.status, caught.value.code) == (404, "NOT_FOUND")


async def test_bad_bodies_get_contract_codes_and_apply_nothing(db, box, make_partner, front):
    base = front()
    partner = await make_partner(funding="500")
    keys = await _keys(db, box, partner.partner_id)
    path = "/v1/partner/actions/submit"

    status, _, body = await _raw_post(base, keys, path, b'{"idempotencyKey": "x", ')
    assert (status, body["error"]["code"]) == (400, "MALFORMED_JSON")
    status, _, body = await _raw_post(
        base, keys, path, b"idempotencyKey=x", "application/x-www-form-urlencoded"
    )
    assert (status, body["error"]["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")

    status, _, body = await _raw_post(
        base,
        keys,
        path,
        b'{"idempotencyKey":"","actionType":"purchase","amount":-1,"currency":"usd",'
        b'"stakeholders":[{"stakeholderTypeCode":"ORGANIZATION","partnerUserId":"u"}],"extra":1}',
    )
    assert status == 422 and body["error"]["code"] == "VALIDATION_FAILED"
    fields = body["error"]["details"]["fields"]
    assert {
        "idempotencyKey",
        "actionType",
        "amount",
        "currency",
        "stakeholders[0]",
        "extra",
    } <= set(fields)
    assert fields["amount"] == ["must be greater than 0"]

    status, _, body = await _raw_post(
        base,
        keys,
        path,
        b'{"idempotencyKey":"k1","actionType":"PURCHASE","amount":"1.5",'
        b'"stakeholders":[{"stakeholderTypeCode":"CUSTOMER","partnerUserId":"u"}],"autoCreateUsers":false}',
    )
    assert (status, body["error"]["code"]) == (422, "UNKNOWN_USER")

    async with SirClient(base, keys.secret_key, keys.hmac_secret) as sir:
        listed = await sir.request("GET", "/v1/partner/actions")
    assert listed["data"] == []
    async with db.connect() as conn:
        assert await pool_balance(conn, partner.scope, partner.pool_id) == T("500")


async def test_nul_characters_are_a_field_error_not_a_crash(db, box, make_partner, front):
    base = front()
    partner = await make_partner(funding="10")
    keys = await _keys(db, box, partner.partner_id)
    body = (
        b'{"idempotencyKey":"nul","actionType":"PURCHASE","amount":1,'
        b'"stakeholders":[{"stakeholderTypeCode":"CUSTOMER","partnerUserId":"u"}],'
        b'"metadata":{"note":"a\\u0000b"}}'
    )
    status, _, answer = await _raw_post(base, keys, "/v1/partner/actions/submit", body)
    assert status == 422 and answer["error"]["details"]["fields"] == {
        "metadata.note": ["must not contain NUL characters"]
    }
