"""One chaos run, start to finish: deploy, load with faults, drain, prove, print, clean up.

Time is compressed by configuration so that a short run exercises the long paths: the webhook
retry schedule is scaled (SIR_WEBHOOK_RETRY_SCALE), claims and ticks are short, the batch resume
comes after seconds, and the receiver's outage lasts seconds instead of minutes. Every wait is
bounded, the whole run has a hard limit (`--max-seconds`), and every process it started is
stopped on the way out, whatever happened (SIGINT and SIGTERM included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from engine.db import create_engine
from ops.chaos.check import Findings, prove
from ops.chaos.cluster import Cluster, Tenant
from ops.chaos.faults import Injected, run_schedule, schedule
from ops.chaos.load import MAIN_EVENT_TYPES, Budget, Driver, Ledger
from ops.chaos.receiver import FlakyReceiver
from ops.dead_letters import list_dead

log = logging.getLogger("sir.chaos")

COMPRESSED_TIME = {
    "SIR_OUTBOX_RELAY_SECONDS": "1",
    "SIR_WEBHOOK_PICKUP_SECONDS": "1",
    # Longer than the 5 s attempt timeout, so a slow answer is not claimed twice while in flight.
    "SIR_WEBHOOK_LEASE_SECONDS": "8",
    "SIR_WEBHOOK_RETRY_SCALE": "0.01",  # ~0.05 s, 0.3 s, 1.2 s, 6 s, 18 s, 36 s, ...
    "SIR_BATCH_RESUME_AFTER_SECONDS": "5",
    "SIR_BATCH_RESUME_SECONDS": "2",
}
POISON_QUEUE = "maintenance"
POISON_ACTOR = "audit_ledger"  # takes no argument: a message with one fails, and is no transient


@dataclass
class Outcome:
    seed: int
    load_seconds: float
    ledger: Ledger
    injected: list[Injected]
    findings: Findings
    receiver_answers: Counter[str]
    drain_seconds: float
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def inject_poison(redis_url: str) -> str:
    """Enqueue one message that can only fail (an argument the actor does not take): the
    workers must dead-letter it, and it must be the only dead letter left."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url)
    try:
        broker.declare_queue(POISON_QUEUE)
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=POISON_QUEUE,
            actor_name=POISON_ACTOR,
            args=("poison",),
            kwargs={},
            options={},
        )
        broker.enqueue(message)
        return message.message_id
    finally:
        broker.close()


async def _drained(cluster: Cluster, tenant: Tenant, poison: str) -> dict[str, int]:
    """What is still in flight: unrelayed events, pending deliveries, batches not completed,
    and whether the poison reached the dead letters."""
    assert cluster.pg is not None and cluster.redis is not None
    db = create_engine(cluster.pg.url)
    scoped = "WHERE partner_id = :partner_id AND environment = :environment"
    try:
        async with db.connect() as conn:
            params = tenant.scope.params
            unrelayed = (
                await conn.execute(
                    text(f"SELECT count(*) FROM outbox_events {scoped} AND relayed_at IS NULL"),
                    params,
                )
            ).scalar_one()
            pending = (
                await conn.execute(
                    text(
                        f"SELECT count(*) FROM webhook_deliveries {scoped} AND status <> 'SUCCEEDED'"
                    ),
                    params,
                )
            ).scalar_one()
            batches = (
                await conn.execute(
                    text(f"SELECT count(*) FROM action_batches {scoped} AND status <> 'COMPLETED'"),
                    params,
                )
            ).scalar_one()
    finally:
        await db.dispose()
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        # The XQ holds the broker's own ids; the message id is inside the stored message.
        dead = any(d.message.message_id == poison for d in list_dead(client, (POISON_QUEUE,)))
    finally:
        client.close()
    return {
        "unrelayed events": int(unrelayed),
        "deliveries not succeeded": int(pending),
        "batches not completed": int(batches),
        "poison not dead-lettered": 0 if dead else 1,
    }


