"""Wire models of the redemption marketplace (contract section 10): catalog, voucher inventory,
orders, the sandbox vendor and reconciliation, and the JSON shapes they answer with.

Face values are currency amounts (at most 2 decimals) and token prices token amounts (at most 6),
both parsed exactly. Voucher codes appear in exactly one response model, `VoucherSecretList`
(`GET /orders/:id/vouchers`); every other shape carries voucher ids only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, field_validator

from engine.catalog import Denomination
from engine.errors import ValidationFailed
from engine.money import Tokens
from engine.vouchers import VoucherCode
from schemas.admin import TokenAmount
from schemas.base import WireModel, parse

DeliveryType = Literal["code", "code_with_pin", "link"]
OrderStatus = Literal[
    "PENDING", "PROCESSING", "DELIVERED", "PARTIALLY_DELIVERED", "FAILED", "CANCELLED"
]
Resolution = Literal["pending", "resolved", "escalated"]
FaceValue = Annotated[
    Decimal,
    Field(gt=0, max_digits=12, decimal_places=2, description="Currency units, at most 2 decimals"),
]


# -- catalog -------------------------------------------------------------------------------------------


class DenominationIn(WireModel):
    face_value: FaceValue
    token_price: TokenAmount
    is_active: bool = True

    @field_validator("token_price")
    @classmethod
    def _positive(cls, value: Tokens) -> Tokens:
        if not value.is_positive:
            raise ValueError("must be greater than 0")
        return value

    def engine(self) -> Denomination:
        return Denomination(self.face_value, self.token_price, self.is_active)


class ProductCreate(WireModel):
    """`POST /api/v1/admin/catalog/products`. `sku` is the operator's own key (CSV import
    upserts by it)."""

    sku: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    name: Annotated[str, Field(min_length=1, max_length=200)]
    category: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$")]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217")]
    image_url: Annotated[str, Field(max_length=2000, pattern=r"^https://")] | None = None
    delivery_type: DeliveryType
    validity: Annotated[str, Field(max_length=200)] | None = None
    denominations: Annotated[list[DenominationIn], Field(min_length=1, max_length=50)]
    is_active: bool = True

    def columns(self) -> dict[str, Any]:
        return _product_columns(self, set(type(self).model_fields))


class ProductPatch(WireModel):
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    category: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$")] | None
    ) = None
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    image_url: Annotated[str, Field(max_length=2000, pattern=r"^https://")] | None = None
    delivery_type: DeliveryType | None = None
    validity: Annotated[str, Field(max_length=200)] | None = None
    denominations: Annotated[list[DenominationIn], Field(min_length=1, max_length=50)] | None = None
    is_active: bool | None = None

    @field_validator(
        "name", "category", "country", "currency", "delivery_type", "denominations", "is_active"
    )
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null")
        return value

    def columns(self) -> dict[str, Any]:
        return _product_columns(self, self.model_fields_set)


def _product_columns(model: WireModel, names: set[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in names:
        value = getattr(model, name)
        if name == "denominations":
            value = [d.engine() for d in value]
        values[name] = value
    return values


def product_json(row: dict[str, Any], *, operator: bool) -> dict[str, Any]:
    """A product. Partners see only active denominations, without the flag."""
    denominations = [Denomination.from_json(d) for d in row["denominations"]]
    return {
        "id": row["id"],
        **({"sku": row["sku"]} if operator else {}),
        "name": row["name"],
        "category": row["category"],
        "country": row["country"],
        "currency": row["currency"],
        "imageUrl": row["image_url"],
        "deliveryType": row["delivery_type"],
        "validity": row["validity"],
        "denominations": [
            {
                "faceValue": d.face_value,
                "tokenPrice": d.token_price,
                **({"isActive": d.is_active} if operator else {}),
            }
            for d in denominations
            if operator or d.is_active
        ],
        "isActive": row["is_active"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


CSV_COLUMNS = (
    "sku",
    "name",
    "category",
    "country",
    "currency",
    "imageUrl",
    "deliveryType",
    "validity",
    "denominations",
    "isActive",
)


def catalog_rows(text: str) -> list[tuple[int, dict[str, Any] | ValidationFailed]]:
    """`products_from_csv` as `engine.catalog.import_products` takes it (engine columns)."""
    return [
        (line, parsed if isinstance(parsed, ValidationFailed) else parsed.columns())
        for line, parsed in products_from_csv(text)
    ]


def products_from_csv(text: str) -> Iterator[tuple[int, ProductCreate | ValidationFailed]]:
    """Parse a catalog CSV: one product per row, header `CSV_COLUMNS` (sku required: the import
    upserts by it); `denominations` as `faceValue:tokenPrice` pairs separated by `;`
    (`10:1000;25:2500`). Yields (line number, product or the row's validation error)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [
        c
        for c in ("sku", "name", "category", "country", "currency", "deliveryType", "denominations")
        if c not in (reader.fieldnames or [])
    ]
    if missing:
        raise ValidationFailed({"csv": [f"missing column(s): {', '.join(missing)}"]})
    for row in reader:
        line = reader.line_num
        try:
            pairs = []
            for pair in (row.get("denominations") or "").split(";"):
                if pair.strip():
                    face, _, price = pair.partition(":")
                    pairs.append({"faceValue": face.strip(), "tokenPrice": price.strip()})
            data: dict[str, Any] = {
                key: value.strip()
                for key, value in row.items()
                if key in CSV_COLUMNS
                and key not in ("denominations", "isActive")
                and value
                and value.strip()
            }
            data["denominations"] = pairs
            data["isActive"] = (row.get("isActive") or "true").strip().lower() not in (
                "false",
                "0",
                "no",
            )
            product = parse(ProductCreate, data)
            if product.sku is None:
                raise ValidationFailed({"sku": ["is required in a CSV import"]})
            yield line, product
        except ValidationFailed as error:
            yield line, error


