"""Distribution math: how many tokens an action earns and who gets which micro-token.

This module owns the contract's five distribution steps (API.md section 7, "Token amounts and
distribution") and the validity rules of a campaign's tiers and splits. It is pure: no I/O, no
database, no HTTP. The real submit, the batch worker and `POST /campaigns/:id/simulate` all call
`distribute`, so what a simulation shows is exactly what a submit would credit.

All arithmetic is exact: decimals are turned into integer ratios and every floor and every
largest-remainder comparison is done on Python integers, never through float and never through a
Decimal context that could round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

from engine.money import MAX_MICRO, MICRO, InvalidAmount, Tokens, to_decimal

HUNDRED: Final = Decimal(100)


def _exact(value: Any, what: str) -> Decimal:
    """A finite Decimal from a Decimal, int or decimal string; floats are refused (money.py)."""
    try:
        return to_decimal(value)
    except InvalidAmount as exc:
        raise InvalidAmount(f"{what} {exc}") from exc


# -- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tier:
    """From `min_amount` (inclusive, in the action's currency units) on, `multiplier` applies.

    Construction only checks that the numbers are exact; ranges are `validate_tiers`' job, so
    campaign validation can build tiers from a request and report every problem at once.
    """

    min_amount: Decimal
    multiplier: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_amount", _exact(self.min_amount, "tier minAmount"))
        object.__setattr__(self, "multiplier", _exact(self.multiplier, "tier multiplier"))


@dataclass(frozen=True, slots=True)
class Split:
    """`percent` of an action's tokens goes to the stakeholders of `stakeholder_type`.

    As with `Tier`, only exactness is checked here; `validate_splits` checks the rest.
    """

    stakeholder_type: str
    percent: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "percent", _exact(self.percent, "split percent"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A campaign's distribution rule (keyword arguments only; the defaults are a campaign's).

    A `Rule` that exists is valid: construction raises ValueError listing every problem (TypeError
    if `base_tokens` is not `Tokens`), so `distribute` never meets a half-valid rule.
    """

    splits: tuple[Split, ...]
    multiplier: Decimal = Decimal(1)
    base_tokens: Tokens = Tokens(0)
    tiers: tuple[Tier, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.base_tokens, Tokens):
            raise TypeError("Rule.base_tokens must be Tokens")
        object.__setattr__(self, "multiplier", _exact(self.multiplier, "multiplier"))
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "tiers", tuple(self.tiers))
        problems = validate_rule(self.multiplier, self.base_tokens, self.tiers, self.splits)
        if problems:
            raise ValueError("invalid distribution rule: " + "; ".join(problems))


# The contract's default rule (step 5) is not a Rule: it has no splits and shares T among every
# stakeholder. Callers pass `None`; this name says so where it is passed.
DEFAULT_RULE: Final[None] = None


@dataclass(frozen=True, slots=True)
class Stakeholder:
    """One stakeholder of an action, as the request names it.

    `identity` is the `partnerUserId`, or the `organizationSlug` for an ORGANIZATION. Type codes
    are compared exactly (case included) with the splits' codes.
    """

    stakeholder_type: str
    identity: str


# -- outputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Share:
    """What one stakeholder of the request receives (possibly zero)."""

    stakeholder_type: str
    identity: str
    tokens: Tokens


@dataclass(frozen=True, slots=True)
class Allocation:
    """One split's part of T (step 2). `distributed` is False when no stakeholder of that type
    is in the action: the tokens then stay in the pool (step 3)."""

    stakeholder_type: str
    tokens: Tokens
    distributed: bool


