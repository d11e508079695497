"""Voucher orders (contract section 10): tokens in, vouchers out, every token accounted for.

Placing an order is one transaction: claim the Idempotency-Key, take the price from the user's
available balance (earliest-expiring lots first) into the partner's SINK_REDEEMED account as a
REDEMPTION entry, and issue what the inventory holds. A fully stocked order is DELIVERED at
once; otherwise it is PENDING and the vendor path (`process_order`, run by workers) takes it
through PROCESSING to DELIVERED, PARTIALLY_DELIVERED or FAILED. Whatever is not delivered is
refunded exactly (a REFUND entry back to the very lots that paid for it), also on CANCELLED.

Lock order, the same as the sweeps and reversals: the user's lots first, then ledger accounts
(in id order, by `post_entries`). The order row is the lock that serialises cancel against the
vendor path, so a voucher is never issued to a cancelled order and nothing is refunded twice.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Integer, bindparam, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine import audit
from engine.accounts import singleton_account, wallet
from engine.catalog import CENT, get_product, orderable_denomination
from engine.crypto import SecretBox
from engine.errors import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientBalance,
    NotFound,
    OrderNotCancellable,
    ProductUnavailable,
    RedemptionNotAllowed,
    ValidationFailed,
)
from engine.ids import new_id
from engine.ledger import EntryDraft, Leg, post_entries
from engine.money import Tokens
from engine.outbox import Event, record_events
from engine.pagination import Page, fetch_page
from engine.scope import Scope
from engine.tables import ORDER_STATUSES, orders
from engine.users import get_user
from engine.vendors import VendorRequest, VendorResult, Vendors, vendor_name_for
from engine.vouchers import allocate, issue_from_vendor, reveal, vouchers_of
from engine.wire import dumps

KEY_TTL = timedelta(hours=24)  # contract: order idempotency keys are kept 24 hours
LEASE = timedelta(seconds=60)
IN_FLIGHT_WAIT = "5s"  # how long an order waits for another one holding its Idempotency-Key  # a claimed order waits this long before it counts as lost
OPEN = ("PENDING", "PROCESSING")
_REFERENCE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud to support


def fingerprint(
    external_user_id: str, product_id: str, face_value: Decimal, quantity: int
) -> bytes:
    """What "the same key, user and body" compares: parsed values, not bytes."""
    canonical = json.dumps(
        {
            "user": external_user_id,
            "productId": product_id,
            "faceValue": format(face_value.quantize(CENT), "f"),
            "quantity": quantity,
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).digest()


def _reference() -> str:
    return "ORD-" + "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(10))


# -- views ------------------------------------------------------------------------------------------


def order_view(order: dict[str, Any], vouchers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The order as partners, webhooks and listings see it: voucher ids, never codes."""
    return {
        "id": order["id"],
        "reference": order["reference"],
        "environment": order["environment"],
        "externalUserId": order["external_user_id"],
        "productId": order["product_id"],
        "faceValue": Decimal(order["face_value"]),
        "quantity": int(order["quantity"]),
        "deliveredQuantity": int(order["delivered_quantity"]),
        "unitPrice": Tokens(int(order["unit_price"])),
        "tokensDebited": Tokens(int(order["tokens_debited"])),
        "tokensRefunded": Tokens(int(order["tokens_refunded"])),
        "status": order["status"],
        "vouchers": [
            {
                "id": v["id"],
                "status": "ISSUED",
                "faceValue": Decimal(v["face_value"]),
                "expiresAt": v["expires_at"],
            }
            for v in vouchers
        ],
        "failureReason": order["failure_reason"],
        "placedAt": order["created_at"],
        "updatedAt": order["updated_at"],
        "completedAt": order["completed_at"],
    }


async def _order_row(
    conn: AsyncConnection, order_id: str, scope: Scope | None, *, lock: bool = False
) -> dict[str, Any]:
    query = select(orders).where(orders.c.id == order_id)
    if scope is not None:
        query = query.where(
            orders.c.partner_id == scope.partner_id, orders.c.environment == scope.environment
        )
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise NotFound(f"order {order_id} not found")
    return dict(row)


async def _view(conn: AsyncConnection, order: dict[str, Any]) -> dict[str, Any]:
    scope = Scope(order["partner_id"], order["environment"])
    found = await vouchers_of(conn, scope, [order["id"]])
    return order_view(order, found[order["id"]])


