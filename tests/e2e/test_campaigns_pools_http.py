"""Campaigns, token pools and transactions over real HTTP: one `sir-engine serve` process for the
module, real keys, real signatures (SirClient)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest
from sqlalchemy import select

from engine.accounts import wallet
from engine.credentials import issue_keys
from engine.money import Tokens
from engine.pools import create_pool
from engine.tables import outbox_events
from sir_client import SirApiError, SirClient
from tests.conftest import ROOT, Services, free_port, wait_http_ok
from tests.integration.test_pools_transactions import _action, _distribute, _reverse, _user

T = Tokens.parse
D = Decimal
SPLITS = [
    {"stakeholderTypeCode": "DONOR", "percent": 70},
    {"stakeholderTypeCode": "ORGANIZATION", "percent": "20"},
    {"stakeholderTypeCode": "REFERRER", "percent": 10},
]


@pytest.fixture(scope="module")
def base_url(services: Services) -> Iterator[str]:
    """One front for the module (starting a process per test would dominate the run time)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "serve", "--port", str(port)],
        env=services.env(),
        cwd=ROOT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/healthz", process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


async def _client(db, box, base_url, partner_id, environment="sandbox"):
    async with db.begin() as conn:
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner_id, environment=environment, name="e2e"
        )
    return SirClient(base_url, keys.secret_key, keys.hmac_secret)


async def _refused(call, status, code):
    with pytest.raises(SirApiError) as caught:
        await call
    assert (caught.value.status, caught.value.code) == (status, code), caught.value
    return caught.value


# -- campaigns --------------------------------------------------------------------------------------


async def test_campaign_create_get_patch_list(db, box, make_partner, base_url):
    partner = await make_partner()
    async with await _client(db, box, base_url, partner.partner_id) as sir:
        created = await sir.request(
            "POST",
            "/v1/partner/campaigns",
            {
                "name": "Holiday",
                "priority": 2,
                "actionTypes": ["PURCHASE"],
                "multiplier": "2",
                "baseTokens": 0.5,
                "tiers": [{"minAmount": 100, "multiplier": "3.25"}],
                "splits": SPLITS,
                "schedule": {
                    "startsAt": "2026-11-20T10:00:00+01:00",
                    "daysOfWeek": ["SAT", "FRI"],
                    "timezone": "Europe/Paris",
                },
                "budget": {"totalTokens": "1000.000001"},
                "poolId": partner.pool_id,
            },
        )
        assert created["status"] == "DRAFT"
        assert created["multiplier"] == 2 and created["baseTokens"] == D("0.5")
        assert created["tiers"] == [{"minAmount": 100, "multiplier": D("3.25")}]
        assert [s["percent"] for s in created["splits"]] == [70, 20, 10]
        assert created["schedule"] == {
            "startsAt": "2026-11-20T09:00:00Z",
            "endsAt": None,
            "daysOfWeek": ["FRI", "SAT"],
            "timezone": "Europe/Paris",
        }
        assert created["budget"] == {
            "totalTokens": D("1000.000001"),
            "perUserTokens": None,
            "spentTokens": 0,
        }
        assert created["poolId"] == partner.pool_id and created["createdAt"].endswith("Z")
        path = f"/v1/partner/campaigns/{created['id']}"
        assert await sir.request("GET", path) == created

        # A merge: only what is sent changes, inside schedule and budget too.
        patched = await sir.request(
            "PATCH",
            path,
            {"status": "ACTIVE", "schedule": {"endsAt": "2027-01-01T00:00:00Z"}},
        )
        assert patched["status"] == "ACTIVE"
        assert patched["schedule"]["startsAt"] == "2026-11-20T09:00:00Z"
        assert patched["schedule"]["endsAt"] == "2027-01-01T00:00:00Z"
        assert patched["budget"]["totalTokens"] == D("1000.000001")
        cleared = await sir.request("PATCH", path, {"budget": {"totalTokens": None}})
        assert cleared["budget"]["totalTokens"] is None

        for i in range(3):
            await sir.request("POST", "/v1/partner/campaigns", {"name": f"c{i}", "splits": SPLITS})
        first = await sir.request("GET", "/v1/partner/campaigns", params={"limit": 2})
        assert [c["name"] for c in first["data"]] == ["c2", "c1"] and first["nextCursor"]
        rest = await sir.request(
            "GET", "/v1/partner/campaigns", params={"limit": 2, "cursor": first["nextCursor"]}
        )
        assert [c["name"] for c in rest["data"]] == ["c0", "Holiday"]
        assert rest["nextCursor"] is None
        active = await sir.request("GET", "/v1/partner/campaigns", params={"status": "ACTIVE"})
        assert [c["id"] for c in active["data"]] == [created["id"]]
        await _refused(
            sir.request(
                "GET",
                "/v1/partner/campaigns",
                params={"status": "ACTIVE", "cursor": first["nextCursor"]},
            ),
            400,
            "INVALID_CURSOR",
        )
        await _refused(
            sir.request("GET", "/v1/partner/campaigns", params={"status": "LIVE"}),
            422,
            "VALIDATION_FAILED",
        )
        await _refused(
            sir.request("GET", "/v1/partner/campaigns", params={"limit": 0}),
            422,
            "VALIDATION_FAILED",
        )

    async with db.connect() as conn:
        events = (
            await conn.execute(
                select(outbox_events.c.payload).where(
                    outbox_events.c.partner_id == partner.partner_id,
                    outbox_events.c.type == "campaign.status_changed",
                )
            )
        ).scalars()
        (payload,) = list(events)
    assert payload["id"] == created["id"] and payload["previousStatus"] == "DRAFT"
    assert payload["status"] == "ACTIVE"


