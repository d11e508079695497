"""Partner marketplace endpoints (contract section 10): catalog, orders, vouchers, reconciliation.

Secret key with HMAC and the MARKETPLACE feature on every route; the caller's scope confines
every query (another partner's or environment's order answers 404). Voucher codes leave the
engine only through `GET /orders/:id/vouchers`.
"""

from __future__ import annotations

from aiohttp import web

from engine import catalog, orders, reconciliation
from engine.errors import (
    IdempotencyInProgress,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
    IdempotencyKeyTooLong,
    IdempotencyKeyTooShort,
    InsufficientBalance,
    NotFound,
    OrderNotCancellable,
    ProductUnavailable,
    RedemptionNotAllowed,
    ValidationFailed,
)
from engine.pagination import read_page
from http_front.auth_partner import requires_feature, secret_key_required
from http_front.body import json_response, read_model
from http_front.keys import DB, DISPATCH, SECRET_BOX, VENDORS
from http_front.openapi import NOTES, PAGE, Query, Refusal, documented
from http_front.principal import principal
from schemas.marketplace import (
    OrderCreate,
    OrderList,
    OrderOut,
    ProductList,
    ProductOut,
    ReconciliationOut,
    VoucherSecretList,
    product_json,
)

BASE = "/v1/partner"
MARKETPLACE = "MARKETPLACE"
KEY_HEADER = "Idempotency-Key"


# -- catalog -----------------------------------------------------------------------------------------


@documented(
    "List catalog products",
    auth="secret",
    responses={200: ProductList},
    query=[
        *PAGE,
        Query("category", "Only this category (e.g. food)"),
        Query("country", "Only this country (ISO 3166-1 alpha-2)"),
    ],
    description="Active products only, newest first; each lists its active denominations.",
)
@requires_feature(MARKETPLACE)
@secret_key_required
async def list_products(request: web.Request) -> web.Response:
    category = request.query.get("category") or None
    country = request.query.get("country") or None
    page = read_page(
        request.query.get("limit"),
        request.query.get("cursor"),
        {"category": category, "country": country},
    )
    async with request.app[DB].connect() as conn:
        rows, cursor = await catalog.list_products(conn, page, category=category, country=country)
    return json_response(
        {"data": [product_json(r, operator=False) for r in rows], "nextCursor": cursor}
    )


