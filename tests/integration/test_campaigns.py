"""Campaigns on real PostgreSQL: validation, scoping, lifecycle and its events, when a campaign
applies, the order in which the submit path is offered campaigns, and simulations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from engine import campaigns
from engine.campaigns import CampaignSpec
from engine.distribution import Split, Stakeholder, Tier
from engine.errors import InvalidStatusTransition, NotFound, ValidationFailed
from engine.money import Tokens
from engine.pagination import read_page
from engine.pools import create_pool
from engine.scope import Scope
from engine.tables import campaigns as campaigns_table
from engine.tables import outbox_events

T = Tokens.parse
D = Decimal
SPLITS = (Split("DONOR", D(70)), Split("ORGANIZATION", D(20)), Split("REFERRER", D(10)))


def spec(**overrides) -> CampaignSpec:
    return CampaignSpec(**{"name": "Holiday", "splits": SPLITS, **overrides})


async def create(db, scope, **overrides):
    async with db.begin() as conn:
        return await campaigns.create_campaign(conn, scope, spec(**overrides))


async def patch(db, scope, campaign_id, **changes):
    async with db.begin() as conn:
        return await campaigns.patch_campaign(conn, scope, campaign_id, changes)


# -- create, read, validate ---------------------------------------------------------------------------


async def test_create_defaults_to_draft_and_round_trips_exactly(db, make_partner):
    partner = await make_partner()
    row = await create(
        db,
        partner.scope,
        multiplier=D("1.5"),
        base_tokens=T("0.25"),
        tiers=(Tier(D("100"), D("2.000001")), Tier(D("10.5"), D("1.75"))),
        splits=(Split("DONOR", D("33.3333")), Split("REFERRER", D("66.6667"))),
        days_of_week=("FRI", "MON", "MON"),
        timezone="Europe/Paris",
        budget_total=T("1000"),
        budget_per_user=T("10.5"),
        pool_id=partner.pool_id,
    )
    body = campaigns.campaign_json(row)
    assert body["status"] == "DRAFT" and body["priority"] == 0
    assert body["multiplier"] == D("1.5") and body["baseTokens"] == T("0.25")
    assert body["tiers"] == [
        {"minAmount": D(100), "multiplier": D("2.000001")},
        {"minAmount": D("10.5"), "multiplier": D("1.75")},
    ]
    assert body["splits"] == [
        {"stakeholderTypeCode": "DONOR", "percent": D("33.3333")},
        {"stakeholderTypeCode": "REFERRER", "percent": D("66.6667")},
    ]
    assert body["schedule"] == {
        "startsAt": None,
        "endsAt": None,
        "daysOfWeek": ["MON", "FRI"],  # deduplicated, in week order
        "timezone": "Europe/Paris",
    }
    assert body["budget"] == {
        "totalTokens": T("1000"),
        "perUserTokens": T("10.5"),
        "spentTokens": T("0"),
    }
    assert body["poolId"] == partner.pool_id
    # The stored row gives back the same rule.
    rule = campaigns.rule_of(row)
    assert rule.multiplier == D("1.5") and rule.tiers[0].multiplier == D("2.000001")
    async with db.connect() as conn:
        again = await campaigns.get_campaign_row(conn, partner.scope, row["id"])
    assert campaigns.campaign_json(again) == body


async def test_splits_not_adding_to_100_are_field_errors(db, make_partner):
    partner = await make_partner()
    with pytest.raises(ValidationFailed) as caught:
        await create(db, partner.scope, splits=(Split("DONOR", D(70)), Split("ORG", D(20))))
    assert caught.value.code == "VALIDATION_FAILED" and caught.value.status == 422
    assert caught.value.details["fields"]["splits"] == [
        "must add up to exactly 100 (they add up to 90)"
    ]


async def test_every_problem_is_reported_at_once(db, make_partner):
    partner = await make_partner()
    starts = datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(ValidationFailed) as caught:
        await create(
            db,
            partner.scope,
            name="  ",
            status="LIVE",
            multiplier=D("-1"),
            base_tokens=T("-1"),
            tiers=(Tier(D(10), D(2)), Tier(D("10.00"), D(3))),
            splits=(),
            starts_at=starts,
            ends_at=starts,
            days_of_week=("MON", "FUNDAY"),
            timezone="Mars/Olympus",
            budget_total=T("-5"),
            budget_per_user=T("-1"),
            action_types=("PURCHASE", "PURCHASE", ""),
        )
    fields = caught.value.fields
    assert set(fields) == {
        "name",
        "status",
        "multiplier",
        "baseTokens",
        "tiers",
        "splits",
        "schedule.endsAt",
        "schedule.daysOfWeek",
        "schedule.timezone",
        "budget.totalTokens",
        "budget.perUserTokens",
        "actionTypes[1]",
        "actionTypes[2]",
    }
    assert fields["schedule.endsAt"] == ["must be after schedule.startsAt"]


async def test_multiplier_with_more_than_six_decimals_is_refused_not_rounded(db, make_partner):
    partner = await make_partner()
    with pytest.raises(ValidationFailed) as caught:
        await create(db, partner.scope, multiplier=D("1.0000001"))
    assert caught.value.fields == {"multiplier": ["must have at most 6 decimal places"]}


async def test_empty_days_of_week_is_refused(db, make_partner):
    partner = await make_partner()
    with pytest.raises(ValidationFailed) as caught:
        await create(db, partner.scope, days_of_week=())
    assert list(caught.value.fields) == ["schedule.daysOfWeek"]


async def test_pool_of_another_partner_or_environment_is_refused_on_pool_id(db, make_partner):
    mine = await make_partner()
    theirs = await make_partner()
    async with db.begin() as conn:
        my_production_pool = await create_pool(
            conn, Scope(mine.partner_id, "production"), actor="test", name="live"
        )
    for pool_id in (theirs.pool_id, my_production_pool["id"], "0" * 24):
        with pytest.raises(ValidationFailed) as caught:
            await create(db, mine.scope, pool_id=pool_id)
        assert caught.value.fields == {
            "poolId": ["must be a token pool of this partner in this environment"]
        }


async def test_another_partners_or_environments_campaign_is_not_found(db, make_partner):
    mine = await make_partner()
    theirs = await make_partner()
    row = await create(db, mine.scope)
    async with db.connect() as conn:
        for scope in (theirs.scope, Scope(mine.partner_id, "production")):
            with pytest.raises(NotFound):
                await campaigns.get_campaign_row(conn, scope, row["id"])
    with pytest.raises(NotFound):
        await patch(db, theirs.scope, row["id"], name="stolen")


async def test_list_is_newest_first_paginated_and_filtered_by_status(db, make_partner):
    partner = await make_partner()
    ids = [(await create(db, partner.scope, name=f"c{i}"))["id"] for i in range(5)]
    await patch(db, partner.scope, ids[1], status="ACTIVE")
    seen: list[str] = []
    cursor = None
    async with db.connect() as conn:
        while True:
            page = read_page("2", cursor, {"status": None})
            rows, cursor = await campaigns.list_campaigns(conn, partner.scope, page)
            seen += [r["id"] for r in rows]
            if cursor is None:
                break
        active, _ = await campaigns.list_campaigns(
            conn, partner.scope, read_page(None, None, {"status": "ACTIVE"}), status="ACTIVE"
        )
        with pytest.raises(ValidationFailed):
            await campaigns.list_campaigns(
                conn, partner.scope, read_page(None, None, {}), status="LIVE"
            )
    assert seen == list(reversed(ids))
    assert [r["id"] for r in active] == [ids[1]]


# -- patch and lifecycle -----------------------------------------------------------------------------------


async def test_patch_changes_only_what_was_sent_and_revalidates_the_whole(db, make_partner):
    partner = await make_partner()
    row = await create(db, partner.scope, priority=3)
    updated = await patch(db, partner.scope, row["id"], name="Renamed", budget_total=T("50"))
    assert updated["name"] == "Renamed" and updated["priority"] == 3
    assert updated["budget_total"] == T("50").micro
    assert updated["updated_at"] >= row["updated_at"]
    with pytest.raises(ValidationFailed) as caught:
        await patch(db, partner.scope, row["id"], splits=(Split("DONOR", D(99)),))
    assert "splits" in caught.value.fields


async def test_budget_may_not_go_below_what_was_spent(db, make_partner):
    partner = await make_partner()
    row = await create(db, partner.scope, budget_total=T("100"))
    async with db.begin() as conn:
        await conn.execute(
            campaigns_table.update()
            .where(campaigns_table.c.id == row["id"])
            .values(spent_tokens=T("40").micro)
        )
    with pytest.raises(ValidationFailed) as caught:
        await patch(db, partner.scope, row["id"], budget_total=T("39.999999"))
    assert caught.value.fields == {"budget.totalTokens": ["must not be below spentTokens (40)"]}
    assert (await patch(db, partner.scope, row["id"], budget_total=T("40")))["budget_total"]


async def test_status_change_records_its_event_in_the_same_transaction(db, make_partner):
    partner = await make_partner()
    row = await create(db, partner.scope)
    await patch(db, partner.scope, row["id"], status="ACTIVE")
    await patch(db, partner.scope, row["id"], status="ACTIVE")  # no change, no event
    await patch(db, partner.scope, row["id"], name="quiet")  # not a status change
    # A refused patch rolls back: no event either.
    with pytest.raises(ValidationFailed):
        await patch(db, partner.scope, row["id"], status="PAUSED", timezone="Nowhere/Else")
    await patch(db, partner.scope, row["id"], status="PAUSED")
    async with db.connect() as conn:
        events = (
            (
                await conn.execute(
                    select(outbox_events)
                    .where(
                        outbox_events.c.partner_id == partner.partner_id,
                        outbox_events.c.type == "campaign.status_changed",
                    )
                    .order_by(outbox_events.c.created_at, outbox_events.c.id)
                )
            )
            .mappings()
            .all()
        )
    assert [(e["payload"]["previousStatus"], e["payload"]["status"]) for e in events] == [
        ("DRAFT", "ACTIVE"),
        ("ACTIVE", "PAUSED"),
    ]
    assert all(e["environment"] == "sandbox" for e in events)
    assert events[0]["payload"]["id"] == row["id"]
    assert events[0]["payload"]["splits"][0] == {"stakeholderTypeCode": "DONOR", "percent": 70}


@pytest.mark.parametrize(
    ("start", "target", "allowed"),
    [
        ("DRAFT", "ACTIVE", True),
        ("DRAFT", "PAUSED", False),
        ("DRAFT", "ENDED", True),
        ("ACTIVE", "PAUSED", True),
        ("ACTIVE", "DRAFT", False),
        ("PAUSED", "ACTIVE", True),
        ("PAUSED", "ENDED", True),
        ("ENDED", "ACTIVE", False),
        ("ENDED", "DRAFT", False),
    ],
)
async def test_status_lifecycle(db, make_partner, start, target, allowed):
    partner = await make_partner()
    row = await create(db, partner.scope, status=start)  # any status at creation
    if allowed:
        assert (await patch(db, partner.scope, row["id"], status=target))["status"] == target
    else:
        with pytest.raises(InvalidStatusTransition) as caught:
            await patch(db, partner.scope, row["id"], status=target)
        assert caught.value.status == 422
        assert caught.value.details["from"] == start and caught.value.details["to"] == target


# -- when a campaign applies -----------------------------------------------------------------------------


def _row(**overrides):
    base = {
        "status": "ACTIVE",
        "action_types": [],
        "starts_at": None,
        "ends_at": None,
        "days_of_week": None,
        "timezone": "UTC",
    }
    return {**base, **overrides}


def test_applies_schedule_boundaries_start_inclusive_end_exclusive():
    starts = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    ends = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    row = _row(starts_at=starts, ends_at=ends)
    tick = timedelta(microseconds=1)
    assert not campaigns.applies(row, action_type="PURCHASE", at=starts - tick)
    assert campaigns.applies(row, action_type="PURCHASE", at=starts)
    # Any offset names the same instant.
    assert campaigns.applies(
        row, action_type="PURCHASE", at=starts.astimezone(ZoneInfo("America/New_York"))
    )
    assert campaigns.applies(row, action_type="PURCHASE", at=ends - tick)
    assert not campaigns.applies(row, action_type="PURCHASE", at=ends)


def test_applies_only_when_active():
    at = datetime(2026, 11, 20, tzinfo=UTC)
    for status in ("DRAFT", "PAUSED", "ENDED"):
        assert not campaigns.applies(_row(status=status), action_type="PURCHASE", at=at)
    assert campaigns.applies(_row(), action_type="PURCHASE", at=at)


def test_applies_action_type_filter_and_empty_means_every_type():
    at = datetime(2026, 11, 20, tzinfo=UTC)
    assert campaigns.applies(_row(), action_type="ANYTHING", at=at)
    row = _row(action_types=["PURCHASE", "DONATION"])
    assert campaigns.applies(row, action_type="DONATION", at=at)
    assert not campaigns.applies(row, action_type="SIGNUP", at=at)
    assert not campaigns.applies(row, action_type="purchase", at=at)  # codes compare exactly


def test_days_of_week_are_read_in_the_campaigns_time_zone_across_midnight():
    # Friday 2026-11-20 23:30 in Tokyo (UTC+9) is Friday 14:30 UTC; Saturday 00:30 in Tokyo is
    # still Friday 15:30 UTC. A Saturday-only campaign in Tokyo applies to the second only.
    row = _row(days_of_week=["SAT"], timezone="Asia/Tokyo")
    friday_night_tokyo = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
    saturday_early_tokyo = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
    assert not campaigns.applies(row, action_type="X", at=friday_night_tokyo)
    assert campaigns.applies(row, action_type="X", at=saturday_early_tokyo)
    # West of UTC: Saturday 01:00 UTC is still Friday evening in Los Angeles.
    row = _row(days_of_week=["FRI"], timezone="America/Los_Angeles")
    assert campaigns.applies(row, action_type="X", at=datetime(2026, 11, 21, 1, 0, tzinfo=UTC))
    assert not campaigns.applies(row, action_type="X", at=datetime(2026, 11, 21, 8, 0, tzinfo=UTC))
    reasons = campaigns.not_applicable_reasons(
        row, action_type="X", at=datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
    )
    assert reasons == ["SAT in America/Los_Angeles is not one of schedule.daysOfWeek"]


def test_applies_needs_an_aware_time():
    with pytest.raises(ValueError):
        campaigns.applies(_row(), action_type="X", at=datetime(2026, 11, 20))


async def test_applicable_campaigns_by_priority_then_age(db, make_partner):
    partner = await make_partner()
    other = await make_partner()
    now = datetime.now(UTC)
    low = await create(db, partner.scope, name="low", status="ACTIVE", priority=1)
    high_old = await create(db, partner.scope, name="high old", status="ACTIVE", priority=5)
    high_new = await create(db, partner.scope, name="high new", status="ACTIVE", priority=5)
    await create(db, partner.scope, name="draft", priority=9)
    await create(db, partner.scope, name="other type", status="ACTIVE", action_types=("SIGNUP",))
    await create(
        db, partner.scope, name="future", status="ACTIVE", starts_at=now + timedelta(days=1)
    )
    await create(db, partner.scope, name="over", status="ACTIVE", ends_at=now)
    await create(db, other.scope, name="theirs", status="ACTIVE", priority=100)
    # created_at is the transaction's time: make the age order unambiguous.
    async with db.begin() as conn:
        await conn.execute(
            campaigns_table.update()
            .where(campaigns_table.c.id == high_old["id"])
            .values(created_at=high_new["created_at"] - timedelta(seconds=5))
        )
    async with db.connect() as conn:
        found = await campaigns.applicable_campaigns(
            conn, partner.scope, action_type="PURCHASE", at=now
        )
    assert [row["name"] for row in found] == ["high old", "high new", "low"]
    assert found[0]["id"] == high_old["id"] and found[2]["id"] == low["id"]


# -- simulation ---------------------------------------------------------------------------------------


async def test_simulate_the_contracts_worked_example_and_reports_without_refusing(db, make_partner):
    partner = await make_partner()
    row = await create(db, partner.scope, multiplier=D(2), budget_total=T("100"))
    stakeholders = [
        Stakeholder("DONOR", "user_1"),
        Stakeholder("ORGANIZATION", "american-red-cross"),
        Stakeholder("REFERRER", "user_2"),
    ]
    async with db.connect() as conn:
        result = await campaigns.simulate(
            conn,
            partner.scope,
            row["id"],
            action_type="PURCHASE",
            amount=D("33.33"),
            stakeholders=stakeholders,
            at=datetime.now(UTC),
        )
    assert result["tokensTotal"] == T("66.66") and result["tokensDistributed"] == T("66.66")
    assert result["distributions"] == [
        {"stakeholderTypeCode": "DONOR", "partnerUserId": "user_1", "tokens": T("46.662")},
        {
            "stakeholderTypeCode": "ORGANIZATION",
            "organizationSlug": "american-red-cross",
            "tokens": T("13.332"),
        },
        {"stakeholderTypeCode": "REFERRER", "partnerUserId": "user_2", "tokens": T("6.666")},
    ]
    assert result["applies"] is False  # a DRAFT: reported, not refused
    assert result["notApplicableReasons"] == ["the campaign is DRAFT, not ACTIVE"]
    assert result["budget"]["covered"] is True and result["budget"]["remainingTokens"] == T("100")

    await patch(db, partner.scope, row["id"], status="ACTIVE", budget_total=T("60"))
    async with db.connect() as conn:
        result = await campaigns.simulate(
            conn,
            partner.scope,
            row["id"],
            action_type="PURCHASE",
            amount=D("33.33"),
            stakeholders=stakeholders,
            at=datetime.now(UTC),
        )
    assert result["applies"] is True and result["notApplicableReasons"] == []
    assert result["budget"] == {
        "covered": False,
        "exceededScope": "campaign",
        "remainingTokens": T("60"),
        "usersOverLimit": [],
    }


async def test_simulate_per_user_budget_counts_what_the_user_already_received(db, make_partner):
    from engine.tables import campaign_user_spend, partner_users

    partner = await make_partner()
    row = await create(
        db,
        partner.scope,
        splits=(Split("CUSTOMER", D(100)),),
        budget_per_user=T("10"),
    )
    async with db.begin() as conn:
        await conn.execute(
            partner_users.insert().values(
                id="a" * 24,
                partner_id=partner.partner_id,
                environment="sandbox",
                external_user_id="user_42",
            )
        )
        await conn.execute(
            campaign_user_spend.insert().values(
                campaign_id=row["id"], partner_user_id="a" * 24, spent_tokens=T("8").micro
            )
        )
    async with db.connect() as conn:
        ok = await campaigns.simulate(
            conn,
            partner.scope,
            row["id"],
            action_type="PURCHASE",
            amount=D(2),
            stakeholders=[Stakeholder("CUSTOMER", "user_42")],
            at=datetime.now(UTC),
        )
        over = await campaigns.simulate(
            conn,
            partner.scope,
            row["id"],
            action_type="PURCHASE",
            amount=D("2.000001"),
            stakeholders=[Stakeholder("CUSTOMER", "user_42")],
            at=datetime.now(UTC),
        )
        newcomer = await campaigns.simulate(
            conn,
            partner.scope,
            row["id"],
            action_type="PURCHASE",
            amount=D(10),
            stakeholders=[Stakeholder("CUSTOMER", "someone_new")],
            at=datetime.now(UTC),
        )
    assert ok["budget"]["covered"] is True
    assert over["budget"]["exceededScope"] == "user"
    assert over["budget"]["usersOverLimit"] == ["user_42"]
    assert newcomer["budget"]["covered"] is True