async def get_order(conn: AsyncConnection, scope: Scope, order_id: str) -> dict[str, Any]:
    """One order of the caller's scope. Raises NotFound."""
    return await _view(conn, await _order_row(conn, order_id, scope))


async def list_orders(
    conn: AsyncConnection,
    scope: Scope,
    page: Page,
    *,
    status: str | None = None,
    external_user_id: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the scope's orders, newest first. Raises ValidationFailed for a bad status."""
    if status is not None and status not in ORDER_STATUSES:
        raise ValidationFailed({"status": [f"must be one of {', '.join(ORDER_STATUSES)}"]})
    query = select(orders).where(
        orders.c.partner_id == scope.partner_id, orders.c.environment == scope.environment
    )
    if status is not None:
        query = query.where(orders.c.status == status)
    if external_user_id is not None:
        query = query.where(orders.c.external_user_id == external_user_id)
    rows, cursor = await fetch_page(conn, query, orders.c.created_at, orders.c.id, page)
    found = await vouchers_of(conn, scope, [r["id"] for r in rows])
    return [order_view(r, found[r["id"]]) for r in rows], cursor


async def voucher_codes(
    conn: AsyncConnection, box: SecretBox, scope: Scope, order_id: str
) -> list[dict[str, Any]]:
    """The codes issued to one order of the caller's scope, decrypted (`GET /orders/:id/
    vouchers`, the only place codes leave the engine). Raises NotFound."""
    await _order_row(conn, order_id, scope)
    found = await vouchers_of(conn, scope, [order_id])
    return [reveal(box, voucher) for voucher in found[order_id]]


# -- placing an order ---------------------------------------------------------------------------------


async def _claim_key(
    conn: AsyncConnection, scope: Scope, key: str, request_hash: bytes
) -> dict[str, Any] | None:
    """Claim the Idempotency-Key for this transaction. Returns the original response when the
    key was used with the same request in the last 24 hours; raises IdempotencyKeyReused when
    it was used with another. A concurrent request holding the key makes this wait for it."""
    await conn.execute(
        text(
            "DELETE FROM order_keys WHERE partner_id = :partner_id AND environment = :environment "
            "AND idempotency_key = :key AND created_at < now() - make_interval(secs => :ttl)"
        ),
        {**scope.params, "key": key, "ttl": KEY_TTL.total_seconds()},
    )
    # The same key in flight elsewhere makes the insert wait for that transaction (the primary
    # key); past IN_FLIGHT_WAIT the retry is told to come back, as submit does.
    await conn.execute(text(f"SET LOCAL lock_timeout = '{IN_FLIGHT_WAIT}'"))
    try:
        claimed = await conn.execute(
            text(
                "INSERT INTO order_keys (partner_id, environment, idempotency_key, request_hash, "
                "order_id, response) VALUES (:partner_id, :environment, :key, :hash, '', '{}') "
                "ON CONFLICT DO NOTHING RETURNING 1"
            ),
            {**scope.params, "key": key, "hash": request_hash},
        )
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
            raise IdempotencyInProgress(
                "An order with this Idempotency-Key is still being placed; retry shortly"
            ) from None
        raise
    await conn.execute(text("SET LOCAL lock_timeout = DEFAULT"))
    if claimed.first() is not None:
        return None
    previous = (
        await conn.execute(
            text(
                "SELECT request_hash, response FROM order_keys WHERE partner_id = :partner_id "
                "AND environment = :environment AND idempotency_key = :key"
            ),
            {**scope.params, "key": key},
        )
    ).one()
    if bytes(previous.request_hash) != request_hash:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used with another order request",
            details={"idempotencyKey": key},
        )
    return dict(previous.response)


_OPEN_LOTS = text(
    "SELECT id, remaining, action_id FROM lots WHERE account_id = :account_id AND remaining > 0 "
    "AND partner_id = :partner_id AND environment = :environment "
    "ORDER BY expires_at ASC NULLS LAST, id ASC FOR UPDATE"
)


async def _balance(conn: AsyncConnection, scope: Scope, account_id: int) -> int:
    row = await conn.execute(
        text(
            "SELECT balance FROM ledger_accounts WHERE id = :id AND partner_id = :partner_id "
            "AND environment = :environment FOR NO KEY UPDATE"
        ),
        {**scope.params, "id": account_id},
    )
    return int(row.scalar_one())


