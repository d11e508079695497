# ruff: noqa: F811 - pytest fixtures imported from conftest_auth are parameters by design
"""Partner authentication through real HTTP: contract 3.1, 3.2 and the refusal table of 3.5.

Real PostgreSQL (keys issued by the real use case), real Redis (replays, budgets, epoch), real
signing. Every refusal asserts status, code and the envelope.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import update

from engine.keyring import Keyring
from engine.signing import sign_request
from engine.tables import api_keys, partners
from http_front.auth_partner import EPOCH_KEY
from http_front.metrics import AUTH_FAILURES
from tests.conftest import free_port
from tests.integration.conftest_auth import (  # noqa: F401 - fixtures
    PROBE,
    Credentials,
    assert_envelope,
    client,
    make_credentials,
    probe_app,
    signed,
    start_client,
    with_settings,
)

BODY = b'{"idempotencyKey":"k1","actionType":"PURCHASE","amount":49.99}'


@dataclass
class Req:
    """A request about to be sent; a case's `tamper` changes it after it was signed."""

    method: str
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Case:
    id: str
    status: int
    code: str | None  # None: the call goes through
    creds: dict[str, Any] = field(default_factory=dict)  # make_credentials arguments
    method: str = "POST"
    path: str = PROBE
    sign: dict[str, Any] = field(default_factory=dict)  # signed() arguments
    tamper: Callable[[Req, Credentials], None] = lambda req, creds: None


def _drop(header: str) -> Callable[[Req, Credentials], None]:
    return lambda req, creds: req.headers.pop(header)


def _set(header: str, value: str) -> Callable[[Req, Credentials], None]:
    return lambda req, creds: req.headers.__setitem__(header, value)


def _publishable(req: Req, creds: Credentials) -> None:
    req.headers["X-Partner-Key"] = creds.keys.public_key


def _unknown_key(req: Req, creds: Credentials) -> None:
    req.headers["X-Partner-Key"] = "sk_test_" + secrets.token_hex(32)


def _wrong_secret(req: Req, creds: Credentials) -> None:
    ts = req.headers["X-Timestamp"]
    req.headers["X-Signature"] = sign_request("0" * 64, ts, req.method, req.path, req.body)


def _tamper_body(req: Req, creds: Credentials) -> None:
    req.body = req.body.replace(b"49.99", b"4999")


def _tamper_query(req: Req, creds: Credentials) -> None:
    req.path = req.path.replace("limit=10", "limit=11")


def _t_mismatch(req: Req, creds: Credentials) -> None:
    # a valid signature for X-Timestamp, but t= names another second
    ts = req.headers["X-Timestamp"]
    sig = req.headers["X-Signature"]
    req.headers["X-Signature"] = f"t={int(ts) - 1},v1={sig}"


def _upper_hex(req: Req, creds: Credentials) -> None:
    req.headers["X-Signature"] = req.headers["X-Signature"].upper()


PAST = datetime.now().astimezone() - timedelta(minutes=1)

