"""Worker faults: a sweeps worker killed with SIGKILL mid-sweep, and a webhooks worker stopped
with SIGTERM while deliveries are in flight.

- kill -9: 20,000 lots due for vesting; the worker (its own process group, so Dramatiq's forked
  worker process dies too) is killed once some batches committed and others not; a new worker
  finishes. Every lot vested exactly once, each wallet holds exactly what was due, and the real
  `sir-engine ledger verify` is clean.
- SIGTERM: a receiver that answers after ~1 s; the worker gets SIGTERM with requests in flight,
  lets them finish (their attempts are recorded), puts its prefetched messages back, and exits 0
  by itself. A new worker and the pick-up tick deliver the rest: every event reaches the
  receiver at least once and no delivery is left PENDING.

Real processes on the test database and the session's private Redis database (services.env()).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
from aiohttp import web
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.crypto import SecretBox
from engine.money import Tokens
from engine.outbox import Event, record_events
from engine.relay import relay_pending
from engine.scope import Scope
from engine.webhooks import EndpointSpec, create_endpoint
from tests.conftest import ROOT, MakePartner, Services, free_port, sir_engine

LOTS = 20_000
WALLETS = 300
SWEEP_BATCH = 500
EVENTS = 12
WORKER_THREADS = 4
RECEIVER_DELAY = 1.0


# -- processes ------------------------------------------------------------------------------------


def _start_worker(env: dict[str, str], queue: str, log: Path) -> subprocess.Popen[bytes]:
    # Its own session (process group): a SIGKILL must reach Dramatiq's forked worker process too.
    with log.open("ab") as sink:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "worker",
                "--queues",
                queue,
                "--processes",
                "1",
                "--threads",
                str(WORKER_THREADS),
            ],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_group(worker: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    worker.wait(timeout=10)


def _stop_worker(worker: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the main process only (it forwards it to its workers; signalling the whole
    group would make a worker see two and hard-stop); SIGKILL to the group if it hangs."""
    if worker.poll() is not None:
        return worker.returncode
    worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _kill_group(worker)
        return worker.returncode


def _send(redis_url: str, queue: str, actor: str, args_list: Sequence[tuple[Any, ...]]) -> None:
    """Enqueue messages by actor name on `redis_url` (this process's global broker is bound to
    the REDIS_URL it was started with, not to the session's private database)."""
    broker = RedisBroker(url=redis_url)
    try:
        for args in args_list:
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}
            )
            broker.enqueue(message)
    finally:
        broker.close()


# -- kill -9 mid-sweep ----------------------------------------------------------------------------

# Lot n (1..LOTS) belongs to wallet ((n * 7919) % WALLETS) + 1 and holds 1..97 whole tokens; it
# came due n seconds ago. As ops/bench/sweep.py builds them: one DISTRIBUTION entry per wallet
# against the pool, one CREDIT posting (and lot) per lot, balance caches set, so the ledger
# verifies before, during and after the sweep.
_PLAN = """
CREATE TEMP TABLE plan AS
SELECT g AS n, ((g::bigint * 7919) % :users)::int + 1 AS u,
       (1 + g % 97) * 1000000::bigint AS amount,
       CAST(:now AS timestamptz) - g * interval '1 second' AS vests_at
FROM generate_series(1, :lots) AS g
"""


def _expected() -> tuple[dict[int, int], int]:
    """Micro-tokens due per wallet number, and in all."""
    due: Counter[int] = Counter()
    for n in range(1, LOTS + 1):
        due[(n * 7919) % WALLETS + 1] += (1 + n % 97) * 1_000_000
    return dict(due), sum(due.values())


