"""Voucher orders on real PostgreSQL: inventory and the vendor path, exact refunds, idempotency,
redemption rules, cancellation, and a race of 100 orders over 50 vouchers."""

from __future__ import annotations

import asyncio
import secrets
from decimal import Decimal

import pytest
from sqlalchemy import text

from engine import catalog, orders, vendors, vouchers
from engine.catalog import Denomination
from engine.errors import (
    DuplicateVoucherCode,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientBalance,
    NotFound,
    OrderNotCancellable,
    ProductUnavailable,
    RedemptionNotAllowed,
    ValidationFailed,
)
from engine.money import Tokens
from engine.submit import submit_action
from engine.verify import verify_ledger
from engine.vouchers import VoucherCode
from tests.integration.test_submit import action, user

T = Tokens.parse
FACE = Decimal("25")


async def _product(db, *, category="food", price="10", active=True, delivery="code") -> str:
    async with db.begin() as conn:
        row = await catalog.create_product(
            conn,
            actor="test",
            fields={
                "name": f"Gift card {secrets.token_hex(3)}",
                "category": category,
                "country": "US",
                "currency": "USD",
                "delivery_type": delivery,
                "denominations": [
                    Denomination(FACE, T(price), active),
                    Denomination(Decimal("50"), T("20")),
                ],
            },
        )
    return row["id"]


async def _stock(db, box, product_id: str, n: int, environment="sandbox") -> list[str]:
    codes = [f"CODE-{secrets.token_hex(6)}" for _ in range(n)]
    async with db.begin() as conn:
        await vouchers.load_inventory(
            conn,
            box,
            actor="test",
            product_id=product_id,
            environment=environment,
            codes=[VoucherCode(FACE, c) for c in codes],
        )
    return codes


async def _vendor(db, **changes) -> None:
    settings = {"mode": "instant", "delay_seconds": 0, "drift_next": 0, **changes}
    async with db.begin() as conn:
        await vendors.configure_sandbox(conn, actor="test", changes=settings)


async def _fund(db, scope, external: str, amount: str) -> None:
    await submit_action(db, scope, action(user(external), amount=amount))


async def _available(db, scope, external: str) -> int:
    async with db.connect() as conn:
        row = await conn.execute(
            text(
                "SELECT a.balance FROM ledger_accounts a JOIN partner_users u "
                "ON u.id = a.partner_user_id WHERE u.partner_id = :p AND u.environment = :e "
                "AND u.external_user_id = :x AND a.kind = 'WALLET_AVAILABLE'"
            ),
            {"p": scope.partner_id, "e": scope.environment, "x": external},
        )
        return int(row.scalar_one())


async def _clean(db, scope) -> None:
    async with db.connect() as conn:
        report = await verify_ledger(conn, scope)
    assert report.ok, report.render()


async def _place(db, scope, external, product_id, quantity=1, key=None, face=FACE):
    return await orders.place_order(
        db,
        scope,
        external_user_id=external,
        idempotency_key=key or f"order-{secrets.token_hex(6)}",
        product_id=product_id,
        face_value=face,
        quantity=quantity,
    )


async def test_an_order_from_inventory_is_delivered_at_once_and_paid_from_the_balance(
    db, box, make_partner
):
    p = await make_partner(funding="1000")
    product = await _product(db)
    codes = await _stock(db, box, product, 3)
    await _fund(db, p.scope, "u1", "35")

    response, replayed = await _place(db, p.scope, "u1", product, quantity=2)

    assert not replayed
    assert response["status"] == "DELIVERED" and response["deliveredQuantity"] == 2
    assert response["tokensDebited"] == T("20") and len(response["vouchers"]) == 2
    assert "code" not in str(response["vouchers"]).lower().replace("'", "")
    assert await _available(db, p.scope, "u1") == T("15").micro
    async with db.connect() as conn:
        found = await vouchers.vouchers_of(conn, p.scope, [response["id"]])
    revealed = {vouchers.reveal(box, v)["code"] for v in found[response["id"]]}
    assert revealed <= set(codes) and len(revealed) == 2
    await _clean(db, p.scope)


