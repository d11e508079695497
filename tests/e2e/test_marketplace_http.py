"""The marketplace end to end: a real front, a real worker on the orders and maintenance queues,
the real scheduler, signed HTTP from the partner's client and the operator API.

Covers contract section 10's "done when": an order through the async vendor path completes via
workers and emits its events; a failing vendor refunds; reconciliation finds a drift injected
into the sandbox vendor (worker job, operator resolution) and reports a clean day as clean.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from engine.credentials import issue_keys
from engine.money import Tokens
from engine.partners import create_partner
from engine.pools import allocate, create_pool
from engine.scope import Scope
from ops.processes import sir_engine_argv, start_group, stop_groups
from sir_client import SirClient
from tests.conftest import OPERATOR_TOKEN, Services, free_port, wait_http_ok
from workers.dispatch import Dispatcher

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("marketplace-processes")


@pytest.fixture(scope="module")
def engine(services: Services, logs: Path) -> Iterator[str]:
    """The front, one worker (orders + maintenance queues) and the scheduler (1 s pick-up),
    each in its own process group (the worker forks), stopped as groups."""
    env = services.env(SIR_ORDER_PICKUP_SECONDS="1", SIR_WORKER_METRICS_PORT="0")
    port = free_port()
    commands = {
        "front": sir_engine_argv("serve", "--port", str(port)),
        "worker": sir_engine_argv(
            "worker", "--queues", "orders", "maintenance", "--processes", "1", "--threads", "4"
        ),
        "scheduler": sir_engine_argv("scheduler"),
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, command in commands.items():
            processes.append(start_group(command, env, logs / f"{name}.log"))
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/healthz", processes[0])
        yield base
    finally:
        stop_groups(processes)
        for name in commands:
            print(f"--- {name} ---\n{(logs / f'{name}.log').read_text()[-1500:]}")


async def _partner(
    db, box, base: str, *, features=("ACTIONS", "MARKETPLACE")
) -> tuple[SirClient, Scope]:
    async with db.begin() as conn:
        partner = await create_partner(
            conn,
            actor="test",
            name=f"Market {secrets.token_hex(3)}",
            status="ACTIVE",
            enabled_features=features,
            action_types=("PURCHASE",),
            stakeholder_types=("CUSTOMER",),
        )
        scope = Scope(partner["id"], "sandbox")
        pool = await create_pool(conn, scope, actor="test", name="main")
        await allocate(conn, scope, actor="test", pool_id=pool["id"], amount=Tokens.parse("10000"))
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner["id"], environment="sandbox", name="e2e"
        )
    return SirClient(base, keys.secret_key, keys.hmac_secret), scope


async def _fund(sir: SirClient, user: str, amount: str) -> None:
    await sir.request(
        "POST",
        "/v1/partner/actions/submit",
        {
            "idempotencyKey": f"fund-{secrets.token_hex(6)}",
            "actionType": "PURCHASE",
            "amount": amount,
            "currency": "USD",
            "stakeholders": [{"stakeholderTypeCode": "CUSTOMER", "partnerUserId": user}],
        },
    )


async def _operator(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, base + path, json=body, headers=OPERATOR) as response:
            return response.status, await response.json()


async def _product(base: str, *, stock: list[str] = ()) -> str:
    status, product = await _operator(
        base,
        "POST",
        "/api/v1/admin/catalog/products",
        {
            "name": f"Coffee card {secrets.token_hex(3)}",
            "category": "food",
            "country": "US",
            "currency": "USD",
            "deliveryType": "code",
            "denominations": [{"faceValue": 10, "tokenPrice": "10"}],
        },
    )
    assert status == 201, product
    if stock:
        status, loaded = await _operator(
            base,
            "POST",
            f"/api/v1/admin/catalog/products/{product['id']}/vouchers",
            {"environment": "sandbox", "codes": [{"faceValue": 10, "code": c} for c in stock]},
        )
        assert status == 201 and loaded["loaded"] == len(stock), loaded
    return product["id"]


async def _vendor(base: str, **settings: Any) -> None:
    status, body = await _operator(base, "PATCH", "/api/v1/admin/vendors/sandbox", settings)
    assert status == 200, body


async def _order(sir: SirClient, user: str, product: str, quantity: int, key: str | None = None):
    return await sir.request_raw(
        "POST",
        f"/v1/partner/users/{user}/orders",
        {"productId": product, "faceValue": "10.00", "quantity": quantity},
        headers={"Idempotency-Key": key or f"order-{secrets.token_hex(8)}"},
    )


async def _until(sir: SirClient, order_id: str, statuses: set[str], within: float = 30) -> dict:
    deadline = time.monotonic() + within
    while True:
        order = await sir.request("GET", f"/v1/partner/orders/{order_id}")
        if order["status"] in statuses:
            return order
        assert time.monotonic() < deadline, f"order stuck in {order['status']}"
        await asyncio.sleep(0.3)


async def _events(db, scope: Scope) -> list[tuple[str, str]]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT type, payload::text FROM outbox_events WHERE partner_id = :p "
                "ORDER BY created_at, id"
            ),
            {"p": scope.partner_id},
        )
        return [(t, p) for t, p in rows]


async def test_an_order_through_the_vendor_path(db, box, engine, logs):
    sir, scope = await _partner(db, box, engine)
    in_stock = f"STOCK-{secrets.token_hex(6)}"
    product = await _product(engine, stock=[in_stock])
    await _vendor(engine, mode="delayed", delaySeconds=1, driftNext=0)
    async with sir:
        await _fund(sir, "jane", "100")

        missing = await sir.request_raw(
            "POST", "/v1/partner/users/jane/orders", {"productId": product, "faceValue": 10}
        )
        assert (missing.status, missing.body["error"]["code"]) == (400, "IDEMPOTENCY_KEY_REQUIRED")
        # Distinct bodies: the same signed bytes twice in one second are a replay (contract 3.1).
        short = await _order(sir, "jane", product, 1, key="short")
        assert short.body["error"]["code"] == "IDEMPOTENCY_KEY_TOO_SHORT"
        long = await _order(sir, "jane", product, 2, key="k" * 256)
        assert long.body["error"]["code"] == "IDEMPOTENCY_KEY_TOO_LONG"

        placed = await _order(sir, "jane", product, 3, key="order-jane-0001")
        assert placed.status == 201, placed.body
        assert placed.body["status"] == "PENDING" and placed.body["deliveredQuantity"] == 1
        await asyncio.sleep(1.05)  # a retry is signed afresh, in a later second
        replay = await _order(sir, "jane", product, 3, key="order-jane-0001")
        assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert replay.body == placed.body
        reused = await _order(sir, "jane", product, 2, key="order-jane-0001")
        assert (reused.status, reused.body["error"]["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")

        order = await _until(sir, placed.body["id"], {"DELIVERED"})
        assert order["deliveredQuantity"] == 3 and len(order["vouchers"]) == 3
        codes = await sir.request("GET", f"/v1/partner/orders/{order['id']}/vouchers")
        revealed = [v["code"] for v in codes["data"]]
        assert in_stock in revealed and len(set(revealed)) == 3

        balance = await sir.request("GET", "/v1/partner/users/jane/balance")
        assert balance["available"] == 70 and balance["lifetimeRedeemed"] == 30
        lines = await sir.request(
            "GET",
            "/v1/partner/transactions",
            params={"externalUserId": "jane", "type": "REDEMPTION"},
        )
        (line,) = lines["data"]
        assert line["orderId"] == order["id"] and line["amount"] == -30
        listed = await sir.request("GET", "/v1/partner/orders", params={"status": "DELIVERED"})
        assert [o["id"] for o in listed["data"]] == [order["id"]]

    events = await _events(db, scope)
    types = [t for t, _ in events]
    # Codes leave only through GET /orders/:id/vouchers: not in events, not in any log.
    for log_file in logs.glob("*.log"):
        logged = log_file.read_text()
        assert not any(code in logged for code in revealed), log_file.name
    for expected in ("order.created", "order.processing", "order.delivered"):
        assert types.count(expected) == 1, types
    assert types.count("voucher.issued") == 3
    for _, payload in events:
        assert not any(code in payload for code in revealed)

    # Another partner, and a partner without the feature, see nothing.
    other, _ = await _partner(db, box, engine)
    plain, _ = await _partner(db, box, engine, features=("ACTIONS",))
    async with other, plain:
        hidden = await other.request_raw("GET", f"/v1/partner/orders/{order['id']}")
        assert hidden.status == 404
        refused = await plain.request_raw("GET", "/v1/partner/catalog/products")
        assert (refused.status, refused.body["error"]["code"]) == (403, "FEATURE_NOT_ENABLED")


async def test_a_failing_vendor_refunds_and_an_operator_cancel_refunds(db, box, engine):
    sir, scope = await _partner(db, box, engine)
    product = await _product(engine)
    async with sir:
        await _fund(sir, "sam", "50")
        await _vendor(engine, mode="fail", delaySeconds=0, driftNext=0)
        placed = await _order(sir, "sam", product, 2)
        assert placed.status == 201, placed.body
        failed = await _until(sir, placed.body["id"], {"FAILED"})
        assert failed["tokensRefunded"] == 20 and failed["failureReason"]
        assert (await sir.request("GET", "/v1/partner/users/sam/balance"))["available"] == 50

        await _vendor(engine, mode="delayed", delaySeconds=600)
        waiting = await _order(sir, "sam", product, 1)
        await _until(sir, waiting.body["id"], {"PROCESSING"})
        status, cancelled = await _operator(
            engine, "POST", f"/api/v1/admin/orders/{waiting.body['id']}/cancel"
        )
        assert status == 200 and cancelled["status"] == "CANCELLED", cancelled
        assert cancelled["tokensRefunded"] == 10
        again = await sir.request_raw("POST", f"/v1/partner/orders/{waiting.body['id']}/cancel")
        assert (again.status, again.body["error"]["code"]) == (409, "ORDER_NOT_CANCELLABLE")
        assert (await sir.request("GET", "/v1/partner/users/sam/balance"))["available"] == 50
    types = [t for t, _ in await _events(db, scope)]
    assert types.count("order.refunded") == 2 and types.count("order.cancelled") == 1


async def test_reconciliation_finds_an_injected_drift_and_a_clean_day_is_clean(
    db, box, engine, services
):
    today = datetime.now(UTC).date().isoformat()
    clean, _ = await _partner(db, box, engine)
    drifting, scope = await _partner(db, box, engine)
    product = await _product(engine, stock=[f"STOCK-{secrets.token_hex(6)}"])
    async with clean, drifting:
        await _vendor(engine, mode="instant", delaySeconds=0, driftNext=0)
        await _fund(clean, "ann", "40")
        first = await _order(clean, "ann", product, 2)  # one from stock, one from the vendor
        await _until(clean, first.body["id"], {"DELIVERED"})
        report = await clean.request("GET", f"/v1/partner/reconciliation/{today}")
        assert report["summary"] == {
            "ordersTotal": 1,
            "vouchersAllocated": 2,
            "matched": 2,
            "drifted": 0,
            "unmatched": 0,
        }
        assert report["drifts"] == [] and report["ledger"]["balanced"] is True

        await _vendor(engine, driftNext=1)
        await _fund(drifting, "bob", "40")
        skewed = await _order(drifting, "bob", product, 1)
        await _until(drifting, skewed.body["id"], {"DELIVERED"})
        report = await drifting.request("GET", f"/v1/partner/reconciliation/{today}")
        assert report["summary"]["drifted"] == 1 and report["summary"]["matched"] == 0
        (drift,) = report["drifts"]
        assert drift["orderId"] == skewed.body["id"] and drift["resolution"] == "pending"
        assert drift["vendorRecord"]["quantity"] == drift["ourAllocation"]["quantity"] + 1
        bad_day = await drifting.request_raw("GET", "/v1/partner/reconciliation/2026-13-01")
        assert bad_day.status == 422

        # The daily job, run by the real worker: the finding is stored once, with its event.
        dispatcher = Dispatcher(services.redis_url)
        for _ in range(2):
            dispatcher.send("maintenance", "reconcile_day", scope.partner_id, "sandbox", today)
        dispatcher.close()
        deadline = time.monotonic() + 30
        while True:
            status, drifts = await _operator(
                engine, "GET", f"/api/v1/admin/reconciliation/drifts?partnerId={scope.partner_id}"
            )
            if drifts["data"]:
                break
            assert time.monotonic() < deadline, "the worker did not record the drift"
            await asyncio.sleep(0.3)
        (stored,) = drifts["data"]
        await asyncio.sleep(1)  # the second message has run too
        types = [t for t, _ in await _events(db, scope)]
        assert types.count("reconciliation.drift_detected") == 1
        status, resolved = await _operator(
            engine,
            "PATCH",
            f"/api/v1/admin/reconciliation/drifts/{stored['id']}",
            {"resolution": "resolved", "note": "vendor credit note 42"},
        )
        assert status == 200 and resolved["resolution"] == "resolved"
        report = await drifting.request("GET", f"/v1/partner/reconciliation/{today}")
        assert report["drifts"][0]["resolution"] == "resolved"
        assert report["drifts"][0]["id"] == stored["id"]
