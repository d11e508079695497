"""Operator marketplace endpoints (contract section 10): the catalog and its CSV import, voucher
inventory, order cancellation, the sandbox vendor and reconciliation drifts.

Every write is audited by the engine function it calls, with the operator's token label as the
actor; an inventory load's audit row counts codes and never holds one.
"""

from __future__ import annotations

from aiohttp import web

from engine import catalog, orders, reconciliation, vendors, vouchers
from engine.errors import (
    DuplicateVoucherCode,
    NotFound,
    OrderNotCancellable,
    ValidationFailed,
)
from engine.pagination import read_page
from http_front.auth_operator import OPERATOR, operator_required
from http_front.body import UnsupportedMediaType, json_response, read_model
from http_front.keys import DB, SECRET_BOX
from http_front.openapi import PAGE, PAYLOAD_TOO_LARGE, Query, Refusal, documented
from schemas.marketplace import (
    DriftPatch,
    ImportOut,
    InventoryLoad,
    InventoryOut,
    OperatorDriftList,
    OperatorDriftOut,
    OrderOut,
    ProductCreate,
    ProductList,
    ProductOut,
    ProductPatch,
    SandboxVendorOut,
    SandboxVendorPatch,
    catalog_rows,
    product_json,
    sandbox_vendor_json,
)

PREFIX = "/api/v1/admin"


# -- catalog ---------------------------------------------------------------------------------------


@documented(
    "Create a catalog product",
    auth="operator",
    request=ProductCreate,
    responses={201: ProductOut},
)
@operator_required
async def create_product(request: web.Request) -> web.Response:
    body = await read_model(request, ProductCreate)
    async with request.app[DB].begin() as conn:
        row = await catalog.create_product(conn, actor=request[OPERATOR], fields=body.columns())
    return json_response(product_json(row, operator=True), status=201)


@documented(
    "List catalog products (inactive included)",
    auth="operator",
    responses={200: ProductList},
    query=[*PAGE, Query("category", "Only this category"), Query("country", "Only this country")],
)
@operator_required
async def list_products(request: web.Request) -> web.Response:
    category = request.query.get("category") or None
    country = request.query.get("country") or None
    page = read_page(
        request.query.get("limit"),
        request.query.get("cursor"),
        {"category": category, "country": country, "all": True},
    )
    async with request.app[DB].connect() as conn:
        rows, cursor = await catalog.list_products(
            conn, page, category=category, country=country, active_only=False
        )
    return json_response(
        {"data": [product_json(r, operator=True) for r in rows], "nextCursor": cursor}
    )


@documented(
    "Change a catalog product",
    auth="operator",
    request=ProductPatch,
    responses={200: ProductOut},
    errors=[NotFound],
    description="Only the fields sent change; `denominations` replaces the whole list "
    "(deactivate a denomination with `isActive: false` rather than dropping it, so its "
    "inventory stays attached).",
)
@operator_required
async def patch_product(request: web.Request) -> web.Response:
    body = await read_model(request, ProductPatch)
    async with request.app[DB].begin() as conn:
        row = await catalog.update_product(
            conn,
            actor=request[OPERATOR],
            product_id=request.match_info["product_id"],
            changes=body.columns(),
        )
    return json_response(product_json(row, operator=True))


@documented(
    "Import catalog products from CSV",
    auth="operator",
    responses={200: ImportOut},
    description="Body `text/csv` with the header "
    "`sku,name,category,country,currency,imageUrl,deliveryType,validity,denominations,isActive`; "
    "`denominations` as `faceValue:tokenPrice` pairs separated by `;` (`10:1000;25:2500`). "
    "Upserts by `sku`, so importing the same file twice changes nothing. Valid rows are "
    "imported; each refused row is listed with its line and error. "
    "`sir-engine admin catalog-import FILE.csv` does the same from the shell with a progress bar.",
    errors=[
        Refusal.of(UnsupportedMediaType),
        PAYLOAD_TOO_LARGE,
        Refusal(
            422, ValidationFailed.code, ValidationFailed.name, "The body is not text in its charset"
        ),
    ],
)
@operator_required
async def import_products(request: web.Request) -> web.Response:
    if request.content_type not in ("text/csv", "text/plain"):
        raise UnsupportedMediaType("Send the catalog as text/csv")
    try:
        text_body = (await request.read()).decode(request.charset or "utf-8")
    except (UnicodeDecodeError, LookupError):  # bytes not of the charset, or no such charset
        raise ValidationFailed(
            {"body": ["must be text in its charset (UTF-8 by default)"]}
        ) from None
    rows = catalog_rows(text_body)
    async with request.app[DB].begin() as conn:
        result = await catalog.import_products(
            conn, actor=request[OPERATOR], rows=rows, result=catalog.ImportResult()
        )
    return json_response(result.to_json())


