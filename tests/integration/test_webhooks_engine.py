"""Webhook endpoints and the delivery state machine on real PostgreSQL, with explicit clocks:
claims and leases, the retry schedule, FAILED, 410, the 5-day rule, replays and rotation."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from engine import webhooks
from engine.errors import NotFound, ValidationFailed, WebhookEndpointInactive
from engine.outbox import Event, record_events
from engine.pagination import read_page
from engine.scope import Scope
from engine.tables import outbox_events, webhook_attempts, webhook_deliveries, webhook_endpoints
from engine.webhooks import AttemptResult, EndpointSpec
from sir_client.webhooks import verify_webhook

URL = "https://hooks.sir.invalid/sir"


async def endpoint(db, box, scope, **spec):
    fields = {"url": URL, "event_types": ("action.completed",), **spec}
    async with db.begin() as conn:
        return await webhooks.create_endpoint(
            conn, box, scope, EndpointSpec(**fields), allow_private=False
        )


async def delivery(db, scope, endpoint_id, now, event_type="action.completed", data=None):
    """An event recorded as the engine records it, fanned out to one endpoint by hand."""
    async with db.begin() as conn:
        (event_id,) = await record_events(
            conn, scope, [Event(event_type, data or {"actionId": "a" * 24})]
        )
        await conn.execute(
            update(outbox_events).where(outbox_events.c.id == event_id).values(relayed_at=now)
        )
        return await webhooks._insert_delivery(conn, scope, event_id, endpoint_id, now)


async def plan(db, box, delivery_id, now):
    async with db.begin() as conn:
        return await webhooks.next_attempt(conn, box, delivery_id, now)


async def record(db, delivery_id, now, status_code=None, error=None, latency_ms=20, excerpt=None):
    async with db.begin() as conn:
        return await webhooks.record_attempt(
            conn,
            delivery_id,
            AttemptResult(status_code, latency_ms, error, excerpt),
            now,
            rng=random.Random(3),
        )


async def row(db, table, key):
    async with db.connect() as conn:
        return (await conn.execute(select(table).where(table.c.id == key))).mappings().one()


# -- endpoints ----------------------------------------------------------------------------------


async def test_create_shows_the_secret_once_and_stores_it_encrypted(db, box, make_partner):
    partner = await make_partner()
    created, secret = await endpoint(
        db, box, partner.scope, headers={"Authorization": "Bearer 0123456789abcdef"}
    )
    assert secret.startswith("whsec_") and len(secret) == 70
    stored = await row(db, webhook_endpoints, created["id"])
    assert secret.encode() not in bytes(stored["secret_enc"])
    assert box.decrypt(stored["secret_enc"]) == secret
    assert b"Bearer" not in bytes(stored["headers_enc"])
    shown = webhooks.endpoint_json(stored, box)
    assert shown["headers"] == {"Authorization": "****cdef"}
    assert "secret" not in shown and shown["isActive"] is True


async def test_every_bad_field_is_reported(db, box, make_partner):
    partner = await make_partner()
    with pytest.raises(ValidationFailed) as caught:
        await endpoint(
            db,
            box,
            partner.scope,
            url="http://10.0.0.5/hook",
            event_types=("action.completed", "nope.never"),
            headers={"Host": "evil", "X-Ok": "a\r\nb", "X-SIR-Signature": "x"},
        )
    fields = caught.value.fields
    assert set(fields) == {
        "url",
        "eventTypes",
        "headers.Host",
        "headers.X-Ok",
        "headers.X-SIR-Signature",
    }
    assert "nope.never" in fields["eventTypes"][0]
    with pytest.raises(ValidationFailed) as caught:
        await endpoint(db, box, partner.scope, event_types=())
    assert "receiveAllEvents" in caught.value.fields["eventTypes"][0]
    assert (await endpoint(db, box, partner.scope, event_types=(), receive_all_events=True))[0]


async def test_endpoints_are_scoped_to_partner_and_environment(db, box, make_partner):
    partner, other = await make_partner(), await make_partner()
    created, _ = await endpoint(db, box, partner.scope)
    live = Scope(partner.partner_id, "production")
    for scope in (other.scope, live):
        async with db.connect() as conn:
            with pytest.raises(NotFound):
                await webhooks.get_endpoint(conn, scope, created["id"])
            rows, _ = await webhooks.list_endpoints(conn, scope, read_page(None, None, {}))
            assert created["id"] not in [r["id"] for r in rows]


async def test_patch_merges_and_headers_replace(db, box, make_partner):
    partner = await make_partner()
    created, _ = await endpoint(db, box, partner.scope, headers={"X-A": "1"})
    async with db.begin() as conn:
        patched = await webhooks.patch_endpoint(
            conn,
            box,
            partner.scope,
            created["id"],
            {"event_types": ("action.reversed", "action.completed"), "headers": {"X-B": "2"}},
            allow_private=False,
        )
    assert patched["url"] == URL
    assert patched["event_types"] == ["action.completed", "action.reversed"]
    assert webhooks.endpoint_json(patched, box)["headers"] == {"X-B": "****"}
    async with db.begin() as conn:
        with pytest.raises(ValidationFailed) as caught:
            await webhooks.patch_endpoint(
                conn,
                box,
                partner.scope,
                created["id"],
                {"url": "https://user:pw@example.com/"},
                allow_private=False,
            )
    assert list(caught.value.fields) == ["url"]
    async with db.begin() as conn:
        off = await webhooks.patch_endpoint(
            conn, box, partner.scope, created["id"], {"is_active": False}, allow_private=False
        )
        on = await webhooks.patch_endpoint(
            conn, box, partner.scope, created["id"], {"is_active": True}, allow_private=False
        )
    assert (off["is_active"], off["disabled_reason"]) == (False, "disabled by the partner")
    assert (on["is_active"], on["disabled_reason"]) == (True, None)


async def test_delete_takes_deliveries_and_attempts_along(db, box, make_partner):
    partner = await make_partner()
    created, _ = await endpoint(db, box, partner.scope)
    now = datetime.now(UTC)
    delivery_id = await delivery(db, partner.scope, created["id"], now)
    assert await plan(db, box, delivery_id, now)
    await record(db, delivery_id, now, status_code=500)
    async with db.begin() as conn:
        await webhooks.delete_endpoint(conn, partner.scope, created["id"])
    async with db.connect() as conn:
        assert (
            await conn.execute(
                select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
            )
        ).first() is None
        with pytest.raises(NotFound):
            await webhooks.get_endpoint(conn, partner.scope, created["id"])
    # An attempt in flight when the endpoint went records nothing.
    assert await record(db, delivery_id, now, status_code=200) is None


# -- the delivery state machine -----------------------------------------------------------------


async def test_plan_is_the_signed_event_exactly(db, box, make_partner):
    partner = await make_partner()
    created, secret = await endpoint(db, box, partner.scope, headers={"X-Partner": "p1"})
    now = datetime.now(UTC)
    delivery_id = await delivery(db, partner.scope, created["id"], now, data={"amount": "1.5"})
    attempt = await plan(db, box, delivery_id, now)
    event = await row(db, outbox_events, attempt.event_id)
    assert attempt.body == webhooks.event_body(
        event["id"], event["type"], event["created_at"], "sandbox", {"amount": "1.5"}
    )
    headers = attempt.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "SIRGiving-Webhooks/1.0"
    assert headers["X-Partner"] == "p1"
    assert headers["X-SIR-Timestamp"] == str(int(now.timestamp()))
    assert headers["X-SIR-Signature"].count("sha256=") == 1
    assert verify_webhook(
        secret, headers["X-SIR-Timestamp"], attempt.body, headers["X-SIR-Signature"]
    )
    assert (attempt.url, attempt.attempt_number) == (URL, 1)


async def test_a_claimed_delivery_is_not_planned_twice(db, box, make_partner):
    partner = await make_partner()
    created, _ = await endpoint(db, box, partner.scope)
    now = datetime.now(UTC)
    delivery_id = await delivery(db, partner.scope, created["id"], now)
    # Two messages for the same delivery race: exactly one attempt is planned.
    plans = await asyncio.gather(*(plan(db, box, delivery_id, now) for _ in range(5)))
    assert sum(p is not None for p in plans) == 1
    # Once the in-flight lease passes (the worker died), it is due again: at least once.
    later = now + webhooks.IN_FLIGHT_LEASE + timedelta(seconds=1)
    assert await plan(db, box, delivery_id, later) is not None


async def test_pick_up_claims_once_and_its_message_may_still_send(db, box, make_partner):
    partner = await make_partner()
    created, _ = await endpoint(db, box, partner.scope)
    now = datetime.now(UTC)
    delivery_id = await delivery(db, partner.scope, created["id"], now)

    async def pick(at):
        async with db.begin() as conn:
            return await webhooks.due_deliveries(conn, at, 10_000)

    # Two overlapping pick-ups: only one hands the delivery out.
    first, second = await asyncio.gather(pick(now), pick(now))
    assert (delivery_id in first) != (delivery_id in second)
    assert delivery_id not in await pick(now + timedelta(seconds=5))
    # The pick-up's message may claim it although next_attempt_at moved on; a second may not.
    assert await plan(db, box, delivery_id, now + timedelta(seconds=1)) is not None
    assert await plan(db, box, delivery_id, now + timedelta(seconds=1)) is None


async def test_retry_schedule_then_failed_and_replay(db, box, make_partner):
    partner = await make_partner()
    created, _ = await endpoint(db, box, partner.scope)
    now = datetime.now(UTC)
    delivery_id = await delivery(db, partner.scope, created["id"], now)
    at = now
    for attempt, base in enumerate(webhooks.RETRY_SCHEDULE, start=1):
        planned = await plan(db, box, delivery_id, at)
        assert planned.attempt_number == attempt
        outcome = await record(db, delivery_id, at, status_code=503, excerpt="x" * 900)
        assert outcome.status == "PENDING"
        wait = (outcome.next_attempt_at - at).total_seconds()
        assert base * 0.8 <= wait <= base * 1.2
        # Not due before its time.
        assert await plan(db, box, delivery_id, at + timedelta(seconds=wait * 0.5)) is None
        at = outcome.next_attempt_at
    assert await plan(db, box, delivery_id, at)
    outcome = await record(db, delivery_id, at, error="ClientConnectorError: refused")
    assert outcome.status == "FAILED" and outcome.next_attempt_at is None
    assert await plan(db, box, delivery_id, at + timedelta(days=1)) is None
    async with db.connect() as conn:
        attempts = (
            (
                await conn.execute(
                    select(webhook_attempts)
                    .where(webhook_attempts.c.delivery_id == delivery_id)
                    .order_by(webhook_attempts.c.id)
                )
            )
            .mappings()
            .all()
        )
    assert len(attempts) == len(webhooks.RETRY_SCHEDULE) + 1
    assert attempts[0]["status_code"] == 503 and len(attempts[0]["response_excerpt"]) == 500
    assert attempts[-1]["status_code"] is None and "refused" in attempts[-1]["error"]
    # Replay: a new run, due now, with the whole schedule ahead; the history stays.
    async with db.begin() as conn:
        replayed = await webhooks.replay_delivery(conn, partner.scope, delivery_id, at)
    assert replayed["status"] == "PENDING" and replayed["attempt_count"] == 0
    assert len(replayed["attempts"]) == len(attempts)
    again = await plan(db, box, delivery_id, at)
    assert again.attempt_number == 1
    assert (await record(db, delivery_id, at, status_code=204)).status == "SUCCEEDED"


async def test_redirects_and_slow_answers_are_failures(db, box, make_partner):
    partner = await make_partner()
    created, _ = await endpoint(db, box, partner.scope)
    now = datetime.now(UTC)
    for result in ({"status_code": 301}, {"status_code": 200, "latency_ms": 5_001}):
        delivery_id = await delivery(db, partner.scope, created["id"], now)
        assert await plan(db, box, delivery_id, now)
        assert (await record(db, delivery_id, now, **result)).status == "PENDING"


async def test_410_disables_the_endpoint(db, box, make_partner):
    partner = await make_partner()
    created, _ = await endpoint(db, box, partner.scope)
    now = datetime.now(UTC)
    gone = await delivery(db, partner.scope, created["id"], now)
    waiting = await delivery(db, partner.scope, created["id"], now)
    assert await plan(db, box, gone, now)
    outcome = await record(db, gone, now, status_code=410)
    assert outcome.status == "FAILED" and "410" in outcome.endpoint_disabled
    stored = await row(db, webhook_endpoints, created["id"])
    assert stored["is_active"] is False and "410" in stored["disabled_reason"]
    # Nothing more goes to it: not planned, not picked up, not replayable, no test.
    assert await plan(db, box, waiting, now) is None
    async with db.begin() as conn:
        assert waiting not in await webhooks.due_deliveries(conn, now, 10_000)
        with pytest.raises(WebhookEndpointInactive):
            await webhooks.replay_delivery(conn, partner.scope, gone, now)
        with pytest.raises(WebhookEndpointInactive):
            await webhooks.send_test(conn, partner.scope, created["id"], now)


async def test_failing_every_attempt_for_five_days_disables(db, box, make_partner):
    partner = await make_partner()
    created, _ = await endpoint(db, box, partner.scope, event_types=(), receive_all_events=True)
    start = datetime.now(UTC)
    # A success, then failures only: six days of them, one delivery a day.
    first = await delivery(db, partner.scope, created["id"], start)
    assert await plan(db, box, first, start)
    assert (await record(db, first, start, status_code=200)).status == "SUCCEEDED"
    disabled = None
    for day in range(1, 8):
        at = start + timedelta(days=day, minutes=1)
        delivery_id = await delivery(db, partner.scope, created["id"], at)
        # Deliveries made "later" than the database clock: place them at their day.
        async with db.begin() as conn:
            await conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(created_at=at)
            )
        assert await plan(db, box, delivery_id, at)
        outcome = await record(db, delivery_id, at, status_code=500)
        if outcome.endpoint_disabled:
            disabled = day
            break
    # The first failure came a day after the success; five days of failures later, disabled.
    assert disabled == 6
    stored = await row(db, webhook_endpoints, created["id"])
    assert stored["is_active"] is False and "5 days" in stored["disabled_reason"]


async def test_rotation_signs_with_both_secrets_for_24_hours(db, box, make_partner):
    partner = await make_partner()
    created, old = await endpoint(db, box, partner.scope)
    now = datetime.now(UTC)
    async with db.begin() as conn:
        rotated, new = await webhooks.rotate_secret(conn, box, partner.scope, created["id"], now)
    assert new != old and rotated["previous_secret_expires_at"] == now + timedelta(hours=24)
    delivery_id = await delivery(db, partner.scope, created["id"], now)
    attempt = await plan(db, box, delivery_id, now)
    header = attempt.headers["X-SIR-Signature"]
    stamp = attempt.headers["X-SIR-Timestamp"]
    new_sig, old_sig = header.split(",")
    assert verify_webhook(new, stamp, attempt.body, new_sig)
    assert verify_webhook(old, stamp, attempt.body, old_sig)
    assert not verify_webhook(old, stamp, attempt.body, new_sig)
    # After 24 hours only the new secret signs.
    later = now + timedelta(hours=24, seconds=1)
    await record(db, delivery_id, now, status_code=500)
    attempt = await plan(db, box, delivery_id, later)
    assert attempt.headers["X-SIR-Signature"].count("sha256=") == 1
    assert verify_webhook(
        new,
        attempt.headers["X-SIR-Timestamp"],
        attempt.body,
        attempt.headers["X-SIR-Signature"],
        now=later.timestamp(),
    )


async def test_test_event_goes_to_its_endpoint_only(db, box, make_partner):
    partner = await make_partner()
    target, _ = await endpoint(db, box, partner.scope, event_types=(), receive_all_events=True)
    await endpoint(db, box, partner.scope, event_types=(), receive_all_events=True)
    now = datetime.now(UTC)
    async with db.begin() as conn:
        sent = await webhooks.send_test(conn, partner.scope, target["id"], now)
    assert sent["event_type"] == "webhook.test" and sent["status"] == "PENDING"
    event = await row(db, outbox_events, sent["event_id"])
    assert event["relayed_at"] is not None  # the relay never fans it out to the other endpoint
    async with db.connect() as conn:
        deliveries = (
            (
                await conn.execute(
                    select(webhook_deliveries.c.endpoint_id).where(
                        webhook_deliveries.c.event_id == sent["event_id"]
                    )
                )
            )
            .scalars()
            .all()
        )
        listed, _ = await webhooks.list_deliveries(
            conn, partner.scope, target["id"], read_page(None, None, {"status": None})
        )
    assert deliveries == [target["id"]]
    assert [d["id"] for d in listed] == [sent["id"]]
    attempt = await plan(db, box, sent["id"], now)
    assert b'"type":"webhook.test"' in attempt.body