@dataclass(frozen=True, slots=True)
class Distribution:
    """The result of `distribute`.

    `shares` holds exactly one entry per stakeholder of the request, in request order, including
    zero shares (a type without a split, or an allocation too small to reach everyone), so
    `shares[i]` always answers for `stakeholders[i]`. Use `credited` for the shares that move
    tokens (ledger postings, webhook payloads).
    """

    total: Tokens  # T
    multiplier: Decimal  # m: the applied tier's multiplier, the rule's, or 1 for the default rule
    tier: Tier | None  # the tier that gave m, if any
    allocations: tuple[Allocation, ...]  # per split in declaration order; empty for the default
    shares: tuple[Share, ...]
    tokens_distributed: Tokens = field(init=False)

    def __post_init__(self) -> None:
        distributed = sum(share.tokens.micro for share in self.shares)
        object.__setattr__(self, "tokens_distributed", Tokens(distributed))

    @property
    def undistributed(self) -> Tokens:
        """Tokens of T that stay in the pool: allocations of split types absent from the action,
        or T itself when the action has no stakeholder at all."""
        return self.total - self.tokens_distributed

    @property
    def credited(self) -> tuple[Share, ...]:
        """The shares with a positive amount, in request order."""
        return tuple(share for share in self.shares if share.tokens.is_positive)


# -- validation ---------------------------------------------------------------------------------


def validate_splits(splits: Sequence[Split]) -> list[str]:
    """Problems with a campaign's splits, as sentences; an empty list means valid.

    Splits must name non-empty, distinct stakeholder types, each percent must be greater than 0,
    and the percents must add up to exactly 100 (compared exactly, with no rounding). Never raises.
    """
    problems: list[str] = []
    if not splits:
        return ["must add up to exactly 100 (there are no splits)"]
    seen: set[str] = set()
    for index, split in enumerate(splits):
        if not split.stakeholder_type:
            problems.append(f"split {index}: stakeholderTypeCode must not be empty")
        elif split.stakeholder_type in seen:
            problems.append(
                f"split {index}: stakeholder type {split.stakeholder_type} appears more than once"
            )
        seen.add(split.stakeholder_type)
        if split.percent <= 0:
            problems.append(f"split {index}: percent must be greater than 0")
    # Fraction, not Decimal addition: a Decimal context could round a long sum to exactly 100.
    total = sum((Fraction(split.percent) for split in splits), Fraction(0))
    if total != 100:
        problems.append(f"must add up to exactly 100 (they add up to {_plain(total)})")
    return problems


def validate_tiers(tiers: Sequence[Tier]) -> list[str]:
    """Problems with a campaign's tiers; an empty list means valid (no tiers is valid).

    Each minAmount must be 0 or more and unique, each multiplier 0 or more. Never raises.
    """
    problems: list[str] = []
    seen: set[Decimal] = set()
    for index, tier in enumerate(tiers):
        if tier.min_amount < 0:
            problems.append(f"tier {index}: minAmount must be 0 or more")
        if tier.min_amount in seen:  # Decimal equality: 10 and 10.00 are the same threshold
            problems.append(f"tier {index}: minAmount {tier.min_amount} appears more than once")
        seen.add(tier.min_amount)
        if tier.multiplier < 0:
            problems.append(f"tier {index}: multiplier must be 0 or more")
    return problems


def validate_rule(
    multiplier: Decimal, base_tokens: Tokens, tiers: Sequence[Tier], splits: Sequence[Split]
) -> list[str]:
    """Every problem of a rule's parts (multiplier, baseTokens, tiers, splits). Never raises."""
    problems: list[str] = []
    if multiplier < 0:
        problems.append("multiplier must be 0 or more")
    if base_tokens.micro < 0:
        problems.append("baseTokens must be 0 or more")
    problems.extend(f"tiers: {problem}" for problem in validate_tiers(tiers))
    problems.extend(f"splits: {problem}" for problem in validate_splits(splits))
    return problems


# -- the five steps -----------------------------------------------------------------------------


class TooManyTokens(InvalidAmount):
    """T of an action is past what a ledger account holds (BIGINT micro-tokens): an amount
    of about 10^13 under the default rule, less under a large multiplier. The caller's to
    refuse (the amount is the partner's input), never a crash."""