@documented(
    "Load voucher codes into a product's inventory",
    auth="operator",
    request=InventoryLoad,
    responses={201: InventoryOut},
    errors=[NotFound, DuplicateVoucherCode],
    description="All or nothing. Codes, PINs and claim URLs are stored encrypted; the answer "
    "and the audit log count codes and never echo one.",
)
@operator_required
async def load_vouchers(request: web.Request) -> web.Response:
    body = await read_model(request, InventoryLoad)
    async with request.app[DB].begin() as conn:
        summary = await vouchers.load_inventory(
            conn,
            request.app[SECRET_BOX],
            actor=request[OPERATOR],
            product_id=request.match_info["product_id"],
            environment=body.environment,
            codes=[c.engine() for c in body.codes],
        )
    return json_response(summary, status=201)


# -- orders, vendors, reconciliation ------------------------------------------------------------------------


@documented(
    "Cancel an order",
    auth="operator",
    responses={200: OrderOut},
    errors=[NotFound, OrderNotCancellable],
)
@operator_required
async def cancel_order(request: web.Request) -> web.Response:
    view = await orders.cancel_order(
        request.app[DB], None, request.match_info["order_id"], actor=request[OPERATOR]
    )
    return json_response(view)


@documented(
    "Steer the sandbox vendor",
    auth="operator",
    request=SandboxVendorPatch,
    responses={200: SandboxVendorOut},
    description="`instant` fulfils at once, `delayed` after `delaySeconds`, `fail` refuses. "
    "`driftNext: N` makes the vendor's own records of its next N requests show one voucher "
    "more than it delivered, for reconciliation tests.",
)
@operator_required
async def patch_sandbox_vendor(request: web.Request) -> web.Response:
    body = await read_model(request, SandboxVendorPatch)
    async with request.app[DB].begin() as conn:
        row = await vendors.configure_sandbox(conn, actor=request[OPERATOR], changes=body.columns())
    return json_response(sandbox_vendor_json(row))


@documented(
    "List reconciliation drifts",
    auth="operator",
    responses={200: OperatorDriftList},
    query=[
        *PAGE,
        Query("resolution", "Only this resolution", enum=reconciliation.RESOLUTIONS),
        Query("partnerId", "Only this partner's"),
    ],
)
@operator_required
async def list_drifts(request: web.Request) -> web.Response:
    resolution = request.query.get("resolution") or None
    partner_id = request.query.get("partnerId") or None
    page = read_page(
        request.query.get("limit"),
        request.query.get("cursor"),
        {"resolution": resolution, "partnerId": partner_id},
    )
    async with request.app[DB].connect() as conn:
        views, cursor = await reconciliation.list_drifts(
            conn, page, resolution=resolution, partner_id=partner_id
        )
    return json_response({"data": views, "nextCursor": cursor})


@documented(
    "Resolve a reconciliation drift",
    auth="operator",
    request=DriftPatch,
    responses={200: OperatorDriftOut},
    errors=[NotFound],
)
@operator_required
async def patch_drift(request: web.Request) -> web.Response:
    body = await read_model(request, DriftPatch)
    async with request.app[DB].begin() as conn:
        view = await reconciliation.resolve_drift(
            conn,
            actor=request[OPERATOR],
            drift_id=request.match_info["drift_id"],
            resolution=body.resolution,
            note=body.note,
        )
    return json_response(view)


def add_routes(app: web.Application) -> None:
    app.router.add_post(PREFIX + "/catalog/products", create_product)
    app.router.add_get(PREFIX + "/catalog/products", list_products)
    app.router.add_patch(PREFIX + "/catalog/products/{product_id}", patch_product)
    app.router.add_post(PREFIX + "/catalog/products/{product_id}/vouchers", load_vouchers)
    app.router.add_post(PREFIX + "/catalog/import", import_products)
    app.router.add_post(PREFIX + "/orders/{order_id}/cancel", cancel_order)
    app.router.add_patch(PREFIX + "/vendors/sandbox", patch_sandbox_vendor)
    app.router.add_get(PREFIX + "/reconciliation/drifts", list_drifts)
    app.router.add_patch(PREFIX + "/reconciliation/drifts/{drift_id}", patch_drift)
