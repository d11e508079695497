"""Token amounts: fixed point with 6 decimals, held as integer micro-tokens. Never float.

Storage is BIGINT micro-tokens (Stripe's integer-smallest-unit habit); the wire carries exact
decimals. `Tokens` is immutable, so an amount handed around cannot change under anyone's feet.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

SCALE = 6
MICRO = 10**SCALE
# BIGINT bound: no single amount may overflow the storage column.
MAX_MICRO = 2**63 - 1

_EXACT = decimal.Context(prec=80, traps=[decimal.InvalidOperation, decimal.Overflow])


class InvalidAmount(ValueError):
    """The text or number is not an exact token amount."""


def to_decimal(value: Any) -> Decimal:
    """Parse a JSON number or decimal string exactly.

    Floats are refused: by the time a value is a float its exact spelling is gone. JSON bodies
    are parsed with `parse_float=Decimal`, so a number on the wire arrives here as a Decimal.
    """
    if isinstance(value, bool):
        raise InvalidAmount("must be a number")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text or text != value or "_" in text:
            raise InvalidAmount("must be a decimal number")
        try:
            result = Decimal(text)
        except decimal.InvalidOperation as exc:
            raise InvalidAmount("must be a decimal number") from exc
    elif isinstance(value, float):
        raise InvalidAmount("must be an exact decimal, not a binary float")
    else:
        raise InvalidAmount("must be a number")
    if not result.is_finite():
        raise InvalidAmount("must be a finite number")
    return result


def floor6(value: Decimal) -> Decimal:
    """Round toward zero to 6 decimals: the contract's only rounding rule."""
    return value.quantize(Decimal(1).scaleb(-SCALE), rounding=decimal.ROUND_DOWN, context=_EXACT)


@dataclass(frozen=True, slots=True, order=True)
class Tokens:
    """An amount of SIR tokens. `micro` is the exact count of millionths of a token."""

    micro: int

    def __post_init__(self) -> None:
        if not isinstance(self.micro, int) or isinstance(self.micro, bool):
            raise TypeError("Tokens.micro must be an int")
        if abs(self.micro) > MAX_MICRO:
            raise InvalidAmount("amount is too large")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def parse(cls, value: Any) -> Tokens:
        """Exact parse of a wire amount; more than 6 decimals is refused, never rounded."""
        amount = to_decimal(value)
        micro = amount.scaleb(SCALE, context=_EXACT)
        if micro != micro.to_integral_value():
            raise InvalidAmount("must have at most 6 decimal places")
        return cls(int(micro))

    @classmethod
    def floor(cls, value: Decimal) -> Tokens:
        """Tokens from a computed decimal, rounded toward zero to 6 decimals (floor6)."""
        return cls(int(floor6(value).scaleb(SCALE, context=_EXACT)))

    @classmethod
    def zero(cls) -> Tokens:
        return cls(0)

    # -- views ----------------------------------------------------------------------------------
    def to_decimal(self) -> Decimal:
        return Decimal(self.micro).scaleb(-SCALE, context=_EXACT)

    def format(self) -> str:
        """Canonical text: no exponent, trailing zeros trimmed ("46.662", "0", "-0.000001")."""
        sign = "-" if self.micro < 0 else ""
        whole, frac = divmod(abs(self.micro), MICRO)
        if frac == 0:
            return f"{sign}{whole}"
        return f"{sign}{whole}.{frac:06d}".rstrip("0")

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        return f"Tokens({self.format()})"

    # -- arithmetic (closed over Tokens; mixing with plain numbers is a bug) ----------------------
    def __add__(self, other: Tokens) -> Tokens:
        if not isinstance(other, Tokens):
            return NotImplemented
        return Tokens(self.micro + other.micro)

    def __sub__(self, other: Tokens) -> Tokens:
        if not isinstance(other, Tokens):
            return NotImplemented
        return Tokens(self.micro - other.micro)

    def __neg__(self) -> Tokens:
        return Tokens(-self.micro)

    def __bool__(self) -> bool:
        return self.micro != 0

    @property
    def is_positive(self) -> bool:
        return self.micro > 0