async def _build_due_lots(db: AsyncEngine, make_partner: MakePartner, tag: str) -> Scope:
    _, total = _expected()
    partner = await make_partner(funding=str(Tokens(total)), vesting_days=7)
    scope = partner.scope
    p = {
        **scope.params,
        "users": WALLETS,
        "lots": LOTS,
        "now": datetime.now(UTC),
        "tag": tag,
        "pool_id": partner.pool_id,
    }
    async with db.begin() as conn:
        await conn.execute(text(_PLAN), p)
        pool_account = (
            await conn.execute(text("SELECT id FROM ledger_accounts WHERE pool_id = :pool_id"), p)
        ).scalar_one()
        await conn.execute(
            text(
                "INSERT INTO partner_users (id, partner_id, environment, external_user_id) "
                "SELECT 'fu' || :tag || lpad(g::text, 16, '0'), :partner_id, :environment, "
                "'fault-' || g FROM generate_series(1, :users) AS g"
            ),
            p,
        )
        await conn.execute(
            text(
                "INSERT INTO ledger_accounts (partner_id, environment, kind, partner_user_id) "
                "SELECT :partner_id, :environment, k.kind, 'fu' || :tag || lpad(g::text, 16, '0') "
                "FROM generate_series(1, :users) AS g CROSS JOIN "
                "(VALUES ('WALLET_AVAILABLE'), ('WALLET_LOCKED')) AS k(kind) ORDER BY g, k.kind"
            ),
            p,
        )
        await conn.execute(
            text(
                "CREATE TEMP TABLE locked AS SELECT a.id, substr(a.partner_user_id, 9)::int AS u "
                "FROM ledger_accounts a WHERE a.partner_id = :partner_id "
                "AND a.environment = :environment AND a.kind = 'WALLET_LOCKED'"
            ),
            p,
        )
        await conn.execute(
            text(
                "INSERT INTO journal_entries (id, partner_id, environment, kind) "
                "SELECT 'fe' || :tag || lpad(u::text, 16, '0'), :partner_id, :environment, "
                "'DISTRIBUTION' FROM (SELECT DISTINCT u FROM plan) d"
            ),
            p,
        )
        # One statement: the balance trigger checks every entry once.
        await conn.execute(
            text(
                "INSERT INTO postings (id, partner_id, environment, entry_id, account_id, "
                "amount, type) "
                "SELECT 'fd' || :tag || lpad(u::text, 16, '0'), :partner_id, :environment, "
                "'fe' || :tag || lpad(u::text, 16, '0'), :pool, -sum(amount), 'DEBIT' "
                "FROM plan GROUP BY u "
                "UNION ALL "
                "SELECT 'fc' || :tag || lpad(n::text, 16, '0'), :partner_id, :environment, "
                "'fe' || :tag || lpad(plan.u::text, 16, '0'), l.id, amount, 'CREDIT' "
                "FROM plan JOIN locked l ON l.u = plan.u"
            ),
            {**p, "pool": pool_account},
        )
        await conn.execute(
            text(
                "INSERT INTO lots (partner_id, environment, account_id, posting_id, amount, "
                "remaining, vests_at, expires_at) SELECT :partner_id, :environment, l.id, "
                "'fc' || :tag || lpad(n::text, 16, '0'), amount, amount, vests_at, "
                "vests_at + interval '30 days' FROM plan JOIN locked l ON l.u = plan.u ORDER BY n"
            ),
            p,
        )
        await conn.execute(
            text(
                "UPDATE ledger_accounts a SET balance = s.total FROM (SELECT l.id, "
                "sum(amount) AS total FROM plan JOIN locked l ON l.u = plan.u GROUP BY l.id) s "
                "WHERE a.id = s.id"
            )
        )
        await conn.execute(
            text("UPDATE ledger_accounts SET balance = balance - :t WHERE id = :id"),
            {"t": total, "id": pool_account},
        )
        await conn.execute(text("DROP TABLE plan, locked"))
    async with db.connect() as conn:
        # Fresh statistics, as a running system has: the sweep's plans depend on them.
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE lots"))
        await conn.execute(text("ANALYZE ledger_accounts"))
    return scope


async def _vested(db: AsyncEngine, scope: Scope) -> int:
    async with db.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM lots WHERE partner_id = :partner_id "
                        "AND environment = :environment AND vested_at IS NOT NULL"
                    ),
                    scope.params,
                )
            ).scalar_one()
        )


