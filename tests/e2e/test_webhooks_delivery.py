"""Webhooks end to end: a real front, real Dramatiq workers on the "webhooks" queue, a real
scheduler firing the pick-up tick every second, and real aiohttp receivers on loopback.

Events reach deliveries three ways here: the `test` endpoint, the outbox relay (an event recorded
as the engine records it), and a delivery row inserted by hand for a recorded event. Every
assertion on what was sent is checked twice: what the receiver got, and the attempts table.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from sqlalchemy import select, update

from engine import webhooks
from engine.credentials import issue_keys
from engine.outbox import Event, record_events
from engine.tables import outbox_events, webhook_attempts, webhook_deliveries
from engine.wire import loads
from sir_client import SirApiError, SirClient
from sir_client.webhooks import verify_webhook
from tests.conftest import ROOT, Services, free_port, wait_http_ok

PICKUP_SECONDS = "1"
RETRY_SCALE = "0.01"  # the first retry after ~50 ms instead of ~5 s

# The scheduler, as `sir-engine scheduler` runs it. While workers.scheduler.ticks() lists only
# the ledger audit, it is given every module's TICKS (workers.actors.all_ticks), as the design
# says the one scheduler enqueues them all; once ticks() gathers them itself this is a no-op.
SCHEDULER = (
    "from workers import actors, scheduler\n"
    "if 'webhook_pickup' not in {t.name for t in scheduler.ticks()}:\n"
    "    scheduler.ticks = actors.all_ticks\n"
    "from ops.cli import main\n"
    "raise SystemExit(main(['scheduler']))\n"
)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def engine_processes(services: Services, tmp_path_factory) -> Iterator[str]:
    """The front, one worker process (4 threads) on the webhooks queue, and the scheduler."""
    env = services.env(
        SIR_WEBHOOK_PICKUP_SECONDS=PICKUP_SECONDS,
        SIR_WEBHOOK_RETRY_SCALE=RETRY_SCALE,
        SIR_OUTBOX_RELAY_SECONDS="1",
        SIR_WORKER_METRICS_PORT="0",
    )
    logs = tmp_path_factory.mktemp("webhook-processes")
    port = free_port()
    commands = {
        "front": [sys.executable, "-m", "ops.cli", "serve", "--port", str(port)],
        "worker": [
            sys.executable,
            "-m",
            "ops.cli",
            "worker",
            "--queues",
            "webhooks",
            "--processes",
            "1",
            "--threads",
            "4",
        ],
        "scheduler": [sys.executable, "-c", SCHEDULER],
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, command in commands.items():
            with (logs / f"{name}.log").open("w") as sink:
                processes.append(
                    subprocess.Popen(
                        command, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
                    )
                )
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/healthz", processes[0])
        yield base
    finally:
        _stop(processes)
        for name in commands:
            text = (logs / f"{name}.log").read_text()
            print(f"--- {name} (last lines) ---\n{text[-1500:]}")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event_id(self) -> str:
        return str(loads(self.body)["id"])


@dataclass
class Receiver:
    """A partner's webhook receiver on loopback. `/ok` answers 200, `/flaky` 500 to the first
    delivery of each event and then 200, `/gone` 410."""

    port: int
    received: list[Received] = field(default_factory=list)
    runner: web.AppRunner | None = None
    _seen: Counter[tuple[str, str]] = field(default_factory=Counter)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{kind}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        entry = Received(request.path, dict(request.headers), body)
        self.received.append(entry)
        kind = request.match_info["kind"]
        self._seen[(kind, entry.event_id)] += 1
        if kind == "gone":
            return web.Response(status=410, text="gone for good")
        if kind == "flaky" and self._seen[(kind, entry.event_id)] == 1:
            return web.Response(status=500, text="try again later")
        return web.Response(status=200, text="thanks")

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}"

    def got(self, event_id: str, path: str | None = None) -> list[Received]:
        return [
            r for r in self.received if r.event_id == event_id and (path is None or r.path == path)
        ]


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> Any:
    running = Receiver(free_port())
    await running.start()
    yield running
    await running.stop()


async def _client(db, box, base_url, partner_id) -> SirClient:
    async with db.begin() as conn:
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner_id, environment="sandbox", name="e2e"
        )
    return SirClient(base_url, keys.secret_key, keys.hmac_secret)


async def _eventually(check, within: float = 30, what: str = "condition"):
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _attempts(db, delivery_id: str) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(webhook_attempts)
            .where(webhook_attempts.c.delivery_id == delivery_id)
            .order_by(webhook_attempts.c.id)
        )
        return [dict(r) for r in rows.mappings()]


async def _delivery(db, delivery_id: str) -> dict[str, Any]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
        )
        return dict(rows.mappings().one())


async def _until_status(db, delivery_id: str, status: str, within: float = 30) -> dict:
    async def check():
        row = await _delivery(db, delivery_id)
        return row if row["status"] == status else None

    return await _eventually(check, within, f"delivery {delivery_id} {status}")


async def _create(sir: SirClient, url: str, **fields: Any) -> dict[str, Any]:
    body = {"url": url, "eventTypes": ["action.completed"], **fields}
    return await sir.request("POST", "/v1/partner/webhooks", body)


async def _inserted_delivery(db, scope, endpoint_id: str, data: dict[str, Any]) -> tuple[str, str]:
    """A recorded event and its delivery to one endpoint, due now (what the relay would make)."""
    async with db.begin() as conn:
        (event_id,) = await record_events(conn, scope, [Event("action.completed", data)])
        await conn.execute(
            update(outbox_events)
            .where(outbox_events.c.id == event_id)
            .values(relayed_at=datetime.now(UTC))
        )
        delivery_id = await webhooks._insert_delivery(
            conn, scope, event_id, endpoint_id, datetime.now(UTC)
        )
    return event_id, delivery_id


# -- (a) signed, verifiable deliveries --------------------------------------------------------------


async def test_test_event_and_relayed_event_arrive_signed(
    db, box, make_partner, engine_processes, receiver
):
    partner = await make_partner()
    async with await _client(db, box, engine_processes, partner.partner_id) as sir:
        created = await _create(
            sir, receiver.url("ok"), headers={"Authorization": "Bearer 0123456789abcdef"}
        )
        secret = created["secret"]
        assert created["headers"] == {"Authorization": "****cdef"}

        # The test endpoint: one webhook.test delivery to this endpoint.
        sent = await sir.request("POST", f"/v1/partner/webhooks/{created['id']}/test")
        assert sent["status"] == "PENDING" and sent["eventType"] == "webhook.test"
        await _until_status(db, sent["id"], "SUCCEEDED")
        (got,) = receiver.got(sent["eventId"])
        assert verify_webhook(
            secret, got.headers["X-SIR-Timestamp"], got.body, got.headers["X-SIR-Signature"]
        )
        assert got.headers["Content-Type"] == "application/json"
        assert got.headers["User-Agent"] == "SIRGiving-Webhooks/1.0"
        assert got.headers["Authorization"] == "Bearer 0123456789abcdef"
        event = loads(got.body)
        assert list(event) == ["id", "type", "createdAt", "environment", "data"]
        assert event["type"] == "webhook.test" and event["environment"] == "sandbox"
        assert event["data"]["webhookId"] == created["id"]

        # An event recorded as the engine records it: the relay fans it out, workers deliver.
        async with db.begin() as conn:
            (event_id,) = await record_events(
                conn, partner.scope, [Event("action.completed", {"actionId": "b" * 24})]
            )
        await _eventually(lambda: receiver.got(event_id), what="relayed event")
        (relayed,) = receiver.got(event_id)[:1]
        assert verify_webhook(
            secret,
            relayed.headers["X-SIR-Timestamp"],
            relayed.body,
            relayed.headers["X-SIR-Signature"],
        )

        # What the partner reads back: the delivery and its attempt.
        listed = await sir.request("GET", f"/v1/partner/webhooks/{created['id']}/deliveries")
        by_id = {d["id"]: d for d in listed["data"]}
        test_delivery = by_id[sent["id"]]
        assert test_delivery["status"] == "SUCCEEDED" and test_delivery["attemptCount"] == 1
        (attempt,) = test_delivery["attempts"]
        assert attempt["statusCode"] == 200 and attempt["succeeded"] is True
        assert attempt["responseExcerpt"] == "thanks" and attempt["latencyMs"] >= 0
    rows = await _attempts(db, sent["id"])
    assert [(r["status_code"], r["error"]) for r in rows] == [(200, None)]


# -- (b) a 500, then the retry succeeds -------------------------------------------------------------


async def test_a_500_is_retried_until_200(db, box, make_partner, engine_processes, receiver):
    partner = await make_partner()
    async with await _client(db, box, engine_processes, partner.partner_id) as sir:
        created = await _create(sir, receiver.url("flaky"))
    event_id, delivery_id = await _inserted_delivery(
        db, partner.scope, created["id"], {"actionId": "c" * 24}
    )
    row = await _until_status(db, delivery_id, "SUCCEEDED")
    assert row["attempt_count"] == 2 and row["last_status_code"] == 200
    attempts = await _attempts(db, delivery_id)
    assert [a["status_code"] for a in attempts] == [500, 200]
    assert attempts[0]["response_excerpt"] == "try again later"
    deliveries = receiver.got(event_id)
    assert len(deliveries) == 2
    # Each attempt is signed afresh: both verify, each with its own timestamp.
    for got in deliveries:
        assert verify_webhook(
            created["secret"],
            got.headers["X-SIR-Timestamp"],
            got.body,
            got.headers["X-SIR-Signature"],
        )
    assert deliveries[0].body == deliveries[1].body


# -- (c) a receiver down for a while gets everything once back ---------------------------------------


async def test_a_receiver_down_for_a_while_gets_every_event(
    db, box, make_partner, engine_processes
):
    partner = await make_partner()
    later = Receiver(free_port())  # nothing listens there yet
    async with await _client(db, box, engine_processes, partner.partner_id) as sir:
        created = await _create(sir, later.url("ok"))
    sent = [await _inserted_delivery(db, partner.scope, created["id"], {"n": n}) for n in range(6)]

    async def all_failed_twice():
        counts = [len(await _attempts(db, delivery_id)) for _, delivery_id in sent]
        return min(counts) >= 2

    await _eventually(all_failed_twice, what="two refused attempts each")
    await later.start()
    try:
        for _, delivery_id in sent:
            await _until_status(db, delivery_id, "SUCCEEDED", within=60)
        # At least once: every event id arrived, verified.
        for event_id, delivery_id in sent:
            got = later.got(event_id)
            assert got, event_id
            assert verify_webhook(
                created["secret"],
                got[0].headers["X-SIR-Timestamp"],
                got[0].body,
                got[0].headers["X-SIR-Signature"],
            )
            attempts = await _attempts(db, delivery_id)
            assert attempts[-1]["status_code"] == 200
            assert all(a["status_code"] is None and a["error"] for a in attempts[:-1])
            assert len(attempts) >= 3
    finally:
        await later.stop()


# -- (d) retry replays a delivery that succeeded ------------------------------------------------------


async def test_retry_replays_a_succeeded_delivery(
    db, box, make_partner, engine_processes, receiver
):
    partner = await make_partner()
    async with await _client(db, box, engine_processes, partner.partner_id) as sir:
        created = await _create(sir, receiver.url("ok"))
        event_id, delivery_id = await _inserted_delivery(
            db, partner.scope, created["id"], {"actionId": "d" * 24}
        )
        await _until_status(db, delivery_id, "SUCCEEDED")
        replay = await sir.request("POST", f"/v1/partner/webhook-deliveries/{delivery_id}/retry")
        assert replay["status"] == "PENDING" and replay["attemptCount"] == 0
        assert len(replay["attempts"]) == 1  # the history stays
        await _eventually(lambda: len(receiver.got(event_id)) >= 2, what="the replayed delivery")
        await _until_status(db, delivery_id, "SUCCEEDED")
        first, second = receiver.got(event_id)[:2]
        assert first.body == second.body  # the same event, same id: receivers deduplicate on it
        assert [a["status_code"] for a in await _attempts(db, delivery_id)] == [200, 200]
        # Another partner's delivery is not found.
        other = await make_partner()
        async with await _client(db, box, engine_processes, other.partner_id) as stranger:
            with pytest.raises(SirApiError) as caught:
                await stranger.request(
                    "POST", f"/v1/partner/webhook-deliveries/{delivery_id}/retry"
                )
            assert (caught.value.status, caught.value.code) == (404, "NOT_FOUND")


# -- (e) rotation: two signatures ----------------------------------------------------------------------


async def test_after_rotation_both_secrets_verify(
    db, box, make_partner, engine_processes, receiver
):
    partner = await make_partner()
    async with await _client(db, box, engine_processes, partner.partner_id) as sir:
        created = await _create(sir, receiver.url("ok"))
        old = created["secret"]
        rotated = await sir.request("POST", f"/v1/partner/webhooks/{created['id']}/rotate-secret")
        new = rotated["secret"]
        assert new != old and new.startswith("whsec_")
        assert rotated["previousSecretExpiresAt"].endswith("Z")
        sent = await sir.request("POST", f"/v1/partner/webhooks/{created['id']}/test")
        await _until_status(db, sent["id"], "SUCCEEDED")
    (got,) = receiver.got(sent["eventId"])
    header = got.headers["X-SIR-Signature"]
    stamp = got.headers["X-SIR-Timestamp"]
    new_signature, old_signature = header.split(",")
    assert verify_webhook(new, stamp, got.body, new_signature)
    assert verify_webhook(old, stamp, got.body, old_signature)
    assert not verify_webhook(new, stamp, got.body, old_signature)
    assert verify_webhook(new, stamp, got.body, header) and verify_webhook(
        old, stamp, got.body, header
    )


# -- (f) 410 disables the endpoint ---------------------------------------------------------------------


async def test_410_disables_the_endpoint(db, box, make_partner, engine_processes, receiver):
    partner = await make_partner()
    async with await _client(db, box, engine_processes, partner.partner_id) as sir:
        created = await _create(sir, receiver.url("gone"))
        sent = await sir.request("POST", f"/v1/partner/webhooks/{created['id']}/test")
        await _until_status(db, sent["id"], "FAILED")
        shown = await sir.request("GET", f"/v1/partner/webhooks/{created['id']}")
        assert shown["isActive"] is False and "410" in shown["disabledReason"]
        assert [a["status_code"] for a in await _attempts(db, sent["id"])] == [410]
        # The same bodiless POST within the same second would carry the same signature, which
        # contract 3.1 refuses as a replay: let the clock move on first.
        await asyncio.sleep(1.1)
        with pytest.raises(SirApiError) as caught:
            await sir.request("POST", f"/v1/partner/webhooks/{created['id']}/test")
        assert (caught.value.status, caught.value.code) == (422, "WEBHOOK_ENDPOINT_INACTIVE")
        # The partner turns it back on: the disabled reason goes.
        back = await sir.request(
            "PATCH", f"/v1/partner/webhooks/{created['id']}", {"isActive": True}
        )
        assert back["isActive"] is True and back["disabledReason"] is None


# -- the HTTP surface ------------------------------------------------------------------------------------


async def test_http_crud_validation_and_scoping(db, box, make_partner, engine_processes):
    partner, other = await make_partner(), await make_partner()
    async with await _client(db, box, engine_processes, partner.partner_id) as sir:
        with pytest.raises(SirApiError) as caught:
            await sir.request(
                "POST",
                "/v1/partner/webhooks",
                {
                    "url": "ftp://example.com/",
                    "eventTypes": ["no.such"],
                    "headers": {"Host": "x", "X-SIR-Thing": "y", "X-Ok": "a\r\nb"},
                },
            )
        assert (caught.value.status, caught.value.code) == (422, "VALIDATION_FAILED")
        fields = caught.value.details["fields"]
        assert set(fields) == {
            "url",
            "eventTypes",
            "headers.Host",
            "headers.X-SIR-Thing",
            "headers.X-Ok",
        }
        created = await _create(
            sir, "https://hooks.sir.invalid/a", description="main", headers={"X-A": "1"}
        )
        path = f"/v1/partner/webhooks/{created['id']}"
        shown = await sir.request("GET", path)
        assert "secret" not in shown and shown["headers"] == {"X-A": "****"}
        assert shown["description"] == "main" and shown["receiveAllEvents"] is False
        patched = await sir.request(
            "PATCH",
            path,
            {"receiveAllEvents": True, "eventTypes": [], "headers": None, "description": None},
        )
        assert patched["receiveAllEvents"] is True and patched["headers"] == {}
        assert patched["description"] is None and patched["url"] == created["url"]
        listed = await sir.request("GET", "/v1/partner/webhooks", params={"limit": 10})
        assert [e["id"] for e in listed["data"]] == [created["id"]]
        async with await _client(db, box, engine_processes, other.partner_id) as stranger:
            for method in ("GET", "DELETE"):
                with pytest.raises(SirApiError) as caught:
                    await stranger.request(method, path)
                assert caught.value.status == 404
        assert (await sir.request("DELETE", path)) == {"id": created["id"], "deleted": True}
        with pytest.raises(SirApiError) as caught:
            await sir.request("GET", path)
        assert caught.value.status == 404


async def test_operator_registers_a_webhook_for_a_partner(db, box, make_partner, engine_processes):
    import aiohttp

    from tests.conftest import OPERATOR_TOKEN

    partner = await make_partner()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{engine_processes}/api/v1/admin/partners/{partner.partner_id}/webhooks",
            json={
                "url": "https://hooks.sir.invalid/op",
                "environment": "sandbox",
                "receiveAllEvents": True,
            },
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        ) as response:
            assert response.status == 201, await response.text()
            body = await response.json()
    assert body["secret"].startswith("whsec_") and body["partnerId"] == partner.partner_id
    async with await _client(db, box, engine_processes, partner.partner_id) as sir:
        listed = await sir.request("GET", "/v1/partner/webhooks")
    assert [e["id"] for e in listed["data"]] == [body["id"]]
    assert "secret" not in listed["data"][0]
