"""Daily reconciliation (contract section 10): our voucher allocations against the vendors'
records, and the partner's ledger against its postings.

An allocation is one order's vouchers from one source on one UTC day. Vendor allocations are
matched with the vendor's record of the same request (our order id): same product, face value
and voucher count is `matched`, anything else `drifted`, no record (or a record with no
allocation of ours) `unmatched`. Inventory allocations are checked against the order they
were issued to. The ledger part is `ledger verify` over the partner-environment.

`reconcile_day` (the daily worker job) stores the report and every finding once; a new finding
records `reconciliation.drift_detected`. `report_for` (the partner's GET) computes the day afresh
and shows the stored resolution of each finding, so a partner sees today's state too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine import audit
from engine.catalog import CENT
from engine.errors import NotFound, ValidationFailed
from engine.ids import new_id
from engine.money import Tokens
from engine.outbox import Event, record_events
from engine.pagination import Page, fetch_page
from engine.scope import Scope
from engine.tables import reconciliation_drifts
from engine.vendors import VendorRecord, Vendors
from engine.verify import verify_ledger
from engine.wire import dumps

RESOLUTIONS = ("pending", "resolved", "escalated")
INVENTORY = "inventory"


@dataclass(frozen=True)
class Finding:
    order_id: str
    vendor: str
    product_id: str | None
    kind: str  # DRIFTED or UNMATCHED
    our_allocation: dict[str, Any] | None
    vendor_record: dict[str, Any] | None


def parse_day(raw: str) -> date:
    """YYYY-MM-DD (UTC). Raises ValidationFailed."""
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed({"date": ["must be a date as YYYY-MM-DD"]}) from None


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _face(value: Any) -> Decimal:
    return Decimal(value).quantize(CENT)


def _record_json(record: VendorRecord) -> dict[str, Any]:
    return {
        "reference": record.request_id,
        "productId": record.product_id,
        "faceValue": _face(record.face_value),
        "quantity": record.quantity,
        "status": record.status,
    }


_ALLOCATIONS = text(
    "SELECT v.order_id, v.source, coalesce(v.vendor, :inventory) AS vendor, "
    "v.product_id, v.face_value, o.product_id AS order_product, o.face_value AS order_face, "
    "count(*) AS quantity FROM vouchers v JOIN orders o ON o.id = v.order_id "
    "WHERE v.partner_id = :partner_id AND v.environment = :environment "
    "AND v.issued_at >= :start AND v.issued_at < :end "
    "GROUP BY v.order_id, v.source, v.vendor, v.product_id, v.face_value, o.product_id, "
    "o.face_value ORDER BY v.order_id"
)


async def _compute(
    db: AsyncEngine, vendors: Vendors, scope: Scope, day: date
) -> tuple[dict[str, Any], list[Finding]]:
    start, end = _bounds(day)
    async with db.connect() as conn:
        snapshot = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with snapshot.begin():
            orders_total = (
                await snapshot.execute(
                    text(
                        "SELECT count(*) FROM orders WHERE partner_id = :partner_id "
                        "AND environment = :environment AND created_at >= :start "
                        "AND created_at < :end"
                    ),
                    {**scope.params, "start": start, "end": end},
                )
            ).scalar_one()
            allocations = [
                dict(r)
                for r in (
                    await snapshot.execute(
                        _ALLOCATIONS,
                        {**scope.params, "start": start, "end": end, "inventory": INVENTORY},
                    )
                ).mappings()
            ]
            ledger = await verify_ledger(snapshot, scope)
    records = {
        vendor.name: {r.request_id: r for r in await vendor.records(scope, day)}
        for vendor in vendors.all()
    }
    findings: list[Finding] = []
    matched = 0
    for allocation in allocations:
        ours = {
            "source": allocation["source"],
            "productId": allocation["product_id"],
            "faceValue": _face(allocation["face_value"]),
            "quantity": int(allocation["quantity"]),
        }
        order_id, vendor = allocation["order_id"], allocation["vendor"]
        if allocation["source"] == "INVENTORY":
            expected = (allocation["order_product"], _face(allocation["order_face"]))
            if expected == (ours["productId"], ours["faceValue"]):
                matched += 1
            else:
                order_record = {"productId": expected[0], "faceValue": expected[1]}
                findings.append(
                    Finding(order_id, vendor, ours["productId"], "DRIFTED", ours, order_record)
                )
            continue
        record = records.get(vendor, {}).pop(order_id, None)
        if record is None:
            findings.append(Finding(order_id, vendor, ours["productId"], "UNMATCHED", ours, None))
        elif (record.product_id, _face(record.face_value), record.quantity) == (
            ours["productId"],
            ours["faceValue"],
            ours["quantity"],
        ):
            matched += 1
        else:
            findings.append(
                Finding(order_id, vendor, ours["productId"], "DRIFTED", ours, _record_json(record))
            )
    # A vendor record that none of our allocations that day accounts for.
    for vendor, left in records.items():
        for record in left.values():
            findings.append(
                Finding(
                    record.request_id,
                    vendor,
                    record.product_id,
                    "UNMATCHED",
                    None,
                    _record_json(record),
                )
            )
    report = {
        "date": day.isoformat(),
        "summary": {
            "ordersTotal": int(orders_total),
            "vouchersAllocated": sum(int(a["quantity"]) for a in allocations),
            "matched": matched,
            "drifted": sum(1 for f in findings if f.kind == "DRIFTED"),
            "unmatched": sum(1 for f in findings if f.kind == "UNMATCHED"),
        },
        "ledger": {
            "balanced": ledger.ok,
            "accountsChecked": ledger.accounts_checked,
            "driftTokens": Tokens(ledger.drift_micro),
        },
    }
    return report, findings


def drift_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "partnerId": row["partner_id"],
        "environment": row["environment"],
        "date": row["day"].isoformat(),
        "orderId": row["order_id"],
        "vendor": row["vendor"],
        "productId": row["product_id"],
        "kind": row["kind"],
        "ourAllocation": row["our_allocation"],
        "vendorRecord": row["vendor_record"],
        "detectedAt": row["detected_at"],
        "resolution": row["resolution"],
        "resolutionNote": row["resolution_note"],
        "resolvedBy": row["resolved_by"],
        "resolvedAt": row["resolved_at"],
    }


async def _stored(conn: AsyncConnection, scope: Scope, day: date) -> dict[tuple[str, str], Any]:
    rows = await conn.execute(
        select(reconciliation_drifts).where(
            reconciliation_drifts.c.partner_id == scope.partner_id,
            reconciliation_drifts.c.environment == scope.environment,
            reconciliation_drifts.c.day == day,
        )
    )
    return {(r["order_id"], r["vendor"]): dict(r) for r in rows.mappings()}


def _partner_drift(
    finding: Finding, stored: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    return {
        "id": stored["id"] if stored else None,
        "orderId": finding.order_id,
        "vendor": finding.vendor,
        "productId": finding.product_id,
        "kind": finding.kind,
        "ourAllocation": finding.our_allocation,
        "vendorRecord": finding.vendor_record,
        "detectedAt": stored["detected_at"] if stored else now,
        "resolution": stored["resolution"] if stored else "pending",
    }


async def report_for(db: AsyncEngine, vendors: Vendors, scope: Scope, day: date) -> dict[str, Any]:
    """The day's reconciliation as of now (contract shape), read-only."""
    report, findings = await _compute(db, vendors, scope, day)
    now = datetime.now(UTC)
    async with db.connect() as conn:
        stored = await _stored(conn, scope, day)
    report["drifts"] = [
        _partner_drift(f, stored.get((f.order_id, f.vendor)), now) for f in findings
    ]
    report["generatedAt"] = now
    return report