async def test_kill_9_mid_sweep_vests_every_lot_exactly_once(
    db: AsyncEngine, make_partner: MakePartner, services: Services, tmp_path: Path
) -> None:
    # Given: 20,000 lots due for vesting over 300 wallets, a consistent ledger
    tag = secrets.token_hex(3)
    scope = await _build_due_lots(db, make_partner, tag)
    env = services.env(SIR_SWEEP_BATCH=str(SWEEP_BATCH))
    log = tmp_path / "worker.log"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        # When: a sweeps worker starts on vest_tokens and is killed with SIGKILL mid-sweep
        _send(services.redis_url, "sweeps", "vest_tokens", [()])
        workers.append(_start_worker(env, "sweeps", log))
        deadline = time.monotonic() + 30
        vested = 0
        while time.monotonic() < deadline and vested < 2 * SWEEP_BATCH:
            await asyncio.sleep(0.05)
            vested = await _vested(db, scope)
        await asyncio.to_thread(_kill_group, workers[0])
        at_kill = await _vested(db, scope)
        assert 0 < at_kill < LOTS, (
            f"the kill did not land mid-sweep ({at_kill} of {LOTS} lots vested); "
            + log.read_text()[-2000:]
        )

        # Then a new worker, given the tick's message again, finishes the sweep
        _send(services.redis_url, "sweeps", "vest_tokens", [()])
        workers.append(_start_worker(env, "sweeps", log))
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and vested < LOTS:
            await asyncio.sleep(0.2)
            vested = await _vested(db, scope)
        assert await asyncio.to_thread(_stop_worker, workers[1]) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                await asyncio.to_thread(_kill_group, worker)
    assert vested == LOTS, f"{vested} of {LOTS} lots vested; " + log.read_text()[-2000:]

    # Then: every wallet holds exactly what was due, nothing locked, credited once per lot
    due, total = _expected()
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT substr(a.partner_user_id, 9)::int AS u, a.kind, a.balance, "
                    "(SELECT coalesce(sum(p.amount), 0) FROM postings p "
                    " WHERE p.account_id = a.id) AS posted, "
                    "(SELECT count(*) FROM lots l WHERE l.account_id = a.id) AS lots "
                    "FROM ledger_accounts a WHERE a.partner_id = :partner_id "
                    "AND a.environment = :environment AND a.partner_user_id IS NOT NULL"
                ),
                scope.params,
            )
        ).all()
        events = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum((payload->>'lots')::int), 0) FROM outbox_events "
                    "WHERE partner_id = :partner_id AND environment = :environment "
                    "AND type = 'tokens.vested'"
                ),
                scope.params,
            )
        ).scalar_one()
    available = {r.u: r for r in rows if r.kind == "WALLET_AVAILABLE"}
    locked = {r.u: r for r in rows if r.kind == "WALLET_LOCKED"}
    assert len(available) == len(locked) == WALLETS
    wrong = {
        u: (int(available[u].balance), int(available[u].posted), expected)
        for u, expected in due.items()
        if not (int(available[u].balance) == int(available[u].posted) == expected)
    }
    assert not wrong, f"wallets not holding exactly what was due (balance, posted, due): {wrong}"
    assert all(int(r.balance) == int(r.posted) == 0 and r.lots == 0 for r in locked.values())
    assert sum(int(r.lots) for r in available.values()) == LOTS
    assert sum(int(r.balance) for r in available.values()) == total
    # One tokens.vested per committed wallet-batch: the killed transaction's events rolled back.
    assert events == LOTS, f"tokens.vested events count {events} lots, {LOTS} vested"

    verdict = sir_engine("ledger", "verify", env=services.env())
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr


# -- SIGTERM with deliveries in flight ------------------------------------------------------------