async def test_campaign_field_errors(db, box, make_partner, base_url):
    partner = await make_partner()
    other = await make_partner()
    async with await _client(db, box, base_url, partner.partner_id) as sir:
        error = await _refused(
            sir.request(
                "POST",
                "/v1/partner/campaigns",
                {
                    "name": "Bad",
                    "splits": [{"stakeholderTypeCode": "DONOR", "percent": "99.9"}],
                    "schedule": {"timezone": "Mars/Base", "daysOfWeek": ["MON", "XYZ"]},
                    "poolId": other.pool_id,
                },
            ),
            422,
            "VALIDATION_FAILED",
        )
        assert error.details["fields"] == {
            "splits": ["must add up to exactly 100 (they add up to 99.9)"],
            "schedule.timezone": ["must be an IANA time zone name, like Europe/Paris or UTC"],
            "schedule.daysOfWeek": ["'XYZ' is not one of MON, TUE, WED, THU, FRI, SAT, SUN"],
            "poolId": ["must be a token pool of this partner in this environment"],
        }
        # Shape errors come from the wire model, with paths.
        error = await _refused(
            sir.request(
                "POST",
                "/v1/partner/campaigns",
                {
                    "splits": [{"stakeholderTypeCode": "DONOR", "percent": "lots"}],
                    "multiplier": 1.0000001,
                    "budget": {"spentTokens": 5},
                },
            ),
            422,
            "VALIDATION_FAILED",
        )
        assert set(error.details["fields"]) == {"name", "splits[0].percent", "budget.spentTokens"}

        created = await sir.request(
            "POST", "/v1/partner/campaigns", {"name": "Ok", "splits": SPLITS, "status": "ENDED"}
        )
        path = f"/v1/partner/campaigns/{created['id']}"
        error = await _refused(
            sir.request("PATCH", path, {"status": "ACTIVE"}), 422, "INVALID_STATUS_TRANSITION"
        )
        assert error.details["from"] == "ENDED"
        error = await _refused(
            sir.request("PATCH", path, {"name": None, "schedule": {"timezone": None}}),
            422,
            "VALIDATION_FAILED",
        )
        assert set(error.details["fields"]) == {"name", "schedule.timezone"}
        await _refused(
            sir.request("PATCH", path, {"schedule": {"endsAt": "tomorrow"}}),
            422,
            "VALIDATION_FAILED",
        )


