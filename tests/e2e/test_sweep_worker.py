"""The vesting sweep run by a real Dramatiq worker process on real Redis."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from engine.money import Tokens
from engine.submit import submit_action
from engine.users import get_balance
from engine.verify import verify_ledger
from tests.conftest import ROOT
from tests.integration.test_submit import action, user


def _enqueue_vesting(env: dict[str, str]) -> None:
    # From a separate process: the broker binds to REDIS_URL at import time.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from workers.sweep_actors import vest_tokens; vest_tokens.send()",
        ],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=60,
    )


async def test_worker_vests_lots_already_due(db, make_partner, services, tmp_path):
    # Given: two lots credited eight days ago from a pool that vests after seven
    p = await make_partner(funding="100", vesting_days=7)
    credited = datetime.now(UTC) - timedelta(days=8)
    for amount in ("3", "4.5"):
        await submit_action(db, p.scope, action(user("w"), amount=amount), now=credited)
    async with db.connect() as conn:
        before = await get_balance(conn, p.scope, "w")
    assert (before.available, before.locked) == (Tokens.parse("0"), Tokens.parse("7.5"))

    # When: the tick's message is enqueued and a worker on the sweeps queue runs it
    env = services.env()
    _enqueue_vesting(env)
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        # Popen returns at once; the loop below polls without blocking the event loop.
        worker = subprocess.Popen(  # noqa: ASYNC220
            [
                sys.executable,
                "-m",
                "ops.cli",
                "worker",
                "--queues",
                "sweeps",
                "--processes",
                "1",
                "--threads",
                "2",
            ],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                async with db.connect() as conn:
                    after = await get_balance(conn, p.scope, "w")
                if after.locked == Tokens.parse("0") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0

    # Then: the wallet holds 7.5 spendable tokens and the ledger is whole
    assert (after.available, after.locked, after.total) == (
        Tokens.parse("7.5"),
        Tokens.parse("0"),
        Tokens.parse("7.5"),
    ), log.read_text()[-2000:]
    assert "vest_tokens:" in log.read_text()
    async with db.connect() as conn:
        report = await verify_ledger(conn, p.scope)
    assert report.ok, report.render()
