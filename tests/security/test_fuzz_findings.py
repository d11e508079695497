"""Regression tests for what the fuzzing run (`test_api_fuzz.py`) found, each pinned to the
smallest request that showed it, on the real app over a test server with real signatures.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from engine.signing import sign_request
from engine.wire import dumps
from http_front.app import create_app
from tests.conftest import OPERATOR_TOKEN

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest_asyncio.fixture(loop_scope="session")
async def client(settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1")) as test_client:
        yield test_client


async def send(
    client: TestClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    keys: dict[str, str] | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    if data is None:
        data = dumps(body).encode() if body is not None else b""
    sent = dict(headers or {})
    if data and "Content-Type" not in sent:
        sent["Content-Type"] = "application/json"
    if keys is None:
        sent.update(OPERATOR)
    else:
        ts = str(int(time.time()))
        sent.update(
            {
                "X-Partner-Key": keys["secretKey"],
                "X-Timestamp": ts,
                "X-Signature": sign_request(keys["hmacSecret"], ts, method, path, data),
            }
        )
    async with client.request(method, path, data=data, headers=sent) as response:
        return response.status, await response.json()


@pytest_asyncio.fixture(loop_scope="session")
async def keys(client) -> dict[str, str]:
    status, partner = await send(
        client,
        "POST",
        "/api/v1/admin/partners",
        {
            "name": f"Findings {secrets.token_hex(3)}",
            "status": "ACTIVE",
            "enabledFeatures": ["ACTIONS", "MARKETPLACE"],
            "actionTypes": ["PURCHASE"],
            "stakeholderTypes": ["CUSTOMER"],
        },
    )
    assert status == 201
    admin = f"/api/v1/admin/partners/{partner['id']}"
    status, issued = await send(
        client, "POST", f"{admin}/keys", {"environment": "sandbox", "name": "f"}
    )
    assert status == 201
    status, _ = await send(
        client,
        "POST",
        f"{admin}/token-pools",
        {"environment": "sandbox", "name": "m", "allocation": 1000},
    )
    assert status == 201
    return dict(issued)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/v1/admin/audit-log?targetId=a%00b", 422, "VALIDATION_FAILED"),
        ("/api/v1/admin/partners?status=%00", 422, "VALIDATION_FAILED"),
        ("/api/v1/admin/partners/ab%00cd", 404, "NOT_FOUND"),
    ],
)
async def test_a_nul_in_a_query_or_path_parameter_is_a_clean_refusal(client, path, status, code):
    assert (await send(client, "GET", path))[0] == status
    got, body = await send(client, "GET", path)
    assert (got, body["error"]["code"]) == (status, code)


async def test_a_nul_in_a_signed_path_is_not_found(client, keys):
    status, body = await send(client, "GET", "/v1/partner/users/user%00x", keys=keys)
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")


async def test_a_reconciliation_day_that_is_not_a_date_is_422(client, keys):
    status, body = await send(client, "GET", "/v1/partner/reconciliation/0", keys=keys)
    assert (status, body["error"]["code"]) == (422, "VALIDATION_FAILED")


async def test_a_catalog_import_not_in_its_charset_is_422(client):
    status, body = await send(
        client,
        "POST",
        "/api/v1/admin/catalog/import",
        data=b"sku,name\n\xff\xfe,x\n",
        headers={"Content-Type": "text/csv"},
    )
    assert (status, body["error"]["code"]) == (422, "VALIDATION_FAILED")
    assert "body" in body["error"]["details"]["fields"]


SUBMIT = {
    "actionType": "PURCHASE",
    "stakeholders": [{"stakeholderTypeCode": "CUSTOMER", "partnerUserId": "big_spender"}],
}


async def test_an_action_that_would_mint_past_the_ledger_is_422(client, keys):
    # amount 10^14 under the default rule is 10^14 tokens = 10^20 micro-tokens, past BIGINT
    body = {**SUBMIT, "idempotencyKey": f"big_{secrets.token_hex(3)}", "amount": "100000000000000"}
    status, answer = await send(client, "POST", "/v1/partner/actions/submit", body, keys=keys)
    assert (status, answer["error"]["code"]) == (422, "VALIDATION_FAILED"), answer
    assert "amount" in answer["error"]["details"]["fields"]
    # and the key stays unused: a fixed amount goes through with it
    status, answer = await send(
        client, "POST", "/v1/partner/actions/submit", {**body, "amount": "1"}, keys=keys
    )
    assert status == 200, answer


async def test_a_campaign_simulation_past_the_ledger_is_422(client, keys):
    status, campaign = await send(
        client,
        "POST",
        "/v1/partner/campaigns",
        {"name": "big", "splits": [{"stakeholderTypeCode": "CUSTOMER", "percent": 100}]},
        keys=keys,
    )
    assert status == 201, campaign
    path = f"/v1/partner/campaigns/{campaign['id']}/simulate"
    status, answer = await send(
        client, "POST", path, {"actionType": "PURCHASE", "amount": 3.402823466e38}, keys=keys
    )
    assert (status, answer["error"]["code"]) == (422, "VALIDATION_FAILED"), answer