async def _check_redemption_rules(
    conn: AsyncConnection,
    scope: Scope,
    action_ids: Sequence[str],
    *,
    category: str,
    balance_after: int,
) -> None:
    """The redemption rules of every pool whose tokens the order spends (contract 10): the
    available balance left must stay >= each pool's `minBalance`, and the product's category
    must be in each pool's `allowedCategories` when that list is set."""
    rows = await conn.execute(
        text(
            "SELECT DISTINCT p.id, p.redemption FROM actions a JOIN token_pools p "
            "ON p.id = a.pool_id WHERE a.id = ANY(:ids) AND a.partner_id = :partner_id "
            "AND a.environment = :environment ORDER BY p.id"
        ),
        {**scope.params, "ids": list(action_ids)},
    )
    rules = [(pool_id, redemption or {}) for pool_id, redemption in rows]
    # The category first: it refuses the product whatever the amounts.
    for pool_id, redemption in rules:
        allowed = redemption.get("allowedCategories")
        if allowed and category not in allowed:
            raise RedemptionNotAllowed(
                "The pool's tokens may not be redeemed for this category",
                details={"rule": "allowedCategories", "poolId": pool_id, "allowed": allowed},
            )
    for pool_id, redemption in rules:
        min_balance = redemption.get("minBalanceMicro")
        if min_balance is not None and balance_after < int(min_balance):
            raise RedemptionNotAllowed(
                "The order would leave less than the pool's minimum balance",
                details={
                    "rule": "minBalance",
                    "poolId": pool_id,
                    "minBalance": Tokens(int(min_balance)),
                },
            )


async def place_order(
    db: AsyncEngine,
    scope: Scope,
    *,
    external_user_id: str,
    idempotency_key: str,
    product_id: str,
    face_value: Decimal,
    quantity: int,
) -> tuple[dict[str, Any], bool]:
    """Place an order in one transaction. Returns (response, replayed).

    Raises NotFound (user), IdempotencyKeyReused, ProductUnavailable, InsufficientBalance,
    RedemptionNotAllowed. A refused order writes nothing and leaves its key unused.
    """
    request_hash = fingerprint(external_user_id, product_id, face_value, quantity)
    async with db.begin() as conn:
        original = await _claim_key(conn, scope, idempotency_key, request_hash)
        if original is not None:
            return original, True
        user_id = (await get_user(conn, scope, external_user_id)).id  # NotFound
        try:
            product = await get_product(conn, product_id)
        except NotFound:
            raise ProductUnavailable("No such product", details={"productId": product_id}) from None
        denomination = orderable_denomination(product, face_value.quantize(CENT))
        cost = denomination.token_price.micro * quantity

        accounts = await wallet(conn, scope, partner_user_id=user_id)
        lots = (
            await conn.execute(_OPEN_LOTS, {**scope.params, "account_id": accounts.available_id})
        ).all()
        available = await _balance(conn, scope, accounts.available_id)
        if available < cost:
            raise InsufficientBalance(
                "The user's available balance does not cover the order",
                details={"available": Tokens(available), "required": Tokens(cost)},
            )
        takes: list[tuple[int, int]] = []
        need = cost
        for lot_id, remaining, _ in lots:
            if need == 0:
                break
            take = min(int(remaining), need)
            takes.append((int(lot_id), take))
            need -= take
        taken = {lot_id for lot_id, _ in takes}
        spent_actions = sorted({a for lot_id, _, a in lots if a and int(lot_id) in taken})
        await _check_redemption_rules(
            conn, scope, spent_actions, category=product["category"], balance_after=available - cost
        )

        order_id = new_id()
        await conn.execute(
            orders.insert().values(
                id=order_id,
                partner_id=scope.partner_id,
                environment=scope.environment,
                reference=_reference(),
                partner_user_id=user_id,
                external_user_id=external_user_id,
                product_id=product_id,
                face_value=denomination.face_value,
                quantity=quantity,
                unit_price=denomination.token_price.micro,
                tokens_debited=cost,
                status="PENDING",
            )
        )
        await _take_lots(conn, order_id, takes)
        sink = await singleton_account(conn, scope, "SINK_REDEEMED")
        await post_entries(
            conn,
            scope,
            [
                EntryDraft(
                    "REDEMPTION",
                    (
                        Leg(accounts.available_id, -Tokens(cost), "REDEMPTION"),
                        Leg(sink, Tokens(cost), "REDEMPTION"),
                    ),
                    order_id=order_id,
                    memo=f"order {order_id}",
                )
            ],
        )
        issued = await allocate(
            conn,
            scope,
            order_id=order_id,
            product_id=product_id,
            face_value=denomination.face_value,
            quantity=quantity,
        )
        undelivered = quantity - len(issued)
        vendor = vendor_name_for(scope.environment)
        if undelivered and vendor is None:
            raise ProductUnavailable(
                "Out of stock, and no vendor fulfils this environment",
                details={"productId": product_id, "inStock": len(issued)},
            )
        now_delivered = undelivered == 0
        order = dict(
            (
                await conn.execute(
                    orders.update()
                    .where(orders.c.id == order_id)
                    .values(
                        delivered_quantity=len(issued),
                        status="DELIVERED" if now_delivered else "PENDING",
                        vendor=None if now_delivered else vendor,
                        next_attempt_at=None if now_delivered else func.now(),
                        completed_at=func.now() if now_delivered else None,
                    )
                    .returning(orders)
                )
            )
            .mappings()
            .one()
        )
        response = order_view(order, issued)
        events = [Event("order.created", response)]
        events += [Event("voucher.issued", _voucher_event(order, v)) for v in issued]
        if now_delivered:
            events.append(Event("order.delivered", response))
        await record_events(conn, scope, events)
        await _remember(conn, scope, idempotency_key, order_id, response)
    return response, False