CASES = [
    # the calls that go through
    Case("signed POST", 200, None),
    Case("signed GET with query", 200, None, method="GET", path=PROBE + "?limit=10&q=a%20b"),
    Case("t= form", 200, None, sign={"form": "t="}),
    Case("upper-case hex", 200, None, tamper=_upper_hex),
    Case("pending partner, sandbox key", 200, None, creds={"status": "PENDING_APPROVAL"}),
    Case("live key, active partner", 200, None, creds={"environment": "production"}),
    Case("skew 290 s", 200, None, sign={"skew": -290}),
    Case(
        "key allowlist admits, partner's does not",
        200,
        None,
        creds={"key_ip_allowlist": ["127.0.0.0/8"], "partner_ip_allowlist": ["10.0.0.0/8"]},
    ),
    Case(
        "feature enabled",
        200,
        None,
        path="/v1/partner/_donations",
        creds={"features": ("ACTIONS", "DONATIONS")},
    ),
    # 1
    Case("no X-Partner-Key", 401, "AUTH_REQUIRED", tamper=_drop("X-Partner-Key")),
    # 2
    Case("pk_ on a secret endpoint", 403, "SECRET_KEY_REQUIRED", tamper=_publishable),
    Case(
        "pk_ on a secret endpoint, unsigned",
        403,
        "SECRET_KEY_REQUIRED",
        tamper=lambda req, creds: req.headers.update(
            {"X-Partner-Key": creds.keys.public_key, "X-Signature": "", "X-Timestamp": ""}
        ),
    ),
    # 3
    Case("no X-Timestamp", 401, "AUTH_REQUIRED", tamper=_drop("X-Timestamp")),
    Case("no X-Signature", 401, "AUTH_REQUIRED", tamper=_drop("X-Signature")),
    Case("X-Timestamp not a number", 401, "AUTH_REQUIRED", tamper=_set("X-Timestamp", "soon")),
    Case("X-Signature not hex", 401, "AUTH_REQUIRED", tamper=_set("X-Signature", "zz" * 32)),
    Case("X-Signature too short", 401, "AUTH_REQUIRED", tamper=_set("X-Signature", "ab" * 16)),
    Case("t= form without v1", 401, "AUTH_REQUIRED", tamper=_set("X-Signature", "t=1767225600")),
    Case(
        "unknown key, no signature",
        401,
        "AUTH_REQUIRED",
        tamper=lambda req, creds: (_unknown_key(req, creds), req.headers.pop("X-Signature")),
    ),
    # 4
    Case("unknown key", 401, "INVALID_API_KEY", tamper=_unknown_key),
    Case("not a key at all", 401, "INVALID_API_KEY", tamper=_set("X-Partner-Key", "hello")),
    Case(
        "live prefix on a sandbox key",
        401,
        "INVALID_API_KEY",
        tamper=lambda req, creds: req.headers.__setitem__(
            "X-Partner-Key", creds.keys.secret_key.replace("sk_test_", "sk_live_")
        ),
    ),
    Case("revoked key", 401, "INVALID_API_KEY", creds={"revoked": True}),
    Case("deactivated key", 401, "INVALID_API_KEY", creds={"is_active": False}),
    Case(
        "deactivated key, bad signature",
        401,
        "INVALID_API_KEY",
        creds={"is_active": False},
        tamper=_wrong_secret,
    ),
    # 5
    Case("expired key", 401, "API_KEY_EXPIRED", creds={"expires_at": PAST}),
    Case(
        "expired key, stale timestamp",
        401,
        "API_KEY_EXPIRED",
        creds={"expires_at": PAST},
        sign={"skew": -3600},
    ),
    # 6
    Case("timestamp 301 s old", 401, "TIMESTAMP_OUT_OF_RANGE", sign={"skew": -400}),
    Case("timestamp 400 s ahead", 401, "TIMESTAMP_OUT_OF_RANGE", sign={"skew": 400}),
    Case(
        "stale timestamp, bad signature",
        401,
        "TIMESTAMP_OUT_OF_RANGE",
        sign={"skew": -400},
        tamper=_wrong_secret,
    ),
    # 7
    Case("wrong signature", 401, "INVALID_SIGNATURE", tamper=_wrong_secret),
    Case("body tampered after signing", 401, "INVALID_SIGNATURE", tamper=_tamper_body),
    Case(
        "query tampered after signing",
        401,
        "INVALID_SIGNATURE",
        method="GET",
        path=PROBE + "?limit=10",
        tamper=_tamper_query,
    ),
    Case(
        "method changed after signing",
        401,
        "INVALID_SIGNATURE",
        tamper=lambda req, creds: setattr(req, "method", "DELETE"),
    ),
    Case(
        "t= differs from X-Timestamp",
        401,
        "INVALID_SIGNATURE",
        tamper=_t_mismatch,
    ),
    Case(
        "suspended partner, bad signature",
        401,
        "INVALID_SIGNATURE",
        creds={"status": "SUSPENDED"},
        tamper=_wrong_secret,
    ),
    # 8
    Case("suspended partner", 401, "PARTNER_SUSPENDED", creds={"status": "SUSPENDED"}),
    Case(
        "suspended partner, IP not allowed",
        401,
        "PARTNER_SUSPENDED",
        creds={"status": "SUSPENDED", "key_ip_allowlist": ["10.0.0.0/8"]},
    ),
    # 9
    Case("deactivated partner", 401, "PARTNER_NOT_ACTIVE", creds={"status": "DEACTIVATED"}),
    Case(
        "pending partner, live key",
        401,
        "PARTNER_NOT_ACTIVE",
        creds={"status": "PENDING_APPROVAL", "environment": "production"},
    ),
    # 10
    Case(
        "IP outside the key's allowlist",
        403,
        "IP_NOT_ALLOWED",
        creds={"key_ip_allowlist": ["10.0.0.0/8"]},
    ),
    Case(
        "IP outside the partner's allowlist",
        403,
        "IP_NOT_ALLOWED",
        creds={"partner_ip_allowlist": ["192.168.0.0/16", "2001:db8::/32"]},
    ),
    Case(
        "allowlist of broken entries admits nobody",
        403,
        "IP_NOT_ALLOWED",
        creds={"partner_ip_allowlist": ["not-a-cidr"]},
    ),
    Case(
        "IP not allowed, feature missing",
        403,
        "IP_NOT_ALLOWED",
        path="/v1/partner/_donations",
        creds={"key_ip_allowlist": ["10.0.0.0/8"]},
    ),
    # 11
    Case("feature not enabled", 403, "FEATURE_NOT_ENABLED", path="/v1/partner/_donations"),
    Case(
        "feature not enabled (outer decorator)",
        403,
        "FEATURE_NOT_ENABLED",
        path="/v1/partner/_donations2",
    ),
]