@documented("Get a catalog product", auth="secret", responses={200: ProductOut}, errors=[NotFound])
@requires_feature(MARKETPLACE)
@secret_key_required
async def get_product(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        row = await catalog.get_product(conn, request.match_info["product_id"], active_only=True)
    return json_response(product_json(row, operator=False))


# -- orders ----------------------------------------------------------------------------------------------


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get(KEY_HEADER)
    if not key:
        raise IdempotencyKeyRequired(
            f"Send an {KEY_HEADER} header (8-255 characters) so a retry cannot buy twice"
        )
    if len(key) < 8:
        raise IdempotencyKeyTooShort(f"{KEY_HEADER} must be at least 8 characters")
    if len(key) > 255:
        raise IdempotencyKeyTooLong(f"{KEY_HEADER} must be at most 255 characters")
    return key


@documented(
    "Place a voucher order",
    auth="secret",
    request=OrderCreate,
    responses={201: OrderOut},
    errors=[
        IdempotencyKeyRequired,
        IdempotencyKeyTooShort,
        IdempotencyKeyTooLong,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        NotFound,
        ProductUnavailable,
        InsufficientBalance,
        RedemptionNotAllowed,
    ],
)
@requires_feature(MARKETPLACE)
@secret_key_required
async def place_order(request: web.Request) -> web.Response:
    key = _idempotency_key(request)
    body = await read_model(request, OrderCreate)
    response, replayed = await orders.place_order(
        request.app[DB],
        principal(request).scope,
        external_user_id=request.match_info["external_id"],
        idempotency_key=key,
        product_id=body.product_id,
        face_value=body.face_value,
        quantity=body.quantity,
    )
    if not replayed and response["status"] == "PENDING":
        # A nudge to the vendor path; the pick-up tick is the guarantee.
        await request.app[DISPATCH].send_soon("orders", "pick_up_orders")
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return json_response(response, status=201, headers=headers)


@documented(
    "List orders",
    auth="secret",
    responses={200: OrderList},
    query=[
        *PAGE,
        Query(
            "status",
            "Only this status",
            enum=(
                "PENDING",
                "PROCESSING",
                "DELIVERED",
                "PARTIALLY_DELIVERED",
                "FAILED",
                "CANCELLED",
            ),
        ),
        Query("externalUserId", "Only this user's orders"),
    ],
)
@requires_feature(MARKETPLACE)
@secret_key_required
async def list_orders(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    external = request.query.get("externalUserId") or None
    page = read_page(
        request.query.get("limit"),
        request.query.get("cursor"),
        {"status": status, "externalUserId": external},
    )
    async with request.app[DB].connect() as conn:
        views, cursor = await orders.list_orders(
            conn, principal(request).scope, page, status=status, external_user_id=external
        )
    return json_response({"data": views, "nextCursor": cursor})


@documented("Get an order", auth="secret", responses={200: OrderOut}, errors=[NotFound])
@requires_feature(MARKETPLACE)
@secret_key_required
async def get_order(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        view = await orders.get_order(
            conn, principal(request).scope, request.match_info["order_id"]
        )
    return json_response(view)


@documented(
    "Cancel an order",
    auth="secret",
    responses={200: OrderOut},
    errors=[NotFound, OrderNotCancellable],
)
@requires_feature(MARKETPLACE)
@secret_key_required
async def cancel_order(request: web.Request) -> web.Response:
    view = await orders.cancel_order(
        request.app[DB], principal(request).scope, request.match_info["order_id"]
    )
    return json_response(view)


@documented(
    "Get an order's voucher codes",
    auth="secret",
    responses={200: VoucherSecretList},
    errors=[NotFound],
)
@requires_feature(MARKETPLACE)
@secret_key_required
async def order_vouchers(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        codes = await orders.voucher_codes(
            conn, request.app[SECRET_BOX], principal(request).scope, request.match_info["order_id"]
        )
    return json_response({"data": codes}, headers={"Cache-Control": "no-store"})


# -- reconciliation --------------------------------------------------------------------------------------


@documented(
    "Get a day's reconciliation",
    auth="secret",
    responses={200: ReconciliationOut},
    errors=[
        Refusal(422, ValidationFailed.code, ValidationFailed.name, "The day is not YYYY-MM-DD")
    ],
)
@requires_feature(MARKETPLACE)
@secret_key_required
async def get_reconciliation(request: web.Request) -> web.Response:
    day = reconciliation.parse_day(request.match_info["day"])
    report = await reconciliation.report_for(
        request.app[DB], request.app[VENDORS], principal(request).scope, day
    )
    return json_response(report)


def add_routes(app: web.Application) -> None:
    app.router.add_get(BASE + "/catalog/products", list_products)
    app.router.add_get(BASE + "/catalog/products/{product_id}", get_product)
    app.router.add_post(BASE + "/users/{external_id}/orders", place_order)
    app.router.add_get(BASE + "/orders", list_orders)
    app.router.add_get(BASE + "/orders/{order_id}", get_order)
    app.router.add_post(BASE + "/orders/{order_id}/cancel", cancel_order)
    app.router.add_get(BASE + "/orders/{order_id}/vouchers", order_vouchers)
    app.router.add_get(BASE + "/reconciliation/{day}", get_reconciliation)


# -- decisions where contract section 10 is silent (written into the OpenAPI document) --------------

NOTES.update(
    {
        "marketplace_place_order": """\
Header `Idempotency-Key` (8-255 characters) is required, checked before the body: missing ->
`400 IDEMPOTENCY_KEY_REQUIRED`, too short/long -> `400 IDEMPOTENCY_KEY_TOO_SHORT` /
`IDEMPOTENCY_KEY_TOO_LONG`. Keys are kept 24 hours per partner and environment. The same key,
user and body again (compared after parsing: `25`, `"25.00"` are one face value) answers the
original `201` body with `Idempotent-Replayed: true` and changes nothing; the same key otherwise
is `422 IDEMPOTENCY_KEY_REUSED`. A duplicate that arrives while the first is still being placed
waits for it (then answers as above), or `409 IDEMPOTENCY_IN_PROGRESS` after 5 seconds. A
refused order (4xx) leaves its key unused. Remember that a
retry is signed afresh in a later second (the same signed bytes twice are `REPLAYED_REQUEST`).

Checks in order: key, body (`quantity` 1-100, default 1; `faceValue` at most 2 decimals), key
reuse, the user (`404`), the product and denomination (`422 PRODUCT_UNAVAILABLE`, also for an
unknown `productId`), the available balance (`402 INSUFFICIENT_BALANCE`, `details.available`
and `details.required`), then the redemption rules of every pool whose tokens the order would
spend (`422 REDEMPTION_NOT_ALLOWED`, `details.rule` = `allowedCategories` or `minBalance`;
the category is checked first). Tokens come from the user's available balance, earliest-expiring
lots first, in the transaction that creates the order; a refund gives back those same lots.

Vouchers come from the inventory of the key's environment first (sandbox orders never receive
production codes). Fully stocked: `DELIVERED` at once. Otherwise `PENDING`; workers take it
through `PROCESSING` to `DELIVERED`, `PARTIALLY_DELIVERED` or `FAILED` via the environment's
vendor (the sandbox vendor in sandbox). Production has no built-in vendor: an order that the
inventory cannot fill there is refused with `422 PRODUCT_UNAVAILABLE` (`details.inStock`) and
nothing is debited. Undelivered vouchers are refunded exactly (`order.refunded`).""",
        "marketplace_cancel_order": """\
While `PENDING` or `PROCESSING` only (else `409 ORDER_NOT_CANCELLABLE`). Vouchers already issued
stay with the user; the rest is refunded exactly. A vendor answer that arrives after the cancel
is voided at the vendor and issues nothing.""",
        "marketplace_order_vouchers": """\
The only place voucher codes, PINs and claim URLs appear (never in webhooks, listings, logs or
the audit log). Answered with `Cache-Control: no-store`.""",
        "marketplace_get_reconciliation": """\
`day` is a UTC date, `YYYY-MM-DD` (else `422`). Computed afresh on each call, so today's figures
are current; `drifts[].id` and `resolution` come from the daily job once it has recorded the
finding (`null` / `pending` before). An allocation is one order's vouchers from one source
(the inventory or a vendor) on that day: `matched` when the vendor's record agrees on product,
face value and count, `drifted` when it differs, `unmatched` when either side has no
counterpart. `ledger.balanced` is `ledger verify` over the partner-environment: every pool,
wallet and sink equals its postings and the partner's entries sum to zero; `driftTokens` is
the total difference found.""",
        "marketplace_list_products": "Newest first; partners see active products and their "
        "active denominations only (an inactive product answers 404 on GET by id).",
    }
)
