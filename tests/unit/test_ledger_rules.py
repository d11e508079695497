"""The balance rule, checked before anything reaches the database."""

from __future__ import annotations

import pytest

from engine.errors import LedgerImbalance
from engine.ledger import EntryDraft, Leg, assert_balanced, lot_dates
from engine.money import Tokens


def test_balanced_entry_passes():
    assert_balanced(
        EntryDraft(
            "ALLOCATION", (Leg(1, Tokens(-5), "ALLOCATION"), Leg(2, Tokens(5), "ALLOCATION"))
        )
    )


def test_unbalanced_entry_is_refused_with_the_difference():
    draft = EntryDraft(
        "ALLOCATION", (Leg(1, Tokens(-5), "ALLOCATION"), Leg(2, Tokens(6), "ALLOCATION"))
    )
    with pytest.raises(LedgerImbalance, match="off by 0.000001"):
        assert_balanced(draft)


def test_single_leg_entry_is_refused():
    with pytest.raises(LedgerImbalance):
        assert_balanced(EntryDraft("ALLOCATION", (Leg(1, Tokens(5), "ALLOCATION"),)))


def test_zero_and_unknown_legs_are_refused():
    with pytest.raises(ValueError):
        Leg(1, Tokens(0), "CREDIT")
    with pytest.raises(ValueError):
        Leg(1, Tokens(1), "GIFT")
    with pytest.raises(ValueError):
        EntryDraft("MINTING", ())


def test_lot_dates_follow_pool_restrictions():
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert lot_dates(now, None, None) == (None, None)
    assert lot_dates(now, 7, 30) == (now + timedelta(days=7), now + timedelta(days=30))
    assert lot_dates(now, 0, 30) == (None, now + timedelta(days=30))