async def test_another_partners_or_environments_campaign_is_404(db, box, make_partner, base_url):
    partner = await make_partner()
    other = await make_partner()
    async with await _client(db, box, base_url, partner.partner_id) as sir:
        created = await sir.request(
            "POST", "/v1/partner/campaigns", {"name": "Mine", "splits": SPLITS}
        )
    path = f"/v1/partner/campaigns/{created['id']}"
    for client in (
        await _client(db, box, base_url, other.partner_id),
        await _client(db, box, base_url, partner.partner_id, "production"),
    ):
        async with client as sir:
            await _refused(sir.request("GET", path), 404, "NOT_FOUND")
            await _refused(sir.request("PATCH", path, {"name": "x"}), 404, "NOT_FOUND")
            await _refused(
                sir.request("POST", path + "/simulate", {"actionType": "PURCHASE", "amount": 1}),
                404,
                "NOT_FOUND",
            )
            listed = await sir.request("GET", "/v1/partner/campaigns")
            assert listed["data"] == []


async def test_simulate(db, box, make_partner, base_url):
    partner = await make_partner()
    async with await _client(db, box, base_url, partner.partner_id) as sir:
        created = await sir.request(
            "POST",
            "/v1/partner/campaigns",
            {"name": "x2", "multiplier": 2, "splits": SPLITS, "budget": {"totalTokens": 50}},
        )
        path = f"/v1/partner/campaigns/{created['id']}/simulate"
        body = {
            "actionType": "PURCHASE",
            "amount": 33.33,
            "stakeholders": [
                {"stakeholderTypeCode": "DONOR", "partnerUserId": "u1", "userEmail": "a@b.c"},
                {"stakeholderTypeCode": "ORGANIZATION", "organizationSlug": "red-cross"},
            ],
        }
        result = await sir.request("POST", path, body)
        assert result["campaignId"] == created["id"]
        assert result["tokensTotal"] == D("66.66")
        assert result["tokensDistributed"] == D("59.994")  # no REFERRER: 6.666 stays in the pool
        assert result["distributions"] == [
            {"stakeholderTypeCode": "DONOR", "partnerUserId": "u1", "tokens": D("46.662")},
            {
                "stakeholderTypeCode": "ORGANIZATION",
                "organizationSlug": "red-cross",
                "tokens": D("13.332"),
            },
        ]
        assert result["applies"] is False
        assert result["budget"]["covered"] is False
        assert result["budget"]["exceededScope"] == "campaign"
        # Nothing was applied.
        again = await sir.request("GET", f"/v1/partner/campaigns/{created['id']}")
        assert again["budget"]["spentTokens"] == 0

        error = await _refused(
            sir.request(
                "POST",
                path,
                {
                    "actionType": "PURCHASE",
                    "amount": "-1",
                    "stakeholders": [{"stakeholderTypeCode": "ORGANIZATION"}],
                },
            ),
            422,
            "VALIDATION_FAILED",
        )
        assert error.details["fields"] == {
            "stakeholders[0].organizationSlug": ["is required for a ORGANIZATION stakeholder"],
            "amount": ["must be 0 or more"],
        }
        error = await _refused(sir.request("POST", path, {"amount": 1}), 422, "VALIDATION_FAILED")
        assert list(error.details["fields"]) == ["actionType"]


# -- token pools --------------------------------------------------------------------------------------


