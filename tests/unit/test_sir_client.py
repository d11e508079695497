"""SirClient against a recording server: what it signs is byte for byte what it sends."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine.money import Tokens
from engine.signing import sign_request
from sir_client import OMIT, SirApiError, SirClient, build_query, segment

SECRET_KEY = "sk_test_" + "1" * 64
HMAC_SECRET = "9f" * 32
NOW = 1767225600


def test_contract_vector_for_a_signed_get():
    target = "/v1/partner/users" + build_query({"limit": 10})
    assert target == "/v1/partner/users?limit=10"
    assert (
        sign_request(HMAC_SECRET, str(NOW), "GET", target, b"")
        == "037ab9e644b638c748ea8f78d5068b34795997ca17a7f6cd90fcd4774e0674a0"
    )


def test_query_and_segment_encoding():
    assert build_query(None) == "" and build_query({"a": None}) == ""
    assert (
        build_query({"email": "a+b@x.io", "ok": True, "t": ["X", "Y"]})
        == "?email=a%2Bb%40x.io&ok=true&t=X&t=Y"
    )
    assert (
        build_query({"amount": Tokens.parse("1.50"), "d": Decimal("1E+2")}) == "?amount=1.5&d=100"
    )
    assert segment("email:jane@x.com/1 ?#") == "email%3Ajane%40x.com%2F1%20%3F%23"


@pytest.fixture
async def recorder():
    seen: list[dict] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "body": body,
                "headers": dict(request.headers),
                "match": request.match_info.get("ext"),
            }
        )
        if request.path.endswith("/missing"):
            return web.json_response(
                {
                    "error": {
                        "name": "NotFoundError",
                        "code": "NOT_FOUND",
                        "message": "nope",
                        "details": {"x": 1},
                    }
                },
                status=404,
                headers={"X-Request-Id": "req_1"},
            )
        if request.method == "POST":
            return web.Response(
                status=201,
                text='{"externalUserId":"u","amount":123456789012.123456}',
                content_type="application/json",
            )
        return web.Response(text='{"data":[],"nextCursor":null}', content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/api/v1/partner/users", handler)
    app.router.add_route("*", "/api/v1/partner/users/{ext}", handler)
    server = TestServer(app)
    await server.start_server()
    yield server, seen
    await server.close()


async def test_requests_are_signed_over_exactly_what_is_sent(recorder):
    server, seen = recorder
    base = str(server.make_url("/api/"))  # a path prefix is part of the signed target
    async with SirClient(base, SECRET_KEY, HMAC_SECRET, clock=lambda: NOW + 0.9) as client:
        user, created = await client.upsert_user(
            "u", email=None, metadata={"k": "v"}, first_name=OMIT
        )
        assert created and user["amount"] == Decimal("123456789012.123456")
        await client.list_users(limit=10, email="A+b@x.io")
        await client.get_user("email:jane@x.com/1")
        with pytest.raises(SirApiError) as caught:
            await client.get_user("missing")
    assert caught.value.status == 404 and caught.value.code == "NOT_FOUND"
    assert caught.value.details == {"x": 1} and caught.value.request_id == "req_1"

    post, listing, get, _ = seen
    assert post["body"] == b'{"externalUserId":"u","email":null,"metadata":{"k":"v"}}'
    assert post["headers"]["Content-Type"] == "application/json"
    assert listing["raw_path"] == "/api/v1/partner/users?limit=10&email=A%2Bb%40x.io"
    assert get["raw_path"] == "/api/v1/partner/users/email%3Ajane%40x.com%2F1"
    assert get["match"] == "email:jane@x.com/1"
    for request in seen:
        headers = request["headers"]
        assert headers["X-Partner-Key"] == SECRET_KEY
        assert headers["X-Timestamp"] == str(NOW)
        expected = sign_request(
            HMAC_SECRET, str(NOW), request["method"], request["raw_path"], request["body"]
        )
        assert headers["X-Signature"] == expected
    assert hashlib.sha256(listing["body"]).hexdigest() == hashlib.sha256(b"").hexdigest()


async def test_each_request_is_signed_with_the_current_time(recorder):
    server, seen = recorder
    ticks = iter([NOW, NOW + 7])
    async with SirClient(
        str(server.make_url("/api")), SECRET_KEY, HMAC_SECRET, clock=lambda: next(ticks)
    ) as client:
        await client.list_users()
        await client.list_users()
    assert [r["headers"]["X-Timestamp"] for r in seen] == [str(NOW), str(NOW + 7)]
    assert seen[0]["headers"]["X-Signature"] != seen[1]["headers"]["X-Signature"]


def test_repr_hides_secrets():
    client = SirClient("http://localhost:1", SECRET_KEY, HMAC_SECRET)
    assert SECRET_KEY not in repr(client) and HMAC_SECRET not in repr(client)
