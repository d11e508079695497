"""The redemption catalog (contract section 10): products and their denominations.

One catalog for every partner, managed by operators; partners with the MARKETPLACE feature read
the active part of it. A denomination pairs a face value (in the product's currency) with its
price in tokens; both are exact (Decimal face values, micro-token prices).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.errors import NotFound, ProductUnavailable, ValidationFailed
from engine.ids import new_id
from engine.money import Tokens
from engine.pagination import Page, fetch_page
from engine.tables import catalog_products

DELIVERY_TYPES = ("code", "code_with_pin", "link")
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Denomination:
    face_value: Decimal  # currency units, at most 2 decimals
    token_price: Tokens
    is_active: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "faceValue": format(self.face_value.quantize(CENT), "f"),
            "tokenPriceMicro": self.token_price.micro,
            "isActive": self.is_active,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Denomination:
        return cls(
            Decimal(data["faceValue"]), Tokens(int(data["tokenPriceMicro"])), data["isActive"]
        )


def denomination_problems(denominations: Sequence[Denomination]) -> list[str]:
    """Each face value once, positive, in cents; each token price positive."""
    found = []
    faces = [d.face_value for d in denominations]
    if len(set(faces)) != len(faces):
        found.append("each faceValue may appear once")
    for d in denominations:
        if d.face_value <= 0 or d.face_value != d.face_value.quantize(CENT):
            found.append(f"faceValue {d.face_value} must be positive with at most 2 decimals")
        if not d.token_price.is_positive:
            found.append(f"tokenPrice of faceValue {d.face_value} must be greater than 0")
    return found


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Engine fields (snake_case, denominations as `Denomination`) -> table columns."""
    values = dict(fields)
    if "denominations" in values:
        problems = denomination_problems(values["denominations"])
        if problems:
            raise ValidationFailed({"denominations": problems})
        values["denominations"] = [d.to_json() for d in values["denominations"]]
    if "delivery_type" in values and values["delivery_type"] not in DELIVERY_TYPES:
        raise ValidationFailed({"deliveryType": [f"must be one of {', '.join(DELIVERY_TYPES)}"]})
    return values


async def create_product(
    conn: AsyncConnection, *, actor: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """Add a product. Raises ValidationFailed."""
    values = {"id": new_id(), **_columns(fields)}
    row = (
        (await conn.execute(catalog_products.insert().values(**values).returning(catalog_products)))
        .mappings()
        .one()
    )
    await audit.record(
        conn,
        actor=actor,
        action="catalog.product_created",
        target_type="catalog_product",
        target_id=row["id"],
        after=dict(row),
    )
    return dict(row)


async def _locked(conn: AsyncConnection, product_id: str) -> dict[str, Any]:
    row = (
        (
            await conn.execute(
                select(catalog_products)
                .where(catalog_products.c.id == product_id)
                .with_for_update()
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"product {product_id} not found")
    return dict(row)


async def update_product(
    conn: AsyncConnection, *, actor: str, product_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Change a product's fields (only those given). Raises NotFound, ValidationFailed."""
    before = await _locked(conn, product_id)
    values = _columns(changes)
    if not values:
        return before
    row = (
        (
            await conn.execute(
                catalog_products.update()
                .where(catalog_products.c.id == product_id)
                .values(**values, updated_at=func.now())
                .returning(catalog_products)
            )
        )
        .mappings()
        .one()
    )
    await audit.record(
        conn,
        actor=actor,
        action="catalog.product_updated",
        target_type="catalog_product",
        target_id=product_id,
        before=before,
        after=dict(row),
    )
    return dict(row)


async def upsert_by_sku(
    conn: AsyncConnection, *, actor: str, fields: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Create the product with this `sku`, or update the one that has it (CSV import: running
    the same file twice changes nothing). Returns (row, created)."""
    existing = (
        await conn.execute(
            select(catalog_products.c.id)
            .where(catalog_products.c.sku == fields["sku"])
            .with_for_update()
        )
    ).scalar_one_or_none()
    if existing is None:
        return await create_product(conn, actor=actor, fields=fields), True
    changes = {k: v for k, v in fields.items() if k != "sku"}
    return await update_product(conn, actor=actor, product_id=existing, changes=changes), False


async def get_product(
    conn: AsyncConnection, product_id: str, *, active_only: bool = False
) -> dict[str, Any]:
    """A product row. Partners (`active_only`) see an inactive product as not found."""
    query = select(catalog_products).where(catalog_products.c.id == product_id)
    if active_only:
        query = query.where(catalog_products.c.is_active)
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise NotFound(f"product {product_id} not found")
    return dict(row)


async def list_products(
    conn: AsyncConnection,
    page: Page,
    *,
    category: str | None = None,
    country: str | None = None,
    active_only: bool = True,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of products, newest first, filtered by category and country."""
    query = select(catalog_products)
    if active_only:
        query = query.where(catalog_products.c.is_active)
    if category is not None:
        query = query.where(catalog_products.c.category == category)
    if country is not None:
        query = query.where(catalog_products.c.country == country.upper())
    return await fetch_page(conn, query, catalog_products.c.created_at, catalog_products.c.id, page)


def orderable_denomination(product: dict[str, Any], face_value: Decimal) -> Denomination:
    """The active denomination of an active product. Raises ProductUnavailable."""
    if not product["is_active"]:
        raise ProductUnavailable(
            "This product is not available", details={"productId": product["id"]}
        )
    for raw in product["denominations"]:
        denomination = Denomination.from_json(raw)
        if denomination.face_value == face_value:
            if not denomination.is_active:
                break
            return denomination
    raise ProductUnavailable(
        "This denomination of the product is not available",
        details={"productId": product["id"], "faceValue": face_value},
    )


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {line, error}

    def to_json(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "rejected": self.rejected}


async def import_products(
    conn: AsyncConnection,
    *,
    actor: str,
    rows: Iterable[tuple[int, dict[str, Any] | ValidationFailed]],
    result: ImportResult,
) -> ImportResult:
    """Upsert parsed CSV rows by `sku`, each in its own savepoint: a refused row (parse error
    or rule) is listed with its line and the others go in. Adds to `result` and returns it."""
    for line, parsed in rows:
        if isinstance(parsed, ValidationFailed):
            result.rejected.append({"line": line, "error": parsed.fields})
            continue
        try:
            async with conn.begin_nested():
                _, created = await upsert_by_sku(conn, actor=actor, fields=parsed)
        except ValidationFailed as refused:
            result.rejected.append({"line": line, "error": refused.fields})
            continue
        result.created += created
        result.updated += not created
    return result