class SlowReceiver:
    """A webhook receiver on loopback that answers 200 after RECEIVER_DELAY seconds, and knows
    which deliveries are in flight (request read, answer not yet sent)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.in_flight: set[str] = set()
        self.answered: Counter[str] = Counter()  # event id -> 200s sent
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        delivery = request.headers["X-SIR-Delivery-Id"]
        self.in_flight.add(delivery)
        try:
            await asyncio.sleep(RECEIVER_DELAY)
        finally:
            self.in_flight.discard(delivery)
        self.answered[request.headers["X-SIR-Event-Id"]] += 1
        return web.Response(text="ok")


async def _deliveries(db: AsyncEngine, endpoint_id: str) -> dict[str, dict[str, Any]]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT d.id, d.event_id, d.status, "
                "(SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.id "
                " AND a.status_code = 200) AS ok_attempts "
                "FROM webhook_deliveries d WHERE d.endpoint_id = :e"
            ),
            {"e": endpoint_id},
        )
        return {r.id: dict(r._mapping) for r in rows}


async def test_sigterm_lets_in_flight_deliveries_finish_and_loses_nothing(
    db: AsyncEngine,
    box: SecretBox,
    make_partner: MakePartner,
    services: Services,
    tmp_path: Path,
) -> None:
    # Given: a slow receiver, an endpoint pointing at it, and EVENTS deliveries relayed
    receiver = SlowReceiver(free_port())
    await receiver.start()
    partner = await make_partner(funding="0")
    async with db.begin() as conn:
        endpoint, _ = await create_endpoint(
            conn,
            box,
            partner.scope,
            EndpointSpec(url=f"http://127.0.0.1:{receiver.port}/hook", receive_all_events=True),
            allow_private=True,
        )
        event_ids = await record_events(
            conn, partner.scope, [Event("action.completed", {"n": n}) for n in range(EVENTS)]
        )
    async with db.begin() as conn:
        # The relay takes the oldest events first, and other tests' may be waiting: go on
        # until this test's are all fanned out.
        for _ in range(100):
            relayed = await relay_pending(conn, limit=5_000)
            if relayed.events == 0 or len(await _deliveries_in(conn, endpoint["id"])) == EVENTS:
                break
    assert len(await _deliveries(db, endpoint["id"])) == EVENTS

    env = services.env(
        SIR_WEBHOOK_LEASE_SECONDS="3",
        SIR_WEBHOOK_PICKUP_SECONDS="1",
        SIR_WEBHOOK_RETRY_SCALE="0.01",
    )
    log = tmp_path / "worker.log"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        # When: a worker is busy with them and gets SIGTERM while requests are in flight
        ids = list(await _deliveries(db, endpoint["id"]))
        _send(services.redis_url, "webhooks", "deliver_webhook", [(i,) for i in ids])
        workers.append(_start_worker(env, "webhooks", log))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(receiver.in_flight) < 2:
            await asyncio.sleep(0.02)
        in_flight = set(receiver.in_flight)
        assert in_flight, "no delivery reached the receiver; " + log.read_text()[-2000:]
        workers[0].send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(workers[0].wait, 30)

        # Then: it exits 0 by itself, having finished and recorded the attempts in flight
        assert code == 0, log.read_text()[-2000:]
        after_stop = await _deliveries(db, endpoint["id"])
        unfinished = {
            d: after_stop[d]
            for d in in_flight
            if after_stop[d]["status"] != "SUCCEEDED" or after_stop[d]["ok_attempts"] < 1
        }
        assert not unfinished, (
            "attempts in flight at SIGTERM were abandoned instead of finished and recorded: "
            f"{unfinished}; " + log.read_text()[-2000:]
        )
        assert len(in_flight) < EVENTS  # there was still work left for the next worker

        # And a new worker, with the pick-up tick firing every second, delivers the rest
        workers.append(_start_worker(env, "webhooks", log))
        deadline = time.monotonic() + 25
        states = after_stop
        while time.monotonic() < deadline:
            _send(services.redis_url, "webhooks", "pick_up_due_deliveries", [()])
            await asyncio.sleep(1)
            states = await _deliveries(db, endpoint["id"])
            if all(s["status"] == "SUCCEEDED" for s in states.values()) and all(
                receiver.answered[e] for e in event_ids
            ):
                break
        assert await asyncio.to_thread(_stop_worker, workers[1]) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                await asyncio.to_thread(_kill_group, worker)
        await receiver.stop()

    left = {d: s["status"] for d, s in states.items() if s["status"] != "SUCCEEDED"}
    assert not left, f"deliveries not SUCCEEDED: {left}; " + log.read_text()[-2000:]
    assert all(s["ok_attempts"] >= 1 for s in states.values())
    missing = [e for e in event_ids if not receiver.answered[e]]
    assert not missing, f"events never delivered: {missing}"


async def _deliveries_in(conn: Any, endpoint_id: str) -> list[str]:
    rows = await conn.execute(
        text("SELECT id FROM webhook_deliveries WHERE endpoint_id = :e"), {"e": endpoint_id}
    )
    return [r[0] for r in rows]
