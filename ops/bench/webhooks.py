"""`python -m ops.bench.webhooks [--events N] [--concurrency C] [--quick]`: webhook delivery bench.

One run, on a fresh database on DATABASE_URL's server (dropped at the end), Redis at REDIS_URL:

1. a partner with one webhook endpoint (all event types) pointing at a loopback sink: a separate
   aiohttp process (`--sink-port`, this module) that answers 200 and counts distinct event ids;
2. N events (default 20,000; `--quick` 3,000) recorded with `engine.outbox.record_events` and
   relayed into N PENDING deliveries with `engine.relay.relay_pending`;
3. baseline: one raw aiohttp client posts the very bodies and headers a delivery sends
   (precomputed, signed) to the same sink, C requests in flight -> posts/s;
4. engine: a real `sir-engine worker --queues webhooks --processes 1 --threads C` delivers them;
   one `deliver_webhook` message per delivery is enqueued (by actor name) before it starts, and
   the rate is counted from the first to the last successful attempt in `webhook_attempts`.

Proof of zero loss: the sink saw every event id in both phases, and every delivery is SUCCEEDED.
The ratio engine/baseline is printed (goal >= 0.5x) and the run saved as JSON in
`ops/bench/results/webhooks-<UTC timestamp>.json`. Exit status 1 when a proof fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import dramatiq
import psutil
from aiohttp import web
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.crypto import SecretBox, generate_master_key
from engine.db import create_engine
from engine.outbox import Event, record_events
from engine.partners import create_partner
from engine.relay import relay_pending
from engine.scope import Scope
from engine.settings import parse_master_key
from engine.webhooks import USER_AGENT, EndpointSpec, create_endpoint, event_body, signature_header
from ops.bench import measure
from ops.migrate import upgrade

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
RESULTS = Path(__file__).resolve().parent / "results"
RECORD_BATCH = 1_000
RELAY_BATCH = 5_000


def log(message: str) -> None:
    print(f"[webhook bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the sink (a separate process) ----------------------------------------------------------------


def run_sink(port: int) -> None:
    """The receiver: 200 to every POST, counting posts and distinct event ids (parsed from the
    body, so both phases pay the same per request). GET /stats, POST /reset."""
    seen: set[str] = set()
    posts = [0]

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        seen.add(str(json.loads(body)["id"]))
        posts[0] += 1
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"posts": posts[0], "distinct": len(seen)})

    async def reset(request: web.Request) -> web.Response:
        seen.clear()
        posts[0] = 0
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def sink_call(base: str, method: str, path: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, base + path) as response,
    ):
        result: dict[str, Any] = await response.json()
        return result


# -- setup ----------------------------------------------------------------------------------------


@dataclass
class Prepared:
    scope: Scope
    secret: str
    delivery_ids: list[str]
    # What each delivery sends, byte for byte (bodies) and nearly (a fixed timestamp).
    requests: list[tuple[bytes, dict[str, str]]]


async def prepare(db: AsyncEngine, box: SecretBox, sink_url: str, events: int) -> Prepared:
    async with db.begin() as conn:
        partner = await create_partner(
            conn,
            actor="bench",
            name=f"Webhook bench {secrets.token_hex(3)}",
            status="ACTIVE",
            action_types=("PURCHASE",),
            stakeholder_types=("CUSTOMER",),
        )
        scope = Scope(partner["id"], "sandbox")
        _, secret = await create_endpoint(
            conn,
            box,
            scope,
            EndpointSpec(url=sink_url, receive_all_events=True),
            allow_private=True,
        )
    # A payload the size of a real action.completed event (~400 bytes of data).
    for start in range(0, events, RECORD_BATCH):
        batch = [
            Event(
                "action.completed",
                {
                    "actionId": f"act_{n:020d}",
                    "idempotencyKey": f"bench-{n}",
                    "actionType": "PURCHASE",
                    "amount": str(Decimal(n % 10_000) / 100),
                    "currency": "USD",
                    "tokensDistributed": str(Decimal(n % 10_000) / 100),
                    "stakeholders": [
                        {"stakeholderTypeCode": "CUSTOMER", "externalUserId": f"user-{n % 1000}"}
                    ],
                    "transactionIds": [f"txn_{n:020d}a", f"txn_{n:020d}b"],
                },
            )
            for n in range(start, min(start + RECORD_BATCH, events))
        ]
        async with db.begin() as conn:
            await record_events(conn, scope, batch)
    delivery_ids: list[str] = []
    while True:
        async with db.begin() as conn:
            relayed = await relay_pending(conn, limit=RELAY_BATCH)
        delivery_ids.extend(relayed.delivery_ids)
        if relayed.events == 0:
            break
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, type, created_at, environment, payload FROM outbox_events "
                    "WHERE partner_id = :partner_id ORDER BY created_at, id"
                ),
                {"partner_id": scope.partner_id},
            )
        ).all()
    timestamp = str(int(time.time()))
    requests = []
    for row in rows:
        body = event_body(row.id, row.type, row.created_at, row.environment, row.payload)
        requests.append(
            (
                body,
                {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    "X-SIR-Timestamp": timestamp,
                    "X-SIR-Signature": signature_header([secret], timestamp, body),
                    "X-SIR-Event-Id": row.id,
                    "X-SIR-Delivery-Id": "baseline",
                },
            )
        )
    return Prepared(scope, secret, delivery_ids, requests)


# -- phases ---------------------------------------------------------------------------------------


@dataclass
class Phase:
    label: str
    count: int
    seconds: float
    outcomes: dict[str, int] = field(default_factory=dict)
    sink_distinct: int = 0
    sink_posts: int = 0
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (Dramatiq forks its worker processes)."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


async def baseline(
    sink: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int, sink_pid: int
) -> Phase:
    await sink_call(sink, "POST", "/reset")
    outcomes: dict[str, int] = {}
    pending = iter(requests)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=5)
    ) as session:

        async def worker() -> None:
            for body, headers in pending:  # a shared iterator: each request is sent once
                try:
                    async with session.post(
                        sink + "/hook", data=body, headers=headers, allow_redirects=False
                    ) as response:
                        await response.read()
                        label = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    label = type(exc).__name__
                outcomes[label] = outcomes.get(label, 0) + 1

        cpu = (measure.cpu_seconds(), measure.cpu_seconds(sink_pid))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        spent = {
            "client": measure.cpu_seconds() - cpu[0],
            "sink": measure.cpu_seconds(sink_pid) - cpu[1],
        }
    stats = await sink_call(sink, "GET", "/stats")
    done = outcomes.get("200", 0)
    return Phase(
        f"raw aiohttp client, {concurrency} in flight",
        done,
        elapsed,
        outcomes,
        stats["distinct"],
        stats["posts"],
        {k: round(v * 1000 / max(done, 1), 3) for k, v in spent.items()},
    )


def enqueue_all(redis_url: str, delivery_ids: list[str]) -> None:
    """One `deliver_webhook` message per delivery, by actor name, as the relay enqueues them."""
    broker = RedisBroker(url=redis_url)
    try:
        for delivery_id in delivery_ids:
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name="webhooks",
                actor_name="deliver_webhook",
                args=(delivery_id,),
                kwargs={},
                options={},
            )
            broker.enqueue(message)
    finally:
        broker.close()


async def delivery_counts(db: AsyncEngine, scope: Scope) -> dict[str, int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT status, count(*) FROM webhook_deliveries WHERE partner_id = :p "
                "GROUP BY status"
            ),
            {"p": scope.partner_id},
        )
        return {str(status): int(count) for status, count in rows}


async def engine_phase(
    db: AsyncEngine,
    prepared: Prepared,
    *,
    sink: str,
    sink_pid: int,
    env: dict[str, str],
    redis_url: str,
    concurrency: int,
    limit_seconds: float,
) -> Phase:
    await sink_call(sink, "POST", "/reset")
    total = len(prepared.delivery_ids)
    log(f"enqueueing {total:,} deliver_webhook messages")
    await asyncio.to_thread(enqueue_all, redis_url, prepared.delivery_ids)
    command = [
        "-m",
        "ops.cli",
        "worker",
        "--queues",
        "webhooks",
        "--processes",
        "1",
        "--threads",
        str(concurrency),
    ]
    worker = measure.start_process(command, env)
    sink_cpu = measure.cpu_seconds(sink_pid)
    worker_cpu = 0.0
    try:
        deadline = time.monotonic() + limit_seconds
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}")
            counts = await delivery_counts(db, prepared.scope)
            if counts.get("SUCCEEDED", 0) + counts.get("FAILED", 0) >= total:
                break
            await asyncio.sleep(0.5)
        # Sampled before the worker stops: its exit would take its children's times with it.
        worker_cpu = tree_cpu(worker.pid)
        sink_cpu = measure.cpu_seconds(sink_pid) - sink_cpu
    finally:
        measure.stop_process(worker)
    async with db.connect() as conn:
        first, last, attempts = (
            await conn.execute(
                text(
                    "SELECT min(a.attempted_at), max(a.attempted_at), count(*) "
                    "FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id "
                    "WHERE d.partner_id = :p AND a.status_code = 200"
                ),
                {"p": prepared.scope.partner_id},
            )
        ).one()
    counts = await delivery_counts(db, prepared.scope)
    stats = await sink_call(sink, "GET", "/stats")
    succeeded = counts.get("SUCCEEDED", 0)
    seconds = (last - first).total_seconds() if first is not None and last is not None else 0.0
    return Phase(
        f"sir-engine worker, 1 process x {concurrency} threads",
        succeeded,
        seconds,
        {**counts, "attempts_200": int(attempts)},
        stats["distinct"],
        stats["posts"],
        {
            # Includes startup and the idle polls until the bench noticed the end: an upper bound.
            "worker": round(worker_cpu * 1000 / max(succeeded, 1), 3),
            "sink": round(sink_cpu * 1000 / max(succeeded, 1), 3),
        },
    )


# -- the run --------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    events = 3_000 if args.quick else max(1, args.events)
    concurrency = max(1, args.concurrency)
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    started_at = datetime.now(UTC)
    load_start = [round(x, 2) for x in os.getloadavg()]
    name = f"sir_bench_webhooks_{secrets.token_hex(4)}"
    database_url = measure.with_database(server_url, name)
    master_key = generate_master_key()
    port = _free_port()
    sink_url = f"http://127.0.0.1:{port}"
    sink = measure.start_process(["-m", "ops.bench.webhooks", "--sink-port", str(port)])
    db: AsyncEngine | None = None
    await measure.admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        await measure.wait_http_ok(f"{sink_url}/stats", sink)
        await asyncio.to_thread(upgrade, database_url)
        db = create_engine(database_url, pool_size=2, max_overflow=2)
        clock = time.perf_counter()
        prepared = await prepare(
            db, SecretBox(parse_master_key(master_key)), sink_url + "/hook", events
        )
        log(
            f"{events:,} events recorded, {len(prepared.delivery_ids):,} deliveries relayed in "
            f"{time.perf_counter() - clock:.1f} s"
        )
        await measure.analyze(db)

        log(f"baseline: raw aiohttp client, {concurrency} in flight")
        base = await baseline(sink_url, prepared.requests, concurrency, sink.pid)
        log(f"engine: sir-engine worker, {concurrency} threads")
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            SIR_MASTER_KEY=master_key,
            SIR_WEBHOOK_ALLOW_PRIVATE="true",
            SIR_WORKER_METRICS_PORT="0",
            SIR_LOG_LEVEL="WARNING",
        )
        eng = await engine_phase(
            db,
            prepared,
            sink=sink_url,
            sink_pid=sink.pid,
            env=env,
            redis_url=redis_url,
            concurrency=concurrency,
            limit_seconds=60 + events / 50,
        )
    finally:
        measure.stop_process(sink)
        if db is not None:
            await db.dispose()
        await measure.admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    problems = []
    if base.sink_distinct != events or base.count != events:
        problems.append(f"baseline: sink saw {base.sink_distinct} of {events} event ids")
    if eng.sink_distinct != events:
        problems.append(f"engine: sink saw {eng.sink_distinct} of {events} event ids (lost)")
    if eng.count != events or set(eng.outcomes) - {"SUCCEEDED", "attempts_200"}:
        problems.append(f"engine: deliveries by status {eng.outcomes}, expected {events} SUCCEEDED")
    ratio = round(eng.rate / base.rate, 3) if base.rate else None
    report = {
        "startedAt": started_at.isoformat().replace("+00:00", "Z"),
        "machine": {
            "nproc": os.cpu_count(),
            "loadAverageAtStart": load_start,
            "loadAverageAtEnd": [round(x, 2) for x in os.getloadavg()],
        },
        "config": {"events": events, "concurrency": concurrency},
        "measurements": [
            {
                "key": key,
                "label": phase.label,
                "value": round(phase.rate, 1),
                "unit": unit,
                "count": phase.count,
                "seconds": round(phase.seconds, 3),
                "outcomes": phase.outcomes,
                "sinkDistinct": phase.sink_distinct,
                "sinkPosts": phase.sink_posts,
                "cpu_ms": phase.cpu_ms,
            }
            for key, phase, unit in (
                ("raw_client", base, "posts/s"),
                ("worker", eng, "deliveries/s"),
            )
        ],
        "ratio": ratio,
        "goal": 0.5,
        "problems": problems,
    }
    return report, not problems


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def render(report: dict[str, Any]) -> str:
    machine, config = report["machine"], report["config"]
    lines = [
        f"webhook bench {report['startedAt']}: {config['events']:,} events, concurrency "
        f"{config['concurrency']}, load {machine['loadAverageAtStart'][0]} -> "
        f"{machine['loadAverageAtEnd'][0]}",
    ]
    for row in report["measurements"]:
        cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in row["cpu_ms"].items())
        lines.append(
            f"  {row['label']:<40} {row['count']:>7,} in {row['seconds']:7.2f} s "
            f"{row['value']:>9,.0f} {row['unit']:<13} sink saw {row['sinkDistinct']:,} ids "
            f"({row['sinkPosts']:,} posts); CPU ms each: {cpu}"
        )
    ratio = report["ratio"]
    verdict = "met" if ratio is not None and ratio >= report["goal"] else "NOT met"
    lines.append(f"  engine / raw client: {ratio}x (goal >= {report['goal']}x: {verdict})")
    lines.extend(f"  PROBLEM: {p}" for p in report["problems"])
    if not report["problems"]:
        lines.append("  zero lost: every event id reached the sink, every delivery SUCCEEDED")
    return "\n".join(lines)


def save(report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = report["startedAt"].replace("-", "").replace(":", "").split(".")[0]
    path = RESULTS / f"webhooks-{stamp}Z.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.webhooks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="requests in flight: client tasks, and the worker's threads",
    )
    parser.add_argument("--quick", action="store_true", help="3,000 events")
    parser.add_argument("--sink-port", type=int, help=argparse.SUPPRESS)  # the sink process
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sink_port:
        run_sink(args.sink_port)
        return 0
    report, ok = asyncio.run(bench(args))
    print(render(report))
    print(f"\nsaved {save(report)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
