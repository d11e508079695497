"""Widget endpoints and donations through the real app factory on a loopback test server, real
PostgreSQL and Redis, real publishable keys and real signatures (partner HMAC, provider HMAC,
Stripe's own signing scheme verified by the official package).

Stripe's API is the one outside party: for the Checkout Session a loopback server stands in for
api.stripe.com (SIR_STRIPE_API_BASE), so the real `stripe` client sends the real request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.organization_import import upsert_organizations
from engine.payment_providers import (
    SIGNATURE_HEADER,
    checkout_token,
    provider_secret,
    sign_notice,
)
from engine.settings import Settings
from engine.tables import actions, donations, outbox_events
from engine.wire import dumps
from http_front.app import create_app
from tests.support.donations import DonationPartner, make_donation_partner, signed

ORGS = [
    {"slug": "american-red-cross", "name": "American Red Cross", "ein": "53-0196605"},
    {"slug": "feeding-america", "name": "Feeding America", "ein": "36-3673599"},
    {"slug": "closed-charity-test", "name": "Closed Charity", "status": "INACTIVE"},
]
WHSEC = "whsec_" + "ab" * 16


Partner = DonationPartner
make_partner = make_donation_partner


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(settings: Settings, db: AsyncEngine) -> AsyncIterator[TestClient]:
    async with db.begin() as conn:
        await upsert_organizations(conn, ORGS, actor="test")
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


def link_body(**changes: Any) -> dict[str, Any]:
    body = {
        "nonprofitSlug": "american-red-cross",
        "amount": 2500,
        "currency": "USD",
        "frequency": "once",
        "provider": "every.org",
        "donorEmail": "Jane.Donor@example.com",
        "firstName": "Jane",
        "lastName": "Donor",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


async def create(client: TestClient, partner: Partner, body: dict[str, Any], sk: bool = False):
    path = "/v1/partner/donations/create-link"
    headers = (
        signed(partner, "POST", path, body)
        if sk
        else {"X-Partner-Key": partner.pk, "Content-Type": "application/json"}
    )
    async with client.post(path, data=dumps(body), headers=headers) as response:
        return response.status, await response.json()


async def notify(
    client: TestClient, settings: Settings, provider: str, body: dict[str, Any], **headers: str
):
    raw = dumps(body).encode()
    secret = provider_secret(settings, provider if provider != "nowhere" else "test")
    sent = {SIGNATURE_HEADER: sign_notice(secret, raw), "Content-Type": "application/json"}
    sent.update(headers)
    async with client.post(
        f"/v1/providers/{provider}/notifications", data=raw, headers=sent
    ) as response:
        return response.status, await response.json()


# -- configuration, directory, CORS ---------------------------------------------------------------


async def test_config_and_directory_answer_a_publishable_key_with_cors(client, db, box):
    partner = await make_partner(db, box, tips={"enabled": True, "defaultPercent": "10"})
    key = {"X-Partner-Key": partner.pk, "Origin": "https://shop.example"}
    async with client.get("/v1/partner/config", headers=key) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "X-RateLimit-Remaining" in response.headers["Access-Control-Expose-Headers"]
        config = await response.json()
    assert config["id"] == partner.id and config["isActive"] is True
    assert config["enabledFeatures"] == ["ACTIONS", "DONATIONS"]
    assert config["tipConfig"] == {"enabled": True, "defaultPercent": 10}
    assert config["rateLimit"] == {"perHour": 1000, "perMinute": 100}
    assert config["webhookUrl"] is None

    # a preflight needs no key; a non-widget route has no CORS header, even for an error
    async with client.options(
        "/v1/partner/donations/create-link",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    ) as response:
        assert response.status == 204
        assert "X-Partner-Key" in response.headers["Access-Control-Allow-Headers"]
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    async with client.get("/v1/partner/users", headers=key) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "SECRET_KEY_REQUIRED"
        assert "Access-Control-Allow-Origin" not in response.headers
    async with client.get("/v1/partner/config") as response:  # no key: refused, CORS still
        assert response.status == 401
        assert response.headers["Access-Control-Allow-Origin"] == "*"

    async with client.get("/v1/partner/organizations?q=RED%20cross", headers=key) as response:
        found = await response.json()
    assert [o["slug"] for o in found["data"]] == ["american-red-cross"]
    assert found["data"][0] == {
        "id": found["data"][0]["id"],
        "slug": "american-red-cross",
        "name": "American Red Cross",
        "logoUrl": None,
        "ein": "53-0196605",
        "status": "ACTIVE",
    }
    async with client.get("/v1/partner/organizations?q=closed-charity", headers=key) as response:
        assert (await response.json())["data"] == []  # INACTIVE ones are not offered
    async with client.get("/v1/partner/organizations?limit=1", headers=key) as response:
        page = await response.json()
    assert len(page["data"]) == 1 and page["nextCursor"]
    async with client.get("/v1/partner/organizations/feeding-america", headers=key) as response:
        assert (await response.json())["name"] == "Feeding America"
    async with client.get("/v1/partner/organizations/no-such-org", headers=key) as response:
        assert response.status == 404
    # the same endpoint through a signed secret-key call
    path = "/v1/partner/config"
    async with client.get(path, headers=signed(partner, "GET", path)) as response:
        assert response.status == 200


# -- creating links -------------------------------------------------------------------------------


async def test_create_link_refusals(client, db, box):
    plain = await make_partner(db, box, features=("ACTIONS",))
    status, body = await create(client, plain, link_body())
    assert (status, body["error"]["code"]) == (403, "FEATURE_NOT_ENABLED")

    partner = await make_partner(db, box)
    for changes, status_code, code in [
        ({"nonprofitSlug": "no-such-org"}, 422, "UNKNOWN_ORGANIZATION"),
        ({"nonprofitSlug": "closed-charity-test"}, 422, "UNKNOWN_ORGANIZATION"),
        ({"amount": 10}, 422, "VALIDATION_FAILED"),
        ({"amount": 25.5}, 422, "VALIDATION_FAILED"),
        ({"currency": "EUR"}, 422, "VALIDATION_FAILED"),  # every.org links are USD
        ({"provider": "paypal"}, 422, "VALIDATION_FAILED"),
        ({"donorEmail": "not-an-email"}, 422, "VALIDATION_FAILED"),
        ({"firstName": "  "}, 422, "VALIDATION_FAILED"),
        ({"tipAmount": 100}, 422, "VALIDATION_FAILED"),  # tips not enabled for this partner
    ]:
        status, body = await create(client, partner, link_body(**changes))
        assert (status, body["error"]["code"]) == (status_code, code), changes
    async with db.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(donations).where(donations.c.partner_id == partner.id)
        )
    assert count == 0  # refusals change nothing

    live = await make_partner(db, box, environment="production")
    status, body = await create(client, live, link_body(provider="stripe"))
    assert (status, body["error"]["code"]) == (422, "PROVIDER_NOT_CONFIGURED")


async def test_every_org_link_is_the_documented_donate_link(client, db, box):
    partner = await make_partner(db, box, tips={"enabled": True, "defaultPercent": "10"})
    status, body = await create(client, partner, link_body(frequency="monthly"))
    assert status == 201, body
    link = urlsplit(body["donationLink"])
    assert (link.scheme, link.netloc, link.path) == ("https", "staging.every.org", "/530196605")
    route, _, query = link.fragment.partition("?")
    assert route == "/donate"
    params = {k: v[0] for k, v in parse_qs(query).items()}
    assert params == {
        "amount": "25.00",
        "frequency": "MONTHLY",
        "first_name": "Jane",
        "last_name": "Donor",
        "email": "Jane.Donor@example.com",
        "partner_donation_id": body["partnerDonationId"],
    }
    async with db.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(donations).where(donations.c.id == body["partnerDonationId"])
                )
            )
            .mappings()
            .one()
        )
    assert row["tip_amount_cents"] == 250  # the partner's default 10 %
    assert row["partner_user_external_id"] == "email:jane.donor@example.com"


# -- completing -----------------------------------------------------------------------------------


async def test_a_notice_completes_once_rewards_the_donor_and_records_the_event(
    client, settings, db, box
):
    partner = await make_partner(db, box)
    _, created = await create(client, partner, link_body(amount=3333))
    donation_id = created["partnerDonationId"]
    notice = {
        "chargeId": "ch_1",
        "partnerDonationId": donation_id,
        "amount": "33.33",
        "currency": "USD",
    }
    status, ack = await notify(client, settings, "every.org", notice)
    assert status == 200, ack
    assert ack == {
        "received": True,
        "changed": True,
        "partnerDonationId": donation_id,
        "status": "COMPLETED",
    }
    for _ in range(2):  # duplicates, signed afresh: nothing changes
        status, ack = await notify(client, settings, "every.org", notice)
        assert (status, ack["changed"], ack["status"]) == (200, False, "COMPLETED")

    path = f"/v1/partner/donations/status/{donation_id}"
    async with client.get(path, headers={"X-Partner-Key": partner.pk}) as response:
        state = await response.json()
    assert state["status"] == "COMPLETED" and state["actionId"]
    assert state["donorTokens"] == 16.665  # default rule: 33.33 shared by DONOR and ORGANIZATION
    assert state["rewardError"] is None and state["completedAt"]

    balance_path = "/v1/partner/users/email:jane.donor@example.com/balance"
    async with client.get(balance_path, headers=signed(partner, "GET", balance_path)) as response:
        balance = await response.json()
    assert balance["available"] == 16.665

    async with db.connect() as conn:
        keyed = await conn.scalar(
            select(func.count())
            .select_from(actions)
            .where(actions.c.idempotency_key == f"donation:{donation_id}")
        )
        events = (
            await conn.execute(
                select(outbox_events.c.payload).where(
                    outbox_events.c.partner_id == partner.id,
                    outbox_events.c.type == "donation.completed",
                )
            )
        ).all()
    assert keyed == 1
    assert len(events) == 1 and events[0].payload["partnerDonationId"] == donation_id


async def test_concurrent_duplicate_notices_complete_once(client, settings, db, box):
    partner = await make_partner(db, box)
    _, created = await create(client, partner, link_body(amount=1000))
    notice = {"partnerDonationId": created["partnerDonationId"], "chargeId": "ch_dup"}
    answers = await asyncio.gather(
        *[notify(client, settings, "every.org", notice) for _ in range(6)]
    )
    assert [status for status, _ in answers] == [200] * 6
    assert sorted(ack["changed"] for _, ack in answers) == [False] * 5 + [True]
    async with db.connect() as conn:
        keyed = await conn.scalar(
            select(func.count())
            .select_from(actions)
            .where(actions.c.idempotency_key == f"donation:{created['partnerDonationId']}")
        )
        events = await conn.scalar(
            select(func.count())
            .select_from(outbox_events)
            .where(
                outbox_events.c.partner_id == partner.id,
                outbox_events.c.type == "donation.completed",
            )
        )
    assert (keyed, events) == (1, 1)


async def test_a_refused_reward_still_completes_the_donation(client, settings, db, box):
    # Given a pool of 1,000 tokens and a donation worth 999,999.99 of them
    partner = await make_partner(db, box)
    _, created = await create(client, partner, link_body(amount=99_999_999))
    notice = {"partnerDonationId": created["partnerDonationId"], "chargeId": "ch_big"}
    status, ack = await notify(client, settings, "every.org", notice)
    assert (status, ack["changed"], ack["status"]) == (200, True, "COMPLETED")
    path = f"/v1/partner/donations/status/{created['partnerDonationId']}"
    async with client.get(path, headers={"X-Partner-Key": partner.pk}) as response:
        state = await response.json()
    assert state["status"] == "COMPLETED" and state["rewardError"] == "INSUFFICIENT_POOL"
    assert state["actionId"] is None and state["donorTokens"] is None
    async with db.connect() as conn:
        event = await conn.scalar(
            select(outbox_events.c.payload).where(
                outbox_events.c.partner_id == partner.id,
                outbox_events.c.type == "donation.completed",
            )
        )
    assert event["rewardError"] == "INSUFFICIENT_POOL"


async def test_refused_notices_change_nothing(client, settings, db, box):
    partner = await make_partner(db, box)
    _, created = await create(client, partner, link_body())
    notice = {"partnerDonationId": created["partnerDonationId"], "amount": "25.00"}

    status, body = await notify(client, settings, "nowhere", notice)
    assert (status, body["error"]["code"]) == (404, "UNKNOWN_PROVIDER")
    status, body = await notify(
        client, settings, "every.org", notice, **{SIGNATURE_HEADER: "t=1,v1=" + "0" * 64}
    )
    assert (status, body["error"]["code"]) == (401, "INVALID_PROVIDER_SIGNATURE")
    stale = sign_notice(provider_secret(settings, "every.org"), dumps(notice).encode(), 1000)
    status, body = await notify(client, settings, "every.org", notice, **{SIGNATURE_HEADER: stale})
    assert (status, body["error"]["code"]) == (401, "INVALID_PROVIDER_SIGNATURE")
    status, body = await notify(client, settings, "test", notice)  # not this donation's checkout
    assert (status, body["error"]["code"]) == (422, "INVALID_NOTIFICATION")
    status, body = await notify(client, settings, "every.org", {**notice, "currency": "EUR"})
    assert (status, body["error"]["code"]) == (422, "INVALID_NOTIFICATION")
    status, body = await notify(
        client, settings, "every.org", {**notice, "partnerDonationId": "0" * 24}
    )
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")

    path = f"/v1/partner/donations/status/{created['partnerDonationId']}"
    async with client.get(path, headers={"X-Partner-Key": partner.pk}) as response:
        assert (await response.json())["status"] == "CREATED"
    other = await make_partner(db, box)  # another partner's key does not see it
    async with client.get(path, headers={"X-Partner-Key": other.pk}) as response:
        assert response.status == 404


async def test_the_donor_is_chosen_by_the_contract_rule(client, db, box):
    partner = await make_partner(db, box)
    users_path = "/v1/partner/users"
    user = {"externalUserId": "user_7", "email": "jane.donor@example.com"}
    async with client.post(
        users_path, data=dumps(user), headers=signed(partner, "POST", users_path, user)
    ) as response:
        assert response.status == 201

    cases = [
        # publishable key naming an existing user with the donor's email: that user
        (link_body(partnerUserId="user_7"), False, "user_7"),
        # publishable key, email differs: the email user
        (
            link_body(partnerUserId="user_7", donorEmail="x@example.com"),
            False,
            "email:x@example.com",
        ),
        # publishable key naming a user who does not exist: the email user
        (link_body(partnerUserId="ghost"), False, "email:jane.donor@example.com"),
        # a signed secret-key call: whoever it names
        (link_body(partnerUserId="ghost"), True, "ghost"),
    ]
    for body, sk, donor in cases:
        status, created = await create(client, partner, body, sk=sk)
        assert status == 201, created
        async with db.connect() as conn:
            found = await conn.scalar(
                select(donations.c.partner_user_external_id).where(
                    donations.c.id == created["partnerDonationId"]
                )
            )
        assert found == donor, (body, sk)


async def test_the_test_checkout_cannot_be_forged_and_pays_once(client, settings, db, box):
    partner = await make_partner(db, box)
    status, created = await create(client, partner, link_body(provider="stripe"))
    assert status == 201
    donation_id = created["partnerDonationId"]
    link = urlsplit(created["donationLink"])
    assert link.path == f"/v1/checkout/test/{donation_id}"
    token = parse_qs(link.query)["token"][0]
    assert token == checkout_token(settings, donation_id)

    async with client.get(f"{link.path}?token={'0' * 64}") as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "INVALID_CHECKOUT_TOKEN"
    async with client.get(f"{link.path}?{link.query}") as response:
        assert response.status == 200
        page = await response.text()
    assert "American Red Cross" in page and "25.00 USD" in page and 'id="pay"' in page
    async with client.post(link.path, data={"token": "f" * 64}) as response:
        assert response.status == 403
    for _ in range(2):
        async with client.post(link.path, data={"token": token}) as response:
            assert response.status == 200
            assert 'id="paid"' in await response.text()
    async with db.connect() as conn:
        row = (
            (await conn.execute(select(donations).where(donations.c.id == donation_id)))
            .mappings()
            .one()
        )
    assert row["status"] == "COMPLETED" and row["reward_tokens"] == 12_500_000
    assert row["provider_reference"].startswith("test_")


# -- Stripe ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def stripe_api() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback stand-in for api.stripe.com's Checkout Session endpoint."""
    seen: list[dict[str, Any]] = []

    async def create_session(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append(
            {
                "auth": request.headers.get("Authorization"),
                "idempotency": request.headers.get("Idempotency-Key"),
                **{k: str(v) for k, v in form.items()},
            }
        )
        session_id = f"cs_test_{secrets.token_hex(6)}"
        return web.json_response(
            {
                "id": session_id,
                "object": "checkout.session",
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            }
        )

    app = web.Application()
    app.router.add_post("/v1/checkout/sessions", create_session)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), seen
    finally:
        await server.close()