async def test_pools_list_get_and_topup_request(db, box, make_partner, base_url):
    partner = await make_partner(funding="250", vesting_days=2, expiration_days=30)
    other = await make_partner()
    async with db.begin() as conn:
        second = await create_pool(conn, partner.scope, actor="test", name="second")
    async with await _client(db, box, base_url, partner.partner_id) as sir:
        pool = await sir.request("GET", f"/v1/partner/token-pools/{partner.pool_id}")
        assert pool == {
            **pool,
            "id": partner.pool_id,
            "environment": "sandbox",
            "name": "main",
            "isDefault": True,
            "status": "ACTIVE",
            "balance": 250,
            "allocatedTotal": 250,
            "distributedTotal": 0,
            "lowBalanceThreshold": 0,
            "reserveBalance": 0,
        }
        assert pool["restrictions"]["vestingDays"] == 2
        assert pool["restrictions"]["expirationDays"] == 30
        assert set(pool["restrictions"]["redemption"]) == {"minBalance", "allowedCategories"}
        assert set(pool["autoRefill"]) == {"enabled", "threshold", "amount", "maxPerDay"}

        first = await sir.request("GET", "/v1/partner/token-pools", params={"limit": 1})
        assert [p["id"] for p in first["data"]] == [second["id"]] and first["nextCursor"]
        rest = await sir.request(
            "GET", "/v1/partner/token-pools", params={"limit": 1, "cursor": first["nextCursor"]}
        )
        assert [p["id"] for p in rest["data"]] == [partner.pool_id]
        assert rest["nextCursor"] is None

        request = await sir.request(
            "POST",
            "/v1/partner/token-pools/request",
            {"poolId": partner.pool_id, "amount": "500.5", "reason": "holiday season"},
        )
        assert request["status"] == "PENDING" and request["amount"] == D("500.5")
        assert request["poolId"] == partner.pool_id and request["reason"] == "holiday season"

        error = await _refused(
            sir.request(
                "POST", "/v1/partner/token-pools/request", {"poolId": partner.pool_id, "amount": 0}
            ),
            422,
            "VALIDATION_FAILED",
        )
        assert error.details["fields"] == {"amount": ["must be greater than 0"]}
        error = await _refused(
            sir.request(
                "POST",
                "/v1/partner/token-pools/request",
                {"amount": "1.0000001", "extra": 1},
            ),
            422,
            "VALIDATION_FAILED",
        )
        assert set(error.details["fields"]) == {"poolId", "amount", "extra"}
        await _refused(
            sir.request(
                "POST", "/v1/partner/token-pools/request", {"poolId": other.pool_id, "amount": 1}
            ),
            404,
            "NOT_FOUND",
        )
        await _refused(
            sir.request("GET", f"/v1/partner/token-pools/{other.pool_id}"), 404, "NOT_FOUND"
        )

    async with await _client(db, box, base_url, partner.partner_id, "production") as sir:
        await _refused(
            sir.request("GET", f"/v1/partner/token-pools/{partner.pool_id}"), 404, "NOT_FOUND"
        )
        assert (await sir.request("GET", "/v1/partner/token-pools"))["data"] == []


# -- transactions -------------------------------------------------------------------------------------