class ProductOut(WireModel):
    id: str
    sku: str | None = Field(None, description="Operators only")
    name: str
    category: str
    country: str
    currency: str
    image_url: str | None
    delivery_type: DeliveryType
    validity: str | None
    denominations: list[dict[str, Any]] = Field(
        description="`{faceValue, tokenPrice}` (operators also see `isActive`; partners see "
        "active denominations only)"
    )
    is_active: bool
    created_at: datetime
    updated_at: datetime


class ProductList(WireModel):
    data: list[ProductOut]
    next_cursor: str | None


class ImportOut(WireModel):
    created: int
    updated: int
    rejected: list[dict[str, Any]] = Field(description="`{line, error}` per refused row")


# -- inventory ---------------------------------------------------------------------------------------------


class VoucherCodeIn(WireModel):
    face_value: FaceValue
    code: Annotated[str, Field(min_length=1, max_length=500)]
    pin: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    claim_url: Annotated[str, Field(max_length=2000, pattern=r"^https://")] | None = None
    expires_at: AwareDatetime | None = None

    def engine(self) -> VoucherCode:
        return VoucherCode(self.face_value, self.code, self.pin, self.claim_url, self.expires_at)


class InventoryLoad(WireModel):
    """Codes for a product's inventory in one environment (default `production`: real codes are
    only ever handed to live orders; load test codes with `environment: sandbox`)."""

    environment: Literal["sandbox", "production"] = "production"
    codes: Annotated[list[VoucherCodeIn], Field(min_length=1, max_length=10_000)]


class InventoryOut(WireModel):
    product_id: str
    environment: Literal["sandbox", "production"]
    loaded: int
    available: dict[str, int] = Field(description="Unexpired codes in stock per face value")


# -- orders ---------------------------------------------------------------------------------------------------


class OrderCreate(WireModel):
    product_id: Annotated[str, Field(min_length=1, max_length=64)]
    face_value: FaceValue
    quantity: Annotated[int, Field(ge=1, le=100)] = 1


