"""The contract's distribution steps on hand-checked cases (API.md section 7).

Every expected number below was worked out by hand from the contract's rules, not by running the
code; comments show the arithmetic where it is not obvious.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest

from engine.distribution import (
    DEFAULT_RULE,
    Allocation,
    Rule,
    Split,
    Stakeholder,
    Tier,
    distribute,
    validate_rule,
    validate_splits,
    validate_tiers,
)
from engine.money import InvalidAmount, Tokens

D = Decimal


def rule(*splits: tuple[str, str], multiplier: str = "1", base: str = "0", tiers=()) -> Rule:
    return Rule(
        multiplier=D(multiplier),
        base_tokens=Tokens.parse(base),
        splits=tuple(Split(code, D(percent)) for code, percent in splits),
        tiers=tuple(Tier(D(low), D(mult)) for low, mult in tiers),
    )


def people(*types: str) -> tuple[Stakeholder, ...]:
    return tuple(Stakeholder(code, f"{code.lower()}_{i}") for i, code in enumerate(types))


def amounts(distribution) -> list[str]:
    return [str(share.tokens) for share in distribution.shares]


DONATION = rule(("DONOR", "70"), ("ORGANIZATION", "20"), ("REFERRER", "10"), multiplier="2")


# -- the contract's worked examples ---------------------------------------------------------------


def test_worked_example_campaign_split():
    # Given amount 33.33, multiplier 2, splits DONOR 70 / ORGANIZATION 20 / REFERRER 10
    result = distribute(DONATION, D("33.33"), people("DONOR", "ORGANIZATION", "REFERRER"))

    # Then T = 66.66 -> 46.662 / 13.332 / 6.666
    assert result.total == Tokens.parse("66.66")
    assert amounts(result) == ["46.662", "13.332", "6.666"]
    assert [s.stakeholder_type for s in result.shares] == ["DONOR", "ORGANIZATION", "REFERRER"]
    assert result.tokens_distributed == Tokens.parse("66.66")
    assert result.undistributed == Tokens(0)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "API.md's second worked example is inconsistent with its own steps 1, 4 and 5: T = "
        "floor6(1.000001 x 1) = 1.000001, but 0.333334 + 0.333333 + 0.333333 = 1.000000. "
        "Steps 4/5 (shares add up exactly to T, leftovers by request order) give "
        "0.333334 / 0.333334 / 0.333333; see the two tests below."
    ),
)
def test_worked_example_default_rule_literal():
    result = distribute(DEFAULT_RULE, D("1.000001"), people("CUSTOMER", "FRIEND", "ORGANIZATION"))
    assert amounts(result) == ["0.333334", "0.333333", "0.333333"]


def test_worked_example_default_rule_by_the_steps():
    # T = 1.000001 = 1000001 micro; 1000001 // 3 = 333333, 2 micro left over, remainders tie,
    # so the first two in request order get one each.
    result = distribute(DEFAULT_RULE, D("1.000001"), people("CUSTOMER", "FRIEND", "ORGANIZATION"))

    assert result.total == Tokens.parse("1.000001")
    assert amounts(result) == ["0.333334", "0.333334", "0.333333"]
    assert result.tokens_distributed == result.total
    assert result.multiplier == 1
    assert result.allocations == ()


def test_default_rule_amount_one_gives_the_examples_numbers():
    # The shares the example prints are those of T = 1: 1000000 = 3 x 333333 + 1.
    result = distribute(DEFAULT_RULE, D("1"), people("CUSTOMER", "FRIEND", "ORGANIZATION"))
    assert amounts(result) == ["0.333334", "0.333333", "0.333333"]


# -- step 1: tier selection and base tokens --------------------------------------------------------

# Tiers declared out of order on purpose: selection goes by minAmount, not declaration.
TIERED = rule(
    ("CUSTOMER", "100"), multiplier="1", tiers=[("100", "2"), ("500", "3"), ("50", "1.5")]
)


@pytest.mark.parametrize(
    ("amount", "multiplier", "total"),
    [
        ("10", "1", "10"),  # below the first tier: the campaign's multiplier
        ("49.999999", "1", "49.999999"),
        ("50", "1.5", "75"),  # exactly on a boundary: that tier applies
        ("99.99", "1.5", "149.985"),
        ("100", "2", "200"),
        ("499.99", "2", "999.98"),
        ("500", "3", "1500"),
        ("1000", "3", "3000"),  # above every tier: the highest one
    ],
)
def test_tier_with_greatest_min_amount_at_or_below_amount(amount, multiplier, total):
    result = distribute(TIERED, D(amount), people("CUSTOMER"))

    assert result.multiplier == D(multiplier)
    assert result.total == Tokens.parse(total)
    assert amounts(result) == [str(Tokens.parse(total))]


def test_tier_reports_which_tier_applied():
    assert distribute(TIERED, D("10"), people("CUSTOMER")).tier is None
    assert distribute(TIERED, D("120"), people("CUSTOMER")).tier == Tier(D("100"), D("2"))


def test_tier_may_lower_the_multiplier():
    # A tier replaces the campaign's multiplier, it does not compound with it.
    lower = rule(("CUSTOMER", "100"), multiplier="5", tiers=[("0", "1"), ("10", "0")])

    assert distribute(lower, D("3"), people("CUSTOMER")).total == Tokens.parse("3")
    assert distribute(lower, D("20"), people("CUSTOMER")).total == Tokens(0)


def test_tier_boundary_compares_decimals_exactly():
    tiered = rule(("CUSTOMER", "100"), tiers=[("10.00", "2")])
    assert distribute(tiered, D("10"), people("CUSTOMER")).multiplier == 2
    assert distribute(tiered, D("9.9999999999"), people("CUSTOMER")).multiplier == 1


def test_base_tokens_added_once_per_action():
    # T = 5 + 33.33 x 2 = 71.66 -> 50.162 / 14.332 / 7.166, whatever the stakeholder count.
    based = rule(
        ("DONOR", "70"), ("ORGANIZATION", "20"), ("REFERRER", "10"), multiplier="2", base="5"
    )
    result = distribute(based, D("33.33"), people("DONOR", "ORGANIZATION", "REFERRER", "DONOR"))

    assert result.total == Tokens.parse("71.66")
    # DONOR's 50.162 is shared by two donors: 25.081 each.
    assert amounts(result) == ["25.081", "14.332", "7.166", "25.081"]
    assert result.tokens_distributed == result.total


def test_base_tokens_alone_when_amount_is_zero():
    based = rule(("CUSTOMER", "100"), multiplier="3", base="2.5")
    assert amounts(distribute(based, D("0"), people("CUSTOMER"))) == ["2.5"]


def test_total_floors_after_adding_base():
    # 1 + 0.0000015 = 1.0000015 -> floor6 -> 1.000001 (the base is not floored separately).
    based = rule(("CUSTOMER", "100"), base="1")
    assert distribute(based, D("0.0000015"), people("CUSTOMER")).total == Tokens.parse("1.000001")


def test_total_floors_toward_zero_with_many_decimals():
    # 33.333333333 x 3 = 99.999999999 -> 99.999999, never rounded up to 100.
    tripled = rule(("CUSTOMER", "100"), multiplier="3")
    assert distribute(tripled, D("33.333333333"), people("CUSTOMER")).total == Tokens.parse(
        "99.999999"
    )


# -- step 2: splits and largest remainders ---------------------------------------------------------


def test_leftover_goes_to_largest_remainder_even_when_declared_last():
    # T = 10 micro: A 33.33% -> 3.333, B 33.33% -> 3.333, C 33.34% -> 3.334; one left over -> C.
    split = rule(("A", "33.33"), ("B", "33.33"), ("C", "33.34"))
    result = distribute(split, D("0.00001"), people("A", "B", "C"))

    assert [a.tokens.micro for a in result.allocations] == [3, 3, 4]
    assert result.tokens_distributed == result.total


def test_remainder_ties_go_to_the_split_declared_first():
    # T = 5 micro: 40% -> 2.0, 30% -> 1.5, 30% -> 1.5; one left over, tie -> first declared.
    declared_b_first = rule(("A", "40"), ("B", "30"), ("C", "30"))
    declared_c_first = rule(("C", "30"), ("B", "30"), ("A", "40"))
    holders = people("A", "B", "C")

    first = distribute(declared_b_first, D("0.000005"), holders)
    second = distribute(declared_c_first, D("0.000005"), holders)

    assert [s.tokens.micro for s in first.shares] == [2, 2, 1]
    assert [s.tokens.micro for s in second.shares] == [2, 1, 2]


def test_single_micro_token_between_equal_splits():
    # T = 1 micro, 50/50: both remainders 0.5, the one declared first gets it.
    halves = rule(("B", "50"), ("A", "50"))
    assert [s.tokens.micro for s in distribute(halves, D("0.000001"), people("A", "B")).shares] == [
        0,
        1,
    ]


def test_allocations_add_up_to_total_with_awkward_percents():
    # 33.333333 + 33.333333 + 33.333334 = 100 exactly; T = 100 -> 33.333333 / 33.333333 / 33.333334.
    thirds = rule(("A", "33.333333"), ("B", "33.333333"), ("C", "33.333334"))
    result = distribute(thirds, D("100"), people("A", "B", "C"))

    assert amounts(result) == ["33.333333", "33.333333", "33.333334"]
    assert result.tokens_distributed == Tokens.parse("100")


def test_allocations_listed_in_declaration_order():
    result = distribute(DONATION, D("33.33"), people("REFERRER", "DONOR", "ORGANIZATION"))

    assert result.allocations == (
        Allocation("DONOR", Tokens.parse("46.662"), True),
        Allocation("ORGANIZATION", Tokens.parse("13.332"), True),
        Allocation("REFERRER", Tokens.parse("6.666"), True),
    )
    # Shares follow the request, not the splits.
    assert amounts(result) == ["6.666", "46.662", "13.332"]


# -- step 3: absent split types, types without a split ---------------------------------------------


def test_split_type_absent_from_action_stays_in_pool():
    result = distribute(DONATION, D("33.33"), people("DONOR", "ORGANIZATION"))

    assert amounts(result) == ["46.662", "13.332"]
    assert result.total == Tokens.parse("66.66")
    assert result.tokens_distributed == Tokens.parse("59.994")
    assert result.undistributed == Tokens.parse("6.666")
    assert result.allocations[2] == Allocation("REFERRER", Tokens.parse("6.666"), False)


def test_absent_type_keeps_its_largest_remainder_micro_token():
    # T = 5 micro, A 40 / B 30 / C 30 -> 2 / 2 / 1; B is absent, so 2 micro stay in the pool.
    split = rule(("A", "40"), ("B", "30"), ("C", "30"))
    result = distribute(split, D("0.000005"), people("A", "C"))

    assert [s.tokens.micro for s in result.shares] == [2, 1]
    assert result.tokens_distributed == Tokens(3)
    assert result.undistributed == Tokens(2)


def test_stakeholder_type_without_split_gets_a_zero_share():
    result = distribute(
        DONATION, D("33.33"), people("DONOR", "CUSTOMER", "ORGANIZATION", "REFERRER")
    )

    assert amounts(result) == ["46.662", "0", "13.332", "6.666"]
    assert result.shares[1].stakeholder_type == "CUSTOMER"
    assert [s.stakeholder_type for s in result.credited] == ["DONOR", "ORGANIZATION", "REFERRER"]
    assert result.tokens_distributed == Tokens.parse("66.66")


def test_type_codes_match_exactly():
    result = distribute(DONATION, D("33.33"), people("donor"))
    assert amounts(result) == ["0"]
    assert result.undistributed == result.total


def test_no_stakeholders_distributes_nothing():
    for chosen in (DONATION, DEFAULT_RULE):
        result = distribute(chosen, D("10"), ())
        assert result.shares == ()
        assert result.tokens_distributed == Tokens(0)
        assert result.undistributed == result.total


# -- step 4: several stakeholders of one type ------------------------------------------------------


def test_equal_shares_within_a_type_ties_by_request_order():
    # DONOR 100%, T = 5 micro among three donors: 1.666 each -> 1,1,1 + 2 left -> first two.
    donors = rule(("DONOR", "100"))
    result = distribute(donors, D("0.000005"), people("DONOR", "DONOR", "DONOR"))

    assert [s.tokens.micro for s in result.shares] == [2, 2, 1]
    assert [s.identity for s in result.shares] == ["donor_0", "donor_1", "donor_2"]


def test_equal_shares_within_a_type_interleaved_with_others():
    # T = 11 micro, DONOR 80 / ORGANIZATION 20: 8.8 -> 8, 2.2 -> 2, 1 left -> DONOR (0.8 > 0.2).
    # DONOR's 9 micro between donors at request positions 0 and 2: 5 and 4.
    split = rule(("DONOR", "80"), ("ORGANIZATION", "20"))
    result = distribute(split, D("0.000011"), people("DONOR", "ORGANIZATION", "DONOR"))

    assert [s.tokens.micro for s in result.shares] == [5, 2, 4]


def test_repeated_stakeholder_is_two_positions():
    donors = rule(("DONOR", "100"))
    twice = (Stakeholder("DONOR", "u1"), Stakeholder("DONOR", "u1"))
    assert amounts(distribute(donors, D("3"), twice)) == ["1.5", "1.5"]


# -- step 5: default rule --------------------------------------------------------------------------


def test_default_rule_ignores_types_and_shares_among_everyone():
    result = distribute(DEFAULT_RULE, D("10"), people("CUSTOMER", "ORGANIZATION", "ANYTHING"))

    # 10000000 micro / 3 = 3333333 r 1 -> first in request order gets the extra one.
    assert amounts(result) == ["3.333334", "3.333333", "3.333333"]
    assert result.tier is None


def test_default_rule_floors_amount_with_no_base():
    result = distribute(None, D("49.9999999"), people("CUSTOMER"))
    assert result.total == Tokens.parse("49.999999")


# -- tiny and large amounts ------------------------------------------------------------------------


def test_amount_that_floors_to_zero():
    result = distribute(DONATION, D("0.0000001"), people("DONOR", "ORGANIZATION", "REFERRER"))

    # 0.0000001 x 2 = 0.0000002 -> T = 0.
    assert result.total == Tokens(0)
    assert amounts(result) == ["0", "0", "0"]
    assert result.credited == ()


def test_one_micro_token_among_many():
    result = distribute(DEFAULT_RULE, D("0.000001"), people("A", "B", "C"))
    assert [s.tokens.micro for s in result.shares] == [1, 0, 0]
    assert [s.identity for s in result.credited] == ["a_0"]


def test_zero_amount():
    assert distribute(DONATION, D("0"), people("DONOR")).total == Tokens(0)


def test_large_amount_without_precision_loss():
    # T = 123456789012.345678 x 1.5 = 185185183518.518517 (18 significant digits: a float
    # would lose the last ones).
    # 70% = 129629628462.9629619 -> .962961 r 0.9
    # 20% =  37037036703.7037034 -> .703703 r 0.4
    # 10% =  18518518351.8518517 -> .851851 r 0.7
    # 2 micro left over -> the 0.9 and 0.7 remainders.
    big = rule(("A", "70"), ("B", "20"), ("C", "10"), multiplier="1.5")
    result = distribute(big, D("123456789012.345678"), people("A", "B", "C"))

    assert result.total == Tokens.parse("185185183518.518517")
    assert amounts(result) == ["129629628462.962962", "37037036703.703703", "18518518351.851852"]
    assert result.tokens_distributed == result.total


def test_a_trillion_tokens():
    result = distribute(DONATION, D("500000000000"), people("DONOR", "ORGANIZATION", "REFERRER"))

    assert result.total == Tokens.parse("1000000000000")
    assert amounts(result) == ["700000000000", "200000000000", "100000000000"]


def test_a_trillion_tokens_shared_unevenly():
    # 999999999999.999999 among 7: 999999999999999999 micro = 7 x 142857142857142857, exact.
    # Plus one micro: 1000000000000 tokens among 7 -> 142857142857.142857 r 1 -> first gets +1.
    result = distribute(None, D("1000000000000"), people(*"ABCDEFG"))

    assert amounts(result) == ["142857142857.142858"] + ["142857142857.142857"] * 6
    assert result.tokens_distributed == Tokens.parse("1000000000000")


def test_total_beyond_storage_is_refused():
    with pytest.raises(InvalidAmount):
        distribute(rule(("A", "100"), multiplier="1000000"), D("10000000000000"), people("A"))


# -- refused inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [D("-0.01"), D("NaN"), D("Infinity"), 1.5])
def test_refuses_amounts_that_are_not_exact_and_non_negative(amount):
    with pytest.raises(ValueError):
        distribute(DONATION, amount, people("DONOR"))


def test_accepts_integer_amount():
    assert distribute(DONATION, 3, people("DONOR")).total == Tokens.parse("6")


def test_rule_refuses_float_numbers():
    with pytest.raises(InvalidAmount):
        Split("A", 100.0)
    with pytest.raises(InvalidAmount):
        Tier(D("1"), 2.5)


def test_rule_refuses_invalid_parts():
    with pytest.raises(ValueError, match="add up to exactly 100"):
        rule(("A", "60"), ("B", "30"))
    with pytest.raises(ValueError, match="multiplier must be 0 or more"):
        rule(("A", "100"), multiplier="-1")
    with pytest.raises(ValueError, match="baseTokens must be 0 or more"):
        rule(("A", "100"), base="-1")
    with pytest.raises(ValueError, match="tiers: tier 1: minAmount"):
        rule(("A", "100"), tiers=[("10", "2"), ("10.00", "3")])
    with pytest.raises(TypeError):
        Rule(splits=(Split("A", D(100)),), base_tokens=D(1))


def test_rule_accepts_zero_multiplier_and_no_tiers():
    result = distribute(rule(("A", "100"), multiplier="0", base="1"), D("1000"), people("A"))
    assert result.total == Tokens.parse("1")


# -- validation helpers ----------------------------------------------------------------------------


def splits(*pairs: tuple[str, str]) -> list[Split]:
    return [Split(code, D(percent)) for code, percent in pairs]


def test_validate_splits_accepts_exactly_100():
    assert validate_splits(splits(("A", "70"), ("B", "20"), ("C", "10"))) == []
    assert validate_splits(splits(("A", "100.000"))) == []
    assert validate_splits(splits(("A", "33.333333"), ("B", "33.333333"), ("C", "33.333334"))) == []


@pytest.mark.parametrize(
    ("pairs", "problem"),
    [
        ((), "must add up to exactly 100 (there are no splits)"),
        ((("A", "70"), ("B", "20")), "must add up to exactly 100 (they add up to 90)"),
        (
            (("A", "70"), ("B", "30.000001")),
            "must add up to exactly 100 (they add up to 100.000001)",
        ),
        ((("A", "99.999999999999999999999999999999"),), "must add up to exactly 100"),
        ((("A", "100"), ("B", "0")), "split 1: percent must be greater than 0"),
        ((("A", "110"), ("B", "-10")), "split 1: percent must be greater than 0"),
        ((("A", "50"), ("A", "50")), "split 1: stakeholder type A appears more than once"),
        ((("", "100"),), "split 0: stakeholderTypeCode must not be empty"),
    ],
)
def test_validate_splits_problems(pairs, problem):
    problems = validate_splits(splits(*pairs))
    assert any(p.startswith(problem) for p in problems), problems


def test_validate_splits_reports_every_problem():
    problems = validate_splits(splits(("A", "0"), ("A", "-5")))
    assert len(problems) == 4  # two bad percents, one duplicate, a wrong sum


def test_validate_tiers():
    assert validate_tiers([]) == []
    assert validate_tiers([Tier(D("0"), D("0")), Tier(D("100"), D("2.5"))]) == []
    assert validate_tiers([Tier(D("-1"), D("2"))]) == ["tier 0: minAmount must be 0 or more"]
    assert validate_tiers([Tier(D("1"), D("-2"))]) == ["tier 0: multiplier must be 0 or more"]
    assert validate_tiers([Tier(D("10"), D("2")), Tier(D("10.0"), D("3"))]) == [
        "tier 1: minAmount 10.0 appears more than once"
    ]


def test_validate_rule_prefixes_parts():
    problems = validate_rule(D("-1"), Tokens(-1), [Tier(D("-1"), D("1"))], splits(("A", "50")))
    assert problems == [
        "multiplier must be 0 or more",
        "baseTokens must be 0 or more",
        "tiers: tier 0: minAmount must be 0 or more",
        "splits: must add up to exactly 100 (they add up to 50)",
    ]


# -- purity ----------------------------------------------------------------------------------------


def test_module_is_pure():
    # The same math serves submit, batch and simulate; it must not drag in I/O.
    code = (
        "import sys, engine.distribution; "
        "print(sorted(m for m in ('sqlalchemy', 'aiohttp', 'asyncpg', 'redis', 'dramatiq') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_same_input_same_output():
    holders = people("DONOR", "REFERRER", "DONOR", "CUSTOMER")
    assert distribute(DONATION, D("12.345678"), holders) == distribute(
        DONATION, D("12.345678"), holders
    )
