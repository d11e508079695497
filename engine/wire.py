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


MAX_DEPTH = 64  # arrays and objects inside one another; no request of the API needs more than ~5


class TooDeep(ValueError):
    """JSON that nests arrays and objects too deeply to be taken."""


def loads(text: str | bytes, *, max_depth: int | None = None) -> Any:
    """Parse JSON with every non-integer number as an exact Decimal. Raises ValueError, also
    for nesting past `max_depth` (when given) or past what the parser's recursion can take:
    a body of 100,000 `[` must be a clean refusal, not a RecursionError, and a document that
    parses but nests hundreds deep would exhaust the stack of whatever walks it next."""
    try:
        value = simplejson.loads(text, use_decimal=True)
    except RecursionError:
        raise TooDeep("JSON nested too deeply") from None
    if max_depth is not None and _deeper_than(value, max_depth):
        raise TooDeep(f"JSON nested more than {max_depth} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` levels (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, dict | list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
