"""Voucher vendors: who fulfils an order when the inventory runs short.

`VoucherVendor` is the adapter interface a real gift-card vendor would implement: `place` is
idempotent on our request id (a retry after a crash gets the same codes, never a second set),
`cancel` voids a request, and `records` is the vendor's own account of what it allocated, which
the daily reconciliation compares with ours.

The built-in `SandboxVendor` serves the sandbox environment. Operators steer it
(`PATCH /api/v1/admin/vendors/sandbox`): `instant` fulfils at once, `delayed` after
`delaySeconds`, `fail` refuses; `driftNext` makes its next N requests show in its records with
one voucher more than it delivered (a billing drift reconciliation must catch). Its state lives
in PostgreSQL tables of its own, written in its own transactions, as a remote vendor's would be.
Production has no vendor unless one is configured: an order there is served from inventory only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine import audit
from engine.crypto import SecretBox
from engine.errors import ValidationFailed
from engine.scope import Environment, Scope
from engine.vouchers import VoucherCode

SANDBOX = "sandbox"
SANDBOX_MODES = ("instant", "delayed", "fail")


@dataclass(frozen=True, slots=True)
class VendorRequest:
    request_id: str  # our order id: the vendor deduplicates on it
    scope: Scope
    product_id: str
    face_value: Decimal
    quantity: int
    delivery_type: str


@dataclass(frozen=True, slots=True)
class VendorResult:
    status: Literal["FULFILLED", "PENDING", "FAILED"]
    codes: tuple[VoucherCode, ...] = ()
    ready_at: datetime | None = None  # PENDING: when to ask again
    reason: str | None = None  # FAILED: why


@dataclass(frozen=True, slots=True)
class VendorRecord:
    """The vendor's own account of one request (what it will bill us for)."""

    request_id: str
    product_id: str
    face_value: Decimal
    quantity: int
    status: str
    at: datetime


class VoucherVendor(Protocol):
    name: str

    async def place(self, request: VendorRequest) -> VendorResult: ...

    async def cancel(self, request_id: str) -> None: ...

    async def records(self, scope: Scope, day: date) -> list[VendorRecord]: ...


class SandboxVendor:
    """The sandbox vendor (see the module docstring). Codes are derived from the request id
    with a keyed hash, so asking again yields the same codes and none is stored in clear."""

    name = SANDBOX

    def __init__(self, db: AsyncEngine, box: SecretBox) -> None:
        self._db = db
        self._box = box

    def _codes(self, request: VendorRequest) -> tuple[VoucherCode, ...]:
        codes = []
        for index in range(request.quantity):
            digest = self._box.hash_secret_key(f"sandbox-vendor:{request.request_id}:{index}")
            code = "SBX-" + digest.hex()[:16].upper()
            codes.append(
                VoucherCode(
                    face_value=request.face_value,
                    code=code,
                    pin=digest.hex()[16:22] if request.delivery_type == "code_with_pin" else None,
                    claim_url=f"https://sandbox.vendor.invalid/claim/{code}"
                    if request.delivery_type == "link"
                    else None,
                )
            )
        return tuple(codes)

    async def place(self, request: VendorRequest) -> VendorResult:
        async with self._db.begin() as conn:
            record = await _vendor_order(conn, request.request_id)
            if record is None:
                record = await self._accept(conn, request)
            elif record["status"] == "PENDING" and record["ready_at"] <= datetime.now(UTC):
                await conn.execute(
                    text(
                        "UPDATE vendor_orders SET status = 'FULFILLED' WHERE vendor = :v "
                        "AND request_id = :r"
                    ),
                    {"v": SANDBOX, "r": request.request_id},
                )
                record["status"] = "FULFILLED"
        if record["status"] == "FULFILLED":
            return VendorResult("FULFILLED", codes=self._codes(request))
        if record["status"] == "PENDING":
            return VendorResult("PENDING", ready_at=record["ready_at"])
        return VendorResult("FAILED", reason=record["failure_reason"] or "cancelled")

    async def _accept(self, conn: AsyncConnection, request: VendorRequest) -> dict[str, Any]:
        settings = (
            (
                await conn.execute(
                    text("SELECT mode, delay_seconds, drift_next FROM sandbox_vendor FOR UPDATE")
                )
            )
            .mappings()
            .one()
        )
        drift = settings["drift_next"] > 0
        if drift:
            await conn.execute(text("UPDATE sandbox_vendor SET drift_next = drift_next - 1"))
        now = datetime.now(UTC)
        status, ready_at, reason = {
            "instant": ("FULFILLED", now, None),
            "delayed": ("PENDING", now + timedelta(seconds=settings["delay_seconds"]), None),
            "fail": ("FAILED", now, "the sandbox vendor is set to fail"),
        }[settings["mode"]]
        row = (
            (
                await conn.execute(
                    text(
                        "INSERT INTO vendor_orders (vendor, request_id, partner_id, environment, "
                        "product_id, face_value, quantity, status, ready_at, failure_reason, "
                        "recorded_face_value, recorded_quantity) VALUES (:v, :r, :partner_id, "
                        ":environment, :product, :face, :q, :status, :ready, :reason, :face, "
                        ":recorded_q) RETURNING *"
                    ),
                    {
                        **request.scope.params,
                        "v": SANDBOX,
                        "r": request.request_id,
                        "product": request.product_id,
                        "face": request.face_value,
                        "q": request.quantity,
                        "status": status,
                        "ready": ready_at,
                        "reason": reason,
                        "recorded_q": request.quantity + (1 if drift else 0),
                    },
                )
            )
            .mappings()
            .one()
        )
        return dict(row)

    async def cancel(self, request_id: str) -> None:
        async with self._db.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE vendor_orders SET status = 'CANCELLED' WHERE vendor = :v "
                    "AND request_id = :r AND status <> 'FAILED'"
                ),
                {"v": SANDBOX, "r": request_id},
            )

    async def records(self, scope: Scope, day: date) -> list[VendorRecord]:
        start = datetime.combine(day, time.min, tzinfo=UTC)
        async with self._db.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT request_id, product_id, recorded_face_value, recorded_quantity, "
                    "status, ready_at FROM vendor_orders WHERE vendor = :v "
                    "AND partner_id = :partner_id AND environment = :environment "
                    "AND ready_at >= :start AND ready_at < :end AND status = 'FULFILLED' "
                    "ORDER BY request_id"
                ),
                {**scope.params, "v": SANDBOX, "start": start, "end": start + timedelta(days=1)},
            )
            return [VendorRecord(r[0], r[1], Decimal(r[2]), int(r[3]), r[4], r[5]) for r in rows]


