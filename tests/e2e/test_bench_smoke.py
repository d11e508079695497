"""Smoke test of the bench's engine-1 measurement: it runs, and what it counts is what happened.

Correctness only. Speed is the bench's business (`python -m ops.bench.run`, ratios against
same-run baselines); a timed assertion here would fail on a busy shared machine and prove nothing.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.crypto import SecretBox
from engine.group_commit import GroupCommitter
from engine.verify import verify_ledger
from ops.bench import measure
from tests.conftest import Services


@pytest.mark.parametrize("grouped", [False, True], ids=["submit_action", "group_commit"])
async def test_engine_direct_counts_what_it_applied(
    services: Services, db: AsyncEngine, box: SecretBox, grouped: bool
) -> None:
    partner = await measure.create_bench_partner(db, box)
    before = await measure.current_pool_balance(db, partner)
    committer = GroupCommitter(db) if grouped else None

    run = await measure.run_direct(
        db, partner.scope, seconds=1.0, clients=4, prefix="smoke-", committer=committer
    )
    if committer is not None:
        await committer.close()

    assert run.load.outcomes["applied"] > 0, run.load.outcomes
    assert set(run.load.outcomes) == {"applied"}, run.load.outcomes  # no refusals, no faults
    assert len(run.applied) == run.load.outcomes["applied"]

    check = await measure.check_phase(
        db, partner, prefix="smoke-", applied=run.applied, balance_before=before
    )
    assert check.ok, check.problems
    assert check.rows == len(run.applied)
    assert check.pool_debited == check.tokens_answered == sum(run.applied.values())

    # Independently of check_phase: rows counted straight from the table, and this partner's
    # ledger verifies (scoped: other tests in a session may damage their own ledgers on purpose).
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM actions WHERE partner_id = :partner_id "
                    "AND environment = :environment"
                ),
                partner.scope.params,
            )
        ).scalar_one()
    async with db.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        report = await verify_ledger(conn, partner.scope)
    assert rows == len(run.applied)
    assert report.ok, report.render()
