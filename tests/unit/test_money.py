"""The token type: exact parse and format, floor6, never float."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.money import MAX_MICRO, InvalidAmount, Tokens, floor6, to_decimal
from engine.wire import dumps, loads


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("0", 0),
        ("1", 1_000_000),
        ("49.99", 49_990_000),
        ("49.990", 49_990_000),
        ("0.000001", 1),
        ("-0.000001", -1),
        ("1e2", 100_000_000),
        ("123456789012.123456", 123_456_789_012_123_456),
    ],
)
def test_parse_exact(text, micro):
    assert Tokens.parse(text).micro == micro
    assert Tokens.parse(Decimal(text)).micro == micro


@pytest.mark.parametrize(
    "bad", ["0.0000001", "abc", "", " 1", "1_000", "NaN", "Infinity", True, None, [1]]
)
def test_parse_refuses(bad):
    with pytest.raises(InvalidAmount):
        Tokens.parse(bad)


def test_float_is_refused_because_its_spelling_is_gone():
    with pytest.raises(InvalidAmount, match="float"):
        Tokens.parse(0.1)


def test_bigint_bound():
    assert Tokens(MAX_MICRO).micro == MAX_MICRO
    with pytest.raises(InvalidAmount):
        Tokens(MAX_MICRO + 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("66.6666669", "66.666666"),
        ("-1.0000019", "-1.000001"),
        ("0.0000009", "0.000000"),
        ("5", "5.000000"),
    ],
)
def test_floor6_rounds_toward_zero(value, expected):
    assert floor6(Decimal(value)) == Decimal(expected)


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0"),
        (46_662_000, "46.662"),
        (100_000_000, "100"),
        (-1, "-0.000001"),
        (1_000_001, "1.000001"),
    ],
)
def test_format_canonical(micro, text):
    assert Tokens(micro).format() == text


def test_arithmetic_is_closed_over_tokens():
    assert Tokens.parse("1.5") + Tokens.parse("0.25") == Tokens.parse("1.75")
    assert -Tokens.parse("2") == Tokens.parse("-2")
    with pytest.raises(TypeError):
        Tokens.parse("1") + 1  # type: ignore[operator]


def test_wire_round_trip_is_exact_for_large_values():
    body = dumps({"amount": Tokens.parse("123456789012.123456")})
    assert body == '{"amount":123456789012.123456}'
    assert Tokens.parse(loads(body)["amount"]) == Tokens.parse("123456789012.123456")


def test_to_decimal_accepts_json_decimals_and_ints():
    assert to_decimal(loads("49.990")) == Decimal("49.99")
    assert to_decimal(7) == Decimal(7)


@given(st.integers(min_value=-MAX_MICRO, max_value=MAX_MICRO))
def test_format_parse_round_trip(micro):
    tokens = Tokens(micro)
    assert Tokens.parse(tokens.format()) == tokens
    assert Tokens.parse(loads(dumps({"a": tokens}))["a"]) == tokens


@given(
    st.decimals(
        min_value=-(10**12), max_value=10**12, allow_nan=False, allow_infinity=False, places=9
    )
)
def test_floor_never_increases_magnitude(value):
    floored = Tokens.floor(value).to_decimal()
    assert abs(floored) <= abs(value)
    assert abs(value - floored) < Decimal("0.000001")