async def test_the_same_key_replays_and_another_body_is_refused(db, box, make_partner):
    p = await make_partner(funding="1000")
    product = await _product(db)
    await _stock(db, box, product, 2)
    await _fund(db, p.scope, "u1", "50")

    first, _ = await _place(db, p.scope, "u1", product, key="key-00000001")
    again, replayed = await _place(db, p.scope, "u1", product, key="key-00000001")

    assert replayed and again == _jsonish(first)
    assert await _available(db, p.scope, "u1") == T("40").micro  # charged once
    with pytest.raises(IdempotencyKeyReused):
        await _place(db, p.scope, "u1", product, quantity=2, key="key-00000001")


def _jsonish(value):
    """The stored response comes back from JSONB: compare through the wire encoder."""
    from engine.wire import dumps, loads

    return loads(dumps(value))


async def test_refusals_change_nothing(db, box, make_partner):
    p = await make_partner(funding="1000")
    product = await _product(db)
    inactive = await _product(db, active=False)
    await _stock(db, box, product, 5)
    await _fund(db, p.scope, "u1", "15")

    with pytest.raises(InsufficientBalance) as refused:
        await _place(db, p.scope, "u1", product, quantity=2, key="key-refused-1")
    assert refused.value.details["required"] == T("20")
    with pytest.raises(ProductUnavailable):
        await _place(db, p.scope, "u1", inactive)
    with pytest.raises(ProductUnavailable):
        await _place(db, p.scope, "u1", product, face=Decimal("30"))
    with pytest.raises(NotFound):
        await _place(db, p.scope, "nobody", product)

    assert await _available(db, p.scope, "u1") == T("15").micro
    async with db.connect() as conn:
        count = await conn.execute(
            text("SELECT count(*) FROM orders WHERE partner_id = :p"), {"p": p.scope.partner_id}
        )
        assert count.scalar_one() == 0
    # A refused attempt leaves its key unused: after a top-up the same key goes through.
    await _fund(db, p.scope, "u1", "10")
    response, replayed = await _place(db, p.scope, "u1", product, quantity=2, key="key-refused-1")
    assert not replayed and response["status"] == "DELIVERED"


async def test_pool_redemption_rules(db, box, make_partner):
    p = await make_partner(
        funding="1000",
        redemption={"minBalanceMicro": T("5").micro, "allowedCategories": ["food"]},
    )
    food = await _product(db, category="food")
    travel = await _product(db, category="travel")
    await _stock(db, box, food, 2)
    await _stock(db, box, travel, 2)
    await _fund(db, p.scope, "u1", "14")

    with pytest.raises(RedemptionNotAllowed) as category:
        await _place(db, p.scope, "u1", travel)
    assert category.value.details["rule"] == "allowedCategories"
    await _fund(db, p.scope, "u1", "0.999999")
    with pytest.raises(RedemptionNotAllowed) as minimum:
        await _place(db, p.scope, "u1", food)  # would leave 4.999999 < 5
    assert minimum.value.details["rule"] == "minBalance"
    await _fund(db, p.scope, "u1", "0.000001")
    response, _ = await _place(db, p.scope, "u1", food)  # leaves exactly 5
    assert response["status"] == "DELIVERED"