def stripe_signature(payload: bytes, secret: str = WHSEC) -> str:
    ts = int(time.time())
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


async def test_stripe_checkout_session_and_its_signed_event(settings, db, box, stripe_api):
    base, seen = stripe_api
    stripe_settings = replace(
        settings,
        stripe_secret_key="sk_test_" + "1" * 24,
        stripe_webhook_secret=WHSEC,
        stripe_api_base=base,
    )
    async with TestClient(TestServer(create_app(stripe_settings))) as client:
        partner = await make_partner(db, box, tips={"enabled": True, "defaultPercent": "0"})
        status, created = await create(client, partner, link_body(provider="stripe", tipAmount=300))
        assert status == 201, created
        donation_id = created["partnerDonationId"]
        assert created["donationLink"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
        (sent,) = seen
        assert sent["auth"] == "Bearer sk_test_" + "1" * 24
        assert sent["idempotency"] == f"sir-donation-{donation_id}"
        assert sent["mode"] == "payment" and sent["client_reference_id"] == donation_id
        assert sent["line_items[0][price_data][unit_amount]"] == "2500"
        assert sent["line_items[1][price_data][unit_amount]"] == "300"  # the tip, its own line
        assert sent["customer_email"] == "Jane.Donor@example.com"

        def event(kind: str, paid: str = "paid") -> bytes:
            return json.dumps(
                {
                    "id": f"evt_{secrets.token_hex(6)}",
                    "object": "event",
                    "type": kind,
                    "data": {
                        "object": {
                            "id": "cs_test_x",
                            "object": "checkout.session",
                            "client_reference_id": donation_id,
                            "payment_status": paid,
                            "amount_total": 2800,
                            "currency": "usd",
                        }
                    },
                }
            ).encode()

        async def post(payload: bytes, signature: str) -> tuple[int, Any]:
            async with client.post(
                "/v1/providers/stripe/notifications",
                data=payload,
                headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
            ) as response:
                return response.status, await response.json()

        paid = event("checkout.session.completed")
        status, body = await post(paid, stripe_signature(paid, "whsec_" + "cd" * 16))
        assert (status, body["error"]["code"]) == (401, "INVALID_PROVIDER_SIGNATURE")
        other = event("checkout.session.expired")
        status, body = await post(other, stripe_signature(other))
        assert (status, body["changed"], body["partnerDonationId"]) == (200, False, None)
        unpaid = event("checkout.session.completed", paid="unpaid")
        status, body = await post(unpaid, stripe_signature(unpaid))
        assert (status, body["changed"]) == (200, False)
        status, body = await post(paid, stripe_signature(paid))
        assert (status, body["changed"], body["status"]) == (200, True, "COMPLETED")
        status, body = await post(paid, stripe_signature(paid))
        assert (status, body["changed"]) == (200, False)

        path = f"/v1/partner/donations/status/{donation_id}"
        async with client.get(path, headers={"X-Partner-Key": partner.pk}) as response:
            state = await response.json()
        assert state["amount"] == 2500 and state["tipAmount"] == 300
        assert state["donorTokens"] == 12.5  # the tip earns nothing