async def test_transactions(db, box, make_partner, base_url):
    partner = await make_partner(funding="100")
    scope = partner.scope
    async with db.begin() as conn:
        alice = await wallet(conn, scope, partner_user_id=await _user(conn, scope, "alice"))
        action_id = await _action(conn, scope, partner.pool_id)
        await _distribute(conn, scope, partner.pool_id, action_id, [(alice, T("12.5"))])
        await _reverse(conn, scope, partner.pool_id, action_id, alice, T("2.5"))
    async with await _client(db, box, base_url, partner.partner_id) as sir:
        everything = await sir.request("GET", "/v1/partner/transactions")
        assert len(everything["data"]) == 5 and everything["nextCursor"] is None
        mine = await sir.request(
            "GET", "/v1/partner/transactions", params={"externalUserId": "alice"}
        )
        assert sorted(line["amount"] for line in mine["data"]) == [D("-2.5"), D("12.5")]
        credit = next(line for line in mine["data"] if line["type"] == "CREDIT")
        assert credit["poolId"] == partner.pool_id and credit["actionId"] == action_id
        assert credit["externalUserId"] == "alice" and credit["organizationSlug"] is None

        seen = []
        cursor = None
        while True:
            page = await sir.request(
                "GET",
                "/v1/partner/transactions",
                params={"actionId": action_id, "limit": 3, "cursor": cursor},
            )
            seen += [line["id"] for line in page["data"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert len(seen) == 4 and len(set(seen)) == 4

        now = datetime.now(UTC)
        window = await sir.request(
            "GET",
            "/v1/partner/transactions",
            params={"from": now - timedelta(hours=1), "to": now + timedelta(hours=1)},
        )
        assert len(window["data"]) == 5
        # An offset with a literal "+" is accepted too.
        later = await sir.request(
            "GET",
            "/v1/partner/transactions",
            params={"from": (now + timedelta(hours=1)).astimezone().isoformat()},
        )
        assert later["data"] == []
        error = await _refused(
            sir.request(
                "GET",
                "/v1/partner/transactions",
                params={"from": "yesterday", "to": "2026-01-01T00:00:00", "type": "GIFT"},
            ),
            422,
            "VALIDATION_FAILED",
        )
        assert set(error.details["fields"]) == {"from", "to", "type"}

    other = await make_partner()
    for client in (
        await _client(db, box, base_url, other.partner_id),
        await _client(db, box, base_url, partner.partner_id, "production"),
    ):
        async with client as sir:
            found = await sir.request(
                "GET", "/v1/partner/transactions", params={"actionId": action_id}
            )
            assert found["data"] == []


async def test_publishable_key_or_no_key_is_refused(db, box, make_partner, base_url):
    async with aiohttp.ClientSession() as session:
        for path in (
            "/v1/partner/campaigns",
            "/v1/partner/token-pools",
            "/v1/partner/transactions",
        ):
            async with session.get(base_url + path) as response:
                assert response.status == 401
    partner = await make_partner()
    async with db.begin() as conn:
        keys = await issue_keys(
            conn, box, actor="t", partner_id=partner.partner_id, environment="sandbox", name="k"
        )
    async with aiohttp.ClientSession() as session:
        async with session.get(
            base_url + "/v1/partner/token-pools", headers={"X-Partner-Key": keys.public_key}
        ) as response:
            assert response.status == 403


# -- the pieces together --------------------------------------------------------------------------


async def test_a_submit_under_a_campaign_shows_in_simulate_pool_and_transactions(
    db, box, make_partner, base_url
):
    """What a simulation promises is what a submit credits; the pool and the ledger lines agree."""
    partner = await make_partner(funding="1000")
    async with await _client(db, box, base_url, partner.partner_id) as sir:
        campaign = await sir.request(
            "POST",
            "/v1/partner/campaigns",
            {"name": "Live", "status": "ACTIVE", "multiplier": 2, "splits": SPLITS},
        )
        action = {
            "actionType": "PURCHASE",
            "amount": "33.33",
            "stakeholders": [
                {"stakeholderTypeCode": "DONOR", "partnerUserId": "donor_1"},
                {"stakeholderTypeCode": "REFERRER", "partnerUserId": "ref_1"},
            ],
        }
        simulated = await sir.request(
            "POST", f"/v1/partner/campaigns/{campaign['id']}/simulate", action
        )
        assert simulated["applies"] is True and simulated["budget"]["covered"] is True
        submitted = await sir.request(
            "POST",
            "/v1/partner/actions/submit",
            {**action, "idempotencyKey": "purchase_1", "autoCreateUsers": True},
        )
        assert submitted["campaignId"] == campaign["id"]
        assert submitted["tokensDistributed"] == simulated["tokensDistributed"] == D("53.328")
        assert [d["tokens"] for d in submitted["distributions"]] == [
            d["tokens"] for d in simulated["distributions"]
        ]

        after = await sir.request("GET", f"/v1/partner/campaigns/{campaign['id']}")
        assert after["budget"]["spentTokens"] == D("53.328")
        pool = await sir.request("GET", f"/v1/partner/token-pools/{partner.pool_id}")
        assert pool["balance"] == D("946.672") and pool["distributedTotal"] == D("53.328")
        lines = await sir.request(
            "GET", "/v1/partner/transactions", params={"actionId": submitted["actionId"]}
        )
        credited = {
            line["externalUserId"]: line["amount"]
            for line in lines["data"]
            if line["type"] == "CREDIT"
        }
        assert credited == {"donor_1": D("46.662"), "ref_1": D("6.666")}
        assert sum(line["amount"] for line in lines["data"]) == 0  # every movement balances