async def _send(client, req: Req):
    response = await client.request(req.method, req.path, data=req.body, headers=req.headers)
    return response, await response.json()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_refusal_table(case: Case, client, make_credentials):
    # given a partner and key in the state the case names, and a correctly signed request
    creds = await make_credentials(**case.creds)
    body = BODY if case.method == "POST" else b""
    sign = dict(case.sign)
    if "skew" in sign:  # timestamps are made now, not when the table was built
        sign["timestamp"] = int(time.time()) + sign.pop("skew")
    req = Req(
        case.method, case.path, body, signed(creds.keys, case.method, case.path, body, **sign)
    )
    case.tamper(req, creds)
    before = AUTH_FAILURES.labels(case.code)._value.get() if case.code else 0

    # when it is sent
    response, payload = await _send(client, req)

    # then the first check that applies answers
    assert response.status == case.status, payload
    if case.code is None:
        assert payload["partnerId"] == creds.partner_id
        assert payload["keyId"] == creds.keys.id
        assert payload["keyKind"] == "secret"
        assert payload["environment"] == creds.keys.environment
        assert payload["bodyLength"] == len(body)
        assert response.headers["X-RateLimit-Limit"] == "1000"
    else:
        assert_envelope(payload, case.code)
        assert AUTH_FAILURES.labels(case.code)._value.get() == before + 1
        assert "X-RateLimit-Limit" not in response.headers  # not authenticated
    assert response.headers["X-Request-Id"]


async def test_principal_carries_the_partner_state(client, make_credentials):
    creds = await make_credentials(
        environment="production", tier="ENTERPRISE", features=("ACTIONS", "MARKETPLACE")
    )
    response = await client.get(PROBE, headers=signed(creds.keys, "GET", PROBE))
    assert response.status == 200
    assert await response.json() == {
        "partnerId": creds.partner_id,
        "environment": "production",
        "keyId": creds.keys.id,
        "keyKind": "secret",
        "partnerStatus": "ACTIVE",
        "tier": "ENTERPRISE",
        "enabledFeatures": ["ACTIONS", "MARKETPLACE"],
        "bodyLength": 0,
    }
    assert response.headers["X-RateLimit-Limit"] == "20000"


# -- replays ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_a_replayed_write_is_refused(client, make_credentials, method):
    creds = await make_credentials()
    body = BODY if method == "POST" else b""
    headers = signed(creds.keys, method, PROBE, body)

    first = await client.request(method, PROBE, data=body, headers=headers)
    again = await client.request(method, PROBE, data=body, headers=headers)

    assert first.status == 200
    assert again.status == 401
    assert_envelope(await again.json(), "REPLAYED_REQUEST")
    # refused after authentication: it still reports the budget, and spent none of it
    assert again.headers["X-RateLimit-Remaining"] == first.headers["X-RateLimit-Remaining"]


async def test_a_replay_in_the_other_signature_form_is_refused(client, make_credentials):
    creds = await make_credentials()
    headers = signed(creds.keys, "POST", PROBE, BODY)
    assert (await client.post(PROBE, data=BODY, headers=headers)).status == 200

    headers["X-Signature"] = f"t={headers['X-Timestamp']},v1={headers['X-Signature'].upper()}"
    again = await client.post(PROBE, data=BODY, headers=headers)

    assert again.status == 401
    assert_envelope(await again.json(), "REPLAYED_REQUEST")