async def _take_lots(conn: AsyncConnection, order_id: str, takes: list[tuple[int, int]]) -> None:
    ids = [lot for lot, _ in takes]
    amounts = [amount for _, amount in takes]
    await conn.execute(
        text(
            "UPDATE lots SET remaining = remaining - t.take "
            "FROM (SELECT unnest(:ids) AS id, unnest(:takes) AS take) t WHERE lots.id = t.id"
        ).bindparams(
            bindparam("ids", type_=ARRAY(BigInteger)), bindparam("takes", type_=ARRAY(BigInteger))
        ),
        {"ids": ids, "takes": amounts},
    )
    await conn.execute(
        text(
            "INSERT INTO order_lot_takes (order_id, lot_id, seq, amount) "
            "SELECT :order_id, unnest(:ids), unnest(:seqs), unnest(:takes)"
        ).bindparams(
            bindparam("ids", type_=ARRAY(BigInteger)),
            bindparam("seqs", type_=ARRAY(Integer)),
            bindparam("takes", type_=ARRAY(BigInteger)),
        ),
        {"order_id": order_id, "ids": ids, "seqs": list(range(len(ids))), "takes": amounts},
    )


async def _remember(
    conn: AsyncConnection, scope: Scope, key: str, order_id: str, response: dict[str, Any]
) -> None:
    await conn.execute(
        text(
            "UPDATE order_keys SET order_id = :order_id, response = CAST(:response AS jsonb) "
            "WHERE partner_id = :partner_id AND environment = :environment "
            "AND idempotency_key = :key"
        ),
        {**scope.params, "key": key, "order_id": order_id, "response": dumps(response)},
    )


def _voucher_event(order: dict[str, Any], voucher: dict[str, Any]) -> dict[str, Any]:
    return {
        "voucherId": voucher["id"],
        "orderId": order["id"],
        "externalUserId": order["external_user_id"],
        "productId": order["product_id"],
        "faceValue": Decimal(voucher["face_value"]),
        "expiresAt": voucher["expires_at"],
    }


# -- refunds ------------------------------------------------------------------------------------------


