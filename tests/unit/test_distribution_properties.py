"""Properties of the distribution math over random valid rules, amounts and stakeholders.

The oracles here are computed independently of `engine.distribution`: T through a wide Decimal
context, allocation bounds through Fraction. Whatever hypothesis finds, shares must add up, never
go negative, and never differ by more than one micro-token where the contract says "equally".
"""

from __future__ import annotations

import decimal
from collections import defaultdict
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.distribution import Rule, Split, Stakeholder, Tier, distribute
from engine.money import Tokens

TYPES = ["DONOR", "ORGANIZATION", "REFERRER", "CUSTOMER", "FRIEND", "VOLUNTEER"]
WIDE = decimal.Context(prec=200, rounding=decimal.ROUND_DOWN)


def decimals(max_value: int, places: int) -> st.SearchStrategy[Decimal]:
    """Non-negative decimals up to `max_value` with 0 to `places` decimals, exactly."""
    return st.integers(0, places).flatmap(
        lambda scale: st.integers(0, max_value * 10**scale).map(
            lambda units: Decimal(units).scaleb(-scale)
        )
    )


@st.composite
def split_sets(draw) -> tuple[Split, ...]:
    """1-6 distinct types whose positive percents add up to exactly 100."""
    count = draw(st.integers(1, 6))
    codes = draw(st.permutations(TYPES))[:count]
    places = draw(st.integers(0, 6))
    scale = 100 * 10**places
    # count-1 distinct cut points in (0, scale) give count positive parts summing to scale.
    cuts = sorted(draw(st.sets(st.integers(1, scale - 1), min_size=count - 1, max_size=count - 1)))
    bounds = [0, *cuts, scale]
    return tuple(
        Split(code, Decimal(high - low).scaleb(-places))
        for code, low, high in zip(codes, bounds, bounds[1:], strict=False)
    )


@st.composite
def rules(draw) -> Rule:
    minimums = draw(st.lists(decimals(10_000, 2), max_size=4, unique=True))
    tiers = tuple(Tier(low, draw(decimals(100, 4))) for low in minimums)
    return Rule(
        multiplier=draw(decimals(100, 4)),
        base_tokens=Tokens(draw(st.integers(0, 10**6 * 10**6))),
        tiers=tiers,
        splits=draw(split_sets()),
    )


stakeholder_lists = st.lists(
    st.builds(Stakeholder, st.sampled_from(TYPES), st.text("abcxyz0123", min_size=1, max_size=6)),
    max_size=10,
).map(tuple)
# Up to 10^7 currency units, 8 decimals: with a multiplier up to 100 and base up to 10^6, T stays
# under 10^9 tokens, well inside the BIGINT column.
action_amounts = decimals(10**7, 8)


def expected_multiplier(rule: Rule, amount: Decimal) -> Decimal:
    applicable = [tier for tier in rule.tiers if tier.min_amount <= amount]
    if not applicable:
        return rule.multiplier
    return max(applicable, key=lambda tier: tier.min_amount).multiplier


def expected_total(rule: Rule | None, amount: Decimal) -> int:
    multiplier = Decimal(1) if rule is None else expected_multiplier(rule, amount)
    base = Decimal(0) if rule is None else rule.base_tokens.to_decimal()
    exact = WIDE.add(base, WIDE.multiply(amount, multiplier))
    return int(exact.quantize(Decimal("0.000001"), context=WIDE).scaleb(6, context=WIDE))


def micros(distribution) -> list[int]:
    return [share.tokens.micro for share in distribution.shares]


