"""The operator side of the marketplace through HTTP (the real app factory on a test server) and
reconciliation's matching rules on real PostgreSQL."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import text

from engine import orders, reconciliation, vendors
from engine.vendors import VendorRequest
from tests.integration.test_admin_api import ADMIN, AUTH, call, client  # noqa: F401 - the fixture
from tests.integration.test_orders import FACE, _fund, _place, _product, _stock, _vendor

CSV_HEADER = (
    "sku,name,category,country,currency,imageUrl,deliveryType,validity,denominations,isActive\n"
)


async def _import(client, body: str) -> tuple[int, dict]:  # noqa: F811
    async with client.post(
        f"{ADMIN}/catalog/import",
        data=body.encode(),
        headers={**AUTH, "Content-Type": "text/csv"},
    ) as response:
        return response.status, await response.json()


async def test_csv_import_upserts_by_sku_and_lists_refused_rows(client):  # noqa: F811
    sku = f"sku-{secrets.token_hex(4)}"
    body = (
        CSV_HEADER
        + f"{sku},Pizza card,food,US,USD,https://img.example/p.png,code,12 months,10:1000;25:2500,true\n"
        + f"{sku}-2,Bad card,food,USA,USD,,code,,10:0,true\n"
        + f"{sku}-3,Book card,books,GB,GBP,,link,,5:500,false\n"
    )
    status, result = await _import(client, body)
    assert status == 200, result
    assert (result["created"], result["updated"]) == (2, 0)
    (refused,) = result["rejected"]
    assert refused["line"] == 3 and set(refused["error"]) == {
        "country",
        "denominations[0].tokenPrice",
    }

    status, again = await _import(client, body.replace("Pizza card", "Pizza gift card"))
    assert (again["created"], again["updated"]) == (0, 2)
    status, listed = await call(client, "GET", f"{ADMIN}/catalog/products?category=food&limit=200")
    (pizza,) = [p for p in listed["data"] if p["sku"] == sku]
    assert pizza["name"] == "Pizza gift card"
    assert pizza["denominations"] == [
        {"faceValue": Decimal("10.00"), "tokenPrice": 1000, "isActive": True},
        {"faceValue": Decimal("25.00"), "tokenPrice": 2500, "isActive": True},
    ]
    status, wrong_type = await call(client, "POST", f"{ADMIN}/catalog/import", {"not": "csv"})
    assert status == 415 and wrong_type["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    status, no_columns = await _import(client, "name\nx\n")
    assert status == 422 and "csv" in no_columns["error"]["details"]["fields"]


async def test_products_and_inventory_refuse_bad_input_and_never_echo_codes(client, db):  # noqa: F811
    status, bad = await call(
        client,
        "POST",
        f"{ADMIN}/catalog/products",
        {
            "name": "x",
            "category": "Food!",
            "country": "US",
            "currency": "USD",
            "deliveryType": "email",
            "denominations": [
                {"faceValue": "10.001", "tokenPrice": 1},
                {"faceValue": 10, "tokenPrice": 1},
            ],
        },
    )
    assert status == 422
    assert {"category", "deliveryType", "denominations[0].faceValue"} <= set(
        bad["error"]["details"]["fields"]
    )
    status, product = await call(
        client,
        "POST",
        f"{ADMIN}/catalog/products",
        {
            "name": "Cinema",
            "category": "leisure",
            "country": "US",
            "currency": "USD",
            "deliveryType": "code_with_pin",
            "denominations": [{"faceValue": 20, "tokenPrice": "19.5"}],
        },
    )
    assert status == 201, product
    secret_code = f"CINEMA-{secrets.token_hex(8)}"
    secret_pin = f"PIN-{secrets.token_hex(6)}"
    status, missing_pin = await call(
        client,
        "POST",
        f"{ADMIN}/catalog/products/{product['id']}/vouchers",
        {"environment": "sandbox", "codes": [{"faceValue": 20, "code": secret_code}]},
    )
    assert status == 422 and "codes[0].pin" in missing_pin["error"]["details"]["fields"]
    status, loaded = await call(
        client,
        "POST",
        f"{ADMIN}/catalog/products/{product['id']}/vouchers",
        {"codes": [{"faceValue": 20, "code": secret_code, "pin": secret_pin}]},
    )
    assert status == 201 and loaded == {
        "productId": product["id"],
        "environment": "production",
        "loaded": 1,
        "available": {"20.00": 1},
    }
    status, duplicate = await call(
        client,
        "POST",
        f"{ADMIN}/catalog/products/{product['id']}/vouchers",
        {"codes": [{"faceValue": 20, "code": secret_code, "pin": "1"}]},
    )
    assert status == 409 and duplicate["error"]["code"] == "DUPLICATE_VOUCHER_CODE"
    async with db.connect() as conn:
        audit = await conn.execute(text("SELECT coalesce(after::text, '') FROM audit_log"))
        assert not any(secret_code in row[0] or secret_pin in row[0] for row in audit)
    status, vendor = await call(client, "PATCH", f"{ADMIN}/vendors/sandbox", {"mode": "later"})
    assert status == 422
    status, missing = await call(
        client, "PATCH", f"{ADMIN}/reconciliation/drifts/{'0' * 24}", {"resolution": "resolved"}
    )
    assert status == 404


async def test_reconcile_day_stores_each_finding_once_and_sees_unmatched_records(
    db, box, make_partner
):
    p = await make_partner(funding="1000")
    product = await _product(db)
    await _stock(db, box, product, 1)
    await _fund(db, p.scope, "u1", "100")
    registry = vendors.Vendors(db, box)
    day = datetime.now(UTC).date()

    await _vendor(db, mode="instant", drift_next=1)
    drifted, _ = await _place(db, p.scope, "u1", product, quantity=2)  # 1 stock + 1 vendor (drift)
    assert await orders.process_order(db, box, registry, drifted["id"]) == "DELIVERED"
    # A vendor record none of our allocations accounts for (the vendor billed a request we never
    # recorded vouchers for).
    await registry.named("sandbox").place(
        VendorRequest(f"ghost-{secrets.token_hex(4)}", p.scope, product, FACE, 1, "code")
    )

    first = await reconciliation.reconcile_day(db, registry, p.scope, day)
    second = await reconciliation.reconcile_day(db, registry, p.scope, day)

    assert (
        first["summary"]
        == second["summary"]
        == {
            "ordersTotal": 1,
            "vouchersAllocated": 2,
            "matched": 1,  # the inventory voucher
            "drifted": 1,
            "unmatched": 1,
        }
    )
    assert first["ledger"]["balanced"]
    assert [d["id"] for d in first["drifts"]] == [d["id"] for d in second["drifts"]]
    async with db.connect() as conn:
        events = await conn.execute(
            text(
                "SELECT count(*) FROM outbox_events WHERE partner_id = :p "
                "AND type = 'reconciliation.drift_detected'"
            ),
            {"p": p.scope.partner_id},
        )
        assert events.scalar_one() == 2
        scopes = await reconciliation.scopes_to_reconcile(conn, day)
    assert p.scope in scopes
    # Another partner's day holds none of it.
    other = await make_partner(funding="0")
    empty = await reconciliation.report_for(db, registry, other.scope, day)
    assert empty["summary"] == dict.fromkeys(first["summary"], 0)
    assert empty["drifts"] == [] and empty["ledger"]["balanced"]