async def test_a_get_may_repeat(client, make_credentials):
    creds = await make_credentials()
    headers = signed(creds.keys, "GET", PROBE)
    for _ in range(3):
        assert (await client.get(PROBE, headers=headers)).status == 200


async def test_a_refused_write_is_not_recorded_as_seen(client, make_credentials, db):
    # given a signed write refused at step 9 (partner deactivated) ...
    creds = await make_credentials(status="DEACTIVATED")
    headers = signed(creds.keys, "POST", PROBE, BODY)
    refused = await client.post(PROBE, data=BODY, headers=headers)
    assert_envelope(await refused.json(), "PARTNER_NOT_ACTIVE")
    # ... when the partner is reactivated and the keyring's second has passed
    async with db.begin() as conn:
        await conn.execute(
            update(partners).where(partners.c.id == creds.partner_id).values(status="ACTIVE")
        )
    await asyncio.sleep(1.05)
    # then the same signature is accepted once: the refusal did not count as acceptance
    assert (await client.post(PROBE, data=BODY, headers=headers)).status == 200
    again = await client.post(PROBE, data=BODY, headers=headers)
    assert_envelope(await again.json(), "REPLAYED_REQUEST")


async def test_same_signature_under_two_keys_is_not_a_replay(client, make_credentials):
    # replay records are per key: two keys never share a signature in practice, but a record
    # of one must not refuse the other
    one = await make_credentials()
    two = await make_credentials()
    for creds in (one, two):
        headers = signed(creds.keys, "POST", PROBE, BODY)
        assert (await client.post(PROBE, data=BODY, headers=headers)).status == 200


async def test_writes_signed_before_the_replay_epoch_are_refused(
    client, make_credentials, services
):
    redis = aioredis.from_url(services.redis_url)
    creds = await make_credentials()
    old_epoch = await redis.get(EPOCH_KEY)
    try:
        # given Redis lost its replay state 10 s ago (no epoch: the next request sets it now)
        await redis.delete(EPOCH_KEY)
        assert (await client.get(PROBE, headers=signed(creds.keys, "GET", PROBE))).status == 200
        epoch = int(await redis.get(EPOCH_KEY))
        assert abs(epoch - time.time()) < 5
        # when a write signed before the epoch arrives
        stale = signed(creds.keys, "POST", PROBE, BODY, timestamp=epoch - 10)
        refused = await client.post(PROBE, data=BODY, headers=stale)
        # then it is refused as a possible replay, while a fresh signature passes
        assert refused.status == 401
        assert_envelope(await refused.json(), "REPLAYED_REQUEST")
        fresh = signed(creds.keys, "POST", PROBE, BODY, timestamp=epoch)
        assert (await client.post(PROBE, data=BODY, headers=fresh)).status == 200
        # and reads are not writes: an older signed GET still passes
        old_get = signed(creds.keys, "GET", PROBE, timestamp=epoch - 10)
        assert (await client.get(PROBE, headers=old_get)).status == 200
    finally:
        if old_epoch is not None:
            await redis.set(EPOCH_KEY, min(int(old_epoch), int(time.time()) - 600))
        await redis.aclose()


# -- key and partner changes reach the front within a second ------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        ("api_keys", {"revoked_at": datetime.now().astimezone()}, "INVALID_API_KEY"),
        ("api_keys", {"is_active": False}, "INVALID_API_KEY"),
        ("partners", {"status": "SUSPENDED"}, "PARTNER_SUSPENDED"),
        ("partners", {"status": "DEACTIVATED"}, "PARTNER_NOT_ACTIVE"),
    ],
    ids=["revoked", "deactivated key", "suspended", "deactivated partner"],
)
async def test_changes_apply_within_one_second(client, make_credentials, db, change):
    table_name, values, code = change
    creds = await make_credentials()
    assert (await client.get(PROBE, headers=signed(creds.keys, "GET", PROBE))).status == 200

    async with db.begin() as conn:
        if table_name == "api_keys":
            await conn.execute(
                update(api_keys).where(api_keys.c.id == creds.keys.id).values(**values)
            )
        else:
            await conn.execute(
                update(partners).where(partners.c.id == creds.partner_id).values(**values)
            )
    await asyncio.sleep(1.0)

    response = await client.get(PROBE, headers=signed(creds.keys, "GET", PROBE))
    assert response.status == 401
    assert_envelope(await response.json(), code)