@settings(max_examples=400, deadline=None)
@given(rule=rules(), amount=action_amounts, holders=stakeholder_lists)
def test_campaign_rule_properties(rule, amount, holders):
    result = distribute(rule, amount, holders)
    total = result.total.micro

    # Step 1: the tier and T, against an independent wide-Decimal computation.
    assert result.multiplier == expected_multiplier(rule, amount)
    assert total == expected_total(rule, amount)

    # One share per stakeholder, in request order, none negative.
    assert [(s.stakeholder_type, s.identity) for s in result.shares] == [
        (h.stakeholder_type, h.identity) for h in holders
    ]
    assert all(m >= 0 for m in micros(result))

    # Step 2: allocations add up to T; each is floor or floor+1 of its exact part; a +1 never
    # goes to a smaller remainder than a split left without one (ties: declared first).
    allocated = [a.tokens.micro for a in result.allocations]
    assert [a.stakeholder_type for a in result.allocations] == [
        s.stakeholder_type for s in rule.splits
    ]
    assert sum(allocated) == total
    exact_parts = [Fraction(total) * Fraction(s.percent) / 100 for s in rule.splits]
    bumped = []
    for got, exact in zip(allocated, exact_parts, strict=True):
        floor = exact.numerator // exact.denominator
        assert got in (floor, floor + 1)
        bumped.append(got == floor + 1)
    remainders = [exact - (exact.numerator // exact.denominator) for exact in exact_parts]
    for i, up in enumerate(bumped):
        for j, other_up in enumerate(bumped):
            if up and not other_up:
                assert remainders[i] > remainders[j] or (remainders[i] == remainders[j] and i < j)

    # Step 3: the distributed total is T minus the absent types' allocations.
    present = {h.stakeholder_type for h in holders}
    absent = sum(a.tokens.micro for a in result.allocations if a.stakeholder_type not in present)
    assert all(a.distributed == (a.stakeholder_type in present) for a in result.allocations)
    assert result.tokens_distributed.micro == sum(micros(result)) == total - absent
    if all(s.stakeholder_type in present for s in rule.splits):
        assert result.tokens_distributed == result.total

    # Steps 3-4: each type's shares add up to its allocation (0 without a split), differ by at
    # most one micro-token, and the extra ones go to the earliest in request order.
    by_type: dict[str, list[int]] = defaultdict(list)
    for share in result.shares:
        by_type[share.stakeholder_type].append(share.tokens.micro)
    allocation_of = {a.stakeholder_type: a.tokens.micro for a in result.allocations}
    for code, parts in by_type.items():
        assert sum(parts) == allocation_of.get(code, 0)
        assert max(parts) - min(parts) <= 1
        assert parts == sorted(parts, reverse=True)

    # Deterministic: the same input (even rebuilt) gives the same output.
    rebuilt = Rule(
        multiplier=rule.multiplier,
        base_tokens=rule.base_tokens,
        tiers=rule.tiers,
        splits=rule.splits,
    )
    assert distribute(rebuilt, amount, tuple(holders)) == result


@settings(max_examples=300, deadline=None)
@given(amount=action_amounts, holders=stakeholder_lists)
def test_default_rule_properties(amount, holders):
    result = distribute(None, amount, holders)
    parts = micros(result)

    assert result.multiplier == 1
    assert result.total.micro == expected_total(None, amount)
    assert all(m >= 0 for m in parts)
    if holders:
        # Everyone shares T, whatever their type: equal to one micro-token, extras first.
        assert sum(parts) == result.total.micro == result.tokens_distributed.micro
        assert max(parts) - min(parts) <= 1
        assert parts == sorted(parts, reverse=True)
    else:
        assert result.tokens_distributed == Tokens(0)
    assert distribute(None, amount, holders) == result


@settings(max_examples=200, deadline=None)
@given(
    splits=split_sets(),
    units=st.integers(0, 10**18),
    holders=stakeholder_lists,
)
def test_large_totals_stay_exact(splits, units, holders):
    # T up to 10^12 tokens (10^18 micro): every micro-token is accounted for.
    rule = Rule(splits=splits)
    amount = Decimal(units).scaleb(-6)
    result = distribute(rule, amount, holders)

    assert result.total.micro == units
    assert sum(a.tokens.micro for a in result.allocations) == units
    assert result.tokens_distributed.micro + result.undistributed.micro == units