async def _wait_drained(
    cluster: Cluster, tenant: Tenant, poison: str, timeout: float
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    left: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            left = await _drained(cluster, tenant, poison)
        except Exception as exc:  # noqa: BLE001 - a server still coming back: ask again
            left = {"drain check failed": 1}
            log.info("drain check: %s", exc)
        if not any(left.values()):
            return left
        if int(time.monotonic() - deadline) % 10 == 0:
            log.info("draining: %s", left)
        await asyncio.sleep(1)
    return left


def _revive(cluster: Cluster) -> None:
    """After the faults, every process runs again (a fault near the end may have left one
    restarting), so the drain has the whole deployment."""
    for name, process in list(cluster.processes.items()):
        if process.poll() is not None:
            role, _, index = name.partition("-")
            if role == "front":
                cluster.start_front(int(index))
            elif role == "worker":
                cluster.start_worker(int(index))
    cluster.wait_ready(timeout=60)


async def run(options: argparse.Namespace) -> Outcome:
    directory = Path(options.workdir or tempfile.mkdtemp(prefix="sir-chaos-"))
    cluster = Cluster(
        directory,
        fronts=2,
        workers=options.workers,
        extra_env={**COMPRESSED_TIME, "SIR_LOG_LEVEL": "INFO"},
    )
    receiver = FlakyReceiver(
        seed=options.seed,
        fail_rate=options.receiver_fail_rate,
        slow_rate=options.receiver_slow_rate,
    )
    ledger = Ledger()
    fault_task: asyncio.Future[list[Injected]] | None = None
    try:
        await asyncio.to_thread(cluster.start_servers)
        tenant = await cluster.create_tenant()
        await receiver.start()
        await asyncio.to_thread(cluster.start_engine)
        hard_deadline = time.monotonic() + options.max_seconds
        driver = Driver(
            cluster.base_url,
            tenant.secret_key,
            tenant.hmac_secret,
            receiver,
            ledger,
            options.seed,
            Budget(per_operation=120, hard_deadline=hard_deadline),
        )
        async with driver.client() as sir:
            main = await driver.register_webhook(sir, "main", MAIN_EVENT_TYPES, receive_all=False)
            if main is None:
                raise RuntimeError("could not register the main webhook endpoint")
        load_started = time.monotonic()
        outage = options.outage_seconds
        receiver.schedule_outage(load_started + 0.4 * options.duration, outage)
        faults = schedule(options.seed, options.duration, options.faults)
        clients = [
            driver.run_client(i, load_started + options.duration, options.clients / options.rate)
            for i in range(options.clients)
        ]
        fault_task = asyncio.ensure_future(
            run_schedule(cluster, faults, load_started, options.seed)
        )
        await asyncio.gather(*clients)
        injected = await fault_task
        load_seconds = time.monotonic() - load_started

        drain_started = time.monotonic()
        await asyncio.to_thread(_revive, cluster)
        # After the last fault (a Redis restart would wipe the dead letters too).
        poison = await asyncio.to_thread(inject_poison, cluster.redis.url)  # type: ignore[union-attr]
        await driver.resolve_unresolved()
        async with driver.client() as sir:
            await driver.settle_batches(sir, timeout=options.drain_seconds)
        left = await _wait_drained(cluster, tenant, poison, timeout=options.drain_seconds)
        drain_seconds = time.monotonic() - drain_started
        log.info("drained in %.0f s; proving", drain_seconds)
        findings = await prove(cluster, tenant, ledger, receiver, poison)
        log.info("proved in %.0f s", time.monotonic() - drain_started - drain_seconds)
        for what, count in left.items():
            if count:
                findings.broken.append(f"after {drain_seconds:.0f} s of drain: {count} {what}")
        return Outcome(
            seed=options.seed,
            load_seconds=load_seconds,
            ledger=ledger,
            injected=injected,
            findings=findings,
            receiver_answers=receiver.answers,
            drain_seconds=drain_seconds,
            extra={"logs": str(cluster.logs)},
        )
    finally:
        # The fault schedule is a task of its own: stop it before the processes, or it could
        # start a worker or a front again after they were stopped (a run cancelled by SIGTERM).
        if fault_task is not None and not fault_task.done():
            fault_task.cancel()
            await asyncio.gather(fault_task, return_exceptions=True)
        await receiver.stop()
        await asyncio.to_thread(cluster.stop)
        if not options.keep and not options.workdir:
            shutil.rmtree(directory, ignore_errors=True)


def table(outcome: Outcome) -> str:
    """The run's table: operations by kind, faults by kind, and the three verdict lines."""
    lines = [
        f"chaos run: seed {outcome.seed}, load {outcome.load_seconds:.0f} s, "
        f"drain {outcome.drain_seconds:.0f} s"
    ]
    width = 44

    def section(title: str, rows: list[tuple[str, Any]]) -> None:
        lines.append("")
        lines.append(f"{title:<{width}} {'count':>8}")
        lines.append("-" * (width + 9))
        for name, value in rows:
            lines.append(f"{name:<{width}} {str(value):>8}")

    ops = outcome.ledger.operations
    section("operations", sorted(ops.items()) + [("total", sum(ops.values()))])
    section("HTTP answers (retries included)", sorted(outcome.ledger.requests.items()))
    by_kind = Counter(i.fault.kind for i in outcome.injected)
    section(
        "faults injected",
        sorted(by_kind.items())
        + [("poison message (dead-letter expected)", 1), ("total", sum(by_kind.values()) + 1)],
    )
    section("webhook receiver answers", sorted(outcome.receiver_answers.items()))
    section("facts", list(outcome.findings.facts.items()))
    found = outcome.findings
    section(
        "verdict",
        [
            ("lost", len(found.lost)),
            ("duplicated", len(found.duplicated)),
            ("invariant breaks", len(found.broken)),
        ],
    )
    for title, items in (
        ("LOST", found.lost),
        ("DUPLICATED", found.duplicated),
        ("BROKEN", found.broken),
    ):
        for item in items[:20]:
            lines.append(f"{title}: {item}")
        if len(items) > 20:
            lines.append(f"{title}: ... and {len(items) - 20} more")
    return "\n".join(lines)


def summary(outcome: Outcome) -> dict[str, Any]:
    found = outcome.findings
    return {
        "seed": outcome.seed,
        "loadSeconds": round(outcome.load_seconds, 1),
        "drainSeconds": round(outcome.drain_seconds, 1),
        "operations": dict(outcome.ledger.operations),
        "faults": dict(Counter(i.fault.kind for i in outcome.injected)),
        "faultsFailed": [i.target for i in outcome.injected if not i.ok],
        "lost": found.lost,
        "duplicated": found.duplicated,
        "broken": found.broken,
        "facts": {k: v if isinstance(v, int) else str(v) for k, v in found.facts.items()},
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.chaos",
        description="Seeded chaos run on private loopback servers; exit 1 on any lost, "
        "duplicated or broken finding.",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients (default 6)")
    parser.add_argument(
        "--rate", type=float, default=12, help="operations per second, all clients (default 12)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker groups (default 2)")
    parser.add_argument(
        "--faults", type=int, default=None, help="faults to inject (default: one per 15 s, >= 4)"
    )
    parser.add_argument(
        "--outage-seconds",
        type=float,
        default=None,
        help="receiver outage length (default: 10%% of the load, at most 60 s)",
    )
    parser.add_argument("--receiver-fail-rate", type=float, default=0.1)
    parser.add_argument("--receiver-slow-rate", type=float, default=0.02)
    parser.add_argument(
        "--drain-seconds", type=float, default=180, help="bound of each drain wait (default 180)"
    )
    parser.add_argument("--max-seconds", type=float, default=None, help="hard limit of the run")
    parser.add_argument("--workdir", default=None, help="keep servers' data and logs here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", default=None, help="also write the summary as JSON here")
    options = parser.parse_args(argv)
    if options.faults is None:
        options.faults = max(4, round(options.duration / 15))
    if options.outage_seconds is None:
        options.outage_seconds = min(60.0, 0.1 * options.duration)
    if options.max_seconds is None:
        options.max_seconds = options.duration + 3 * options.drain_seconds + 300
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    async def bounded() -> Outcome:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)  # type: ignore[union-attr]
        return await asyncio.wait_for(run(options), timeout=options.max_seconds + 120)

    try:
        outcome = asyncio.run(bounded())
    except (asyncio.CancelledError, TimeoutError) as exc:
        print(f"chaos run stopped before its verdict: {type(exc).__name__}", file=sys.stderr)
        return 2
    print(table(outcome))
    if options.json:
        Path(options.json).write_text(json.dumps(summary(outcome), indent=2))
    return 0 if outcome.findings.ok else 1
