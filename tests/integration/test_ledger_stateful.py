"""Issue 4, proof 2: a hypothesis state machine drives the real engine on real PostgreSQL.

Each example is a fresh partner with one pool (vesting, expiration, funding and an optional
campaign drawn by hypothesis). Rules grant (submit with 1-3 stakeholders, amounts with up to 6
decimals), replay a submit with the same key (same body: 409 IDEMPOTENT with the same actionId;
another body: IDEMPOTENCY_KEY_REUSED), retry a refused key, submit what the pool cannot cover
(INSUFFICIENT_POOL, nothing applied), reverse fully, partially and beyond what remains
(REVERSAL_EXCEEDS_ACTION / ALREADY_REVERSED), replay reversals, top the pool up, and spend from
a wallet through real voucher orders (`engine.orders`: delivered from stock, or failed at the
sandbox vendor and refunded to the same lots), so reversals can leave debts; distribute through
`/actions/batch`'s worker path; and move a clock: vesting and expiry sweeps at `now + offset`
and auto-refill from the partner's reserve (at most `maxPerDay` per UTC day of that clock).

A plain Python model predicts every answer (distribution shares by the contract's rules, tokens
reversed by floor6) and keeps the pool, the reserve, every wallet's available and locked
balances, every lot's remaining tokens, the sinks and the campaign's spend. After every step
the invariants prove: `verify_ledger` for the partner is ok (entries sum to zero, caches equal
postings, lots agree); the pool is never negative and equals the model; every idempotency key
has exactly one action row; tokens minted (minus the issuance account) equal the pool plus the
reserve plus every wallet (debts included) plus the sinks; each wallet, each lot, each sink and
the campaign's spentTokens equal the model.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine import catalog, orders, vendors, vouchers
from engine.action_request import ActionRequest, StakeholderRequest
from engine.batches import create_batch, get_batch, process_batch
from engine.campaigns import CampaignSpec, create_campaign
from engine.catalog import Denomination
from engine.crypto import SecretBox
from engine.db import create_engine
from engine.distribution import Split
from engine.errors import (
    AlreadyReversed,
    IdempotencyKeyReused,
    Idempotent,
    InsufficientPool,
    ReversalExceedsAction,
)
from engine.ids import new_id
from engine.money import Tokens
from engine.partners import create_partner
from engine.pools import allocate, create_pool, fund_reserve
from engine.reversals import ReversalRequest, reverse_action
from engine.scope import Scope
from engine.submit import submit_action
from engine.sweeps import expire_due, refill_pools, utc_day, vest_due
from engine.tables import organizations
from engine.verify import verify_ledger
from engine.vouchers import VoucherCode
from engine.wire import dumps, loads

MICRO = 10**6
USERS = ("ua", "ub", "uc")
ORG = "ORGANIZATION"
SPLITS = (("CUSTOMER", 60), ("REFERRER", 25), (ORG, 15))

micro_amounts = st.integers(min_value=1, max_value=50 * MICRO)  # 0.000001 .. 50 (6 decimals)
holders = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(("CUSTOMER", "REFERRER")), st.sampled_from(USERS)),
        st.just((ORG, "")),
    ),
    min_size=1,
    max_size=3,
)
fractions = st.integers(min_value=1, max_value=MICRO)  # a part of something, in millionths
picks = st.integers(min_value=0, max_value=10**6)  # an index into a model list, modulo its size


def as_micro(value: Any) -> int:
    """A token figure from an engine answer (Tokens) or a stored one (JSONB number)."""
    return value.micro if isinstance(value, Tokens) else Tokens.parse(Decimal(str(value))).micro


def dec(micro: int) -> Decimal:
    return Decimal(micro).scaleb(-6)


def equal_parts(total: int, n: int) -> list[int]:
    """Equal shares, leftover micro-tokens to the first positions (contract step 4)."""
    q, r = divmod(total, n)
    return [q + 1] * r + [q] * (n - r)


def weighted_parts(total: int, weights: list[int]) -> list[int]:
    """Largest remainder by integer weights, ties to the earlier position (contract step 2)."""
    whole = sum(weights)
    parts = [total * w // whole for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


DAY = timedelta(days=1)
VESTING_DAYS = 7
EXPIRATION_DAYS = 30


@dataclass
class Lot:
    """A credit's lot as the model knows it (keyed in the database by its posting id)."""

    owner: str
    remaining: int
    vested: bool  # in the available account (credited there, or moved by the vesting sweep)