async def test_vendor_path_instant_failed_and_partial(db, box, make_partner):
    p = await make_partner(funding="1000")
    product = await _product(db, delivery="code_with_pin")
    await _fund(db, p.scope, "u1", "100")
    registry = vendors.Vendors(db, box)

    await _vendor(db, mode="instant")
    pending, _ = await _place(db, p.scope, "u1", product, quantity=2)
    assert pending["status"] == "PENDING" and pending["vouchers"] == []
    assert await orders.process_order(db, box, registry, pending["id"]) == "DELIVERED"
    assert await orders.process_order(db, box, registry, pending["id"]) == "DELIVERED"  # once
    async with db.connect() as conn:
        delivered = await orders.get_order(conn, p.scope, pending["id"])
        issued = (await vouchers.vouchers_of(conn, p.scope, [pending["id"]]))[pending["id"]]
    assert delivered["deliveredQuantity"] == 2 and len(issued) == 2
    assert all(vouchers.reveal(box, v)["pin"] for v in issued)

    await _vendor(db, mode="fail")
    failing, _ = await _place(db, p.scope, "u1", product, quantity=3)
    before = await _available(db, p.scope, "u1")
    assert await orders.process_order(db, box, registry, failing["id"]) == "FAILED"
    assert await _available(db, p.scope, "u1") == before + T("30").micro

    await _stock_pins(db, box, product, 1)
    partial, _ = await _place(db, p.scope, "u1", product, quantity=3)
    assert partial["status"] == "PENDING" and partial["deliveredQuantity"] == 1
    before = await _available(db, p.scope, "u1")
    assert await orders.process_order(db, box, registry, partial["id"]) == "PARTIALLY_DELIVERED"
    async with db.connect() as conn:
        final = await orders.get_order(conn, p.scope, partial["id"])
    assert final["tokensRefunded"] == T("20") and final["deliveredQuantity"] == 1
    assert await _available(db, p.scope, "u1") == before + T("20").micro
    await _clean(db, p.scope)


async def _stock_pins(db, box, product_id: str, n: int) -> None:
    async with db.begin() as conn:
        await vouchers.load_inventory(
            conn,
            box,
            actor="test",
            product_id=product_id,
            environment="sandbox",
            codes=[VoucherCode(FACE, f"P-{secrets.token_hex(6)}", pin="1234") for _ in range(n)],
        )


async def test_delayed_vendor_waits_and_a_cancel_refunds_what_was_not_delivered(
    db, box, make_partner
):
    p = await make_partner(funding="1000")
    product = await _product(db)
    await _fund(db, p.scope, "u1", "100")
    registry = vendors.Vendors(db, box)
    await _vendor(db, mode="delayed", delay_seconds=1)

    order, _ = await _place(db, p.scope, "u1", product, quantity=1)
    assert await orders.process_order(db, box, registry, order["id"]) == "PROCESSING"
    await asyncio.sleep(1.1)
    assert await orders.process_order(db, box, registry, order["id"]) == "DELIVERED"

    other, _ = await _place(db, p.scope, "u1", product, quantity=2)
    assert await orders.process_order(db, box, registry, other["id"]) == "PROCESSING"
    cancelled = await orders.cancel_order(db, p.scope, other["id"])
    assert cancelled["status"] == "CANCELLED" and cancelled["tokensRefunded"] == T("20")
    await asyncio.sleep(1.1)
    # The vendor path finds the order cancelled and issues nothing.
    assert await orders.process_order(db, box, registry, other["id"]) == "CANCELLED"
    with pytest.raises(OrderNotCancellable):
        await orders.cancel_order(db, p.scope, other["id"])
    with pytest.raises(OrderNotCancellable):
        await orders.cancel_order(db, p.scope, order["id"])
    assert await _available(db, p.scope, "u1") == T("90").micro
    await _clean(db, p.scope)


async def test_a_refund_returns_the_tokens_to_the_lots_that_paid(db, box, make_partner):
    p = await make_partner(funding="1000", expiration_days=30)
    product = await _product(db)
    await _fund(db, p.scope, "u1", "12")
    await _vendor(db, mode="fail")

    order, _ = await _place(db, p.scope, "u1", product, quantity=1)
    await orders.process_order(db, box, vendors.Vendors(db, box), order["id"])

    async with db.connect() as conn:
        lots = (
            await conn.execute(
                text(
                    "SELECT l.amount, l.remaining, l.expires_at IS NOT NULL FROM lots l "
                    "JOIN order_lot_takes t ON t.lot_id = l.id WHERE t.order_id = :o"
                ),
                {"o": order["id"]},
            )
        ).all()
    assert lots == [(T("12").micro, T("12").micro, True)]
    await _clean(db, p.scope)


