"""Issue 4, proof 2: a hypothesis state machine drives the real engine on real PostgreSQL.

Each example is a fresh partner with one pool (vesting, expiration, funding and an optional
campaign drawn by hypothesis). Rules grant (submit with 1-3 stakeholders, amounts with up to 6
decimals), replay a submit with the same key (same body: 409 IDEMPOTENT with the same actionId;
another body: IDEMPOTENCY_KEY_REUSED), retry a refused key, submit what the pool cannot cover
(INSUFFICIENT_POOL, nothing applied), reverse fully, partially and beyond what remains
(REVERSAL_EXCEEDS_ACTION / ALREADY_REVERSED), replay reversals, top the pool up, and spend from
a wallet (a redemption made of ledger primitives, so reversals can leave debts).

A plain Python model predicts every answer (distribution shares by the contract's rules, tokens
reversed by floor6) and keeps the pool, every wallet, the sink and the campaign's spend. After
every step the invariants prove: `verify_ledger` for the partner is ok (entries sum to zero,
caches equal postings, lots agree); the pool is never negative and equals the model; every
idempotency key has exactly one action row; tokens minted (the pool's ALLOCATION postings) equal
the pool plus every wallet (available + locked, debts included) plus the sinks; each wallet and
the campaign's spentTokens equal the model.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
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

from engine.accounts import singleton_account, wallet
from engine.action_request import ActionRequest, StakeholderRequest
from engine.campaigns import CampaignSpec, create_campaign
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
from engine.ledger import EntryDraft, Leg, consume_lots, post_entries
from engine.money import Tokens
from engine.partners import create_partner
from engine.pools import allocate, create_pool
from engine.reversals import ReversalRequest, reverse_action
from engine.scope import Scope
from engine.submit import submit_action
from engine.tables import organizations
from engine.verify import verify_ledger
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

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.engine: AsyncEngine = self.run(self._engine())
        self.scope: Scope | None = None
        self.pool_id = ""
        self.org_slug = ""
        self.vesting = False
        self.campaign: dict[str, Any] | None = None
        self.multiplier = Decimal(1)
        # the model
        self.pool = 0
        self.minted = 0
        self.sink = 0
        self.campaign_spent = 0
        self.wallets: dict[str, int] = {}  # owner -> available + locked (negative: debt)
        self.grants: list[Grant] = []
        self.refused: list[ActionRequest] = []  # refused for the pool: their keys stay unused
        self.reversals: list[tuple[str, ReversalRequest, dict[str, Any]]] = []
        self.keys = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _engine(self) -> AsyncEngine:
        return create_engine(self.database_url, pool_size=2, max_overflow=0)

    def teardown(self) -> None:
        try:
            self.run(self.engine.dispose())
        finally:
            self.loop.close()

    # -- setup ------------------------------------------------------------------------------

    @initialize(
        funding=st.integers(min_value=1, max_value=300).map(lambda n: n * MICRO),
        restrictions=st.sampled_from([(None, None), (7, None), (None, 30), (7, 30)]),
        multiplier=st.sampled_from([None, Decimal(1), Decimal("1.5"), Decimal("0.333333")]),
        seed=st.lists(st.tuples(holders, micro_amounts), min_size=1, max_size=4),
    )
    def start(
        self,
        funding: int,
        restrictions: tuple[int | None, int | None],
        multiplier: Decimal | None,
        seed: list[tuple[list[tuple[str, str]], int]],
    ) -> None:
        vesting_days, expiration_days = restrictions
        self.vesting = vesting_days is not None
        self.run(self._start(funding, vesting_days, expiration_days, multiplier))
        self.pool = self.minted = funding
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
            pool = await create_pool(
                conn,
                self.scope,
                actor="test",
                name="main",
                vesting_days=vesting_days,
                expiration_days=expiration_days,
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

    def submit_expecting_model(self, request: ActionRequest) -> None:
        """Submit; the model decides whether it must apply or be refused for the pool."""
        assert self.scope is not None
        amount_micro = int(request.amount.scaleb(6))
        stakeholders = [(s.stakeholder_type, s.partner_user_id or "") for s in request.stakeholders]
        shares = self.predict(amount_micro, stakeholders)
        need = sum(shares)
        if need > self.pool:
            with pytest.raises(InsufficientPool):
                self.run(submit_action(self.engine, self.scope, request))
            if request not in self.refused:
                self.refused.append(request)
            return
        response = self.run(submit_action(self.engine, self.scope, request))
        credited = [
            (t, u, share) for (t, u), share in zip(stakeholders, shares, strict=True) if share > 0
        ]
        got = [
            (d["stakeholderTypeCode"], d.get("partnerUserId", ""), d["tokens"].micro)
            for d in response["distributions"]
        ]
        assert got == credited
        assert response["tokensDistributed"].micro == need
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
        for _, owner, share in grant.holders:
            self.wallets[owner] = self.wallets.get(owner, 0) + share
        self.refused = [r for r in self.refused if r != request]

    # -- rules: submits -------------------------------------------------------------------------

    @rule(stakeholders=holders, amount=micro_amounts)
    def grant(self, stakeholders: list[tuple[str, str]], amount: int) -> None:
        # Given a fresh key / When submitted / Then applied as predicted, or refused for the pool
        self.submit_expecting_model(self.request(stakeholders, amount))

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
            self.wallets[owner] -= part
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

    # -- rules: spending (so that reversals can leave debts) --------------------------------------

    def _spend(self, owner: str, amount: int) -> None:
        """A redemption built from ledger primitives: `amount` leaves the user's available
        tokens (its lots, earliest-expiring first) for the redemption sink."""

        async def go() -> None:
            assert self.scope is not None
            async with self.engine.begin() as conn:
                user_id = (
                    await conn.execute(
                        text(
                            "SELECT id FROM partner_users WHERE partner_id = :partner_id "
                            "AND environment = :environment AND external_user_id = :x"
                        ),
                        {**self.scope.params, "x": owner.removeprefix("user:")},
                    )
                ).scalar_one()
                w = await wallet(conn, self.scope, partner_user_id=user_id)
                covered = await consume_lots(conn, self.scope, w.available_id, Tokens(amount))
                assert covered.micro == amount, "open lots must cover a positive balance"
                sink = await singleton_account(conn, self.scope, "SINK_REDEEMED")
                await post_entries(
                    conn,
                    self.scope,
                    [
                        EntryDraft(
                            "REDEMPTION",
                            (
                                Leg(w.available_id, -Tokens(amount), "REDEMPTION"),
                                Leg(sink, Tokens(amount), "REDEMPTION"),
                            ),
                        )
                    ],
                )

        self.run(go())
        self.wallets[owner] -= amount
        self.sink += amount

    @precondition(
        lambda self: (
            not self.vesting
            and any(v > 0 for o, v in self.wallets.items() if o.startswith("user:"))
        )
    )
    @rule(pick=picks, part=fractions)
    def spend(self, pick: int, part: int) -> None:
        owners = sorted(o for o, v in self.wallets.items() if o.startswith("user:") and v > 0)
        owner = owners[pick % len(owners)]
        self._spend(owner, max(1, self.wallets[owner] * part // MICRO))

    @precondition(lambda self: not self.vesting and self.grants)
    @rule(pick=picks, part=fractions)
    def spend_then_reverse(self, pick: int, part: int) -> None:
        # Given a user who spent (part of) what an action gave them
        grant = self.grants[pick % len(self.grants)]
        users = [o for _, o, _ in grant.holders if o.startswith("user:") and self.wallets[o] > 0]
        if users:
            owner = users[0]
            self._spend(owner, max(1, self.wallets[owner] * part // MICRO))
        # When the action is reversed / Then what the wallet cannot give back becomes a debt
        self.reverse(grant, None)

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

            minted = (
                await conn.execute(
                    text(
                        "SELECT coalesce(sum(p.amount), 0) FROM postings p JOIN ledger_accounts a "
                        "ON a.id = p.account_id WHERE a.pool_id = :pool AND p.type = 'ALLOCATION'"
                    ),
                    params,
                )
            ).scalar_one()
            rows = (
                await conn.execute(
                    text(
                        "SELECT a.kind, a.balance, u.external_user_id, o.slug FROM ledger_accounts a "
                        "LEFT JOIN partner_users u ON u.id = a.partner_user_id "
                        "LEFT JOIN organizations o ON o.id = a.organization_id "
                        "WHERE a.partner_id = :partner_id AND a.environment = :environment "
                        "AND a.kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED', 'SINK_EXPIRED', "
                        "'SINK_REDEEMED')"
                    ),
                    params,
                )
            ).all()
            spent = None
            if self.campaign is not None:
                spent = (
                    await conn.execute(
                        text("SELECT spent_tokens FROM campaigns WHERE id = :id"),
                        {"id": self.campaign["id"]},
                    )
                ).scalar_one()
            await conn.rollback()

        wallets: dict[str, int] = {}
        sinks = 0
        for kind, balance, external, slug in rows:
            if kind.startswith("SINK"):
                sinks += int(balance)
                continue
            owner = f"org:{slug}" if slug else f"user:{external}"
            wallets[owner] = wallets.get(owner, 0) + int(balance)
            if kind == "WALLET_LOCKED":
                assert int(balance) >= 0
            if self.vesting and kind == "WALLET_AVAILABLE":
                # Credits are locked; only a reversal's debt could show here, and own lots
                # always cover a reversal while nothing locked can be spent.
                assert int(balance) == 0
        assert int(minted) == self.minted == pool + sum(wallets.values()) + sinks
        assert sinks == self.sink
        assert {o: v for o, v in wallets.items() if v} == {
            o: v for o, v in self.wallets.items() if v
        }
        if spent is not None:
            assert int(spent) == self.campaign_spent


def test_ledger_state_machine(settings: Any) -> None:
    # Given the session's migrated database (each example makes its own partner and pool)
    LedgerMachine.database_url = settings.database_url
    # When hypothesis drives the machine / Then every rule's answer and every invariant hold
    run_state_machine_as_test(
        LedgerMachine,
        settings=hypothesis_settings(
            max_examples=25,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