async def _refund(
    conn: AsyncConnection, scope: Scope, order: dict[str, Any], units: int
) -> tuple[int, list[str]]:
    """Give back the price of `units` undelivered vouchers: a REFUND entry from SINK_REDEEMED to
    the user's wallet, the tokens returned to the lots that paid (last taken first), except the
    part that repays a debt the wallet has run into since (it opens no lot, as open_lots does).
    Returns (tokens refunded, transaction ids)."""
    amount = units * int(order["unit_price"])
    if amount == 0:
        return 0, []
    takes = (
        await conn.execute(
            text(
                "SELECT t.lot_id, t.amount FROM order_lot_takes t JOIN lots l ON l.id = t.lot_id "
                "WHERE t.order_id = :order_id ORDER BY t.seq DESC FOR UPDATE OF l"
            ),
            {"order_id": order["id"]},
        )
    ).all()
    accounts = await wallet(conn, scope, partner_user_id=order["partner_user_id"])
    balance = await _balance(conn, scope, accounts.available_id)
    to_lots = amount - min(amount, max(0, -balance))
    restores: list[tuple[int, int]] = []
    for lot_id, taken in takes:
        if to_lots == 0:
            break
        back = min(int(taken), to_lots)
        restores.append((int(lot_id), back))
        to_lots -= back
    if restores:
        await conn.execute(
            text(
                "UPDATE lots SET remaining = remaining + t.back "
                "FROM (SELECT unnest(:ids) AS id, unnest(:backs) AS back) t WHERE lots.id = t.id"
            ).bindparams(
                bindparam("ids", type_=ARRAY(BigInteger)),
                bindparam("backs", type_=ARRAY(BigInteger)),
            ),
            {"ids": [r[0] for r in restores], "backs": [r[1] for r in restores]},
        )
    sink = await singleton_account(conn, scope, "SINK_REDEEMED")
    posted, _ = await post_entries(
        conn,
        scope,
        [
            EntryDraft(
                "REFUND",
                (
                    Leg(sink, -Tokens(amount), "REFUND"),
                    Leg(accounts.available_id, Tokens(amount), "REFUND"),
                ),
                order_id=order["id"],
                memo=f"refund of {units} undelivered voucher(s)",
            )
        ],
    )
    return amount, list(posted[0].posting_ids)


async def _settle(
    conn: AsyncConnection,
    order: dict[str, Any],
    *,
    status: str,
    refund_units: int,
    reason: str | None = None,
    cancelled_by: str | None = None,
    extra_events: Sequence[Event] = (),
) -> dict[str, Any]:
    """Bring an open order to its final `status`, refunding `refund_units`, with its events."""
    scope = Scope(order["partner_id"], order["environment"])
    refunded, transaction_ids = await _refund(conn, scope, order, refund_units)
    final = dict(
        (
            await conn.execute(
                orders.update()
                .where(orders.c.id == order["id"])
                .values(
                    status=status,
                    tokens_refunded=orders.c.tokens_refunded + refunded,
                    next_attempt_at=None,
                    failure_reason=reason,
                    cancelled_by=cancelled_by,
                    completed_at=func.now(),
                    updated_at=func.now(),
                )
                .returning(orders)
            )
        )
        .mappings()
        .one()
    )
    view = await _view(conn, final)
    events = list(extra_events)
    event_type = {
        "DELIVERED": "order.delivered",
        "PARTIALLY_DELIVERED": "order.partially_delivered",
        "CANCELLED": "order.cancelled",
    }.get(status)
    if event_type is not None:
        events.append(Event(event_type, view))
    if refunded:
        events.append(
            Event(
                "order.refunded",
                {
                    "orderId": order["id"],
                    "externalUserId": order["external_user_id"],
                    "status": status,
                    "tokensRefunded": Tokens(refunded),
                    "vouchersRefunded": refund_units,
                    "transactionIds": transaction_ids,
                },
            )
        )
    await record_events(conn, scope, events)
    return view


async def cancel_order(
    db: AsyncEngine, scope: Scope | None, order_id: str, *, actor: str | None = None
) -> dict[str, Any]:
    """Cancel a PENDING or PROCESSING order and refund what it has not delivered. `scope` is
    the partner's (None for an operator, who is audited as `actor`). Raises NotFound,
    OrderNotCancellable."""
    async with db.begin() as conn:
        order = await _order_row(conn, order_id, scope, lock=True)
        if order["status"] not in OPEN:
            raise OrderNotCancellable(
                f"An order that is {order['status']} cannot be cancelled",
                details={"status": order["status"]},
            )
        undelivered = int(order["quantity"]) - int(order["delivered_quantity"])
        view = await _settle(
            conn,
            order,
            status="CANCELLED",
            refund_units=undelivered,
            cancelled_by=actor or "partner",
        )
        if actor is not None:
            await audit.record(
                conn,
                actor=actor,
                action="order.cancelled",
                target_type="order",
                target_id=order_id,
                before={"status": order["status"]},
                after={"status": "CANCELLED", "tokensRefunded": view["tokensRefunded"]},
            )
    return view


async def purge_expired_keys(conn: AsyncConnection, *, limit: int = 10_000) -> int:
    """Forget Idempotency-Keys older than 24 hours (a reuse deletes its own stale key anyway;
    this keeps the table from growing). Returns how many were deleted."""
    result = await conn.execute(
        text(
            "DELETE FROM order_keys WHERE ctid IN (SELECT ctid FROM order_keys "
            "WHERE created_at < now() - make_interval(secs => :ttl) LIMIT :limit)"
        ),
        {"ttl": KEY_TTL.total_seconds(), "limit": limit},
    )
    return int(result.rowcount or 0)


