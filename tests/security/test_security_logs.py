"""Secrets never in logs, in process: the real app on a test server, every logger at DEBUG
captured by caplog while keys, HMAC secrets, webhook secrets and headers, portal passwords and
tokens are issued and used (well and badly). The subprocess side (a real front and a real
worker, their output in files) is `test_security_front.py`'s last test.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from engine.signing import sign_request
from engine.wire import dumps
from http_front.app import create_app
from tests.conftest import OPERATOR_TOKEN
from tests.security.live_front import reset_login_limits

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest_asyncio.fixture(loop_scope="session")
async def client(settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1")) as test_client:
        yield test_client


async def test_no_secret_reaches_the_logs_in_process(client, caplog, services):
    reset_login_limits(services.redis_url)  # loopback shares one login budget per IP
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []

    async def call(method: str, path: str, body: Any = None, headers: Any = None) -> Any:
        data = dumps(body).encode() if body is not None else b""
        sent = {"Content-Type": "application/json", **(headers or OPERATOR)}
        async with client.request(method, path, data=data, headers=sent) as response:
            return response.status, await response.json()

    status, partner = await call(
        "POST",
        "/api/v1/admin/partners",
        {"name": f"Logs {secrets.token_hex(3)}", "status": "ACTIVE", "actionTypes": ["PURCHASE"]},
    )
    assert status == 201
    admin = f"/api/v1/admin/partners/{partner['id']}"
    status, keys = await call("POST", f"{admin}/keys", {"environment": "sandbox", "name": "a"})
    assert status == 201
    issued += [keys["secretKey"], keys["hmacSecret"]]
    status, rotated = await call("POST", f"{admin}/keys/{keys['id']}/rotate")
    assert status == 201
    issued += [rotated["secretKey"], rotated["hmacSecret"]]
    header_value = "Bearer hdr_" + secrets.token_hex(16)
    status, hook = await call(
        "POST",
        f"{admin}/webhooks",
        {
            "url": "https://hooks.sir.invalid/x",
            "environment": "sandbox",
            "receiveAllEvents": True,
            "headers": {"Authorization": header_value},
        },
    )
    assert status == 201, hook
    issued += [hook["secret"], header_value]
    password = "pw-" + secrets.token_hex(12)
    email = f"logs-{secrets.token_hex(3)}@example.test"
    status, _ = await call(
        "POST",
        "/api/v1/admin/portal-users",
        {"email": email, "password": password, "partnerId": partner["id"]},
    )
    assert status == 201
    issued.append(password)
    forwarded: dict[str, str] = {}
    status, session = await call(
        "POST", "/v1/partner/auth/login", {"email": email, "password": password}, forwarded
    )
    assert status == 200, session
    issued += [session["accessToken"], session["refreshToken"]]
    status, _ = await call(
        "POST", "/v1/partner/auth/login", {"email": email, "password": password + "x"}, forwarded
    )
    assert status == 401
    bearer = {"Authorization": f"Bearer {session['accessToken']}"}
    status, own = await call(
        "POST", "/v1/partner/keys", {"name": "own", "environment": "sandbox"}, bearer
    )
    assert status == 201, own
    issued += [own["secretKey"], own["hmacSecret"]]
    # signed calls: a good one, a bad signature, a stale timestamp
    ts = str(int(time.time()))
    path = "/v1/partner/webhooks"
    good = sign_request(rotated["hmacSecret"], ts, "GET", path, b"")
    for timestamp, signature in ((ts, good), (ts, "0" * 64), ("1", good)):
        status, _ = await call(
            "GET",
            path,
            headers={
                "X-Partner-Key": rotated["secretKey"],
                "X-Timestamp": timestamp,
                "X-Signature": signature,
            },
        )
        assert status in (200, 401)
    status, again = await call(
        "POST",
        f"/v1/partner/webhooks/{hook['id']}/rotate-secret",
        headers={
            "X-Partner-Key": rotated["secretKey"],
            "X-Timestamp": ts,
            "X-Signature": sign_request(
                rotated["hmacSecret"],
                ts,
                "POST",
                f"/v1/partner/webhooks/{hook['id']}/rotate-secret",
                b"",
            ),
        },
    )
    assert status == 200, again
    issued.append(again["secret"])

    assert caplog.records  # something was logged, so the search below searched something
    text = caplog.text + "".join(str(r.args) for r in caplog.records if r.args)
    assert [s[:12] for s in issued if s in text] == []