# -- client IP behind trusted proxies -----------------------------------------------------------


@pytest.mark.parametrize(
    "trusted, forwarded, status",
    [
        ((), "10.1.2.3", 403),  # no trusted proxy: X-Forwarded-For is ignored, peer 127.0.0.1
        (("127.0.0.1/32",), "10.1.2.3", 200),
        (("127.0.0.1/32", "172.16.0.0/12"), "10.1.2.3, 172.16.0.9", 200),  # two proxies
        # the client wrote an allowlisted address itself; the proxy appended the real one
        (("127.0.0.1/32",), "10.1.2.3, 192.168.7.7", 403),
        (("127.0.0.1/32",), "", 403),  # nothing forwarded: the peer itself
    ],
)
async def test_client_ip_behind_trusted_proxies(
    settings, make_credentials, trusted, forwarded, status
):
    app_settings = with_settings(
        settings, trusted_proxies=tuple(ipaddress.ip_network(t) for t in trusted)
    )
    proxied = await start_client(probe_app(app_settings))
    try:
        creds = await make_credentials(key_ip_allowlist=["10.0.0.0/8"])
        headers = signed(creds.keys, "GET", PROBE)
        if forwarded:
            headers["X-Forwarded-For"] = forwarded
        response = await proxied.get(PROBE, headers=headers)
        assert response.status == status, await response.text()
        if status == 403:
            assert_envelope(await response.json(), "IP_NOT_ALLOWED")
    finally:
        await proxied.close()


# -- the widget decorator -------------------------------------------------------------------------


async def test_widget_accepts_a_publishable_key_alone(client, make_credentials):
    creds = await make_credentials(partner_ip_allowlist=["10.0.0.0/8"])  # not for browsers
    response = await client.get(
        "/v1/partner/_widget", headers={"X-Partner-Key": creds.keys.public_key}
    )
    assert response.status == 200
    payload = await response.json()
    assert payload["keyKind"] == "publishable"
    assert payload["partnerId"] == creds.partner_id
    assert response.headers["X-RateLimit-Limit"] == "60"


async def test_widget_accepts_a_signed_secret_key(client, make_credentials):
    creds = await make_credentials()
    path = "/v1/partner/_widget"
    response = await client.get(path, headers=signed(creds.keys, "GET", path))
    assert response.status == 200
    assert (await response.json())["keyKind"] == "secret"
    assert response.headers["X-RateLimit-Limit"] == "1000"


@pytest.mark.parametrize(
    "creds_args, key, code",
    [
        ({}, "pk_test_" + "0" * 64, "INVALID_API_KEY"),
        ({"revoked": True}, None, "INVALID_API_KEY"),
        ({"expires_at": PAST}, None, "API_KEY_EXPIRED"),
        ({"status": "SUSPENDED"}, None, "PARTNER_SUSPENDED"),
        ({"status": "PENDING_APPROVAL", "environment": "production"}, None, "PARTNER_NOT_ACTIVE"),
    ],
)
async def test_widget_refusals(client, make_credentials, creds_args, key, code):
    creds = await make_credentials(**creds_args)
    response = await client.get(
        "/v1/partner/_widget", headers={"X-Partner-Key": key or creds.keys.public_key}
    )
    assert response.status == 401
    assert_envelope(await response.json(), code)


async def test_widget_sandbox_key_of_a_pending_partner_works(client, make_credentials):
    creds = await make_credentials(status="PENDING_APPROVAL")
    response = await client.get(
        "/v1/partner/_widget", headers={"X-Partner-Key": creds.keys.public_key}
    )
    assert response.status == 200