async def reconcile_day(
    db: AsyncEngine, vendors: Vendors, scope: Scope, day: date
) -> dict[str, Any]:
    """Reconcile one day of one partner-environment and store the result. Each finding is
    stored once (a re-run finds it again but records no second event). Returns the report."""
    report, findings = await _compute(db, vendors, scope, day)
    now = datetime.now(UTC)
    async with db.begin() as conn:
        events = []
        for finding in findings:
            inserted = await conn.execute(
                text(
                    "INSERT INTO reconciliation_drifts (id, partner_id, environment, day, "
                    "order_id, vendor, product_id, kind, our_allocation, vendor_record) VALUES "
                    "(:id, :partner_id, :environment, :day, :order_id, :vendor, :product_id, "
                    ":kind, CAST(:ours AS jsonb), CAST(:theirs AS jsonb)) "
                    "ON CONFLICT ON CONSTRAINT uq_reconciliation_drifts_finding DO NOTHING "
                    "RETURNING *"
                ),
                {
                    **scope.params,
                    "id": new_id(),
                    "day": day,
                    "order_id": finding.order_id,
                    "vendor": finding.vendor,
                    "product_id": finding.product_id,
                    "kind": finding.kind,
                    "ours": dumps(finding.our_allocation),
                    "theirs": dumps(finding.vendor_record),
                },
            )
            row = inserted.mappings().first()
            if row is not None:
                events.append(Event("reconciliation.drift_detected", drift_view(dict(row))))
        await record_events(conn, scope, events)
        stored = await _stored(conn, scope, day)
        report["drifts"] = [
            _partner_drift(f, stored.get((f.order_id, f.vendor)), now) for f in findings
        ]
        report["generatedAt"] = now
        await conn.execute(
            text(
                "INSERT INTO reconciliation_reports (partner_id, environment, day, report, "
                "generated_at) VALUES (:partner_id, :environment, :day, CAST(:report AS jsonb), "
                ":now) ON CONFLICT (partner_id, environment, day) DO UPDATE SET "
                "report = EXCLUDED.report, generated_at = EXCLUDED.generated_at"
            ),
            {**scope.params, "day": day, "report": dumps(report), "now": now},
        )
    return report