async def test_inventory_loading_refuses_bad_and_duplicate_codes(db, box):
    product = await _product(db)
    with pytest.raises(ValidationFailed) as bad:
        async with db.begin() as conn:
            await vouchers.load_inventory(
                conn,
                box,
                actor="test",
                product_id=product,
                environment="sandbox",
                codes=[
                    VoucherCode(Decimal("7"), "A"),
                    VoucherCode(FACE, "B"),
                    VoucherCode(FACE, "B"),
                ],
            )
    assert set(bad.value.fields) == {"codes[0].faceValue", "codes[2].code"}
    async with db.begin() as conn:
        await vouchers.load_inventory(
            conn,
            box,
            actor="test",
            product_id=product,
            environment="sandbox",
            codes=[VoucherCode(FACE, "SAME")],
        )
    with pytest.raises(DuplicateVoucherCode):
        async with db.begin() as conn:
            await vouchers.load_inventory(
                conn,
                box,
                actor="test",
                product_id=product,
                environment="sandbox",
                codes=[VoucherCode(FACE, "OTHER"), VoucherCode(FACE, "SAME")],
            )
    async with db.connect() as conn:
        assert await vouchers.available_counts(conn, product, "sandbox") == {"25.00": 1}
        # No code is stored in clear.
        raw = await conn.execute(
            text(
                "SELECT count(*) FROM vouchers WHERE position('SAME' in encode(code_enc, 'escape')) > 0"
            )
        )
        assert raw.scalar_one() == 0


async def test_100_concurrent_orders_over_50_vouchers(db, box, make_partner):
    """No voucher issued twice, no wallet negative, every undelivered voucher refunded exactly,
    the ledger whole."""
    p = await make_partner(funding="100000")
    product = await _product(db, price="10")
    await _stock(db, box, product, 50)
    await _vendor(db, mode="fail")
    users = [f"racer-{i}" for i in range(25)]
    for index, external in enumerate(users):
        # Some can afford 10 vouchers, some 3, some none: more than the 50 in stock.
        await _fund(db, p.scope, external, str([100, 30, 5][index % 3]))
    granted = {u: await _available(db, p.scope, u) for u in users}

    async def one(i: int):
        try:
            response, _ = await _place(
                db, p.scope, users[i % len(users)], product, quantity=1 + i % 2, key=f"race-{i:04d}"
            )
            return response
        except (InsufficientBalance, ProductUnavailable) as refused:
            return refused

    results = await asyncio.gather(*(one(i) for i in range(100)))
    placed = [r for r in results if isinstance(r, dict)]
    assert placed and any(isinstance(r, InsufficientBalance) for r in results)
    registry = vendors.Vendors(db, box)
    for order in placed:
        if order["status"] == "PENDING":
            assert await orders.process_order(db, box, registry, order["id"]) in (
                "FAILED",
                "PARTIALLY_DELIVERED",
            )

    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT o.external_user_id, o.quantity, o.delivered_quantity, o.unit_price, "
                    "o.tokens_debited, o.tokens_refunded, (SELECT count(*) FROM vouchers v "
                    "WHERE v.order_id = o.id) FROM orders o WHERE o.partner_id = :p"
                ),
                {"p": p.scope.partner_id},
            )
        ).all()
        issued = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT order_id) FILTER (WHERE order_id IS NOT NULL) "
                    "FROM vouchers WHERE product_id = :p AND status = 'ISSUED'"
                ),
                {"p": product},
            )
        ).one()
    assert len(rows) == len(placed)
    # Every code in stock went out once; the rest of the demand failed at the vendor.
    assert sum(r[2] for r in rows) == issued[0] == 50
    assert any(r[5] > 0 for r in rows)
    spent: dict[str, int] = {}
    for external, quantity, delivered, price, debited, refunded, count in rows:
        assert count == delivered
        assert refunded == (quantity - delivered) * price
        spent[external] = spent.get(external, 0) + debited - refunded
    for external in users:
        balance = await _available(db, p.scope, external)
        assert balance >= 0
        assert balance == granted[external] - spent.get(external, 0)
    await _clean(db, p.scope)


