"""Voucher inventory and issued vouchers: loading codes, allocating them exactly once, revealing them.

Codes, PINs and claim URLs are encrypted at rest (`SecretBox`); only `reveal` decrypts, for
`GET /orders/:id/vouchers`. Nothing here logs or returns a code anywhere else: events, order
views and audit rows carry voucher ids, face values and counts only.

Allocation takes AVAILABLE rows with `FOR UPDATE SKIP LOCKED` and marks them ISSUED in the same
statement, so concurrent orders never share a voucher and never wait on each other's rows.
Inventory belongs to one environment: sandbox orders never receive codes loaded for production.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ARRAY, DateTime, LargeBinary, Numeric, Text, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.catalog import CENT, Denomination, get_product
from engine.crypto import SecretBox
from engine.errors import DuplicateVoucherCode, ValidationFailed
from engine.ids import new_id
from engine.scope import Environment, Scope


@dataclass(frozen=True, slots=True)
class VoucherCode:
    """One code as loaded by an operator or issued by a vendor (plaintext: handle with care)."""

    face_value: Decimal
    code: str
    pin: str | None = None
    claim_url: str | None = None
    expires_at: datetime | None = None


def code_hash(box: SecretBox, code: str) -> bytes:
    """Keyed hash of a code (the secret-key pepper): finds a duplicate without storing the code
    in clear, and cannot be reversed or brute-forced without the master key."""
    return box.hash_secret_key("voucher:" + code)


def _problems(product: dict[str, Any], codes: Sequence[VoucherCode]) -> dict[str, list[str]]:
    faces = {Denomination.from_json(d).face_value for d in product["denominations"]}
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    for index, code in enumerate(codes):
        where = f"codes[{index}]"
        if code.face_value.quantize(CENT) not in faces:
            found.setdefault(f"{where}.faceValue", []).append(
                "must be one of the product's denominations"
            )
        if product["delivery_type"] == "code_with_pin" and not code.pin:
            found.setdefault(f"{where}.pin", []).append("is required for code_with_pin products")
        if product["delivery_type"] == "link" and not code.claim_url:
            found.setdefault(f"{where}.claimUrl", []).append("is required for link products")
        if code.code in seen:
            found.setdefault(f"{where}.code", []).append("appears twice in this request")
        seen.add(code.code)
    return found


_INSERT = text(
    "INSERT INTO vouchers (id, environment, product_id, face_value, source, vendor, code_hash, "
    "code_enc, pin_enc, claim_url_enc, expires_at, status, partner_id, order_id, issued_at) "
    "SELECT unnest(:ids), :environment, :product_id, unnest(:faces), :source, "
    "CAST(:vendor AS varchar), "
    "unnest(:hashes), unnest(:codes), unnest(:pins), unnest(:urls), unnest(:expires), :status, "
    "CAST(:partner_id AS varchar), CAST(:order_id AS varchar), "
    "CASE WHEN CAST(:order_id AS varchar) IS NULL THEN NULL ELSE now() END "
    "ON CONFLICT (product_id, code_hash) DO NOTHING RETURNING id, face_value, expires_at"
).bindparams(
    bindparam("ids", type_=ARRAY(Text)),
    bindparam("faces", type_=ARRAY(Numeric(12, 2))),
    bindparam("hashes", type_=ARRAY(LargeBinary)),
    bindparam("codes", type_=ARRAY(LargeBinary)),
    bindparam("pins", type_=ARRAY(LargeBinary)),
    bindparam("urls", type_=ARRAY(LargeBinary)),
    bindparam("expires", type_=ARRAY(DateTime(timezone=True))),
)


async def _insert(
    conn: AsyncConnection,
    box: SecretBox,
    *,
    environment: Environment,
    product_id: str,
    codes: Sequence[VoucherCode],
    source: str,
    vendor: str | None = None,
    partner_id: str | None = None,
    order_id: str | None = None,
) -> list[dict[str, Any]]:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else box.encrypt(value)

    rows = await conn.execute(
        _INSERT,
        {
            "ids": [new_id() for _ in codes],
            "environment": environment,
            "product_id": product_id,
            "faces": [c.face_value for c in codes],
            "source": source,
            "vendor": vendor,
            "hashes": [code_hash(box, c.code) for c in codes],
            "codes": [box.encrypt(c.code) for c in codes],
            "pins": [enc(c.pin) for c in codes],
            "urls": [enc(c.claim_url) for c in codes],
            "expires": [c.expires_at for c in codes],
            "status": "AVAILABLE" if order_id is None else "ISSUED",
            "partner_id": partner_id,
            "order_id": order_id,
        },
    )
    inserted = [dict(r) for r in rows.mappings()]
    if len(inserted) != len(codes):
        # Raising rolls the whole load back: an operator fixes the file and loads it again.
        raise DuplicateVoucherCode(
            f"{len(codes) - len(inserted)} code(s) are already in this product's inventory",
            details={"duplicates": len(codes) - len(inserted)},
        )
    return inserted


async def load_inventory(
    conn: AsyncConnection,
    box: SecretBox,
    *,
    actor: str,
    product_id: str,
    environment: Environment,
    codes: Sequence[VoucherCode],
) -> dict[str, Any]:
    """Add codes to a product's inventory in one environment. All or nothing.

    Raises NotFound, ValidationFailed (face value not a denomination, missing PIN or claim URL,
    a code twice in the request), DuplicateVoucherCode (a code already loaded).
    """
    product = await get_product(conn, product_id)
    if not codes:
        raise ValidationFailed({"codes": ["must hold at least one code"]})
    problems = _problems(product, codes)
    if problems:
        raise ValidationFailed(problems)
    await _insert(
        conn,
        box,
        environment=environment,
        product_id=product_id,
        codes=[replace(c, face_value=c.face_value.quantize(CENT)) for c in codes],
        source="INVENTORY",
    )
    available = await available_counts(conn, product_id, environment)
    summary = {
        "productId": product_id,
        "environment": environment,
        "loaded": len(codes),
        "available": available,
    }
    # The audit row counts codes by face value; it never holds a code.
    await audit.record(
        conn,
        actor=actor,
        action="catalog.vouchers_loaded",
        target_type="catalog_product",
        target_id=product_id,
        after={
            **summary,
            "byFaceValue": dict(Counter(format(c.face_value.quantize(CENT), "f") for c in codes)),
        },
    )
    return summary


async def available_counts(
    conn: AsyncConnection, product_id: str, environment: Environment
) -> dict[str, int]:
    """Unexpired AVAILABLE codes per face value ("25.00" -> count)."""
    rows = await conn.execute(
        text(
            "SELECT face_value, count(*) FROM vouchers WHERE product_id = :p "
            "AND environment = :e AND status = 'AVAILABLE' "
            "AND (expires_at IS NULL OR expires_at > now()) GROUP BY face_value ORDER BY 1"
        ),
        {"p": product_id, "e": environment},
    )
    return {format(Decimal(face).quantize(CENT), "f"): int(n) for face, n in rows}


_ALLOCATE = text(
    "UPDATE vouchers SET status = 'ISSUED', order_id = :order_id, partner_id = :partner_id, "
    "issued_at = now() WHERE id IN (SELECT id FROM vouchers WHERE product_id = :product_id "
    "AND face_value = :face_value AND environment = :environment AND status = 'AVAILABLE' "
    "AND (expires_at IS NULL OR expires_at > now()) "
    "ORDER BY expires_at ASC NULLS LAST, created_at, id LIMIT :quantity FOR UPDATE SKIP LOCKED) "
    "RETURNING id, face_value, expires_at"
)


async def allocate(
    conn: AsyncConnection,
    scope: Scope,
    *,
    order_id: str,
    product_id: str,
    face_value: Decimal,
    quantity: int,
) -> list[dict[str, Any]]:
    """Issue up to `quantity` inventory codes to an order, soonest-expiring first. Returns the
    vouchers issued (fewer than `quantity` when the inventory runs short)."""
    rows = await conn.execute(
        _ALLOCATE,
        {
            **scope.params,
            "order_id": order_id,
            "product_id": product_id,
            "face_value": face_value,
            "quantity": quantity,
        },
    )
    return [dict(r) for r in rows.mappings()]


async def issue_from_vendor(
    conn: AsyncConnection,
    box: SecretBox,
    scope: Scope,
    *,
    order_id: str,
    product_id: str,
    vendor: str,
    codes: Sequence[VoucherCode],
) -> list[dict[str, Any]]:
    """Record codes a vendor issued for an order, already ISSUED to it."""
    return await _insert(
        conn,
        box,
        environment=scope.environment,
        product_id=product_id,
        codes=codes,
        source="VENDOR",
        vendor=vendor,
        partner_id=scope.partner_id,
        order_id=order_id,
    )


_ORDER_VOUCHERS = text(
    "SELECT id, order_id, source, vendor, face_value, expires_at, issued_at, code_enc, pin_enc, "
    "claim_url_enc FROM vouchers WHERE order_id = ANY(:order_ids) AND partner_id = :partner_id "
    "AND environment = :environment ORDER BY issued_at, id"
).bindparams(bindparam("order_ids", type_=ARRAY(Text)))


async def vouchers_of(
    conn: AsyncConnection, scope: Scope, order_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Issued vouchers per order (encrypted columns included; only `reveal` opens them)."""
    found: dict[str, list[dict[str, Any]]] = {order_id: [] for order_id in order_ids}
    if order_ids:
        rows = await conn.execute(_ORDER_VOUCHERS, {**scope.params, "order_ids": list(order_ids)})
        for row in rows.mappings():
            found[row["order_id"]].append(dict(row))
    return found


def reveal(box: SecretBox, voucher: dict[str, Any]) -> dict[str, Any]:
    """The one place a code is decrypted: `GET /orders/:id/vouchers`."""

    def dec(value: Any) -> str | None:
        return None if value is None else box.decrypt(bytes(value))

    return {
        "id": voucher["id"],
        "code": dec(voucher["code_enc"]),
        "pin": dec(voucher["pin_enc"]),
        "claimUrl": dec(voucher["claim_url_enc"]),
        "faceValue": Decimal(voucher["face_value"]),
        "expiresAt": voucher["expires_at"],
    }


__all__ = [
    "VoucherCode",
    "allocate",
    "available_counts",
    "issue_from_vendor",
    "load_inventory",
    "reveal",
    "vouchers_of",
]
