"""Issue 4, proof 1: `submit_action` under real concurrency on real PostgreSQL.

50 clients (asyncio tasks, each submit its own transaction, on an engine with 50 connections)
send 5,000 actions; 20% of them re-use an earlier idempotency key, half with the same body
(re-spelled amount: must replay) and half with a different body (must be refused), against one
hot pool funded to run dry about half-way. The test proves that:

- every distinct key is applied at most once (at most one `actions` row per key), and the
  applied answers are exactly the rows in `actions`;
- every refusal is one of the contract's codes; no other exception escapes;
- every replay carries the stored response of its key (same actionId as the first), every
  reuse with another body is refused, and any attempt that starts after its key's action
  committed gets one of those two answers (never a fresh decision such as INSUFFICIENT_POOL);
- the pool never goes negative (sampled while the clients run) and ends at funding minus the
  tokens of the applied actions;
- the real `sir-engine ledger verify` for the partner exits 0.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from engine.action_request import ActionRequest
from engine.db import create_engine
from engine.errors import SirError
from engine.money import Tokens
from engine.pools import pool_balance
from engine.submit import submit_action
from engine.wire import dumps, loads
from tests.conftest import sir_engine
from tests.integration.test_submit import action, user

CLIENTS = 50
TOTAL = 5_000
REUSED = TOTAL // 5  # 20% re-use an earlier key
FRESH = TOTAL - REUSED
USERS = [f"cu{i:02d}" for i in range(40)]

# What a submit may answer besides 200 (contract section 7). The first three are what this
# workload provokes; the last two are the contract's answers to overload and stay legal.
PROVOKED = {"IDEMPOTENT", "IDEMPOTENCY_KEY_REUSED", "INSUFFICIENT_POOL"}
CONTRACT_CODES = PROVOKED | {"IDEMPOTENCY_IN_PROGRESS", "SERVICE_UNAVAILABLE"}


@dataclass
class Attempt:
    seq: int
    request: ActionRequest
    kind: str  # "fresh" | "same" (same key, same body) | "other" (same key, another body)
    started: float = 0.0
    finished: float = 0.0
    response: dict[str, Any] | None = None
    error: BaseException | None = None


def _workload(rng: random.Random) -> tuple[list[Attempt], int]:
    """The 5,000 attempts in submission order, and a funding that runs dry about half-way."""
    head = ["fresh"] * 100  # the first 100 are fresh: there is something to reuse
    tail = ["fresh"] * (FRESH - 100) + ["reuse"] * REUSED
    rng.shuffle(tail)
    attempts: list[Attempt] = []
    fresh: list[Attempt] = []
    for seq, kind in enumerate(head + tail):
        if kind == "fresh":
            amount = Decimal(rng.randint(100, 2_000)) / 100  # 1.00 .. 20.00
            holders = [user(u) for u in rng.sample(USERS, rng.randint(1, 3))]
            request = action(
                *holders, key=f"conc-{seq:05d}", amount=str(amount), metadata={"n": seq}
            )
            attempt = Attempt(seq, request, "fresh")
            fresh.append(attempt)
        else:
            # Mostly long after the original (it has committed); some right behind it (in flight).
            recent = rng.random() < 0.25
            pool = fresh[-CLIENTS:] if recent else fresh[: max(1, len(fresh) - 2 * CLIENTS)]
            original = rng.choice(pool).request
            if rng.random() < 0.5:
                # Same body: the amount spelled differently ("12.5" vs "12.50") must not matter.
                request = action(
                    *original.stakeholders,
                    key=original.idempotency_key,
                    amount=format(original.amount, "f") + "0",
                    metadata=dict(original.metadata),
                )
                attempt = Attempt(seq, request, "same")
            else:
                request = action(
                    *original.stakeholders,
                    key=original.idempotency_key,
                    amount=format(original.amount, "f"),
                    metadata={**original.metadata, "edited": True},
                )
                attempt = Attempt(seq, request, "other")
        attempts.append(attempt)
    # Default rule: T = amount, so the first half of the fresh actions use the funding up.
    funding = sum(a.request.amount for a in fresh[: FRESH // 2])
    return attempts, Tokens.parse(funding).micro


# Well under a minute on an idle 2-core machine, but past the default 120 s when the machine
# was shared with other test sessions (seen once), so this one heavy proof gets more room.
@pytest.mark.timeout(400)
async def test_5000_concurrent_submits_keep_idempotency_and_the_pool_exact(
    db, make_partner, settings, services
):
    # Given: a fresh partner whose default pool can pay for about half of the workload
    rng = random.Random(20_260_404)
    attempts, funding_micro = _workload(rng)
    partner = await make_partner(funding=Tokens(funding_micro).format())
    scope = partner.scope
    engine = create_engine(settings.database_url, pool_size=CLIENTS, max_overflow=0)
    queue: asyncio.Queue[Attempt] = asyncio.Queue()
    for attempt in attempts:
        queue.put_nowait(attempt)
    pool_samples: list[int] = []
    running = True

    async def client() -> None:
        while True:
            try:
                attempt = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            attempt.started = time.monotonic()
            try:
                attempt.response = await submit_action(engine, scope, attempt.request)
            except Exception as exc:  # noqa: BLE001 - classified below: only contract codes pass
                attempt.error = exc
            attempt.finished = time.monotonic()

    async def watch_pool() -> None:
        async with db.connect() as conn:
            while running:
                pool_samples.append((await pool_balance(conn, scope, partner.pool_id)).micro)
                await conn.rollback()
                await asyncio.sleep(0.02)

    # When: 50 clients submit the 5,000 actions at once
    try:
        watcher = asyncio.create_task(watch_pool())
        began, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        elapsed, cpu = time.monotonic() - began, time.process_time() - cpu
        running = False
        await watcher
    finally:
        running = False
        await engine.dispose()

    # Then: every refusal is a contract code, and nothing else escaped
    escaped = [a for a in attempts if a.error is not None and not isinstance(a.error, SirError)]
    assert not escaped, [f"#{a.seq}: {a.error!r}" for a in escaped[:5]]
    codes = Counter(a.error.code for a in attempts if isinstance(a.error, SirError))
    assert set(codes) <= CONTRACT_CODES, codes
    applied = [a for a in attempts if a.response is not None]
    print(
        f"\n{TOTAL} submits by {CLIENTS} clients in {elapsed:.1f} s "
        f"({TOTAL / elapsed:.0f}/s, client CPU {cpu:.1f} s): applied {len(applied)}, {dict(codes)}; "
        f"{len(pool_samples)} pool samples"
    )
    assert PROVOKED <= set(codes), f"the workload must reach every path: {codes}"

    # ... every distinct key is applied at most once, and the applied answers are the rows
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT idempotency_key, id, request_hash, response, tokens_distributed "
                    "FROM actions WHERE partner_id = :partner_id AND environment = :environment"
                ),
                scope.params,
            )
        ).all()
        final_pool = (await pool_balance(conn, scope, partner.pool_id)).micro
    stored: dict[str, Any] = {}
    for key, action_id, digest, response, tokens in rows:
        assert key not in stored, f"key {key} has more than one action row"
        stored[key] = (action_id, bytes(digest), response, int(tokens))
    by_key: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        by_key[attempt.request.idempotency_key].append(attempt)
    for key, tries in by_key.items():
        assert sum(t.response is not None for t in tries) <= 1, f"key {key} applied twice"
    assert len(applied) == len(rows)
    assert {a.response["actionId"] for a in applied} == {row[1] for row in rows}

    for attempt in applied:
        action_id, digest, response, tokens = stored[attempt.request.idempotency_key]
        assert loads(dumps(attempt.response)) == response
        assert digest == attempt.request.fingerprint
        # Default rule: T = amount, shared out whole.
        assert tokens == Tokens.parse(attempt.request.amount).micro
        assert sum(d["tokens"].micro for d in attempt.response["distributions"]) == tokens

    # ... replays carry the stored answer; another body is refused; late arrivals never decide
    for key, tries in by_key.items():
        first = next((t for t in tries if t.response is not None), None)
        for attempt in tries:
            if attempt is first:
                continue
            code = getattr(attempt.error, "code", None)
            if code == "IDEMPOTENT":
                assert key in stored
                action_id, digest, response, _ = stored[key]
                assert digest == attempt.request.fingerprint, (
                    f"#{attempt.seq} replayed another body"
                )
                original = attempt.error.details["original"]
                assert original == response
                assert original["actionId"] == first.response["actionId"] == action_id
            elif code == "IDEMPOTENCY_KEY_REUSED":
                assert key in stored and stored[key][1] != attempt.request.fingerprint
            if first is not None and attempt.started > first.finished:
                expected = (
                    "IDEMPOTENT"
                    if attempt.request.fingerprint == first.request.fingerprint
                    else "IDEMPOTENCY_KEY_REUSED"
                )
                assert code == expected, (
                    f"#{attempt.seq} ({attempt.kind}) came after #{first.seq} committed "
                    f"and was answered {code or 'applied'}"
                )

    # ... the pool never went negative and ends at funding - what was distributed
    assert pool_samples and min(pool_samples) >= 0
    distributed = sum(a.response["tokensDistributed"].micro for a in applied)
    assert distributed == sum(row[4] for row in rows)
    assert final_pool == funding_micro - distributed
    assert codes["INSUFFICIENT_POOL"] > 0 and final_pool < Tokens.parse("20").micro

    # ... and the real CLI proves the partner's ledger whole
    verdict = sir_engine(
        "ledger",
        "verify",
        "--partner",
        partner.partner_id,
        "--environment",
        "sandbox",
        env=services.env(),
    )
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