async def test_a_key_older_than_24_hours_is_forgotten(db, box, make_partner):
    p = await make_partner(funding="1000")
    product = await _product(db)
    await _stock(db, box, product, 3)
    await _fund(db, p.scope, "u1", "50")
    await _place(db, p.scope, "u1", product, key="key-aged-0001")
    await _place(db, p.scope, "u1", product, key="key-aged-0002")
    async with db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE order_keys SET created_at = now() - interval '25 hours' "
                "WHERE partner_id = :p"
            ),
            {"p": p.scope.partner_id},
        )
    # Reused by the partner after 24 hours: a new order, not IDEMPOTENCY_KEY_REUSED.
    again, replayed = await _place(db, p.scope, "u1", product, quantity=1, key="key-aged-0001")
    assert not replayed and again["status"] == "DELIVERED"
    async with db.begin() as conn:
        assert await orders.purge_expired_keys(conn) >= 1
        left = await conn.execute(
            text("SELECT idempotency_key FROM order_keys WHERE partner_id = :p ORDER BY 1"),
            {"p": p.scope.partner_id},
        )
        assert [r[0] for r in left] == ["key-aged-0001"]


async def test_a_worker_killed_after_the_vendor_call_issues_nothing_twice(db, box, make_partner):
    """The vendor answered but the worker died before recording it: the lease runs out, the
    pick-up claims the order again, the vendor (deduplicating on the order id) answers the same
    codes, and they are recorded once."""
    from datetime import UTC, datetime

    p = await make_partner(funding="1000")
    product = await _product(db)
    await _fund(db, p.scope, "u1", "100")
    await _vendor(db, mode="instant")
    registry = vendors.Vendors(db, box)
    order, _ = await _place(db, p.scope, "u1", product, quantity=2)

    # Given a worker that claimed the order, called the vendor, and died
    request, vendor_name = await orders._begin(db, order["id"])
    first = await registry.named(vendor_name).place(request)
    assert first.status == "FULFILLED" and len(first.codes) == 2
    async with db.begin() as conn:
        assert order["id"] not in await orders.claim_due(conn, datetime.now(UTC), 100)  # leased
        later = datetime.now(UTC) + orders.LEASE + orders.LEASE
        assert order["id"] in await orders.claim_due(conn, later, 100)

    # When another worker takes it up
    assert await orders.process_order(db, box, registry, order["id"]) == "DELIVERED"

    # Then the same two codes, issued once; one vendor record; the price paid once
    async with db.connect() as conn:
        issued = (await vouchers.vouchers_of(conn, p.scope, [order["id"]]))[order["id"]]
        records = await conn.execute(
            text("SELECT count(*) FROM vendor_orders WHERE request_id = :o"), {"o": order["id"]}
        )
        assert records.scalar_one() == 1
    assert sorted(vouchers.reveal(box, v)["code"] for v in issued) == sorted(
        c.code for c in first.codes
    )
    assert await _available(db, p.scope, "u1") == T("80").micro
    await _clean(db, p.scope)


async def test_concurrent_duplicates_place_once_and_a_stuck_key_answers_in_progress(
    db, box, make_partner
):
    p = await make_partner(funding="1000")
    product = await _product(db)
    await _stock(db, box, product, 5)
    await _fund(db, p.scope, "u1", "50")

    # Given the same order sent four times at once / Then one is placed, three replay it
    answers = await asyncio.gather(
        *(_place(db, p.scope, "u1", product, key="key-together-1") for _ in range(4))
    )
    assert sorted(replayed for _, replayed in answers) == [False, True, True, True]
    assert len({response["id"] for response, _ in answers}) == 1
    assert await _available(db, p.scope, "u1") == T("40").micro

    # Given another transaction holding a key (a request still being placed)
    async with db.connect() as holder:
        await holder.begin()
        await holder.execute(
            text(
                "INSERT INTO order_keys (partner_id, environment, idempotency_key, request_hash, "
                "order_id, response) VALUES (:p, 'sandbox', 'key-stuck-001', '\\x00', '', '{}')"
            ),
            {"p": p.scope.partner_id},
        )
        # When the same key arrives / Then after 5 s: 409 IDEMPOTENCY_IN_PROGRESS, nothing done
        with pytest.raises(IdempotencyInProgress):
            await _place(db, p.scope, "u1", product, key="key-stuck-001")
        await holder.rollback()
    response, replayed = await _place(db, p.scope, "u1", product, key="key-stuck-001")
    assert not replayed and response["status"] == "DELIVERED"
    assert await _available(db, p.scope, "u1") == T("30").micro