def distribute(
    rule: Rule | None, amount: Decimal, stakeholders: Sequence[Stakeholder]
) -> Distribution:
    """Apply the contract's distribution to one action.

    `rule` is the campaign's rule, or `None` (`DEFAULT_RULE`) when no campaign applies. `amount`
    is the action's amount in currency units. `stakeholders` are in request order; each position
    gets its own share (two identical entries are two positions; refusing duplicates is request
    validation's job).

    1. m = the multiplier of the tier with the greatest minAmount <= amount, else the rule's;
       T = floor6(baseTokens + amount x m).
    2. Each split gets floor6(T x percent / 100); leftover micro-tokens go one each to the
       largest remainders (ties: the split declared first).
    3. A split type with no stakeholder stays in the pool; a stakeholder type with no split gets
       a zero share.
    4. Stakeholders of one type share its allocation equally, leftovers to the first in request
       order.
    5. Default rule: m = 1, no base, T shared equally among all stakeholders as in 4.

    Raises `InvalidAmount` (a ValueError) if `amount` is not an exact finite number (a float, NaN)
    or if T does not fit the storage column, and ValueError if `amount` is negative.
    """
    amount = _exact(amount, "amount")
    if amount < 0:
        raise ValueError("amount must be 0 or more")

    if rule is None:
        multiplier, tier, base_micro = Decimal(1), None, 0
    else:
        tier = _applicable_tier(rule.tiers, amount)
        multiplier = tier.multiplier if tier is not None else rule.multiplier
        base_micro = rule.base_tokens.micro
    # Every term is >= 0, so floor division is floor6's round-toward-zero.
    amount_num, amount_den = amount.as_integer_ratio()
    mult_num, mult_den = multiplier.as_integer_ratio()
    total_micro = base_micro + (amount_num * mult_num * MICRO) // (amount_den * mult_den)
    if total_micro > MAX_MICRO:
        raise TooManyTokens("the action would distribute more tokens than an account can hold")
    total = Tokens(total_micro)

    if rule is None:
        equal = largest_remainder(total_micro, [1] * len(stakeholders))
        shares = tuple(
            Share(holder.stakeholder_type, holder.identity, Tokens(micro))
            for holder, micro in zip(stakeholders, equal, strict=True)
        )
        return Distribution(total, multiplier, None, (), shares)

    # Step 2 on a common denominator, so every remainder is an integer over the same base.
    percents = [Fraction(split.percent) for split in rule.splits]
    denominator = math.lcm(*(p.denominator for p in percents))
    weights = [p.numerator * (denominator // p.denominator) for p in percents]
    split_micros = largest_remainder(total_micro, weights)

    # Step 4: positions of each type, in request order.
    positions: dict[str, list[int]] = {}
    for index, holder in enumerate(stakeholders):
        positions.setdefault(holder.stakeholder_type, []).append(index)

    share_micros = [0] * len(stakeholders)
    allocations: list[Allocation] = []
    for split, micro in zip(rule.splits, split_micros, strict=True):
        members = positions.get(split.stakeholder_type, [])
        allocations.append(Allocation(split.stakeholder_type, Tokens(micro), bool(members)))
        for index, part in zip(members, largest_remainder(micro, [1] * len(members)), strict=True):
            share_micros[index] = part

    shares = tuple(
        Share(holder.stakeholder_type, holder.identity, Tokens(micro))
        for holder, micro in zip(stakeholders, share_micros, strict=True)
    )
    return Distribution(total, multiplier, tier, tuple(allocations), shares)


def _applicable_tier(tiers: Sequence[Tier], amount: Decimal) -> Tier | None:
    """The tier with the greatest minAmount <= amount (the boundary itself qualifies)."""
    applicable = [tier for tier in tiers if tier.min_amount <= amount]
    return max(applicable, key=lambda tier: tier.min_amount) if applicable else None


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` micro-tokens in proportion to positive integer `weights`.

    Each part is floor(total x weight / sum); the micro-tokens left over (fewer than there are
    parts) go one each to the largest remainders, ties to the earlier position. All integers:
    remainders share the denominator sum(weights), so comparing them is exact. No weights (no
    recipients) gives no parts.
    """
    if not weights:
        return []
    whole = sum(weights)
    parts: list[int] = []
    remainders: list[int] = []
    for weight in weights:
        part, remainder = divmod(total * weight, whole)
        parts.append(part)
        remainders.append(remainder)
    leftover = total - sum(parts)
    for index in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:leftover]:
        parts[index] += 1
    return parts


def _plain(value: Fraction) -> str:
    """A short human spelling of an exact sum for a validation message."""
    if value.denominator == 1:
        return str(value.numerator)
    return format(Decimal(value.numerator) / Decimal(value.denominator), "f")
