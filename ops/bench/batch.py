"""`python -m ops.bench.batch [--actions N] [--quick]`: batch actions against the fast path.

One run, on a fresh database (created on DATABASE_URL's server, dropped at the end), with one
`serve` process, distributes the same number of actions (default 100,000; `--quick` 10,000)
three ways, every action debiting the partner's one pool (the hot-row case):

F. the fast path as partners use it: signed `POST /v1/partner/actions/submit`, `--clients`
   concurrent requests (the front's group commit coalesces them);
G. (with `--group-commit`) the same actions through an in-process `GroupCommitter`, no HTTP:
   the fast path's engine alone, a stricter baseline;
B. the batch path: batches of 1,000 through signed `POST /v1/partner/actions/batch`, distributed
   by ONE worker process (`sir-engine worker --queues distribution --processes 1`); timed from
   the first POST to the last batch COMPLETED.

It prints actions/s and the ratio B / F (the goal is 2x or more), then proves each phase: every
key applied exactly once, the pool debited by exactly the tokens applied, `verify_ledger` clean
over the partner. Exit status 1 when a proof fails. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.action_request import ActionRequest, StakeholderRequest
from engine.credentials import IssuedKeys
from engine.crypto import SecretBox, generate_master_key
from engine.db import create_engine
from engine.errors import SirError
from engine.group_commit import GroupCommitter
from engine.money import Tokens
from engine.settings import parse_master_key
from engine.signing import sign_request
from engine.wire import dumps, loads
from ops.bench import measure
from ops.bench.run import free_port, machine_info
from ops.migrate import upgrade

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
SUBMIT = "/v1/partner/actions/submit"
BATCH = "/v1/partner/actions/batch"
BATCH_SIZE = 1000
MAX_PHASE_SECONDS = 900  # a phase that takes longer than this is a failure, not a figure


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Phase:
    name: str
    label: str
    actions: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.actions / self.seconds if self.seconds else 0.0


def _body(key: str, rng: random.Random) -> dict[str, Any]:
    # As ops.bench.run's traffic: one CUSTOMER of 1,000, an amount of 1.00 to 100.00, no
    # campaign: the default rule gives the customer floor6(amount) = amount tokens.
    return {
        "idempotencyKey": key,
        "actionType": "PURCHASE",
        "amount": str(Decimal(rng.randint(100, 10_000)) / 100),
        "currency": "USD",
        "stakeholders": [
            {
                "stakeholderTypeCode": "CUSTOMER",
                "partnerUserId": f"bench_user_{rng.randrange(measure.USER_COUNT):04d}",
            }
        ],
    }


def _micro(amount: str) -> int:
    return Tokens.parse(amount).micro


def _headers(keys: IssuedKeys, path: str, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {
        "X-Partner-Key": keys.secret_key,
        "X-Timestamp": timestamp,
        "X-Signature": sign_request(keys.hmac_secret, timestamp, "POST", path, body),
        "Content-Type": "application/json",
    }


# -- F: the fast path over HTTP -------------------------------------------------------------------


async def fast_path_http(
    base_url: str, keys: IssuedKeys, *, count: int, clients: int, prefix: str
) -> tuple[Phase, dict[str, int]]:
    """`count` signed submits, `clients` at a time; returns the phase and key -> tokens applied."""
    phase = Phase("fast_http", "F  HTTP POST /actions/submit (group commit in the front)")
    applied: dict[str, int] = {}
    numbers = iter(range(count))
    outcomes: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(n: int) -> None:
            rng = random.Random(1_000 + n)
            for number in numbers:
                key = f"{prefix}{number}"
                body = dumps(_body(key, rng)).encode()
                try:
                    async with session.post(
                        base_url + SUBMIT, data=body, headers=_headers(keys, SUBMIT, body)
                    ) as response:
                        status, raw = response.status, await response.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    label = f"client {type(exc).__name__}"
                else:
                    answer = loads(raw) if raw else {}
                    if status == 200:
                        applied[key] = Tokens.parse(answer["tokensDistributed"]).micro
                        label = "200"
                    else:
                        label = f"{status} {answer.get('error', {}).get('code', '?')}"
                outcomes[label] = outcomes.get(label, 0) + 1

        started = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(client(n) for n in range(clients))), MAX_PHASE_SECONDS
        )
        phase.seconds = time.perf_counter() - started
    phase.actions = len(applied)
    phase.outcomes = outcomes
    return phase, applied


# -- G: the fast path's engine in process ---------------------------------------------------------


async def fast_path_in_process(
    db: AsyncEngine, partner: measure.BenchPartner, *, count: int, clients: int, prefix: str
) -> tuple[Phase, dict[str, int]]:
    phase = Phase("fast_group_commit", "G  GroupCommitter.submit in process (no HTTP)")
    committer = GroupCommitter(db)
    applied: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    numbers = iter(range(count))

    async def client(n: int) -> None:
        rng = random.Random(2_000 + n)
        for number in numbers:
            key = f"{prefix}{number}"
            wire = _body(key, rng)
            request = ActionRequest(
                idempotency_key=key,
                action_type="PURCHASE",
                amount=Decimal(wire["amount"]),
                currency="USD",
                stakeholders=(
                    StakeholderRequest(
                        "CUSTOMER", partner_user_id=wire["stakeholders"][0]["partnerUserId"]
                    ),
                ),
            )
            try:
                response = await committer.submit(partner.scope, request)
            except SirError as exc:
                outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
                continue
            applied[key] = Tokens.parse(str(response["tokensDistributed"])).micro
            outcomes["applied"] = outcomes.get("applied", 0) + 1

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(clients))), MAX_PHASE_SECONDS)
    phase.seconds = time.perf_counter() - started
    await committer.close()
    phase.actions = len(applied)
    phase.outcomes = outcomes
    phase.note = (
        f"{committer.stats.actions / max(committer.stats.batches, 1):.1f} actions per transaction"
    )
    return phase, applied


# -- B: batches through one worker ----------------------------------------------------------------


async def _post_batch(
    session: aiohttp.ClientSession, base_url: str, keys: IssuedKeys, items: list[dict[str, Any]]
) -> str:
    body = dumps({"actions": items}).encode()
    async with session.post(
        base_url + BATCH, data=body, headers=_headers(keys, BATCH, body)
    ) as response:
        answer = loads(await response.read())
        if response.status != 202 or answer["accepted"] != len(items):
            raise RuntimeError(f"batch refused: {response.status} {str(answer)[:500]}")
        return str(answer["batchId"])


async def _wait_batches(db: AsyncEngine, batch_ids: list[str], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with db.connect() as conn:
            left = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM action_batches "
                        "WHERE id = ANY(CAST(:ids AS text[])) AND status <> 'COMPLETED'"
                    ),
                    {"ids": batch_ids},
                )
            ).scalar_one()
        if left == 0:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"batches not COMPLETED within {within:.0f}s")


async def batch_path(
    db: AsyncEngine,
    base_url: str,
    keys: IssuedKeys,
    *,
    count: int,
    prefix: str,
    posters: int,
) -> tuple[Phase, dict[str, int], list[str]]:
    phase = Phase("batch", "B  POST /actions/batch x1,000 + 1 worker process")
    rng = random.Random(3_000)
    chunks: list[list[dict[str, Any]]] = []
    applied: dict[str, int] = {}
    for start in range(0, count, BATCH_SIZE):
        items = [_body(f"{prefix}{n}", rng) for n in range(start, min(start + BATCH_SIZE, count))]
        chunks.append(items)
        applied.update((item["idempotencyKey"], _micro(item["amount"])) for item in items)
    batch_ids: list[str] = []
    pending = iter(chunks)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def poster() -> None:
            for items in pending:
                batch_ids.append(await _post_batch(session, base_url, keys, items))

        started = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(posters)))
        posted = time.perf_counter() - started
        await _wait_batches(db, batch_ids, MAX_PHASE_SECONDS)
        phase.seconds = time.perf_counter() - started
    async with db.connect() as conn:
        counts = (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(succeeded), 0), coalesce(sum(failed), 0) "
                    "FROM action_batches WHERE id = ANY(CAST(:ids AS text[]))"
                ),
                {"ids": batch_ids},
            )
        ).one()
    phase.actions = int(counts[0])
    phase.outcomes = {"succeeded": int(counts[0]), "failed": int(counts[1])}
    phase.note = f"{len(batch_ids)} batches posted in {posted:.1f} s"
    return phase, applied, batch_ids


# -- the run --------------------------------------------------------------------------------------


async def _clean_redis(redis_url: str, patterns: list[str]) -> None:
    """Remove this run's rate-limit and replay keys (only keys naming this run's partner/key)."""
    client = aioredis.from_url(redis_url, socket_timeout=5)
    try:
        for pattern in patterns:
            found = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(found), 500):
                await client.delete(*found[start : start + 500])
    finally:
        await client.aclose()


async def bench(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    count = 10_000 if args.quick else max(BATCH_SIZE, args.actions)
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    started_at = datetime.now(UTC)
    machine = await machine_info(server_url)
    log(f"{machine['nproc']} cores, {count:,} actions per path, {args.clients} HTTP clients")

    name = f"sir_bench_{secrets.token_hex(4)}"
    database_url = measure.with_database(server_url, name)
    master_key = generate_master_key()
    phases: list[Phase] = []
    processes = []
    db: AsyncEngine | None = None
    partner: measure.BenchPartner | None = None
    await measure.admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        await asyncio.to_thread(upgrade, database_url)
        db = create_engine(database_url, pool_size=args.clients, max_overflow=args.clients)
        partner = await measure.create_bench_partner(db, SecretBox(parse_master_key(master_key)))
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            SIR_MASTER_KEY=master_key,
            SIR_LOG_LEVEL="WARNING",
        )
        port = free_port()
        serve = measure.start_process(["-m", "ops.cli", "serve", "--port", str(port)], env)
        processes.append(serve)
        base_url = f"http://127.0.0.1:{port}"
        await measure.wait_http_ok(f"{base_url}/healthz", serve)

        # Warm-up outside the timed windows: key cache, pools, the users' first use, statistics.
        await fast_path_http(base_url, partner.keys, count=2_000, clients=args.clients, prefix="w-")
        await measure.analyze(db)

        log(f"F: {count:,} signed HTTP submits, {args.clients} at a time")
        before = await measure.current_pool_balance(db, partner)
        phase, applied = await fast_path_http(
            base_url, partner.keys, count=count, clients=args.clients, prefix="f-"
        )
        phase.check = await _check(db, partner, "f-", applied, before, count)
        phases.append(phase)
        log(f"   {phase.rate:,.0f} actions/s")

        if args.group_commit:
            log(f"G: {count:,} actions through GroupCommitter in process")
            await measure.analyze(db)
            before = await measure.current_pool_balance(db, partner)
            phase, applied = await fast_path_in_process(
                db, partner, count=count, clients=args.clients, prefix="g-"
            )
            phase.check = await _check(db, partner, "g-", applied, before, count)
            phases.append(phase)
            log(f"   {phase.rate:,.0f} actions/s")

        log(f"B: {count // BATCH_SIZE} batches of {BATCH_SIZE:,} through one worker process")
        worker = measure.start_process(
            [
                "-m",
                "ops.cli",
                "worker",
                "--queues",
                "distribution",
                "--processes",
                "1",
                "--threads",
                str(args.threads),
            ],
            env,
        )
        processes.append(worker)
        # Warm the worker (boot, connection pool) with one small batch outside the window.
        async with aiohttp.ClientSession() as session:
            warm = await _post_batch(
                session,
                base_url,
                partner.keys,
                [_body(f"wb-{n}", random.Random(n)) for n in range(64)],
            )
        await _wait_batches(db, [warm], 120)
        await measure.analyze(db)
        before = await measure.current_pool_balance(db, partner)
        phase, applied, _ = await batch_path(
            db, base_url, partner.keys, count=count, prefix="b-", posters=args.posters
        )
        phase.check = await _check(db, partner, "b-", applied, before, count)
        phases.append(phase)
        log(f"   {phase.rate:,.0f} actions/s")
    finally:
        for process in reversed(processes):
            measure.stop_process(process)
        if db is not None:
            await db.dispose()
        await measure.admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if partner is not None:
            try:
                await _clean_redis(
                    redis_url,
                    [f"*{partner.scope.partner_id}*", f"sir:replay:{partner.keys.id}:*"],
                )
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the real outcome
                log(f"could not clean Redis: {exc}")

    machine["loadAverageAtEnd"] = [round(x, 2) for x in os.getloadavg()]
    fast = next(p for p in phases if p.name == "fast_http")
    report = {
        "startedAt": started_at.isoformat().replace("+00:00", "Z"),
        "machine": machine,
        "config": {
            "actions": count,
            "clients": args.clients,
            "batchSize": BATCH_SIZE,
            "workerThreads": args.threads,
            "posters": args.posters,
        },
        "measurements": [
            {
                "name": p.name,
                "label": p.label,
                "actions": p.actions,
                "seconds": round(p.seconds, 3),
                "actionsPerSecond": round(p.rate, 1),
                "vsFastHttp": round(p.rate / fast.rate, 2) if fast.rate else None,
                "outcomes": p.outcomes,
                "check": p.check,
                "note": p.note,
            }
            for p in phases
        ],
    }
    ok = all(p.check is not None and p.check["ok"] for p in phases)
    return report, ok


async def _check(
    db: AsyncEngine,
    partner: measure.BenchPartner,
    prefix: str,
    applied: dict[str, int],
    before: int,
    count: int,
) -> dict[str, Any]:
    check = await measure.check_phase(
        db,
        partner,
        prefix=prefix,
        applied=applied,
        balance_before=before,
        sent_keys={f"{prefix}{n}" for n in range(count)},
        expect_all_sent_applied=True,
    )
    return check.summary()


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['config']['actions']:,} actions per path; "
        f"load average {report['machine']['loadAverageAtStart']} -> "
        f"{report['machine']['loadAverageAtEnd']}",
        "",
        f"{'path':<58} {'actions/s':>10} {'seconds':>8} {'x F':>6}  proof",
    ]
    for m in report["measurements"]:
        proof = "ok" if m["check"] and m["check"]["ok"] else f"FAILED {m['check']}"
        lines.append(
            f"{m['label']:<58} {m['actionsPerSecond']:>10,.0f} {m['seconds']:>8.1f} "
            f"{m['vsFastHttp']:>6.2f}  {proof}"
        )
        if m["note"]:
            lines.append(f"{'':<4}{m['note']}")
    return "\n".join(lines)


def save(report: dict[str, Any]) -> str:
    measure_dir = measure.ROOT / "ops" / "bench" / "results"
    measure_dir.mkdir(parents=True, exist_ok=True)
    stamp = report["startedAt"].replace("-", "").replace(":", "").split(".")[0]
    path = measure_dir / f"{stamp}Z-batch.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return str(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.batch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--actions", type=int, default=100_000, help="per path (default 100,000)")
    parser.add_argument("--quick", action="store_true", help="10,000 actions per path")
    parser.add_argument("--clients", type=int, default=32, help="concurrent fast-path requests")
    parser.add_argument("--threads", type=int, default=4, help="threads of the worker process")
    parser.add_argument("--posters", type=int, default=2, help="concurrent batch POSTs")
    parser.add_argument(
        "--group-commit",
        action="store_true",
        help="also measure the in-process GroupCommitter (no HTTP)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report, ok = asyncio.run(bench(args))
    print(render(report))
    print(f"\nsaved {save(report)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