class OrderVoucherOut(WireModel):
    id: str
    status: Literal["ISSUED"]
    face_value: Decimal
    expires_at: datetime | None


class OrderOut(WireModel):
    id: str
    reference: str = Field(description="Short human reference for support (ORD-...)")
    environment: Literal["sandbox", "production"]
    external_user_id: str
    product_id: str
    face_value: Decimal
    quantity: int
    delivered_quantity: int
    unit_price: Decimal
    tokens_debited: Decimal
    tokens_refunded: Decimal
    status: OrderStatus
    vouchers: list[OrderVoucherOut] = Field(description="Issued so far; ids only, never codes")
    failure_reason: str | None
    placed_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class OrderList(WireModel):
    data: list[OrderOut]
    next_cursor: str | None


class VoucherSecretOut(WireModel):
    id: str
    code: str
    pin: str | None
    claim_url: str | None
    face_value: Decimal
    expires_at: datetime | None


class VoucherSecretList(WireModel):
    data: list[VoucherSecretOut]


# -- the sandbox vendor ---------------------------------------------------------------------------------------


class SandboxVendorPatch(WireModel):
    mode: Literal["instant", "delayed", "fail"] | None = None
    delay_seconds: Annotated[int, Field(ge=0, le=86_400)] | None = None
    drift_next: Annotated[int, Field(ge=0, le=86_400)] | None = None

    def columns(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in ("mode", "delay_seconds", "drift_next")
            if name in self.model_fields_set and getattr(self, name) is not None
        }


class SandboxVendorOut(WireModel):
    mode: Literal["instant", "delayed", "fail"]
    delay_seconds: int
    drift_next: int
    updated_at: datetime


def sandbox_vendor_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "mode": row["mode"],
        "delaySeconds": row["delay_seconds"],
        "driftNext": row["drift_next"],
        "updatedAt": row["updated_at"],
    }


# -- reconciliation ------------------------------------------------------------------------------------------------


class ReconciliationSummary(WireModel):
    orders_total: int = Field(description="Orders placed that day")
    vouchers_allocated: int = Field(description="Vouchers issued that day")
    matched: int = Field(
        description="Allocations (one order's vouchers from one source) that agree"
    )
    drifted: int = Field(description="Allocations whose vendor record differs")
    unmatched: int = Field(
        description="Allocations with no vendor record, and vendor records with no allocation"
    )


class DriftOut(WireModel):
    id: str | None = Field(description="Set once the daily job has recorded the finding")
    order_id: str
    vendor: str = Field(description="The vendor's name, or `inventory`")
    product_id: str | None
    kind: Literal["DRIFTED", "UNMATCHED"]
    our_allocation: dict[str, Any] | None
    vendor_record: dict[str, Any] | None
    detected_at: datetime
    resolution: Resolution


class LedgerCheckOut(WireModel):
    balanced: bool
    accounts_checked: int
    drift_tokens: Decimal


class ReconciliationOut(WireModel):
    date: str
    summary: ReconciliationSummary
    drifts: list[DriftOut]
    ledger: LedgerCheckOut
    generated_at: datetime


class OperatorDriftOut(WireModel):
    id: str
    partner_id: str
    environment: Literal["sandbox", "production"]
    date: str
    order_id: str
    vendor: str
    product_id: str | None
    kind: Literal["DRIFTED", "UNMATCHED"]
    our_allocation: dict[str, Any] | None
    vendor_record: dict[str, Any] | None
    detected_at: datetime
    resolution: Resolution
    resolution_note: str | None
    resolved_by: str | None
    resolved_at: datetime | None


class OperatorDriftList(WireModel):
    data: list[OperatorDriftOut]
    next_cursor: str | None


class DriftPatch(WireModel):
    resolution: Resolution
    note: Annotated[str, Field(max_length=2000)] | None = None