async def scopes_to_reconcile(conn: AsyncConnection, day: date) -> list[Scope]:
    """Every partner-environment with orders, issued vouchers or vendor records on `day`."""
    start, end = _bounds(day)
    rows = await conn.execute(
        text(
            "SELECT partner_id, environment FROM orders WHERE created_at >= :s AND created_at < :e "
            "UNION SELECT partner_id, environment FROM vouchers WHERE issued_at >= :s "
            "AND issued_at < :e UNION SELECT partner_id, environment FROM vendor_orders "
            "WHERE ready_at >= :s AND ready_at < :e ORDER BY 1, 2"
        ),
        {"s": start, "e": end},
    )
    return [Scope(partner, env) for partner, env in rows]


async def list_drifts(
    conn: AsyncConnection,
    page: Page,
    *,
    resolution: str | None = None,
    partner_id: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Operators' list of findings, newest first."""
    if resolution is not None and resolution not in RESOLUTIONS:
        raise ValidationFailed({"resolution": [f"must be one of {', '.join(RESOLUTIONS)}"]})
    query = select(reconciliation_drifts)
    if resolution is not None:
        query = query.where(reconciliation_drifts.c.resolution == resolution)
    if partner_id is not None:
        query = query.where(reconciliation_drifts.c.partner_id == partner_id)
    rows, cursor = await fetch_page(
        conn, query, reconciliation_drifts.c.detected_at, reconciliation_drifts.c.id, page
    )
    return [drift_view(r) for r in rows], cursor


async def resolve_drift(
    conn: AsyncConnection, *, actor: str, drift_id: str, resolution: str, note: str | None
) -> dict[str, Any]:
    """Mark a finding resolved, escalated (or pending again). Audited. Raises NotFound,
    ValidationFailed."""
    if resolution not in RESOLUTIONS:
        raise ValidationFailed({"resolution": [f"must be one of {', '.join(RESOLUTIONS)}"]})
    before = (
        (
            await conn.execute(
                select(reconciliation_drifts)
                .where(reconciliation_drifts.c.id == drift_id)
                .with_for_update()
            )
        )
        .mappings()
        .first()
    )
    if before is None:
        raise NotFound(f"drift {drift_id} not found")
    after = (
        (
            await conn.execute(
                reconciliation_drifts.update()
                .where(reconciliation_drifts.c.id == drift_id)
                .values(
                    resolution=resolution,
                    resolution_note=note,
                    resolved_by=None if resolution == "pending" else actor,
                    resolved_at=None if resolution == "pending" else datetime.now(UTC),
                )
                .returning(reconciliation_drifts)
            )
        )
        .mappings()
        .one()
    )
    await audit.record(
        conn,
        actor=actor,
        action="reconciliation.drift_resolved",
        target_type="reconciliation_drift",
        target_id=drift_id,
        before={"resolution": before["resolution"]},
        after={"resolution": resolution, "note": note},
    )
    return drift_view(dict(after))