async def _vendor_order(conn: AsyncConnection, request_id: str) -> dict[str, Any] | None:
    row = (
        (
            await conn.execute(
                text(
                    "SELECT * FROM vendor_orders WHERE vendor = :v AND request_id = :r FOR UPDATE"
                ),
                {"v": SANDBOX, "r": request_id},
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


class Vendors:
    """Which vendor serves an environment (built per process with its database and key box)."""

    def __init__(self, db: AsyncEngine, box: SecretBox) -> None:
        self._sandbox = SandboxVendor(db, box)

    def named(self, name: str) -> VoucherVendor:
        if name == SANDBOX:
            return self._sandbox
        raise LookupError(f"no vendor named {name}")

    def all(self) -> list[VoucherVendor]:
        return [self._sandbox]


def vendor_name_for(environment: Environment) -> str | None:
    """The vendor an order of `environment` falls back to, by name (None: inventory only)."""
    return SANDBOX if environment == "sandbox" else None


async def sandbox_settings(conn: AsyncConnection) -> dict[str, Any]:
    row = (
        (
            await conn.execute(
                text("SELECT mode, delay_seconds, drift_next, updated_at FROM sandbox_vendor")
            )
        )
        .mappings()
        .one()
    )
    return dict(row)


async def configure_sandbox(
    conn: AsyncConnection, *, actor: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Steer the sandbox vendor (mode, delay_seconds, drift_next). Audited. Raises ValidationFailed."""
    problems: dict[str, list[str]] = {}
    if "mode" in changes and changes["mode"] not in SANDBOX_MODES:
        problems["mode"] = [f"must be one of {', '.join(SANDBOX_MODES)}"]
    for field, wire in (("delay_seconds", "delaySeconds"), ("drift_next", "driftNext")):
        if field in changes and not 0 <= int(changes[field]) <= 86_400:
            problems[wire] = ["must be from 0 to 86400"]
    if problems:
        raise ValidationFailed(problems)
    before = (
        (
            await conn.execute(
                text("SELECT mode, delay_seconds, drift_next FROM sandbox_vendor FOR UPDATE")
            )
        )
        .mappings()
        .one()
    )
    values = {**dict(before), **changes}
    await conn.execute(
        text(
            "UPDATE sandbox_vendor SET mode = :mode, delay_seconds = :delay_seconds, "
            "drift_next = :drift_next, updated_at = now()"
        ),
        values,
    )
    await audit.record(
        conn,
        actor=actor,
        action="vendor.sandbox_configured",
        target_type="vendor",
        target_id=SANDBOX,
        before=dict(before),
        after=values,
    )
    return await sandbox_settings(conn)