# -- the vendor path (workers) ------------------------------------------------------------------------


async def claim_due(conn: AsyncConnection, now: datetime, limit: int) -> list[str]:
    """Orders the vendor path should look at now, claimed for one lease (SKIP LOCKED: any
    number of workers share the pick-up). Returns their ids."""
    rows = await conn.execute(
        text(
            "UPDATE orders SET next_attempt_at = :lease WHERE id IN (SELECT id FROM orders "
            "WHERE next_attempt_at <= :now AND status IN ('PENDING', 'PROCESSING') "
            "ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED) RETURNING id"
        ),
        {"now": now, "lease": now + LEASE, "limit": limit},
    )
    return [r[0] for r in rows]


async def _begin(db: AsyncEngine, order_id: str) -> tuple[VendorRequest, str] | None:
    async with db.begin() as conn:
        order = await _order_row(conn, order_id, None, lock=True)
        if order["status"] not in OPEN or order["vendor"] is None:
            return None
        scope = Scope(order["partner_id"], order["environment"])
        await conn.execute(
            orders.update()
            .where(orders.c.id == order_id)
            .values(
                status="PROCESSING",
                attempts=orders.c.attempts + 1,
                next_attempt_at=datetime.now(UTC) + LEASE,
                updated_at=func.now(),
            )
        )
        if order["status"] == "PENDING":
            order["status"] = "PROCESSING"
            await record_events(conn, scope, [Event("order.processing", await _view(conn, order))])
        product = await get_product(conn, order["product_id"])
        request = VendorRequest(
            request_id=order_id,
            scope=scope,
            product_id=order["product_id"],
            face_value=Decimal(order["face_value"]),
            quantity=int(order["quantity"]) - int(order["delivered_quantity"]),
            delivery_type=product["delivery_type"],
        )
        return request, order["vendor"]


async def process_order(db: AsyncEngine, box: SecretBox, vendors: Vendors, order_id: str) -> str:
    """Take an open order one step along the vendor path. Returns its status afterwards.

    Idempotent: the vendor deduplicates on the order id, and the result is recorded only while
    the order is still PROCESSING, so a redelivered message or a worker killed between the two
    transactions never issues or refunds twice. The vendor call runs outside any transaction.
    """
    begun = await _begin(db, order_id)
    if begun is None:
        async with db.connect() as conn:
            return str((await _order_row(conn, order_id, None))["status"])
    request, vendor_name = begun
    vendor = vendors.named(vendor_name)
    result = await vendor.place(request)
    status = await _record_result(db, box, order_id, vendor_name, result)
    if status == "CANCELLED":
        await vendor.cancel(order_id)  # cancelled while the vendor worked: void its side too
    return status


async def _record_result(
    db: AsyncEngine, box: SecretBox, order_id: str, vendor_name: str, result: VendorResult
) -> str:
    async with db.begin() as conn:
        order = await _order_row(conn, order_id, None, lock=True)
        if order["status"] != "PROCESSING":
            return str(order["status"])
        if result.status == "PENDING":
            await conn.execute(
                orders.update()
                .where(orders.c.id == order_id)
                .values(next_attempt_at=result.ready_at, updated_at=func.now())
            )
            return "PROCESSING"
        scope = Scope(order["partner_id"], order["environment"])
        undelivered = int(order["quantity"]) - int(order["delivered_quantity"])
        issued: list[dict[str, Any]] = []
        if result.status == "FULFILLED":
            issued = await issue_from_vendor(
                conn,
                box,
                scope,
                order_id=order_id,
                product_id=order["product_id"],
                vendor=vendor_name,
                codes=result.codes[:undelivered],
            )
        delivered = int(order["delivered_quantity"]) + len(issued)
        order["delivered_quantity"] = delivered
        await conn.execute(
            orders.update().where(orders.c.id == order_id).values(delivered_quantity=delivered)
        )
        if delivered == int(order["quantity"]):
            status = "DELIVERED"
        elif delivered:
            status = "PARTIALLY_DELIVERED"
        else:
            status = "FAILED"
        view = await _settle(
            conn,
            order,
            status=status,
            refund_units=int(order["quantity"]) - delivered,
            reason=result.reason if status != "DELIVERED" else None,
            extra_events=[Event("voucher.issued", _voucher_event(order, v)) for v in issued],
        )
        return str(view["status"])
