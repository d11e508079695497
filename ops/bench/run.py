"""`python -m ops.bench.run [--seconds N] [--clients N] [--quick]`: the engine's benchmark.

One run measures, in this order, with the same client count and duration each:

A. pgbench tpcb-like, prepared mode, on a scratch database (`-i -s 10`): the anchor;
B. a raw aiohttp client against a trivial aiohttp server: this machine's HTTP ceiling;
1. `submit_action` called directly from Python by N tasks (one pool, 1000 users): one
   transaction per action;
1g. the same actions through `GroupCommitter.submit`, the front's group-commit path;
2. signed `POST /v1/partner/actions/submit` against a real `serve` process;
2d. the same with 10% duplicate idempotency keys.

Every engine figure is printed with its ratio to A (and HTTP ones to B) from the same run: the
machines are shared and noisy, so only same-run ratios compare across runs and machines. Each
engine phase is followed by a proof of its effects (`measure.check_phase`); a failed proof
makes the exit status 1. The run creates a fresh database on DATABASE_URL's server and drops it
at the end, loopback only, and stops by itself: every loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.crypto import SecretBox, generate_master_key
from engine.db import create_engine
from engine.group_commit import GroupCommitter
from engine.settings import parse_master_key
from ops.bench import measure
from ops.migrate import upgrade

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
RESULTS = Path(__file__).resolve().parent / "results"
MAX_SECONDS = 60  # a shared 2-core machine: no measurement may hog it for long
DUPLICATE_SHARE = 0.10


@dataclass
class Row:
    """One measurement as printed and saved."""

    key: str
    label: str
    value: float
    unit: str
    vs_pgbench: float | None = None
    vs_http: float | None = None
    latency_ms: dict[str, float] | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    note: str = ""
    # CPU milliseconds per counted unit, by process: where the time goes, immune to neighbours.
    cpu_ms: dict[str, float] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


async def machine_info(server_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(measure.asyncpg_dsn(server_url))
    try:
        version = await conn.fetchval("SHOW server_version")
        sync_commit = await conn.fetchval("SHOW synchronous_commit")
        fsync = await conn.fetchval("SHOW fsync")
    finally:
        await conn.close()
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "postgresql": version,
        "synchronousCommit": sync_commit,
        "fsync": fsync,
        "python": platform.python_version(),
        "loadAverageAtStart": [round(x, 2) for x in os.getloadavg()],
    }


async def _clean_redis(redis_url: str, patterns: list[str]) -> None:
    """Remove this run's rate-limit and replay keys (only keys naming this run's partner/key)."""
    client = aioredis.from_url(redis_url, socket_timeout=5)
    try:
        for pattern in patterns:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    await client.delete(*batch)
                    batch.clear()
            if batch:
                await client.delete(*batch)
    finally:
        await client.aclose()


def _cpu_ms(spent: dict[str, float], count: int) -> dict[str, float]:
    return (
        {name: round(seconds * 1000 / count, 3) for name, seconds in spent.items()} if count else {}
    )


def _ratio(value: float, base: float | None) -> float | None:
    return round(value / base, 3) if base else None


async def _phase_direct(
    db: AsyncEngine,
    partner: measure.BenchPartner,
    seconds: float,
    clients: int,
    *,
    prefix: str,
    committer: GroupCommitter | None,
) -> tuple[measure.DirectRun, measure.Check, float, str]:
    # Warm the connection pool and the first users outside the timed window.
    await measure.run_direct(
        db,
        partner.scope,
        seconds=min(1.0, seconds / 5),
        clients=clients,
        prefix=f"w{prefix}",
        committer=committer,
    )
    await measure.analyze(db)
    before = await measure.current_pool_balance(db, partner)
    warm = replace(committer.stats) if committer is not None else None
    cpu = measure.cpu_seconds()
    run = await measure.run_direct(
        db, partner.scope, seconds=seconds, clients=clients, prefix=prefix, committer=committer
    )
    cpu = measure.cpu_seconds() - cpu
    note = ""
    if committer is not None and warm is not None:
        await committer.close()
        batches = committer.stats.batches - warm.batches
        note = (
            f"{(committer.stats.actions - warm.actions) / max(batches, 1):.1f} actions per "
            f"transaction, {committer.stats.isolated_retries - warm.isolated_retries} "
            "batches retried one by one"
        )
    check = await measure.check_phase(
        db, partner, prefix=prefix, applied=run.applied, balance_before=before
    )
    return run, check, cpu, note


async def _phase_http(
    db: AsyncEngine,
    partner: measure.BenchPartner,
    base_url: str,
    *,
    seconds: float,
    clients: int,
    prefix: str,
    duplicate_share: float,
) -> tuple[measure.HttpRun, measure.Check]:
    await measure.analyze(db)
    before = await measure.current_pool_balance(db, partner)
    run = await measure.run_http_submit(
        base_url,
        partner.keys,
        seconds=seconds,
        clients=clients,
        prefix=prefix,
        duplicate_share=duplicate_share,
    )
    clean = set(run.load.outcomes) <= {"200", "409 IDEMPOTENT"}
    check = await measure.check_phase(
        db,
        partner,
        prefix=prefix,
        applied=run.applied,
        balance_before=before,
        sent_keys=run.sent_keys,
        action_ids=run.action_ids,
        replays=run.replays,
        extra_200=run.extra_200,
        expect_all_sent_applied=clean,
    )
    if duplicate_share and len(run.replays) + len(run.applied) != run.load.completed and clean:
        check.problems.append("answers are neither one 200 per key nor IDEMPOTENT replays")
    return run, check


async def bench(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    seconds = 5.0 if args.quick else float(min(max(args.seconds, 1), MAX_SECONDS))
    clients = max(1, args.clients)
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    started_at = datetime.now(UTC)
    machine = await machine_info(server_url)
    log(
        f"{machine['nproc']} cores, PostgreSQL {machine['postgresql']}, "
        f"{clients} clients, {seconds:g} s per measurement"
    )

    name = f"sir_bench_{secrets.token_hex(4)}"
    database_url = measure.with_database(server_url, name)
    master_key = generate_master_key()
    rows: list[Row] = []
    processes: list[subprocess.Popen[bytes]] = []
    db: AsyncEngine | None = None
    partner: measure.BenchPartner | None = None
    await measure.admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        await asyncio.to_thread(upgrade, database_url)
        db = create_engine(database_url, pool_size=clients, max_overflow=clients)
        partner = await measure.create_bench_partner(db, SecretBox(parse_master_key(master_key)))

        log("A: pgbench tpcb-like, prepared")
        pg = await measure.run_pgbench(server_url, seconds=round(seconds), clients=clients)
        anchor = pg.tps
        rows.append(
            Row("pgbench", "A  pgbench tpcb-like -M prepared", pg.tps, "tps", 1.0, note=pg.command)
        )

        log("B: raw aiohttp ceiling")
        port = free_port()
        ceiling_server = measure.start_process(
            ["-m", "ops.bench.ceiling_server", "--port", str(port)]
        )
        processes.append(ceiling_server)
        await measure.wait_http_ok(f"http://127.0.0.1:{port}/", ceiling_server)
        cpu = (measure.cpu_seconds(), measure.cpu_seconds(ceiling_server.pid))
        ceiling = await measure.run_http_ceiling(
            f"http://127.0.0.1:{port}", seconds=seconds, clients=clients
        )
        spent = {
            "client": measure.cpu_seconds() - cpu[0],
            "server": measure.cpu_seconds(ceiling_server.pid) - cpu[1],
        }
        measure.stop_process(ceiling_server)
        http_ceiling = ceiling.rate("200")
        rows.append(
            Row(
                "http_ceiling",
                "B  raw aiohttp GET -> 'ok'",
                http_ceiling,
                "req/s",
                _ratio(http_ceiling, anchor),
                1.0,
                ceiling.latency(),
                dict(ceiling.outcomes),
                cpu_ms=_cpu_ms(spent, ceiling.completed),
            )
        )

        for key, label, prefix, committer in (
            ("engine_direct", "1  submit_action, 1 tx per action", "e1-", None),
            ("engine_group", "1g GroupCommitter.submit, in-process", "e1g-", GroupCommitter(db)),
        ):
            log(f"{label.split()[0]}: {label[3:]}")
            direct, check, cpu_spent, note = await _phase_direct(
                db, partner, seconds, clients, prefix=prefix, committer=committer
            )
            value = direct.load.rate("applied")
            rows.append(
                Row(
                    key,
                    label,
                    value,
                    "actions/s",
                    _ratio(value, anchor),
                    None,
                    direct.load.latency(),
                    dict(direct.load.outcomes),
                    check.summary(),
                    note,
                    cpu_ms=_cpu_ms({"bench": cpu_spent}, direct.load.outcomes["applied"]),
                )
            )

        log("2: signed HTTP submit against `serve`")
        port = free_port()
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            SIR_MASTER_KEY=master_key,
            SIR_LOG_LEVEL="WARNING",
        )
        serve = measure.start_process(["-m", "ops.cli", "serve", "--port", str(port)], env)
        processes.append(serve)
        base_url = f"http://127.0.0.1:{port}"
        await measure.wait_http_ok(f"{base_url}/healthz", serve)
        # Warm the front (key cache, connection pool) outside the timed window.
        await measure.run_http_submit(
            base_url, partner.keys, seconds=min(1.0, seconds / 5), clients=clients, prefix="w2-"
        )
        for key, label, prefix, share in (
            ("engine_http", "2  HTTP submit, signed, unique keys", "e2-", 0.0),
            ("engine_http_dup", "2d HTTP submit, 10% duplicate keys", "e2d-", DUPLICATE_SHARE),
        ):
            if key == "engine_http_dup":
                log("2d: the same with 10% duplicate keys")
            cpu = (measure.cpu_seconds(), measure.cpu_seconds(serve.pid))
            run, check = await _phase_http(
                db,
                partner,
                base_url,
                seconds=seconds,
                clients=clients,
                prefix=prefix,
                duplicate_share=share,
            )
            spent = {
                "client": measure.cpu_seconds() - cpu[0],  # includes the check's few queries
                "serve": measure.cpu_seconds(serve.pid) - cpu[1],
            }
            value = run.load.rate("200")  # actions applied per second; replays are not actions
            note = (
                f"{run.load.rate():.0f} answers/s; {run.duplicates_sent} duplicates sent"
                if share
                else ""
            )
            rows.append(
                Row(
                    key,
                    label,
                    value,
                    "actions/s",
                    _ratio(value, anchor),
                    _ratio(value, http_ceiling),
                    run.load.latency(),
                    dict(run.load.outcomes),
                    check.summary(),
                    note,
                    cpu_ms=_cpu_ms(spent, run.load.completed),
                )
            )
        measure.stop_process(serve)
    finally:
        for process in processes:
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
    report = {
        "startedAt": started_at.isoformat().replace("+00:00", "Z"),
        "machine": machine,
        "config": {
            "clients": clients,
            "secondsPerMeasurement": seconds,
            "users": measure.USER_COUNT,
            "duplicateShare": DUPLICATE_SHARE,
            "pgbenchScale": 10,
        },
        "measurements": [asdict(row) for row in rows],
    }
    ok = all(row.check is None or row.check["ok"] for row in rows)
    return report, ok


def render(report: dict[str, Any]) -> str:
    machine, config = report["machine"], report["config"]
    lines = [
        f"sir-engine bench {report['startedAt']}: {machine['nproc']} cores ({machine['cpu']}), "
        f"PostgreSQL {machine['postgresql']} (synchronous_commit={machine['synchronousCommit']}), "
        f"load {machine['loadAverageAtStart'][0]} -> {machine['loadAverageAtEnd'][0]}",
        f"{config['clients']} clients, {config['secondsPerMeasurement']:g} s per measurement",
        "",
        f"{'measurement':<40} {'value':>10} {'unit':<10} {'x pgbench':>9} {'x http':>7} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}  check",
    ]
    for row in report["measurements"]:
        latency = row["latency_ms"] or {}
        check = row["check"]
        verdict = "" if check is None else ("OK" if check["ok"] else "FAILED")
        lines.append(
            f"{row['label']:<40} {row['value']:>10.0f} {row['unit']:<10} "
            f"{_fmt(row['vs_pgbench'], 9)} {_fmt(row['vs_http'], 7)} "
            f"{_fmt(latency.get('p50'), 7, 2)} {_fmt(latency.get('p95'), 7, 2)} "
            f"{_fmt(latency.get('p99'), 7, 2)}  {verdict}"
        )
    lines.append("")
    for row in report["measurements"]:
        extra = [f"outcomes {row['outcomes']}"] if row["outcomes"] else []
        if row["note"]:
            extra.append(row["note"])
        if row["cpu_ms"]:
            per = "action" if row["key"] in {"engine_direct", "engine_group"} else "request"
            shares = ", ".join(f"{name} {ms:.2f}" for name, ms in row["cpu_ms"].items())
            extra.append(f"CPU ms per {per}: {shares}")
        if row["check"] is not None:
            c = row["check"]
            extra.append(
                f"rows {c['rows']} = answered {c['answeredApplied']}, pool debited "
                f"{c['poolDebited']} = answered {c['tokensAnswered']}, ledger verified "
                f"{c['ledgerVerified']}"
            )
            extra.extend(f"PROBLEM: {p}" for p in c["problems"])
        if extra:
            lines.append(f"{row['key']}: " + "; ".join(extra))
    return "\n".join(lines)


def _fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"


def save(report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = report["startedAt"].replace("-", "").replace(":", "").split(".")[0]
    path = RESULTS / f"{stamp}Z.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=int, default=15, help="per measurement (max 60)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients everywhere")
    parser.add_argument("--quick", action="store_true", help="~5 s per measurement (smoke)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report, ok = asyncio.run(bench(args))
    print(render(report))
    print(f"\nsaved {save(report)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