@dataclass
class Grant:
    """An applied action as the model knows it."""

    request: ActionRequest
    response: dict[str, Any]
    amount_micro: int  # the action's amount, in millionths of a currency unit
    distributed: int
    holders: list[tuple[str, str, int]]  # (transactionId, owner, received) of credited shares
    reversed_by: dict[str, int] = field(default_factory=dict)  # transactionId -> reversed
    reversed_amount: int = 0  # sum of partial reversal amounts, in millionths

    @property
    def reversed(self) -> int:
        return sum(self.reversed_by.values())

    @property
    def remaining(self) -> int:
        return self.distributed - self.reversed


def owner_of(stakeholder_type: str, identity: str, org_slug: str) -> str:
    return f"org:{org_slug}" if stakeholder_type == ORG else f"user:{identity}"


class LedgerMachine(RuleBasedStateMachine):
    database_url: str = ""  # set by the test before the machine runs
    box: SecretBox | None = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.engine: AsyncEngine = self.run(self._engine())
        self.scope: Scope | None = None
        self.pool_id = ""
        self.org_slug = ""
        self.vesting = False
        self.expiring = False
        self.campaign: dict[str, Any] | None = None
        self.multiplier = Decimal(1)
        self.refill: dict[str, int] = {}
        # the model
        self.pool = 0
        self.reserve = 0
        self.minted = 0
        self.redeemed = 0  # SINK_REDEEMED
        self.expired = 0  # SINK_EXPIRED
        self.campaign_spent = 0
        self.available: dict[str, int] = {}  # owner -> available balance (negative: debt)
        self.locked: dict[str, int] = {}  # owner -> unvested tokens
        self.lots: dict[str, Lot] = {}  # posting id -> lot, in credit order
        self.grants: list[Grant] = []
        self.refused: list[ActionRequest] = []  # refused for the pool: their keys stay unused
        self.reversals: list[tuple[str, ReversalRequest, dict[str, Any]]] = []
        self.keys = 0
        self.offset = timedelta(0)  # how far the sweeps' clock runs ahead of the real one
        self.ticks = 0  # a second more per refill sweep: the engine refills once per `now`
        self.refills_per_day: dict[datetime, int] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _engine(self) -> AsyncEngine:
        return create_engine(self.database_url, pool_size=2, max_overflow=0)

    def teardown(self) -> None:
        try:
            self.run(self.engine.dispose())
        finally:
            self.loop.close()

    def wallet(self, owner: str) -> int:
        return self.available.get(owner, 0) + self.locked.get(owner, 0)

    # -- setup ------------------------------------------------------------------------------

    @initialize(
        funding=st.integers(min_value=1, max_value=300).map(lambda n: n * MICRO),
        restrictions=st.sampled_from(
            [
                (None, None),
                (VESTING_DAYS, None),
                (None, EXPIRATION_DAYS),
                (VESTING_DAYS, EXPIRATION_DAYS),
            ]
        ),
        multiplier=st.sampled_from([None, Decimal(1), Decimal("1.5"), Decimal("0.333333")]),
        refill=st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    "reserve": st.integers(min_value=1, max_value=200).map(lambda n: n * MICRO),
                    "threshold": st.integers(min_value=1, max_value=100).map(lambda n: n * MICRO),
                    "amount": st.integers(min_value=1, max_value=80).map(lambda n: n * MICRO),
                    "max_per_day": st.integers(min_value=1, max_value=2),
                }
            ),
        ),
        seed=st.lists(st.tuples(holders, micro_amounts), min_size=1, max_size=4),
    )
    def start(
        self,
        funding: int,
        restrictions: tuple[int | None, int | None],
        multiplier: Decimal | None,
        refill: dict[str, int] | None,
        seed: list[tuple[list[tuple[str, str]], int]],
    ) -> None:
        vesting_days, expiration_days = restrictions
        self.vesting = vesting_days is not None
        self.expiring = expiration_days is not None
        self.refill = refill or {}
        self.run(self._start(funding, vesting_days, expiration_days, multiplier))
        self.pool = funding
        self.reserve = self.refill.get("reserve", 0)
        self.minted = funding + self.reserve
        # A few actions from the start, so every example has something to replay and reverse
        for stakeholders, amount in seed:
            self.submit_expecting_model(self.request(stakeholders, amount))

    async def _start(
        self,
        funding: int,
        vesting_days: int | None,
        expiration_days: int | None,
        multiplier: Decimal | None,
    ) -> None:
        async with self.engine.begin() as conn:
            partner = await create_partner(
                conn,
                actor="test",
                name=f"Stateful {secrets.token_hex(4)}",
                status="ACTIVE",
                action_types=("PURCHASE",),
                stakeholder_types=("CUSTOMER", "REFERRER", ORG),
            )
            self.scope = Scope(partner["id"], "sandbox")
            auto_refill = None
            if self.refill:
                auto_refill = {
                    "enabled": True,
                    "thresholdMicro": self.refill["threshold"],
                    "amountMicro": self.refill["amount"],
                    "maxPerDay": self.refill["max_per_day"],
                }
                await fund_reserve(
                    conn, self.scope, actor="test", amount=Tokens(self.refill["reserve"])
                )
            pool = await create_pool(
                conn,
                self.scope,
                actor="test",
                name="main",
                vesting_days=vesting_days,
                expiration_days=expiration_days,
                auto_refill=auto_refill,
            )
            self.pool_id = pool["id"]
            await allocate(
                conn, self.scope, actor="test", pool_id=self.pool_id, amount=Tokens(funding)
            )
            self.org_slug = f"org-{secrets.token_hex(5)}"
            await conn.execute(
                organizations.insert().values(id=new_id(), slug=self.org_slug, name="Org")
            )
            if multiplier is not None:
                self.multiplier = multiplier
                self.campaign = await create_campaign(
                    conn,
                    self.scope,
                    CampaignSpec(
                        name="Everything",
                        status="ACTIVE",
                        multiplier=multiplier,
                        splits=tuple(Split(t, Decimal(p)) for t, p in SPLITS),
                    ),
                )

    # -- the model's predictions --------------------------------------------------------------

    def predict(self, amount_micro: int, stakeholders: list[tuple[str, str]]) -> list[int]:
        """Each stakeholder position's share (contract section 7, steps 1-5)."""
        if self.campaign is None:
            return equal_parts(amount_micro, len(stakeholders))
        num, den = self.multiplier.as_integer_ratio()
        total = amount_micro * num // den  # floor6(amount x m), in micro-tokens
        shares = [0] * len(stakeholders)
        for (kind, _), part in zip(
            SPLITS, weighted_parts(total, [p for _, p in SPLITS]), strict=True
        ):
            members = [i for i, (t, _) in enumerate(stakeholders) if t == kind]
            for i, share in zip(
                members, equal_parts(part, len(members)) if members else [], strict=True
            ):
                shares[i] = share
        return shares

    def request(
        self,
        stakeholders: list[tuple[str, str]],
        amount_micro: int,
        key: str | None = None,
        **kw: Any,
    ) -> ActionRequest:
        if key is None:
            self.keys += 1
            key = f"k{self.keys}"
        return ActionRequest(
            idempotency_key=key,
            action_type="PURCHASE",
            amount=kw.pop("amount", dec(amount_micro)),
            stakeholders=tuple(
                StakeholderRequest(t, organization_slug=self.org_slug)
                if t == ORG
                else StakeholderRequest(t, partner_user_id=u)
                for t, u in stakeholders
            ),
            currency="USD",
            **kw,
        )

    def credit(self, owner: str, posting_id: str, share: int) -> None:
        """A distribution's credit: a lot (locked while the pool vests); on the available
        account, the part that repays a debt opens nothing."""
        if self.vesting:
            self.locked[owner] = self.locked.get(owner, 0) + share
            self.lots[posting_id] = Lot(owner, share, vested=False)
            return
        debt = max(0, -self.available.get(owner, 0))
        self.available[owner] = self.available.get(owner, 0) + share
        self.lots[posting_id] = Lot(owner, share - min(share, debt), vested=True)

    def apply(self, request: ActionRequest, response: dict[str, Any]) -> None:
        """Check an applied action's answer against the model, then book it."""
        amount_micro = int(request.amount.scaleb(6))
        stakeholders = [(s.stakeholder_type, s.partner_user_id or "") for s in request.stakeholders]
        shares = self.predict(amount_micro, stakeholders)
        need = sum(shares)
        credited = [
            (t, u, share) for (t, u), share in zip(stakeholders, shares, strict=True) if share > 0
        ]
        got = [
            (d["stakeholderTypeCode"], d.get("partnerUserId", ""), as_micro(d["tokens"]))
            for d in response["distributions"]
        ]
        assert got == credited
        assert as_micro(response["tokensDistributed"]) == need
        assert all((d["vestsAt"] is not None) == self.vesting for d in response["distributions"])
        grant = Grant(
            request,
            response,
            amount_micro,
            need,
            [
                (d["transactionId"], owner_of(t, u, self.org_slug), share)
                for d, (t, u, share) in zip(response["distributions"], credited, strict=True)
            ],
        )
        self.grants.append(grant)
        self.pool -= need
        if self.campaign is not None:
            self.campaign_spent += need
        for transaction_id, owner, share in grant.holders:
            self.credit(owner, transaction_id, share)
        self.refused = [r for r in self.refused if r != request]

    def need(self, request: ActionRequest) -> int:
        stakeholders = [(s.stakeholder_type, s.partner_user_id or "") for s in request.stakeholders]
        return sum(self.predict(int(request.amount.scaleb(6)), stakeholders))

    def submit_expecting_model(self, request: ActionRequest) -> None:
        """Submit; the model decides whether it must apply or be refused for the pool."""
        assert self.scope is not None
        if self.need(request) > self.pool:
            with pytest.raises(InsufficientPool):
                self.run(submit_action(self.engine, self.scope, request))
            if request not in self.refused:
                self.refused.append(request)
            return
        self.apply(request, self.run(submit_action(self.engine, self.scope, request)))

    # -- rules: submits -------------------------------------------------------------------------

    @rule(stakeholders=holders, amount=micro_amounts)
    def grant(self, stakeholders: list[tuple[str, str]], amount: int) -> None:
        # Given a fresh key / When submitted / Then applied as predicted, or refused for the pool
        self.submit_expecting_model(self.request(stakeholders, amount))

    @rule(items=st.lists(st.tuples(holders, micro_amounts), min_size=1, max_size=5))
    def batch(self, items: list[tuple[list[tuple[str, str]], int]]) -> None:
        # Given actions the pool covers together (the order of a chunk is the engine's to pick)
        requests = []
        left = self.pool
        for stakeholders, amount in items:
            request = self.request(stakeholders, amount)
            if self.need(request) <= left:
                left -= self.need(request)
                requests.append(request)

        # When stored as a batch and run by the workers' code path
        async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            assert self.scope is not None
            async with self.engine.begin() as conn:
                batch = await create_batch(conn, self.scope, requests)
            await process_batch(self.engine, batch["id"])
            async with self.engine.connect() as conn:
                view = await get_batch(conn, self.scope, batch["id"])
                answers = []
                for result in view["results"]:
                    row = await conn.execute(
                        text("SELECT response FROM actions WHERE id = :id"),
                        {"id": result.get("actionId")},
                    )
                    answers.append(row.scalar_one())
            return view, answers

        view, answers = self.run(go())
        # Then every item applied exactly as a submit would have
        assert view["status"] == "COMPLETED" and view["succeeded"] == len(requests)
        by_key = {a["idempotencyKey"]: a for a in answers}
        for request in requests:
            self.apply(request, by_key[request.idempotency_key])

    @rule(stakeholders=holders, extra=st.integers(min_value=1, max_value=100 * MICRO))
    def grant_beyond_the_pool(self, stakeholders: list[tuple[str, str]], extra: int) -> None:
        # Given an amount whose tokens pass the pool by `extra` (with every split type present,
        # so nothing stays undistributed)
        stakeholders = [*stakeholders, ("CUSTOMER", USERS[0]), ("REFERRER", USERS[1]), (ORG, "")]
        num, den = self.multiplier.as_integer_ratio()
        amount = -(-(self.pool + extra) * den // num)  # ceil: floor6(amount x m) >= pool + extra
        assert sum(self.predict(amount, stakeholders)) > self.pool
        before = len(self.grants)
        # When / Then: 402 and nothing applied (the invariants check the ledger is untouched)
        self.submit_expecting_model(self.request(stakeholders, amount))
        assert len(self.grants) == before

    @precondition(lambda self: self.refused)
    @rule(pick=picks)
    def retry_refused_key(self, pick: int) -> None:
        # A refused attempt leaves its key unused: the same request may apply later
        self.submit_expecting_model(self.refused[pick % len(self.refused)])

    @precondition(lambda self: self.grants)
    @rule(pick=picks)
    def replay_same_body(self, pick: int) -> None:
        grant = self.grants[pick % len(self.grants)]
        original = grant.request
        # Given the same key and the same body (amount spelled with a trailing zero)
        again = self.request(
            [(s.stakeholder_type, s.partner_user_id or "") for s in original.stakeholders],
            grant.amount_micro,
            key=original.idempotency_key,
            amount=Decimal(format(original.amount, "f") + "0"),
        )
        assert again.fingerprint == original.fingerprint
        # When / Then: 409 with the original answer, nothing applied again
        with pytest.raises(Idempotent) as replay:
            self.run(submit_action(self.engine, self.scope, again))
        assert replay.value.details["original"] == loads(dumps(grant.response))
        assert replay.value.details["original"]["actionId"] == grant.response["actionId"]

    @precondition(lambda self: self.grants)
    @rule(pick=picks, stakeholders=holders, amount=micro_amounts)
    def replay_other_body(
        self, pick: int, stakeholders: list[tuple[str, str]], amount: int
    ) -> None:
        grant = self.grants[pick % len(self.grants)]
        # Given the same key with another body (metadata always differs; the rest may too)
        other = self.request(
            stakeholders, amount, key=grant.request.idempotency_key, metadata={"edited": "yes"}
        )
        # When / Then: refused, nothing applied
        with pytest.raises(IdempotencyKeyReused):
            self.run(submit_action(self.engine, self.scope, other))

    @rule(amount=st.integers(min_value=1, max_value=200 * MICRO))
    def top_up(self, amount: int) -> None:
        async def go() -> None:
            async with self.engine.begin() as conn:
                await allocate(
                    conn, self.scope, actor="test", pool_id=self.pool_id, amount=Tokens(amount)
                )

        self.run(go())
        self.pool += amount
        self.minted += amount

    # -- rules: reversals -----------------------------------------------------------------------

    def take_available(self, owner: str, amount: int) -> list[tuple[str, int]]:
        """Take up to `amount` from the owner's available lots, earliest-expiring first (every
        lot of the example expires the same number of days after its credit: credit order)."""
        takes = []
        for posting_id, lot in self.lots.items():
            if amount == 0:
                break
            if lot.owner == owner and lot.vested and lot.remaining:
                take = min(lot.remaining, amount)
                lot.remaining -= take
                amount -= take
                takes.append((posting_id, take))
        return takes

    def reverse(self, grant: Grant, amount: int | None) -> None:
        """Reverse `amount` (millionths of currency; None: everything left) as the model predicts."""
        assert self.scope is not None
        self.keys += 1
        request = ReversalRequest(
            f"r{self.keys}", reason="stateful", amount=None if amount is None else dec(amount)
        )
        action_id = grant.response["actionId"]
        if grant.remaining <= 0:
            with pytest.raises(AlreadyReversed):
                self.run(reverse_action(self.engine, self.scope, action_id, request))
            return
        if amount is not None and grant.reversed_amount + amount > grant.amount_micro:
            with pytest.raises(ReversalExceedsAction):
                self.run(reverse_action(self.engine, self.scope, action_id, request))
            return
        if amount is None or grant.reversed_amount + amount == grant.amount_micro:
            tokens = grant.remaining  # the reversal that completes the action takes the rest
        else:
            tokens = min(grant.distributed * amount // grant.amount_micro, grant.remaining)
        response = self.run(reverse_action(self.engine, self.scope, action_id, request))
        assert response["tokensReversed"].micro == tokens
        assert response["status"] == (
            "REVERSED" if grant.reversed + tokens == grant.distributed else "PARTIALLY_REVERSED"
        )
        # Shares: in proportion to what each holder still has of the action (largest remainder),
        # never more than that.
        parts = {d["transactionId"]: d["tokensReversed"].micro for d in response["distributions"]}
        assert sum(parts.values()) == tokens
        still = {
            tid: received - grant.reversed_by.get(tid, 0) for tid, _, received in grant.holders
        }
        whole = sum(still.values())
        for tid, part in parts.items():
            assert 0 < part <= still[tid]
            assert tokens * still[tid] // whole <= part <= -(-tokens * still[tid] // whole)
        for tid, owner, _ in grant.holders:
            part = parts.get(tid, 0)
            grant.reversed_by[tid] = grant.reversed_by.get(tid, 0) + part
            if not part:
                continue
            # From the action's own lot first (locked before available), then other available
            # lots; what they cannot cover becomes debt.
            own = self.lots[tid]
            from_own = min(own.remaining, part)
            own.remaining -= from_own
            if own.vested:
                self.available[owner] -= from_own
            else:
                self.locked[owner] -= from_own
            self.take_available(owner, part - from_own)
            self.available[owner] = self.available.get(owner, 0) - (part - from_own)
        if amount is not None:
            grant.reversed_amount += amount
        self.pool += tokens
        if self.campaign is not None:
            self.campaign_spent -= tokens
        self.reversals.append((action_id, request, response))

    @precondition(lambda self: self.grants)
    @rule(pick=picks)
    def reverse_fully(self, pick: int) -> None:
        self.reverse(self.grants[pick % len(self.grants)], None)

    @precondition(lambda self: self.grants)
    @rule(pick=picks, part=fractions)
    def reverse_partly(self, pick: int, part: int) -> None:
        grant = self.grants[pick % len(self.grants)]
        left = grant.amount_micro - grant.reversed_amount
        self.reverse(grant, max(1, left * part // MICRO))

    @precondition(lambda self: self.grants)
    @rule(pick=picks, extra=st.integers(min_value=1, max_value=10 * MICRO))
    def reverse_beyond(self, pick: int, extra: int) -> None:
        grant = self.grants[pick % len(self.grants)]
        self.reverse(grant, grant.amount_micro - grant.reversed_amount + extra)

    @precondition(lambda self: self.reversals)
    @rule(pick=picks, same=st.booleans())
    def replay_reversal(self, pick: int, same: bool) -> None:
        action_id, request, response = self.reversals[pick % len(self.reversals)]
        if same:
            with pytest.raises(Idempotent) as replay:
                self.run(reverse_action(self.engine, self.scope, action_id, request))
            assert replay.value.details["original"] == loads(dumps(response))
        else:
            other = ReversalRequest(request.idempotency_key, reason="another reason")
            with pytest.raises(IdempotencyKeyReused):
                self.run(reverse_action(self.engine, self.scope, action_id, other))

    # -- rules: spending through real voucher orders (so reversals can leave debts) ---------------

    def _order(self, owner: str, amount: int, *, delivered: bool) -> None:
        """A voucher order priced `amount` for the user: from stock (DELIVERED), or with no stock
        and a failing sandbox vendor (FAILED, refunded to the very lots that paid)."""

        async def go() -> dict[str, Any]:
            assert self.scope is not None and self.box is not None
            async with self.engine.begin() as conn:
                product = await catalog.create_product(
                    conn,
                    actor="test",
                    fields={
                        "name": "Stateful card",
                        "category": "test",
                        "country": "US",
                        "currency": "USD",
                        "delivery_type": "code",
                        "denominations": [Denomination(Decimal(1), Tokens(amount))],
                    },
                )
                if delivered:
                    await vouchers.load_inventory(
                        conn,
                        self.box,
                        actor="test",
                        product_id=product["id"],
                        environment="sandbox",
                        codes=[VoucherCode(Decimal(1), secrets.token_hex(8))],
                    )
                else:
                    await vendors.configure_sandbox(conn, actor="test", changes={"mode": "fail"})
            order, _ = await orders.place_order(
                self.engine,
                self.scope,
                external_user_id=owner.removeprefix("user:"),
                idempotency_key=secrets.token_hex(8),
                product_id=product["id"],
                face_value=Decimal(1),
                quantity=1,
            )
            if order["status"] == "PENDING":
                registry = vendors.Vendors(self.engine, self.box)
                await orders.process_order(self.engine, self.box, registry, order["id"])
                async with self.engine.connect() as conn:
                    order = await orders.get_order(conn, self.scope, order["id"])
            return order

        order = self.run(go())
        assert order["status"] == ("DELIVERED" if delivered else "FAILED")
        assert order["tokensDebited"].micro == amount
        takes = self.take_available(owner, amount)
        assert sum(t for _, t in takes) == amount, "open lots must cover a positive balance"
        if delivered:
            self.available[owner] -= amount
            self.redeemed += amount
        else:  # refunded into the same lots (the balance was not in debt in between)
            assert order["tokensRefunded"].micro == amount
            for posting_id, take in takes:
                self.lots[posting_id].remaining += take

    def _spendable(self) -> list[str]:
        return sorted(o for o, v in self.available.items() if o.startswith("user:") and v > 0)

    @precondition(lambda self: self._spendable())
    @rule(pick=picks, part=fractions, delivered=st.booleans())
    def spend(self, pick: int, part: int, delivered: bool) -> None:
        owners = self._spendable()
        owner = owners[pick % len(owners)]
        self._order(owner, max(1, self.available[owner] * part // MICRO), delivered=delivered)

    @precondition(lambda self: self.grants)
    @rule(pick=picks, part=fractions)
    def spend_then_reverse(self, pick: int, part: int) -> None:
        # Given a user who spent (part of) what they hold
        grant = self.grants[pick % len(self.grants)]
        users = [
            o for _, o, _ in grant.holders if o.startswith("user:") and self.available.get(o, 0) > 0
        ]
        if users:
            owner = users[0]
            self._order(owner, max(1, self.available[owner] * part // MICRO), delivered=True)
        # When the action is reversed / Then what the wallet cannot give back becomes a debt
        self.reverse(grant, None)

    # -- rules: the clock ----------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    @rule(days=st.integers(min_value=1, max_value=40))
    def advance_clock(self, days: int) -> None:
        self.offset += days * DAY

    def sweep(self, sweep: Any, now: datetime) -> None:
        async def go() -> None:
            while True:
                async with self.engine.begin() as conn:
                    if not await sweep(conn, now, 10_000):
                        return

        self.run(go())

    @rule()
    def vest(self) -> None:
        # When the vesting sweep runs at now + offset / Then every lot whose date has come moves
        # to the available account, a debt repaid first from it
        self.sweep(vest_due, self.now())
        if not self.vesting or self.offset < VESTING_DAYS * DAY:
            return
        for lot in self.lots.values():
            if lot.vested or not lot.remaining:
                continue
            owner = lot.owner
            self.locked[owner] -= lot.remaining
            debt = max(0, -self.available.get(owner, 0))
            self.available[owner] = self.available.get(owner, 0) + lot.remaining
            lot.remaining -= min(lot.remaining, debt)
            lot.vested = True

    @rule()
    def expire(self) -> None:
        # When the expiry sweep runs / Then every open lot past its date empties into the sink
        self.sweep(expire_due, self.now())
        if not self.expiring or self.offset < EXPIRATION_DAYS * DAY:
            return
        for lot in self.lots.values():
            if not lot.remaining:
                continue
            if lot.vested:
                self.available[lot.owner] -= lot.remaining
            else:
                self.locked[lot.owner] -= lot.remaining
            self.expired += lot.remaining
            lot.remaining = 0

    @rule()
    def refill(self) -> None:
        # When the auto-refill sweep runs / Then a pool below its threshold draws min(amount,
        # reserve) from the reserve, at most maxPerDay times per UTC day of the sweep's clock
        self.ticks += 1
        now = self.now() + timedelta(seconds=self.ticks)
        self.sweep(refill_pools, now)
        if not self.refill or self.pool >= self.refill["threshold"] or not self.reserve:
            return
        day = utc_day(now)
        if self.refills_per_day.get(day, 0) >= self.refill["max_per_day"]:
            return
        self.refills_per_day[day] = self.refills_per_day.get(day, 0) + 1
        moved = min(self.refill["amount"], self.reserve)
        self.reserve -= moved
        self.pool += moved

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def ledger_is_whole_and_matches_the_model(self) -> None:
        if self.scope is None:
            return
        self.run(self._check())

    async def _check(self) -> None:
        assert self.scope is not None
        params = {**self.scope.params, "pool": self.pool_id}
        async with self.engine.connect() as conn:
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            report = await verify_ledger(conn, self.scope)
            assert report.ok, report.render()

            pool = (
                await conn.execute(
                    text("SELECT balance FROM ledger_accounts WHERE pool_id = :pool"), params
                )
            ).scalar_one()
            assert 0 <= pool == self.pool

            keys = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT idempotency_key, count(*) FROM actions WHERE partner_id = :partner_id "
                            "AND environment = :environment GROUP BY idempotency_key"
                        ),
                        params,
                    )
                ).all()
            )
            assert keys == {g.request.idempotency_key: 1 for g in self.grants}

            rows = (
                await conn.execute(
                    text(
                        "SELECT a.kind, a.balance, u.external_user_id, o.slug FROM ledger_accounts a "
                        "LEFT JOIN partner_users u ON u.id = a.partner_user_id "
                        "LEFT JOIN organizations o ON o.id = a.organization_id "
                        "WHERE a.partner_id = :partner_id AND a.environment = :environment "
                        "AND a.kind <> 'POOL'"
                    ),
                    params,
                )
            ).all()
            lots = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT posting_id, remaining FROM lots WHERE partner_id = :partner_id "
                            "AND environment = :environment"
                        ),
                        params,
                    )
                ).all()
            )
            spent = None
            if self.campaign is not None:
                spent = (
                    await conn.execute(
                        text("SELECT spent_tokens FROM campaigns WHERE id = :id"),
                        {"id": self.campaign["id"]},
                    )
                ).scalar_one()
            await conn.rollback()

        available: dict[str, int] = {}
        locked: dict[str, int] = {}
        singles: dict[str, int] = {}
        for kind, balance, external, slug in rows:
            owner = f"org:{slug}" if slug else f"user:{external}"
            if kind == "WALLET_AVAILABLE":
                available[owner] = int(balance)
            elif kind == "WALLET_LOCKED":
                assert int(balance) >= 0
                locked[owner] = int(balance)
            else:
                singles[kind] = int(balance)
        wallets = sum(available.values()) + sum(locked.values())
        sinks = singles.get("SINK_REDEEMED", 0) + singles.get("SINK_EXPIRED", 0)
        reserve = singles.get("RESERVE", 0)
        assert -singles["ISSUANCE"] == self.minted == pool + reserve + wallets + sinks
        assert reserve == self.reserve
        assert singles.get("SINK_REDEEMED", 0) == self.redeemed
        assert singles.get("SINK_EXPIRED", 0) == self.expired
        assert {o: v for o, v in available.items() if v} == {
            o: v for o, v in self.available.items() if v
        }
        assert {o: v for o, v in locked.items() if v} == {o: v for o, v in self.locked.items() if v}
        assert {p: int(r) for p, r in lots.items()} == {
            p: lot.remaining for p, lot in self.lots.items()
        }
        if spent is not None:
            assert int(spent) == self.campaign_spent


def test_ledger_state_machine(settings: Any, box: SecretBox) -> None:
    # Given the session's migrated database (each example makes its own partner and pool)
    LedgerMachine.database_url = settings.database_url
    LedgerMachine.box = box
    # When hypothesis drives the machine / Then every rule's answer and every invariant hold
    run_state_machine_as_test(
        LedgerMachine,
        settings=hypothesis_settings(
            max_examples=25,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
