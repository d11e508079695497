"""JSON on the wire: exact decimals both ways (simplejson), times in UTC with `Z`.

The standard library writes every float through binary floating point, so a token amount like
123456789012.123456 would leave rounded. simplejson parses numbers straight to Decimal and
writes Decimal exactly, which is what a ledger's wire format needs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import simplejson

from engine.money import Tokens


def utc_iso(moment: datetime) -> str:
    """RFC 3339 in UTC with `Z`, as every time on the wire is answered."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_default(value: Any) -> Any:
    """Values simplejson does not know: tokens as exact numbers, datetimes in UTC."""
    if isinstance(value, Tokens):
        return _number(value.to_decimal())
    if isinstance(value, datetime):
        return utc_iso(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _number(value: Decimal) -> Decimal:
    """Drop trailing zeros but never switch to exponent notation (46.662, 100, 0)."""
    normalized = value.normalize()
    return normalized.quantize(Decimal(1)) if normalized == normalized.to_integral() else normalized


def dumps(value: Any) -> str:
    return simplejson.dumps(
        value, use_decimal=True, default=json_default, separators=(",", ":"), ensure_ascii=False
    )


def loads(text: str | bytes) -> Any:
    """Parse JSON with every non-integer number as an exact Decimal. Raises ValueError."""
    return simplejson.loads(text, use_decimal=True)