async def test_widget_budget_is_per_key_and_client_ip(client, make_credentials):
    creds = await make_credentials()
    headers = {"X-Partner-Key": creds.keys.public_key}
    statuses = [
        (await client.get("/v1/partner/_widget", headers=headers)).status for _ in range(61)
    ]
    assert statuses.count(200) == 60
    refused = await client.get("/v1/partner/_widget", headers=headers)
    assert refused.status == 429
    assert_envelope(await refused.json(), "RATE_LIMITED")
    assert int(refused.headers["Retry-After"]) >= 1
    # another key of the same partner has its own budget
    other = await make_credentials(partner_id=creds.partner_id)
    response = await client.get(
        "/v1/partner/_widget", headers={"X-Partner-Key": other.keys.public_key}
    )
    assert response.status == 200


# -- headers on authenticated errors, and Redis down ------------------------------------------------


async def test_an_authenticated_error_carries_the_budget_headers(client, make_credentials):
    creds = await make_credentials()
    path = "/v1/partner/_refuse"
    response = await client.post(path, data=BODY, headers=signed(creds.keys, "POST", path, BODY))
    assert response.status == 422
    assert_envelope(await response.json(), "VALIDATION_FAILED")
    assert response.headers["X-RateLimit-Limit"] == "1000"
    assert response.headers["X-RateLimit-Remaining"] == "99"  # the minute binds
    assert int(response.headers["X-RateLimit-Reset"]) > time.time()


async def test_redis_unreachable_fails_closed(settings, make_credentials):
    broken = with_settings(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    down = await start_client(probe_app(broken))
    try:
        creds = await make_credentials()
        for method, body in (("GET", b""), ("POST", BODY)):
            response = await down.request(
                method, PROBE, data=body, headers=signed(creds.keys, method, PROBE, body)
            )
            assert response.status == 503
            assert_envelope(await response.json(), "SERVICE_UNAVAILABLE")
            assert int(response.headers["Retry-After"]) > 0
        widget = await down.get(
            "/v1/partner/_widget", headers={"X-Partner-Key": creds.keys.public_key}
        )
        assert widget.status == 503
        # refusals that need no Redis still answer as before
        refused = await down.get(PROBE)
        assert_envelope(await refused.json(), "AUTH_REQUIRED")
    finally:
        await down.close()


async def test_no_secret_reaches_the_logs(client, make_credentials, caplog):
    creds = await make_credentials()
    caplog.set_level("DEBUG")
    headers = signed(creds.keys, "POST", PROBE, BODY)
    headers["X-Signature"] = "0" * 64
    await client.post(PROBE, data=BODY, headers=headers)
    text = caplog.text + json.dumps([r.args for r in caplog.records], default=str)
    assert creds.keys.secret_key not in text
    assert creds.keys.hmac_secret not in text
    assert creds.keys.secret_key[-4:] in text  # masked: prefix and last four


# -- the keyring itself -------------------------------------------------------------------------


async def test_keyring_caches_for_at_most_a_second(db, box, make_credentials):
    ring = Keyring(db, box)
    creds = await make_credentials(key_ip_allowlist=["10.0.0.0/8"])
    record = await ring.by_secret_key(creds.keys.secret_key)
    assert record is not None
    assert record.key_id == creds.keys.id
    assert record.hmac_secret == creds.keys.hmac_secret
    assert creds.keys.hmac_secret not in repr(record)
    assert record.ip_allowed("10.9.8.7") and not record.ip_allowed("127.0.0.1")
    assert record.ip_allowed("::ffff:10.9.8.7")  # IPv4-mapped peers read as IPv4
    assert (await ring.by_publishable_key(creds.keys.public_key)).kind == "publishable"

    async with db.begin() as conn:
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == creds.keys.id)
            .values(revoked_at=datetime.now().astimezone())
        )
    # within the second the cached answer may still be served; invalidate() drops it at once
    assert await ring.by_secret_key(creds.keys.secret_key) is not None
    ring.invalidate()
    assert await ring.by_secret_key(creds.keys.secret_key) is None
    assert await ring.by_publishable_key(creds.keys.public_key) is None


async def test_keyring_refuses_a_ttl_past_the_contracts_second(db, box):
    with pytest.raises(ValueError):
        Keyring(db, box, ttl=1.5)


async def test_keyring_concurrent_cold_lookups_share_one_answer(db, box, make_credentials):
    ring = Keyring(db, box)
    creds = await make_credentials()
    records = await asyncio.gather(*(ring.by_secret_key(creds.keys.secret_key) for _ in range(20)))
    assert {r.key_id for r in records} == {creds.keys.id}
    assert len({id(r) for r in records}) == 1  # one query answered them all
